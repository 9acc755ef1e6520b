//! SPDY/3.1 frames: parsing and serialisation without I/O.
//!
//! Header blocks stay compressed here; `zlib.rs` holds the per-connection
//! compression contexts, which must see blocks in wire order.

use bytes::{BufMut, Bytes, BytesMut};

pub const VERSION: u16 = 3;
pub const FRAME_HEADER_LEN: usize = 8;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

pub const SETTINGS_MAX_CONCURRENT_STREAMS: u32 = 4;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream_id: u32,
        assoc_id: u32,
        priority: u8,
        flags: u8,
        block: Bytes,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        block: Bytes,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        block: Bytes,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    /// A control frame of a type SPDY/3.1 does not know (or no longer uses): ignored.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field exceeds the configured maximum: the connection cannot continue.
    TooLarge { len: usize, max: usize },
    /// A control frame of another SPDY version.
    Version(u16),
    /// A frame whose fixed fields do not fit its length, or other malformation.
    Malformed(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            FrameError::Version(v) => write!(f, "unsupported SPDY version {v}"),
            FrameError::Malformed(m) => write!(f, "malformed frame: {m}"),
        }
    }
}

impl std::error::Error for FrameError {}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The payload length announced by a frame header (the first 8 bytes).
pub fn payload_len(header: &[u8; FRAME_HEADER_LEN]) -> usize {
    (u32::from_be_bytes([0, header[5], header[6], header[7]])) as usize
}

/// Parses one frame from the front of `buf`. Returns `Ok(None)` while the
/// frame is incomplete, else the frame and the bytes it used. The length is
/// checked against `max_payload` before anything else, so a reader never
/// buffers more than that for one frame.
pub fn parse(buf: &[u8], max_payload: usize) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let hdr: &[u8; FRAME_HEADER_LEN] = buf[..FRAME_HEADER_LEN].try_into().unwrap();
    let len = payload_len(hdr);
    if len > max_payload {
        return Err(FrameError::TooLarge {
            len,
            max: max_payload,
        });
    }
    if buf.len() < FRAME_HEADER_LEN + len {
        return Ok(None);
    }
    let flags = hdr[4];
    let p = &buf[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len];
    let frame = parse_body(hdr, flags, p)?;
    Ok(Some((frame, FRAME_HEADER_LEN + len)))
}

/// Parses a frame from its 8-byte header and its complete payload.
pub fn parse_body(hdr: &[u8; FRAME_HEADER_LEN], flags: u8, p: &[u8]) -> Result<Frame, FrameError> {
    if hdr[0] & 0x80 == 0 {
        let stream_id = be32(&hdr[..4]) & 0x7fff_ffff;
        if stream_id == 0 {
            return Err(FrameError::Malformed("data frame on stream 0"));
        }
        return Ok(Frame::Data {
            stream_id,
            fin: flags & FLAG_FIN != 0,
            data: Bytes::copy_from_slice(p),
        });
    }
    let version = u16::from_be_bytes([hdr[0], hdr[1]]) & 0x7fff;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = u16::from_be_bytes([hdr[2], hdr[3]]);
    let need = |n: usize, what: &'static str| {
        if p.len() < n {
            Err(FrameError::Malformed(what))
        } else {
            Ok(())
        }
    };
    let exact = |n: usize, what: &'static str| {
        if p.len() != n {
            Err(FrameError::Malformed(what))
        } else {
            Ok(())
        }
    };
    let nonzero = |id: u32, what: &'static str| {
        if id == 0 {
            Err(FrameError::Malformed(what))
        } else {
            Ok(id)
        }
    };
    Ok(match kind {
        TYPE_SYN_STREAM => {
            need(10, "SYN_STREAM shorter than 10 bytes")?;
            Frame::SynStream {
                stream_id: nonzero(be32(&p[0..4]) & 0x7fff_ffff, "SYN_STREAM for stream 0")?,
                assoc_id: be32(&p[4..8]) & 0x7fff_ffff,
                priority: p[8] >> 5,
                flags,
                block: Bytes::copy_from_slice(&p[10..]),
            }
        }
        TYPE_SYN_REPLY => {
            need(4, "SYN_REPLY shorter than 4 bytes")?;
            Frame::SynReply {
                stream_id: nonzero(be32(&p[0..4]) & 0x7fff_ffff, "SYN_REPLY for stream 0")?,
                fin: flags & FLAG_FIN != 0,
                block: Bytes::copy_from_slice(&p[4..]),
            }
        }
        TYPE_RST_STREAM => {
            exact(8, "RST_STREAM is not 8 bytes")?;
            Frame::RstStream {
                stream_id: nonzero(be32(&p[0..4]) & 0x7fff_ffff, "RST_STREAM for stream 0")?,
                status: be32(&p[4..8]),
            }
        }
        TYPE_SETTINGS => {
            need(4, "SETTINGS shorter than 4 bytes")?;
            let n = be32(&p[0..4]) as usize;
            if p.len() - 4
                != n.checked_mul(8)
                    .ok_or(FrameError::Malformed("SETTINGS count"))?
            {
                return Err(FrameError::Malformed(
                    "SETTINGS count does not match its length",
                ));
            }
            let entries = p[4..]
                .chunks_exact(8)
                .map(|e| {
                    (
                        e[0],
                        u32::from_be_bytes([0, e[1], e[2], e[3]]),
                        be32(&e[4..8]),
                    )
                })
                .collect();
            Frame::Settings { entries }
        }
        TYPE_PING => {
            exact(4, "PING is not 4 bytes")?;
            Frame::Ping { id: be32(p) }
        }
        TYPE_GOAWAY => {
            exact(8, "GOAWAY is not 8 bytes")?;
            Frame::GoAway {
                last_good: be32(&p[0..4]) & 0x7fff_ffff,
                status: be32(&p[4..8]),
            }
        }
        TYPE_HEADERS => {
            need(4, "HEADERS shorter than 4 bytes")?;
            Frame::Headers {
                stream_id: nonzero(be32(&p[0..4]) & 0x7fff_ffff, "HEADERS for stream 0")?,
                fin: flags & FLAG_FIN != 0,
                block: Bytes::copy_from_slice(&p[4..]),
            }
        }
        TYPE_WINDOW_UPDATE => {
            exact(8, "WINDOW_UPDATE is not 8 bytes")?;
            let delta = be32(&p[4..8]) & 0x7fff_ffff;
            if delta == 0 {
                return Err(FrameError::Malformed("WINDOW_UPDATE with a delta of 0"));
            }
            Frame::WindowUpdate {
                stream_id: be32(&p[0..4]) & 0x7fff_ffff,
                delta,
            }
        }
        kind => Frame::Unknown { kind },
    })
}

fn control_header(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | (len as u32 & 0x00ff_ffff));
}

/// Appends a data frame (the caller keeps `data` under 2^24 bytes).
pub fn put_data(out: &mut BytesMut, stream_id: u32, fin: bool, data: &[u8]) {
    out.put_u32(stream_id & 0x7fff_ffff);
    out.put_u32(((if fin { FLAG_FIN } else { 0 } as u32) << 24) | data.len() as u32);
    out.put_slice(data);
}

pub fn put_syn_stream(out: &mut BytesMut, stream_id: u32, flags: u8, block: &[u8]) {
    control_header(out, TYPE_SYN_STREAM, flags, 10 + block.len());
    out.put_u32(stream_id);
    out.put_u32(0);
    out.put_u16(0);
    out.put_slice(block);
}

pub fn put_syn_reply(out: &mut BytesMut, stream_id: u32, fin: bool, block: &[u8]) {
    control_header(
        out,
        TYPE_SYN_REPLY,
        if fin { FLAG_FIN } else { 0 },
        4 + block.len(),
    );
    out.put_u32(stream_id);
    out.put_slice(block);
}

pub fn put_headers(out: &mut BytesMut, stream_id: u32, fin: bool, block: &[u8]) {
    control_header(
        out,
        TYPE_HEADERS,
        if fin { FLAG_FIN } else { 0 },
        4 + block.len(),
    );
    out.put_u32(stream_id);
    out.put_slice(block);
}

pub fn put_rst(out: &mut BytesMut, stream_id: u32, status: u32) {
    control_header(out, TYPE_RST_STREAM, 0, 8);
    out.put_u32(stream_id);
    out.put_u32(status);
}

pub fn put_settings(out: &mut BytesMut, entries: &[(u8, u32, u32)]) {
    control_header(out, TYPE_SETTINGS, 0, 4 + 8 * entries.len());
    out.put_u32(entries.len() as u32);
    for &(flags, id, value) in entries {
        out.put_u32(((flags as u32) << 24) | (id & 0x00ff_ffff));
        out.put_u32(value);
    }
}

pub fn put_ping(out: &mut BytesMut, id: u32) {
    control_header(out, TYPE_PING, 0, 4);
    out.put_u32(id);
}

pub fn put_goaway(out: &mut BytesMut, last_good: u32, status: u32) {
    control_header(out, TYPE_GOAWAY, 0, 8);
    out.put_u32(last_good);
    out.put_u32(status);
}

pub fn put_window_update(out: &mut BytesMut, stream_id: u32, delta: u32) {
    control_header(out, TYPE_WINDOW_UPDATE, 0, 8);
    out.put_u32(stream_id);
    out.put_u32(delta);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(b: &[u8]) -> Frame {
        let (f, n) = parse(b, 1 << 20).unwrap().unwrap();
        assert_eq!(n, b.len());
        f
    }

    #[test]
    fn round_trips() {
        let mut b = BytesMut::new();
        put_data(&mut b, 5, true, b"hello");
        assert_eq!(
            one(&b),
            Frame::Data {
                stream_id: 5,
                fin: true,
                data: Bytes::from_static(b"hello")
            }
        );
        // The layout from the draft: C bit clear, 31-bit stream id, flags, 24-bit length.
        assert_eq!(&b[..8], &[0, 0, 0, 5, 1, 0, 0, 5]);

        let mut b = BytesMut::new();
        put_syn_stream(&mut b, 1, FLAG_FIN, b"xyz");
        assert_eq!(&b[..8], &[0x80, 3, 0, 1, 1, 0, 0, 13]);
        assert_eq!(
            one(&b),
            Frame::SynStream {
                stream_id: 1,
                assoc_id: 0,
                priority: 0,
                flags: FLAG_FIN,
                block: Bytes::from_static(b"xyz")
            }
        );

        for (f, put) in [
            (
                Frame::RstStream {
                    stream_id: 3,
                    status: rst::CANCEL,
                },
                {
                    let mut b = BytesMut::new();
                    put_rst(&mut b, 3, rst::CANCEL);
                    b
                },
            ),
            (Frame::Ping { id: 7 }, {
                let mut b = BytesMut::new();
                put_ping(&mut b, 7);
                b
            }),
            (
                Frame::GoAway {
                    last_good: 9,
                    status: goaway::OK,
                },
                {
                    let mut b = BytesMut::new();
                    put_goaway(&mut b, 9, goaway::OK);
                    b
                },
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 0,
                    delta: 1000,
                },
                {
                    let mut b = BytesMut::new();
                    put_window_update(&mut b, 0, 1000);
                    b
                },
            ),
            (
                Frame::Settings {
                    entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 18)],
                },
                {
                    let mut b = BytesMut::new();
                    put_settings(&mut b, &[(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 18)]);
                    b
                },
            ),
        ] {
            assert_eq!(one(&put), f);
        }
    }

    #[test]
    fn incomplete_and_limits() {
        let mut b = BytesMut::new();
        put_data(&mut b, 1, false, &[0u8; 100]);
        assert_eq!(parse(&b[..50], 1 << 20).unwrap(), None);
        assert_eq!(
            parse(&b, 99).unwrap_err(),
            FrameError::TooLarge { len: 100, max: 99 }
        );
        // The length is checked from the header alone.
        assert!(parse(&b[..8], 99).is_err());
    }

    #[test]
    fn malformed() {
        // Version 2 control frame.
        assert_eq!(
            parse(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1], 64).unwrap_err(),
            FrameError::Version(2)
        );
        // PING with 3 bytes.
        assert!(matches!(
            parse(&[0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1], 64),
            Err(FrameError::Malformed(_))
        ));
        // SETTINGS whose count disagrees with the length.
        assert!(matches!(
            parse(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 9], 64),
            Err(FrameError::Malformed(_))
        ));
        // Data on stream 0.
        assert!(matches!(
            parse(&[0, 0, 0, 0, 0, 0, 0, 0], 64),
            Err(FrameError::Malformed(_))
        ));
        // An unknown control type is skipped, not an error.
        assert_eq!(
            parse(&[0x80, 3, 0, 10, 0, 0, 0, 1, 0], 64)
                .unwrap()
                .unwrap()
                .0,
            Frame::Unknown { kind: 10 }
        );
    }
}
