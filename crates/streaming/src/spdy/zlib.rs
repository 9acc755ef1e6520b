//! SPDY/3 name/value header blocks and their zlib compression.
//!
//! Each direction of a connection has one zlib stream primed with the SPDY
//! dictionary; every block ends with a sync flush. Decompression is bounded:
//! a block that inflates past the limit (a "zlib bomb") is refused as soon as
//! the limit is crossed, so memory never exceeds it.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dict::dictionary;

/// Decoded headers: lower-case names in wire order, values as sent (NUL
/// separates multiple values of one name).
pub type Headers = Vec<(String, String)>;

pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    TooLarge(usize),
    Corrupt(String),
    Malformed(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::TooLarge(max) => {
                write!(f, "header block inflates past the limit of {max} bytes")
            }
            HeaderError::Corrupt(e) => write!(f, "header block is not valid zlib data: {e}"),
            HeaderError::Malformed(m) => write!(f, "malformed header block: {m}"),
        }
    }
}

impl std::error::Error for HeaderError {}

pub struct Inflater {
    z: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Self {
        Inflater {
            z: Decompress::new(true),
        }
    }

    /// Inflates one compressed block, refusing more than `max` bytes of output.
    pub fn inflate(&mut self, input: &[u8], max: usize) -> Result<Vec<u8>, HeaderError> {
        let mut out: Vec<u8> = Vec::new();
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(HeaderError::TooLarge(max));
                }
                out.reserve_exact((max + 1 - out.len()).min(4096));
            }
            let (in0, out0) = (self.z.total_in(), self.z.total_out());
            let status =
                match self
                    .z
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                {
                    Ok(s) => s,
                    Err(e) if e.needs_dictionary().is_some() => {
                        // The zlib header and dictionary id were consumed.
                        consumed += (self.z.total_in() - in0) as usize;
                        self.z
                            .set_dictionary(dictionary())
                            .map_err(|e| HeaderError::Corrupt(e.to_string()))?;
                        continue;
                    }
                    Err(e) => return Err(HeaderError::Corrupt(e.to_string())),
                };
            consumed += (self.z.total_in() - in0) as usize;
            let produced = self.z.total_out() - out0;
            if out.len() > max {
                return Err(HeaderError::TooLarge(max));
            }
            if status == Status::StreamEnd {
                return Err(HeaderError::Corrupt(
                    "zlib stream ended inside a SPDY connection".into(),
                ));
            }
            let spare = out.len() < out.capacity();
            if consumed == input.len() && produced == 0 && spare {
                return Ok(out);
            }
            if produced == 0 && self.z.total_in() == in0 && spare {
                // No progress with input and room left: the block is truncated.
                if consumed == input.len() {
                    return Ok(out);
                }
                return Err(HeaderError::Corrupt("inflate made no progress".into()));
            }
        }
    }
}

pub struct Deflater {
    z: Compress,
    primed: bool,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Self {
        Deflater {
            z: Compress::new(Compression::default(), true),
            primed: false,
        }
    }

    pub fn deflate(&mut self, input: &[u8]) -> Vec<u8> {
        if !self.primed {
            self.z
                .set_dictionary(dictionary())
                .expect("zlib accepts the SPDY dictionary");
            self.primed = true;
        }
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut consumed = 0usize;
        loop {
            if out.len() == out.capacity() {
                out.reserve(1024);
            }
            let in0 = self.z.total_in();
            self.z
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .expect("deflate of memory cannot fail");
            consumed += (self.z.total_in() - in0) as usize;
            // A sync flush is complete once it left spare room in the output.
            if consumed == input.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// Serialises headers into an uncompressed SPDY/3 name/value block.
pub fn encode_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (n, v) in headers {
        let n = n.to_ascii_lowercase();
        b.extend_from_slice(&(n.len() as u32).to_be_bytes());
        b.extend_from_slice(n.as_bytes());
        b.extend_from_slice(&(v.len() as u32).to_be_bytes());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// Parses an uncompressed name/value block. Every length is checked against
/// what remains, so a hostile count or length cannot allocate.
pub fn decode_block(b: &[u8], max_pairs: usize) -> Result<Headers, HeaderError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], HeaderError> {
        if b.len() < n {
            return Err(HeaderError::Malformed(
                "a length runs past the end of the block",
            ));
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn len(b: &mut &[u8]) -> Result<usize, HeaderError> {
        let l = take(b, 4)?;
        Ok(u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
    }
    let mut b = b;
    let n = len(&mut b)?;
    if n > max_pairs {
        return Err(HeaderError::Malformed("too many headers"));
    }
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let nl = len(&mut b)?;
        let name = take(&mut b, nl)?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty header name"));
        }
        let vl = len(&mut b)?;
        let value = take(&mut b, vl)?;
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        out.push((name, String::from_utf8_lossy(value).into_owned()));
    }
    if !b.is_empty() {
        return Err(HeaderError::Malformed("bytes after the last header"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_across_blocks() {
        let mut d = Deflater::new();
        let mut i = Inflater::new();
        for k in 0..5 {
            let port = format!("{}", 8000 + k);
            let block =
                encode_block(&[("streamType", "data"), ("port", &port), ("requestID", "0")]);
            let z = d.deflate(&block);
            let plain = i.inflate(&z, 4096).unwrap();
            let h = decode_block(&plain, 64).unwrap();
            assert_eq!(header(&h, "streamtype"), Some("data"));
            assert_eq!(header(&h, "port"), Some(port.as_str()));
        }
    }

    #[test]
    fn first_block_names_the_dictionary() {
        // FDICT set in the zlib header, then the dictionary's Adler-32.
        let z = Deflater::new().deflate(&encode_block(&[("a", "b")]));
        assert_eq!(z[1] & 0x20, 0x20);
        let adler = u32::from_be_bytes([z[2], z[3], z[4], z[5]]);
        assert_eq!(adler, 0xe3c6_a7c2);
    }

    #[test]
    fn zlib_bomb_is_refused() {
        let mut d = Deflater::new();
        let big = vec![0u8; 8 << 20];
        let z = d.deflate(&big);
        assert!(z.len() < 64 << 10, "{}", z.len());
        assert_eq!(
            Inflater::new().inflate(&z, 64 << 10).unwrap_err(),
            HeaderError::TooLarge(64 << 10)
        );
    }

    #[test]
    fn hostile_blocks() {
        assert!(decode_block(&[0xff, 0xff, 0xff, 0xff], 100).is_err());
        assert!(decode_block(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff], 100).is_err());
        assert!(decode_block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], 100).is_err());
        assert!(Inflater::new().inflate(b"not zlib at all", 1000).is_err());
    }
}
