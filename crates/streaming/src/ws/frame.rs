//! RFC 6455 frames: parsing and serialisation without I/O.

use bytes::{BufMut, Bytes, BytesMut};

pub const OP_CONTINUATION: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

/// Close status codes used here (RFC 6455 section 7.4.1).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_INVALID_DATA: u16 = 1007;
pub const CLOSE_TOO_BIG: u16 = 1009;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    TooLarge { len: u64, max: usize },
    Malformed(&'static str),
}

impl FrameError {
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => CLOSE_TOO_BIG,
            FrameError::Malformed(_) => CLOSE_PROTOCOL_ERROR,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => write!(
                f,
                "websocket frame of {len} bytes exceeds the limit of {max}"
            ),
            FrameError::Malformed(m) => write!(f, "malformed websocket frame: {m}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses one frame from the front of `buf` (`Ok(None)` while incomplete).
/// `masked` is whether frames must be masked: true when reading what a
/// client sent (RFC 6455 5.1), false on the client side. The length is
/// checked before the payload is awaited.
pub fn parse(
    buf: &[u8],
    max_payload: usize,
    masked: bool,
) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Malformed(
            "reserved bits set without an extension",
        ));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(FrameError::Malformed("fragmented control frame"));
            }
            if b1 & 0x7f > 125 {
                return Err(FrameError::Malformed("control frame longer than 125 bytes"));
            }
        }
        _ => return Err(FrameError::Malformed("unknown opcode")),
    }
    let is_masked = b1 & 0x80 != 0;
    if is_masked != masked {
        return Err(FrameError::Malformed(if masked {
            "client frame not masked"
        } else {
            "server frame masked"
        }));
    }
    let mut pos = 2usize;
    let len = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            pos = 4;
            u16::from_be_bytes([buf[2], buf[3]]) as u64
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            pos = 10;
            let l = u64::from_be_bytes(buf[2..10].try_into().unwrap());
            if l >> 63 != 0 {
                return Err(FrameError::Malformed("64-bit length with the top bit set"));
            }
            l
        }
        l => l as u64,
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let len = len as usize;
    let mask = if masked {
        if buf.len() < pos + 4 {
            return Ok(None);
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < pos + len {
        return Ok(None);
    }
    let mut payload = BytesMut::from(&buf[pos..pos + len]);
    if let Some(m) = mask {
        apply_mask(&mut payload, m);
    }
    if opcode == OP_CLOSE && len == 1 {
        return Err(FrameError::Malformed("close frame with a 1-byte payload"));
    }
    Ok(Some((
        Frame {
            fin,
            opcode,
            payload: payload.freeze(),
        },
        pos + len,
    )))
}

pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    // Eight bytes at a time, then the tail.
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let done = data.len() / 8 * 8;
    for (i, b) in data[done..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends a frame; `mask` is Some on the client side.
pub fn put_frame(out: &mut BytesMut, fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.put_u8(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        l if l < 126 => out.put_u8(m | l as u8),
        l if l <= 0xffff => {
            out.put_u8(m | 126);
            out.put_u16(l as u16);
        }
        l => {
            out.put_u8(m | 127);
            out.put_u64(l as u64);
        }
    }
    match mask {
        Some(k) => {
            out.put_slice(&k);
            let start = out.len();
            out.put_slice(payload);
            apply_mask(&mut out[start..], k);
        }
        None => out.put_slice(payload),
    }
}

/// Appends a final frame whose payload is `head` then `body`, without
/// joining them first.
pub fn put_frame_parts(
    out: &mut BytesMut,
    opcode: u8,
    head: &[u8],
    body: &[u8],
    mask: Option<[u8; 4]>,
) {
    let len = head.len() + body.len();
    out.reserve(len + 14);
    out.put_u8(0x80 | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    match len {
        l if l < 126 => out.put_u8(m | l as u8),
        l if l <= 0xffff => {
            out.put_u8(m | 126);
            out.put_u16(l as u16);
        }
        l => {
            out.put_u8(m | 127);
            out.put_u64(l as u64);
        }
    }
    if let Some(k) = mask {
        out.put_slice(&k);
    }
    let start = out.len();
    out.put_slice(head);
    out.put_slice(body);
    if let Some(k) = mask {
        apply_mask(&mut out[start..], k);
    }
}

/// The payload of a close frame: a status code and a reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    // Control frames carry at most 125 bytes.
    let mut r = reason.as_bytes();
    if r.len() > 123 {
        r = &r[..123];
        while std::str::from_utf8(r).is_err() {
            r = &r[..r.len() - 1];
        }
    }
    p.extend_from_slice(r);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_examples() {
        // RFC 6455 5.7: a single-frame unmasked text message "Hello".
        let f = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (fr, n) = parse(&f, 1024, false).unwrap().unwrap();
        assert_eq!(
            (n, fr.fin, fr.opcode, &fr.payload[..]),
            (7, true, OP_TEXT, &b"Hello"[..])
        );
        // ... and the masked one.
        let f = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (fr, _) = parse(&f, 1024, true).unwrap().unwrap();
        assert_eq!(&fr.payload[..], b"Hello");
        // A fragmented unmasked text message.
        let (fr, _) = parse(&[0x01, 0x03, 0x48, 0x65, 0x6c], 1024, false)
            .unwrap()
            .unwrap();
        assert!(!fr.fin);
        // 256 bytes binary in a single unmasked frame uses the 16-bit length.
        let mut b = BytesMut::new();
        put_frame(&mut b, true, OP_BINARY, &[7u8; 256], None);
        assert_eq!(&b[..4], &[0x82, 0x7e, 0x01, 0x00]);
        let mut b = BytesMut::new();
        put_frame(&mut b, true, OP_BINARY, &[7u8; 65536], None);
        assert_eq!(&b[..10], &[0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn parts_equal_whole() {
        for len in [0usize, 5, 124, 125, 300, 70000] {
            let body = vec![3u8; len];
            let mut whole = vec![1u8];
            whole.extend_from_slice(&body);
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            put_frame(&mut a, true, OP_BINARY, &whole, Some([5, 6, 7, 8]));
            put_frame_parts(&mut b, OP_BINARY, &[1], &body, Some([5, 6, 7, 8]));
            assert_eq!(a, b, "{len}");
        }
    }

    #[test]
    fn round_trip_masked() {
        let mut b = BytesMut::new();
        put_frame(&mut b, true, OP_BINARY, b"\x01abc", Some([1, 2, 3, 4]));
        let (fr, n) = parse(&b, 1024, true).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(&fr.payload[..], b"\x01abc");
    }

    #[test]
    fn refusals() {
        assert!(
            parse(&[0x81, 0x05], 1024, true).is_err(),
            "unmasked from a client"
        );
        assert!(
            parse(&[0xc1, 0x80, 0, 0, 0, 0], 1024, true).is_err(),
            "rsv1"
        );
        assert!(
            parse(&[0x83, 0x80, 0, 0, 0, 0], 1024, true).is_err(),
            "opcode 3"
        );
        assert!(
            parse(&[0x09, 0x80, 0, 0, 0, 0], 1024, true).is_err(),
            "fragmented ping"
        );
        assert!(
            parse(&[0x89, 0xfe, 0, 200], 1024, true).is_err(),
            "long ping"
        );
        assert!(
            parse(&[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0], 1024, true).is_err(),
            "top bit"
        );
        assert_eq!(
            parse(&[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0], 1024, true).unwrap_err(),
            FrameError::TooLarge {
                len: 1 << 32,
                max: 1024
            }
        );
        assert!(
            parse(&[0x88, 0x81, 0, 0, 0, 0, 3], 1024, true).is_err(),
            "1-byte close"
        );
    }
}
