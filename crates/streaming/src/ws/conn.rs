//! A WebSocket connection carrying Kubernetes channels over the multiplexer.
//!
//! Every message starts with its channel: a byte in the binary protocols
//! (`channel.k8s.io`, `v4.channel.k8s.io`, `v5.channel.k8s.io`), an ASCII
//! digit followed by base64 in `base64.channel.k8s.io`. In v5 a message on
//! channel 255 carrying one channel byte half-closes that channel. WebSocket
//! has no flow control: while a channel's buffer is full the socket is not
//! read.

use std::sync::Arc;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::frame::{self, close_payload, Frame, FrameError};
use crate::mux::{run_writer, Chan, Encoder, Limits, Mux, MuxStream, State, TaskGuard};
use crate::spdy::conn::{read_full, wait_room};

pub const CLOSE_CHANNEL: u8 = 255;

#[derive(Debug, Clone, Copy)]
pub struct WsOptions {
    /// true on the server (expects masked frames, sends unmasked).
    pub server: bool,
    /// `base64.channel.k8s.io`: text messages, digit channel, base64 payload.
    pub base64: bool,
    /// Client side of v5: closing a channel sends the close signal.
    pub close_signal: bool,
    pub max_message: usize,
}

fn mask_key() -> Option<[u8; 4]> {
    Some(crate::token::random_bytes::<4>())
}

struct WsEncoder {
    opts: WsOptions,
}

impl WsEncoder {
    fn message(&self, out: &mut BytesMut, ch: u8, data: &[u8]) {
        let mask = if self.opts.server { None } else { mask_key() };
        if self.opts.base64 {
            let mut p = vec![b'0' + ch];
            p.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(data)
                    .as_bytes(),
            );
            frame::put_frame(out, true, frame::OP_TEXT, &p, mask);
        } else {
            frame::put_frame_parts(out, frame::OP_BINARY, &[ch], data, mask);
        }
    }
}

impl Encoder for WsEncoder {
    fn encode_conn(&mut self, _st: &mut State, _out: &mut BytesMut) {}

    fn encode_chan(&mut self, st: &mut State, id: u32, out: &mut BytesMut, chunk: usize) -> bool {
        let Some(c) = st.chans.get_mut(&id) else {
            return false;
        };
        c.rst_pending = None;
        c.reply_pending = false;
        c.wu_pending = false;
        if c.out_reset || c.out_fin_sent {
            return false;
        }
        // base64 grows data by 4/3: keep messages near the same size.
        let chunk = if self.opts.base64 {
            chunk / 4 * 3
        } else {
            chunk
        };
        if c.out_len > 0 {
            let mut data = BytesMut::new();
            while data.len() < chunk {
                let Some(front) = c.out_buf.front_mut() else {
                    break;
                };
                let k = front.len().min(chunk - data.len());
                data.extend_from_slice(&front.split_to(k));
                if front.is_empty() {
                    c.out_buf.pop_front();
                }
            }
            c.out_len -= data.len();
            self.message(out, id as u8, &data);
            return c.out_len > 0 || c.out_fin;
        }
        if c.out_fin {
            c.out_fin_sent = true;
            if self.opts.close_signal {
                self.message(out, CLOSE_CHANNEL, &[id as u8]);
            }
        }
        false
    }

    fn encode_close(&mut self, _st: &mut State, out: &mut BytesMut) {
        let mask = if self.opts.server { None } else { mask_key() };
        frame::put_frame(
            out,
            true,
            frame::OP_CLOSE,
            &close_payload(frame::CLOSE_NORMAL, ""),
            mask,
        );
    }
}

pub struct WsConn {
    pub(crate) mux: Arc<Mux>,
    pub(crate) reader: JoinHandle<()>,
    pub(crate) writer: JoinHandle<()>,
    _guard: TaskGuard,
}

impl WsConn {
    /// Starts a connection whose channels `0..channels` exist from the start;
    /// returns their handles in order.
    pub(crate) fn start<IO>(
        io: IO,
        opts: WsOptions,
        limits: Limits,
        channels: usize,
    ) -> (WsConn, Vec<MuxStream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mux = Mux::new(limits);
        let streams = (0..channels as u32)
            .map(|i| mux.insert(i, Chan::default()))
            .collect();
        let (r, w) = tokio::io::split(io);
        let writer = tokio::spawn(run_writer(mux.clone(), w, WsEncoder { opts }));
        let reader = tokio::spawn(run_reader(
            mux.clone(),
            tokio::io::BufReader::with_capacity(64 << 10, r),
            opts,
        ));
        let tasks = vec![reader.abort_handle(), writer.abort_handle()];
        let guard = TaskGuard {
            mux: mux.clone(),
            tasks,
        };
        (
            WsConn {
                _guard: guard,
                mux,
                reader,
                writer,
            },
            streams,
        )
    }

    pub(crate) fn mux(&self) -> &Arc<Mux> {
        &self.mux
    }

    /// Sends one message on `ch` right away (e.g. the empty message that
    /// tells a client the session is ready, or a port prefix).
    pub fn send_raw(&self, ch: u8, data: &[u8], opts: WsOptions) {
        let mut out = BytesMut::new();
        WsEncoder { opts }.message(&mut out, ch, data);
        self.mux.lock().ctrl.push_back(out.freeze());
        self.mux.kick();
    }

    /// Drains, sends a close frame and waits (up to `linger`) for the peer's.
    pub async fn close(self, linger: std::time::Duration) {
        self.mux.finish();
        let _ = self.writer.await;
        let mut reader = self.reader;
        if tokio::time::timeout(linger, &mut reader).await.is_err() {
            reader.abort();
        }
        self.mux.lock().kill(None);
        self.mux.progress.notify_waiters();
    }
}

fn fail(mux: &Mux, code: u16, why: String, server: bool) -> String {
    let mut st = mux.lock();
    let mut b = BytesMut::new();
    frame::put_frame(
        &mut b,
        true,
        frame::OP_CLOSE,
        &close_payload(code, &why),
        if server { None } else { mask_key() },
    );
    st.ctrl.push_back(b.freeze());
    st.abort = true;
    if st.error.is_none() {
        st.error = Some(why.clone());
    }
    drop(st);
    mux.kick();
    why
}

async fn run_reader<R: AsyncRead + Unpin>(mux: Arc<Mux>, mut r: R, opts: WsOptions) {
    let why = reader_loop(&mux, &mut r, opts).await;
    tracing::debug!(error = %why, "websocket reader stopped");
    let mut st = mux.lock();
    if !st.abort {
        st.kill(Some(why));
    }
    // The peer closed or failed: nothing more will arrive on any channel.
    let ids: Vec<u32> = st.chans.keys().copied().collect();
    for id in ids {
        mux.remote_fin(&mut st, id);
    }
    drop(st);
    mux.progress.notify_waiters();
    mux.wake_writer.notify_one();
}

/// Reads one frame (header, then a payload of at most `max` bytes).
async fn read_frame<R: AsyncRead + Unpin>(
    mux: &Mux,
    r: &mut R,
    max: usize,
    masked: bool,
) -> Result<Frame, String> {
    let mut buf = vec![0u8; 2];
    read_full(mux, r, &mut buf)
        .await
        .map_err(|e| format!("read: {e}"))?;
    // The header's own mask bit says whether a key follows; parse() then
    // refuses a frame masked the wrong way.
    let ext = match buf[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    } + if buf[1] & 0x80 != 0 { 4 } else { 0 };
    buf.resize(2 + ext, 0);
    read_full(mux, r, &mut buf[2..])
        .await
        .map_err(|e| format!("read: {e}"))?;
    // Parse the header alone to learn (and bound) the payload length.
    let len = match frame::parse(&buf, max, masked) {
        Ok(Some((f, _))) => return Ok(f),
        Ok(None) => match buf[1] & 0x7f {
            126 => u16::from_be_bytes([buf[2], buf[3]]) as usize,
            127 => u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            l => l as usize,
        },
        Err(e) => return Err(fail(mux, e.close_code(), e.to_string(), masked)),
    };
    let start = buf.len();
    buf.resize(start + len, 0);
    read_full(mux, r, &mut buf[start..])
        .await
        .map_err(|e| format!("read: {e}"))?;
    match frame::parse(&buf, max, masked) {
        Ok(Some((f, _))) => Ok(f),
        Ok(None) => Err(fail(
            mux,
            frame::CLOSE_PROTOCOL_ERROR,
            "truncated frame".into(),
            masked,
        )),
        Err(e) => Err(fail(mux, e.close_code(), e.to_string(), masked)),
    }
}

async fn reader_loop<R: AsyncRead + Unpin>(mux: &Arc<Mux>, r: &mut R, opts: WsOptions) -> String {
    let masked = opts.server;
    let mut msg: Option<(u8, BytesMut)> = None;
    loop {
        let f = match read_frame(mux, r, opts.max_message, masked).await {
            Ok(f) => f,
            Err(e) => return e,
        };
        match f.opcode {
            frame::OP_PING => {
                let mut b = BytesMut::new();
                frame::put_frame(
                    &mut b,
                    true,
                    frame::OP_PONG,
                    &f.payload,
                    if opts.server { None } else { mask_key() },
                );
                mux.lock().ctrl.push_back(b.freeze());
                mux.kick();
                let cap = mux.limits.ctrl_cap;
                if let Err(e) = wait_room(mux, |st| st.ctrl.len() > cap).await {
                    return e.to_string();
                }
                continue;
            }
            frame::OP_PONG => continue,
            frame::OP_CLOSE => {
                // Answer the close (unless we sent ours already) and stop.
                let mut st = mux.lock();
                if !st.finishing {
                    let mut b = BytesMut::new();
                    frame::put_frame(
                        &mut b,
                        true,
                        frame::OP_CLOSE,
                        &f.payload[..f.payload.len().min(2)],
                        if opts.server { None } else { mask_key() },
                    );
                    st.ctrl.push_back(b.freeze());
                    st.abort = true;
                }
                drop(st);
                mux.kick();
                return "peer closed the websocket".into();
            }
            op => {
                let (opcode, mut body) = match (op, msg.take()) {
                    (frame::OP_CONTINUATION, Some((o, b))) => (o, b),
                    (frame::OP_CONTINUATION, None) => {
                        return fail(
                            mux,
                            frame::CLOSE_PROTOCOL_ERROR,
                            "continuation without a message".into(),
                            opts.server,
                        )
                    }
                    (_, Some(_)) => {
                        return fail(
                            mux,
                            frame::CLOSE_PROTOCOL_ERROR,
                            "new message inside a fragmented one".into(),
                            opts.server,
                        )
                    }
                    (o, None) => (o, BytesMut::new()),
                };
                if body.len() + f.payload.len() > opts.max_message {
                    let e = FrameError::TooLarge {
                        len: (body.len() + f.payload.len()) as u64,
                        max: opts.max_message,
                    };
                    return fail(mux, e.close_code(), e.to_string(), opts.server);
                }
                if f.fin && body.is_empty() {
                    // A whole message in one frame: no reassembly copy.
                    if let Err(e) = dispatch(mux, opcode, f.payload, opts).await {
                        return e;
                    }
                    continue;
                }
                body.extend_from_slice(&f.payload);
                if !f.fin {
                    msg = Some((opcode, body));
                    continue;
                }
                if let Err(e) = dispatch(mux, opcode, body.freeze(), opts).await {
                    return e;
                }
            }
        }
    }
}

async fn dispatch(mux: &Arc<Mux>, opcode: u8, body: Bytes, opts: WsOptions) -> Result<(), String> {
    if body.is_empty() {
        return Ok(());
    }
    let (ch, data) = if opcode == frame::OP_TEXT {
        if std::str::from_utf8(&body).is_err() {
            return Err(fail(
                mux,
                frame::CLOSE_INVALID_DATA,
                "text message is not UTF-8".into(),
                opts.server,
            ));
        }
        if !opts.base64 {
            return Err(fail(
                mux,
                frame::CLOSE_INVALID_DATA,
                "text message on a binary channel protocol".into(),
                opts.server,
            ));
        }
        let ch = body[0].wrapping_sub(b'0');
        let data = match base64::engine::general_purpose::STANDARD.decode(&body[1..]) {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                return Err(fail(
                    mux,
                    frame::CLOSE_INVALID_DATA,
                    format!("bad base64: {e}"),
                    opts.server,
                ))
            }
        };
        (ch, data)
    } else {
        (body[0], body.slice(1..))
    };
    let id = ch as u32;
    {
        let mut st = mux.lock();
        if ch == CLOSE_CHANNEL {
            if let Some(&target) = data.first() {
                mux.remote_fin(&mut st, target as u32);
            }
            return Ok(());
        }
        if !mux.push_data(&mut st, id, data) {
            tracing::debug!(
                channel = ch,
                "websocket message for a channel that is not open"
            );
        }
    }
    wait_room(mux, |st| mux.over_cap(st, id))
        .await
        .map_err(|e| e.to_string())
}
