//! Accepts gRPC clients that send a unix socket path as the HTTP/2 :authority.
//!
//! grpc-go (older kubelets, crictl), grpc-core and grpc-java put the socket path (e.g.
//! "/run/berth/berth.sock", or "%2Frun%2F...") in `:authority`. h2's server answers a request whose
//! `:authority` is not a URI authority with RST_STREAM(PROTOCOL_ERROR), so such clients never reach
//! the CRI services. [`fix_authority`] sits between the accepted socket and the HTTP/2 server and
//! rewrites those header blocks before h2 sees them.
//!
//! How: the client→server bytes are parsed as HTTP/2 frames. Every header block (HEADERS plus its
//! CONTINUATIONs) is HPACK-decoded with the client's dynamic table state and re-encoded without the
//! dynamic table (literals, never indexed by the server), with an invalid `:authority` replaced by
//! "localhost". Re-encoding *every* block, not only the rewritten ones, keeps the server's HPACK
//! table empty and so consistent with what it was sent. All other frames pass through untouched;
//! the server→client direction is not looked at.
//!
//! berthd wraps each accepted connection:
//!
//! ```text
//! let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(fix_authority));
//! Server::builder().add_service(runtime).serve_with_incoming(incoming).await?;
//! ```
//!
//! HPACK decoding uses `loona-hpack` (a maintained fork of hpack-rs that passes h2spec); the
//! encoder here only emits literals, which needs no Huffman table.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEAD_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest header block accepted, both as received (HPACK-encoded) and decoded (RFC 7541 §4.1
/// sizes: name + value + 32 per field). CRI requests carry a few hundred bytes of headers.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// A HEADERS frame may add a pad length, 5 priority bytes and up to 255 bytes of padding around
/// its fragment.
const MAX_HEADER_FRAME_OVERHEAD: usize = 1 + 5 + 255;
/// Bounds on the Huffman-coded strings of one block. loona-hpack's Huffman decoder costs ~20 µs to
/// set up per string and ~0.25 s per MiB (release build), so an unbounded block could stall a
/// worker thread for seconds. Neither bound refuses anything hyper's server accepts by default: a
/// header list is limited to 16 KiB there, i.e. at most 512 fields (32 bytes of overhead each, two
/// strings per field), and 64 KiB of Huffman code decodes to at least 17 KiB.
const MAX_HUFFMAN_STRINGS: usize = 1024;
const MAX_HUFFMAN_BYTES: usize = 64 * 1024;
/// Frames we emit stay within the HTTP/2 default SETTINGS_MAX_FRAME_SIZE, which every server
/// accepts whatever it advertised.
const MAX_FRAME_OUT: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE h2's server uses (the RFC 7540 default): the client's encoder may
/// not grow its table past it.
const HEADER_TABLE_SIZE: usize = 4096;
/// How much is read from the socket at a time when frames are being parsed.
const READ_CHUNK: usize = 16 * 1024;
const LOCALHOST: &[u8] = b"localhost";

/// Wraps an accepted server-side connection so that HTTP/2 requests whose `:authority` is not a
/// valid URI authority (a unix socket path) reach the server with `:authority: localhost`.
///
/// The client→server direction is parsed as HTTP/2 frames and every header block is re-encoded
/// (see the module docs); everything else passes through byte for byte, and the server→client
/// direction is untouched. A malformed header block fails the read with `InvalidData`, which makes
/// the server close the connection.
pub fn fix_authority<S>(io: S) -> FixAuthority<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    FixAuthority {
        io,
        inbuf: Vec::new(),
        start: 0,
        out: Vec::new(),
        out_pos: 0,
        state: State::Preface,
        pending: None,
        decoder: new_decoder(),
        eof: false,
        failed: None,
    }
}

fn new_decoder() -> Decoder<'static> {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
    decoder
}

/// The connection returned by [`fix_authority`].
pub struct FixAuthority<S> {
    io: S,
    /// Bytes read from `io` and not parsed yet: `inbuf[start..]`.
    inbuf: Vec<u8>,
    start: usize,
    /// Bytes ready for the server: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    state: State,
    /// A header block waiting for its CONTINUATION frames.
    pending: Option<PendingBlock>,
    decoder: Decoder<'static>,
    eof: bool,
    /// Set once the client sent something malformed: every later read fails with it.
    failed: Option<String>,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// Expecting the 24-byte client connection preface.
    Preface,
    /// Expecting a 9-byte frame header.
    FrameHead,
    /// Forwarding this many more payload bytes of a frame we don't look into.
    Forward(usize),
    /// Expecting the whole payload of a HEADERS or CONTINUATION frame.
    HeaderPayload(FrameHead),
    /// Not HTTP/2 with prior knowledge: forward everything and let the server reject it.
    Raw,
}

#[derive(Clone, Copy, Debug)]
struct FrameHead {
    len: usize,
    ty: u8,
    flags: u8,
    stream: u32,
}

struct PendingBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<S> FixAuthority<S> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Parses as much of `inbuf` as possible, appending what the server should see to `out`.
    fn process(&mut self) -> Result<(), String> {
        loop {
            let avail = self.inbuf.len() - self.start;
            match self.state {
                State::Raw => {
                    self.out.extend_from_slice(&self.inbuf[self.start..]);
                    self.start = self.inbuf.len();
                    return Ok(());
                }
                State::Preface => {
                    let got = &self.inbuf[self.start..];
                    let n = got.len().min(PREFACE.len());
                    if got[..n] != PREFACE[..n] {
                        self.state = State::Raw;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.out.extend_from_slice(PREFACE);
                    self.start += PREFACE.len();
                    self.state = State::FrameHead;
                }
                State::FrameHead => {
                    if avail < FRAME_HEAD_LEN {
                        return Ok(());
                    }
                    let h = &self.inbuf[self.start..self.start + FRAME_HEAD_LEN];
                    let head = FrameHead {
                        len: (usize::from(h[0]) << 16)
                            | (usize::from(h[1]) << 8)
                            | usize::from(h[2]),
                        ty: h[3],
                        flags: h[4],
                        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                    };
                    if self.pending.is_some() && head.ty != TYPE_CONTINUATION {
                        return Err(format!(
                            "frame type {:#x} inside an unfinished header block",
                            head.ty
                        ));
                    }
                    match head.ty {
                        TYPE_HEADERS | TYPE_CONTINUATION => {
                            let buffered = self.pending.as_ref().map_or(0, |p| p.block.len());
                            if buffered + head.len > MAX_HEADER_BLOCK + MAX_HEADER_FRAME_OVERHEAD {
                                return Err(format!(
                                    "header block larger than {MAX_HEADER_BLOCK} bytes"
                                ));
                            }
                            self.start += FRAME_HEAD_LEN;
                            self.state = State::HeaderPayload(head);
                        }
                        // A client never sends PUSH_PROMISE (RFC 7540 §8.2); its header block
                        // would also reach the server's decoder unconverted.
                        TYPE_PUSH_PROMISE => return Err("PUSH_PROMISE from a client".into()),
                        _ => {
                            self.out.extend_from_slice(h);
                            self.start += FRAME_HEAD_LEN;
                            self.state = State::Forward(head.len);
                        }
                    }
                }
                State::Forward(0) => self.state = State::FrameHead,
                State::Forward(left) => {
                    if avail == 0 {
                        return Ok(());
                    }
                    let n = left.min(avail);
                    self.out
                        .extend_from_slice(&self.inbuf[self.start..self.start + n]);
                    self.start += n;
                    self.state = State::Forward(left - n);
                }
                State::HeaderPayload(head) => {
                    if avail < head.len {
                        return Ok(());
                    }
                    let payload = self.inbuf[self.start..self.start + head.len].to_vec();
                    self.start += head.len;
                    self.state = State::FrameHead;
                    self.header_frame(head, &payload)?;
                }
            }
        }
    }

    /// Adds a HEADERS or CONTINUATION frame to the current header block; a complete block is
    /// re-encoded into `out`.
    fn header_frame(&mut self, head: FrameHead, payload: &[u8]) -> Result<(), String> {
        if head.ty == TYPE_HEADERS {
            if head.stream == 0 {
                return Err("HEADERS on stream 0".into());
            }
            let mut p = payload;
            let mut pad = 0;
            if head.flags & FLAG_PADDED != 0 {
                let (&n, rest) = p.split_first().ok_or("HEADERS padded but empty")?;
                pad = usize::from(n);
                p = rest;
            }
            let mut priority = None;
            if head.flags & FLAG_PRIORITY != 0 {
                if p.len() < 5 {
                    return Err("HEADERS priority fields truncated".into());
                }
                let mut pr = [0; 5];
                pr.copy_from_slice(&p[..5]);
                priority = Some(pr);
                p = &p[5..];
            }
            if pad > p.len() {
                return Err("HEADERS padding longer than the frame".into());
            }
            p = &p[..p.len() - pad];
            self.pending = Some(PendingBlock {
                stream: head.stream,
                end_stream: head.flags & FLAG_END_STREAM != 0,
                priority,
                block: p.to_vec(),
            });
        } else {
            let pending = self
                .pending
                .as_mut()
                .ok_or("CONTINUATION without a HEADERS frame")?;
            if pending.stream != head.stream {
                return Err(format!(
                    "CONTINUATION for stream {} inside the header block of stream {}",
                    head.stream, pending.stream
                ));
            }
            pending.block.extend_from_slice(payload);
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.block.len() > MAX_HEADER_BLOCK)
        {
            return Err(format!("header block larger than {MAX_HEADER_BLOCK} bytes"));
        }
        if head.flags & FLAG_END_HEADERS != 0 {
            let block = self.pending.take().expect("pending block set above");
            self.emit_block(block)?;
        }
        Ok(())
    }

    fn emit_block(&mut self, block: PendingBlock) -> Result<(), String> {
        let (fields, never_indexed) = decode_block(&mut self.decoder, &block.block)?;
        let encoded = encode_block(&fields, &never_indexed);
        write_header_frames(
            &mut self.out,
            block.stream,
            block.end_stream,
            block.priority,
            &encoded,
        );
        Ok(())
    }

    fn fail(&mut self, why: String) -> io::Error {
        tracing::warn!("closing CRI connection: malformed HTTP/2 from the client: {why}");
        self.failed = Some(why.clone());
        invalid(why)
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Decoded header fields, (name, value) in block order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Decodes a complete header block with the connection's decoder; an invalid `:authority` comes
/// back as "localhost". Also returns which fields the client sent as never indexed.
fn decode_block(
    decoder: &mut Decoder<'static>,
    block: &[u8],
) -> Result<(Fields, Vec<bool>), String> {
    let never_indexed = scan_block(block)?;
    let mut fields = Vec::new();
    let mut size = 0usize;
    decoder
        .decode_with_cb(block, |name, value| {
            // Indexed fields can expand a small block a lot: stop copying past the bound.
            size = size.saturating_add(name.len() + value.len() + 32);
            if size <= MAX_HEADER_BLOCK {
                fields.push((name.into_owned(), value.into_owned()));
            }
        })
        .map_err(|e| format!("HPACK: {e}"))?;
    if size > MAX_HEADER_BLOCK {
        return Err(format!(
            "decoded header list larger than {MAX_HEADER_BLOCK} bytes"
        ));
    }
    if fields.len() != never_indexed.len() {
        return Err("HPACK: decoder and scan disagree on the number of fields".into());
    }
    for (name, value) in &mut fields {
        if name.as_slice() == b":authority" && !valid_authority(value) {
            tracing::debug!(
                authority = %String::from_utf8_lossy(value),
                "replacing an :authority that is no URI authority with localhost"
            );
            *value = LOCALHOST.to_vec();
        }
    }
    Ok((fields, never_indexed))
}

/// Walks a block's representations (RFC 7541 §6) without decoding them, to bound the Huffman
/// decoding work before it is done. Returns, per field, whether it is a never-indexed literal.
fn scan_block(block: &[u8]) -> Result<Vec<bool>, String> {
    let (mut pos, mut strings, mut bytes) = (0, 0, 0);
    let mut never_indexed = Vec::new();
    while let Some(&first) = block.get(pos) {
        // Prefix bits of the index or size, and whether a literal follows.
        let (prefix, literal) = match first {
            0x80.. => (7, false),      // indexed field
            0x40..=0x7f => (6, true),  // literal with incremental indexing
            0x20..=0x3f => (5, false), // dynamic table size update
            _ => (4, true),            // literal without indexing / never indexed
        };
        let (index, n) = scan_int(&block[pos..], prefix)?;
        pos += n;
        if !(0x20..=0x3f).contains(&first) {
            never_indexed.push((0x10..=0x1f).contains(&first));
        }
        if !literal {
            continue;
        }
        // A literal name (index 0) and the value.
        for _ in 0..if index == 0 { 2 } else { 1 } {
            let huffman = block.get(pos).ok_or("HPACK: block ends before a string")? & 0x80 != 0;
            let (len, n) = scan_int(&block[pos..], 7)?;
            pos = (pos + n)
                .checked_add(len)
                .filter(|&end| end <= block.len())
                .ok_or("HPACK: string runs past the end of the block")?;
            if huffman {
                strings += 1;
                bytes += len;
            }
        }
        if strings > MAX_HUFFMAN_STRINGS || bytes > MAX_HUFFMAN_BYTES {
            return Err(format!(
                "more than {MAX_HUFFMAN_STRINGS} Huffman-coded strings or {MAX_HUFFMAN_BYTES} \
                 bytes of them in one header block"
            ));
        }
    }
    Ok(never_indexed)
}

/// An HPACK integer (RFC 7541 §5.1) at the start of `buf`: (value, bytes used).
fn scan_int(buf: &[u8], prefix: u8) -> Result<(usize, usize), String> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(buf[0]) & max;
    if value < max {
        return Ok((value, 1));
    }
    for (i, &b) in buf.iter().enumerate().skip(1) {
        let shift = 7 * (i - 1);
        if shift > 28 {
            return Err("HPACK: integer too large".into());
        }
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err("HPACK: block ends inside an integer".into())
}

/// The check h2's server makes before it refuses a request as malformed.
pub fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Static-table indexes (RFC 7541 Appendix A) of the names gRPC requests use, so the re-encoded
/// block stays short; any other name is sent as a literal.
fn static_name_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-encoding" => 16,
        b"content-type" => 31,
        b"user-agent" => 58,
        _ => return None,
    })
}

/// HPACK integer (RFC 7541 §5.1) with `prefix` bits, `first` holding the bits above the prefix.
fn encode_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Every field as a literal without indexing (RFC 7541 §6.2.2), so the server's dynamic table is
/// never used; fields the client sent as never indexed stay so (§6.2.3 requires it of
/// intermediaries).
fn encode_block(fields: &[(Vec<u8>, Vec<u8>)], never_indexed: &[bool]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, value)) in fields.iter().enumerate() {
        let first = if never_indexed.get(i) == Some(&true) {
            0x10
        } else {
            0
        };
        match static_name_index(name) {
            Some(i) => encode_int(&mut out, first, 4, i),
            None => {
                out.push(first);
                encode_string(&mut out, name);
            }
        }
        encode_string(&mut out, value);
    }
    out
}

fn push_frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// One HEADERS frame, followed by CONTINUATIONs when the block does not fit in one frame.
fn write_header_frames(
    out: &mut Vec<u8>,
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let prio_len = if priority.is_some() { 5 } else { 0 };
    let first = block.len().min(MAX_FRAME_OUT - prio_len);
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if first == block.len() {
        flags |= FLAG_END_HEADERS;
    }
    push_frame_head(out, prio_len + first, TYPE_HEADERS, flags, stream);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME_OUT);
        let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
        push_frame_head(out, n, TYPE_CONTINUATION, flags, stream);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FixAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = &this.failed {
                return Poll::Ready(Err(invalid(why.clone())));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.start == this.inbuf.len() {
                this.inbuf.clear();
                this.start = 0;
                // Don't keep a megabyte around after one big header block.
                if this.inbuf.capacity() > 4 * READ_CHUNK {
                    this.inbuf = Vec::new();
                }
                // Payload of a frame we don't look into: read it straight into the caller's buffer.
                if let State::Forward(left @ 1..) = this.state {
                    let limit = left.min(buf.remaining());
                    let mut direct = ReadBuf::new(buf.initialize_unfilled_to(limit));
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut direct))?;
                    let n = direct.filled().len();
                    if n == 0 {
                        this.eof = true;
                        return Poll::Ready(Ok(()));
                    }
                    buf.advance(n);
                    this.state = State::Forward(left - n);
                    return Poll::Ready(Ok(()));
                }
            } else if this.start > 0 {
                this.inbuf.drain(..this.start);
                this.start = 0;
            }
            let want = match this.state {
                State::HeaderPayload(head) => head.len.saturating_sub(this.inbuf.len()),
                _ => 0,
            }
            .max(READ_CHUNK);
            let old = this.inbuf.len();
            this.inbuf.resize(old + want, 0);
            let mut rb = ReadBuf::new(&mut this.inbuf[old..]);
            let res = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let n = rb.filled().len();
            this.inbuf.truncate(old + n);
            ready!(res)?;
            if n == 0 {
                // A frame cut short by EOF is dropped: the server sees the connection end.
                this.eof = true;
                continue;
            }
            if let Err(why) = this.process() {
                return Poll::Ready(Err(this.fail(why)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FixAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Passes the wrapped connection's info through (for a unix socket: the peer's credentials).
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for FixAuthority<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame_head(&mut out, payload.len(), ty, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    /// Feeds `input` through the adapter and returns what the server would read.
    async fn run(input: &[u8]) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            // The adapter may stop reading (malformed input): ignore a broken pipe.
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            client
        });
        let mut fixed = fix_authority(server);
        let mut got = Vec::new();
        let res = fixed.read_to_end(&mut got).await;
        drop(fixed);
        let _ = writer.await;
        res.map(|_| got)
    }

    /// Splits what the adapter produced into frames and decodes the header blocks with a fresh
    /// decoder, as the server would.
    fn server_view(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..24], PREFACE);
        let mut rest = &bytes[24..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let len =
                (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        frames
    }

    fn literal_new_name(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        encode_string(&mut out, name);
        encode_string(&mut out, value);
        out
    }

    #[test]
    fn integers_round_trip_through_the_decoder() {
        for v in [0usize, 1, 14, 15, 16, 127, 128, 300, 16_383, 1 << 20] {
            let mut block = Vec::new();
            encode_int(&mut block, 0, 4, 0);
            encode_string(&mut block, &vec![b'a'; v.min(64)]);
            // A literal value of length v exercises the 7-bit prefix continuation bytes.
            encode_string(&mut block, &vec![b'b'; v]);
            let got = Decoder::new().decode(&block).unwrap();
            assert_eq!(got[0].1.len(), v);
        }
    }

    #[test]
    fn static_indexes_match_the_static_table() {
        let names: &[&[u8]] = &[
            b":authority",
            b":method",
            b":path",
            b":scheme",
            b":status",
            b"accept-encoding",
            b"content-type",
            b"user-agent",
        ];
        for name in names {
            let block = encode_block(&[(name.to_vec(), b"x".to_vec())], &[false]);
            assert_ne!(
                block[0],
                0,
                "{} should use an indexed name",
                String::from_utf8_lossy(name)
            );
            let got = Decoder::new().decode(&block).unwrap();
            assert_eq!(got, vec![(name.to_vec(), b"x".to_vec())]);
        }
    }

    #[test]
    fn authority_validity_matches_h2() {
        assert!(valid_authority(b"localhost"));
        assert!(valid_authority(b"127.0.0.1:1234"));
        assert!(!valid_authority(b"/run/berth/berth.sock"));
        assert!(!valid_authority(b""));
        // grpc-core's %-encoded form is refused by h2 as well.
        assert!(!valid_authority(b"%2Frun%2Fberth%2Fberth.sock"));
    }

    #[tokio::test]
    async fn path_authority_is_replaced_other_frames_kept() {
        let mut block = vec![0x83, 0x86]; // :method POST, :scheme http
        block.extend(literal_new_name(
            b":path",
            b"/runtime.v1.RuntimeService/Version",
        ));
        block.extend(literal_new_name(b":authority", b"/run/berth/berth.sock"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
                                             // Padded, with priority, split over a CONTINUATION.
        let mut payload = vec![3];
        payload.extend([0, 0, 0, 0, 15]);
        payload.extend(&block[..10]);
        payload.extend([0, 0, 0]);
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY,
            1,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[10..]));
        input.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x02hi"));
        let frames = server_view(&run(&input).await.unwrap());
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], (0x4, 0, 0, vec![]));
        let (ty, flags, stream, payload) = &frames[1];
        assert_eq!(
            (*ty, *flags, *stream),
            (TYPE_HEADERS, FLAG_PRIORITY | FLAG_END_HEADERS, 1)
        );
        assert_eq!(payload[..5], [0, 0, 0, 0, 15]);
        let fields = Decoder::new().decode(&payload[5..]).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/runtime.v1.RuntimeService/Version".to_vec(),
            ),
            (b":authority".to_vec(), b"localhost".to_vec()),
        ];
        assert_eq!(fields, want);
        assert_eq!(
            frames[2],
            (0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x02hi".to_vec())
        );
    }

    #[tokio::test]
    async fn big_blocks_are_split_into_continuations() {
        let mut block = literal_new_name(b"x-big", &vec![b'v'; 40_000]);
        block.extend(literal_new_name(b":authority", b"/sock"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &block,
        ));
        let frames = server_view(&run(&input).await.unwrap());
        let types: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            types,
            [
                (TYPE_HEADERS, FLAG_END_STREAM),
                (TYPE_CONTINUATION, 0),
                (TYPE_CONTINUATION, FLAG_END_HEADERS)
            ]
        );
        assert!(frames
            .iter()
            .all(|f| f.2 == 3 && f.3.len() <= MAX_FRAME_OUT));
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        let fields = Decoder::new().decode(&joined).unwrap();
        assert_eq!(fields[0].1.len(), 40_000);
        assert_eq!(fields[1], (b":authority".to_vec(), b"localhost".to_vec()));
    }

    #[tokio::test]
    async fn not_http2_passes_through() {
        let input = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n";
        assert_eq!(run(input).await.unwrap(), input);
    }

    async fn rejected(frames: &[Vec<u8>]) -> String {
        let mut input = PREFACE.to_vec();
        for f in frames {
            input.extend(f);
        }
        let err = run(&input)
            .await
            .expect_err("malformed input must fail the read");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        err.to_string()
    }

    #[tokio::test]
    async fn malformed_blocks_fail_the_connection() {
        // Truncated literal: the value length says 10, 2 bytes follow.
        let e = rejected(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x00, 0x01, b'a', 0x0a, b'x', b'y'],
        )])
        .await;
        assert!(e.contains("HPACK"), "{e}");
        // Huffman string whose padding is not the EOS prefix.
        let e = rejected(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x00, 0x01, b'a', 0x81, 0x00],
        )])
        .await;
        assert!(e.contains("HPACK"), "{e}");
        // Integer with too many continuation bytes.
        let e = rejected(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        )])
        .await;
        assert!(e.contains("HPACK"), "{e}");
        // Index past both tables.
        let e = rejected(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x10])]).await;
        assert!(e.contains("HPACK"), "{e}");
        // Dynamic table size update above SETTINGS_HEADER_TABLE_SIZE.
        let mut up = Vec::new();
        encode_int(&mut up, 0x20, 5, HEADER_TABLE_SIZE + 1);
        up.push(0x82);
        let e = rejected(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &up)]).await;
        assert!(e.contains("HPACK"), "{e}");
        let e = rejected(&[frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82])]).await;
        assert!(e.contains("CONTINUATION without"), "{e}");
        let e = rejected(&[frame(TYPE_HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, b"x")]).await;
        assert!(e.contains("unfinished header block"), "{e}");
        let e = rejected(&[
            frame(TYPE_HEADERS, 0, 1, &[0x82]),
            frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]),
        ])
        .await;
        assert!(e.contains("CONTINUATION for stream 3"), "{e}");
        let e = rejected(&[frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED,
            1,
            &[9, 0x82],
        )])
        .await;
        assert!(e.contains("padding"), "{e}");
        let e = rejected(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &[0x82])]).await;
        assert!(e.contains("stream 0"), "{e}");
    }

    #[tokio::test]
    async fn oversized_blocks_fail_the_connection() {
        // Announced too big: refused before buffering.
        let mut head = Vec::new();
        push_frame_head(&mut head, MAX_HEADER_BLOCK + 1024, TYPE_HEADERS, 0, 1);
        let e = rejected(&[head]).await;
        assert!(e.contains("larger than"), "{e}");
        // Grown too big over CONTINUATIONs.
        let chunk = vec![0u8; 600_000];
        let e = rejected(&[
            frame(TYPE_HEADERS, 0, 1, &chunk),
            frame(TYPE_CONTINUATION, 0, 1, &chunk),
        ])
        .await;
        assert!(e.contains("larger than"), "{e}");
        // Small block that decodes huge: one 4000-byte table entry referenced again and again.
        let mut block = vec![0x40];
        encode_string(&mut block, b"x");
        encode_string(&mut block, &vec![b'v'; 4000]);
        block.extend(std::iter::repeat_n(0xbe, 300)); // index 62: the entry just added
        let e = rejected(&[frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block)]).await;
        assert!(e.contains("decoded header list larger"), "{e}");
    }

    #[test]
    fn huffman_work_is_bounded() {
        // "0" Huffman-coded is the 5-bit code 00000 padded with ones.
        let field = [0x00, 0x81, 0x07, 0x81, 0x07];
        let block: Vec<u8> = field.repeat(MAX_HUFFMAN_STRINGS / 2);
        assert_eq!(
            decode_block(&mut new_decoder(), &block).unwrap().0.len(),
            MAX_HUFFMAN_STRINGS / 2
        );
        let block: Vec<u8> = field.repeat(MAX_HUFFMAN_STRINGS / 2 + 1);
        let e = decode_block(&mut new_decoder(), &block).unwrap_err();
        assert!(e.contains("Huffman-coded strings"), "{e}");
        let mut block = vec![0x01];
        encode_int(&mut block, 0x80, 7, MAX_HUFFMAN_BYTES + 1);
        block.resize(block.len() + MAX_HUFFMAN_BYTES + 1, 0xff);
        let e = decode_block(&mut new_decoder(), &block).unwrap_err();
        assert!(e.contains("Huffman-coded strings"), "{e}");
    }

    #[test]
    fn never_indexed_fields_stay_never_indexed() {
        // Size update to 4096, :method GET (indexed), authorization (static name 23) never
        // indexed, x-a without indexing.
        let mut block = vec![0x3f, 0xe1, 0x1f, 0x82, 0x1f, 23 - 15];
        encode_string(&mut block, b"secret");
        block.extend(literal_new_name(b"x-a", b"b"));
        let (fields, never) = decode_block(&mut new_decoder(), &block).unwrap();
        assert_eq!(never, [false, true, false]);
        let out = encode_block(&fields, &never);
        assert_eq!(scan_block(&out).unwrap(), never);
        assert_eq!(Decoder::new().decode(&out).unwrap(), fields);
    }

    #[test]
    fn scan_int_matches_the_decoder() {
        for v in [0usize, 14, 15, 16, 127, 128, 300, 16_383, 1 << 20, 1 << 28] {
            let mut buf = Vec::new();
            encode_int(&mut buf, 0, 4, v);
            assert_eq!(scan_int(&buf, 4).unwrap(), (v, buf.len()));
        }
        assert!(scan_int(&[0x0f, 0xff], 4).is_err());
        assert!(scan_int(&[0x0f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 4).is_err());
    }

    #[tokio::test]
    async fn dynamic_table_state_is_kept_across_blocks() {
        // Block 1 adds :authority to the client's table; block 2 refers to it by index 62.
        let mut b1 = vec![0x83, 0x86, 0x84, 0x41];
        encode_string(&mut b1, b"/run/berth/berth.sock");
        let b2 = vec![0x83, 0x86, 0x84, 0xbe];
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            1,
            &b1,
        ));
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &b2,
        ));
        let frames = server_view(&run(&input).await.unwrap());
        // The server decodes both with one decoder: nothing may refer to its dynamic table.
        let mut server = Decoder::new();
        for f in &frames {
            let fields = server.decode(&f.3).unwrap();
            assert!(fields.contains(&(b":authority".to_vec(), b"localhost".to_vec())));
        }
    }
}
