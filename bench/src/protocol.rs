//! The request/reply framing the `rate` and `latency` clients speak and every
//! `serve` mode that reads (echo, sink) answers.
//!
//! A request is `request_len` bytes: a 12-byte header followed by zero
//! padding. Header: `"L4R"`, a flags byte, `request_len` (u32 BE, header
//! included), `reply_len` (u32 BE). The server answers each complete request
//! with `reply_len` zero bytes, and closes the connection after the reply if
//! flag `CLOSE` is set.
//!
//! Why a header rather than plain echo: the reply size can differ from the
//! request size (`rate --request 100 --reply 16KiB`), and the server can close
//! first, which leaves TIME_WAIT on the server side rather than eating the
//! client's ephemeral ports at tens of thousands of connections per second.
//! When `reply_len == request_len` a plain echo server produces exactly the
//! bytes the client waits for, so `latency` also works against third-party
//! echo upstreams.

/// First three header bytes.
pub const MAGIC: [u8; 3] = *b"L4R";
/// Size of the header; the smallest request.
pub const HEADER_LEN: usize = 12;
/// Flags bit: close the connection once this request's reply is written.
pub const FLAG_CLOSE: u8 = 0x01;
/// Largest request or reply a server accepts; bounds the work one header can ask for.
pub const MAX_LEN: u32 = 64 << 20;

/// Builds one request of `request_len` bytes (at least [`HEADER_LEN`]).
pub fn encode_request(request_len: u32, reply_len: u32, close: bool) -> Vec<u8> {
    debug_assert!(request_len as usize >= HEADER_LEN);
    let mut v = vec![0u8; request_len as usize];
    v[..3].copy_from_slice(&MAGIC);
    v[3] = if close { FLAG_CLOSE } else { 0 };
    v[4..8].copy_from_slice(&request_len.to_be_bytes());
    v[8..12].copy_from_slice(&reply_len.to_be_bytes());
    v
}

/// How a server should treat a connection, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    NeedMore,
    /// Framed requests: answer each one.
    Framed,
    /// Anything else: the serve mode's raw behaviour (echo, discard).
    Raw,
}

/// Decides on the first mismatching byte so raw clients are never stalled.
pub fn classify(buf: &[u8]) -> Kind {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Kind::Raw;
    }
    if buf.len() < 4 {
        return Kind::NeedMore;
    }
    if buf[3] & !FLAG_CLOSE == 0 {
        Kind::Framed
    } else {
        Kind::Raw
    }
}

/// Result of feeding bytes to a [`RequestParser`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Reply bytes now owed to the client, in order.
    pub reply_bytes: u64,
    /// A request asked for the connection to be closed after its reply;
    /// bytes after that request were ignored.
    pub close: bool,
}

/// Incremental server-side parser: requests may arrive split across reads
/// or many to a read (pipelined `latency` traffic).
#[derive(Debug, Default)]
pub struct RequestParser {
    hdr: [u8; HEADER_LEN],
    have: usize,
    /// Payload bytes of the current request still to skip.
    skip: u64,
    reply: u32,
    close: bool,
}

impl RequestParser {
    pub fn feed(&mut self, mut input: &[u8]) -> Result<Fed, String> {
        let mut fed = Fed::default();
        while !input.is_empty() {
            if self.have < HEADER_LEN {
                let n = (HEADER_LEN - self.have).min(input.len());
                self.hdr[self.have..self.have + n].copy_from_slice(&input[..n]);
                self.have += n;
                input = &input[n..];
                if self.have < HEADER_LEN {
                    break;
                }
                if self.hdr[..3] != MAGIC || self.hdr[3] & !FLAG_CLOSE != 0 {
                    return Err("bad request header".into());
                }
                let req = u32::from_be_bytes(self.hdr[4..8].try_into().unwrap());
                let rep = u32::from_be_bytes(self.hdr[8..12].try_into().unwrap());
                if (req as usize) < HEADER_LEN || req > MAX_LEN || rep > MAX_LEN {
                    return Err(format!(
                        "request header out of range: request {req}, reply {rep}"
                    ));
                }
                self.skip = req as u64 - HEADER_LEN as u64;
                self.reply = rep;
                self.close = self.hdr[3] & FLAG_CLOSE != 0;
            }
            let n = (self.skip as usize).min(input.len());
            self.skip -= n as u64;
            input = &input[n..];
            if self.skip == 0 {
                fed.reply_bytes += self.reply as u64;
                self.have = 0;
                if self.close {
                    fed.close = true;
                    break;
                }
            }
        }
        Ok(fed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let r = encode_request(100, 300, true);
        assert_eq!(r.len(), 100);
        assert_eq!(&r[..12], &[b'L', b'4', b'R', 1, 0, 0, 0, 100, 0, 0, 1, 44]);
        assert!(r[12..].iter().all(|&b| b == 0));
        assert_eq!(classify(&r), Kind::Framed);
        assert_eq!(classify(&r[..2]), Kind::NeedMore);
        assert_eq!(classify(&[0u8; 8]), Kind::Raw);
        assert_eq!(classify(b"L4X"), Kind::Raw);
        assert_eq!(classify(b"L4R\x80"), Kind::Raw);
    }

    #[test]
    fn byte_at_a_time() {
        let r = encode_request(20, 7, false);
        let mut p = RequestParser::default();
        let mut owed = 0;
        for b in &r {
            let f = p.feed(std::slice::from_ref(b)).unwrap();
            assert!(!f.close);
            owed += f.reply_bytes;
        }
        assert_eq!(owed, 7);
    }

    #[test]
    fn pipelined_in_one_read() {
        let mut buf = Vec::new();
        for _ in 0..5 {
            buf.extend(encode_request(12, 100, false));
        }
        buf.extend(encode_request(40, 1, false));
        let mut p = RequestParser::default();
        assert_eq!(
            p.feed(&buf).unwrap(),
            Fed {
                reply_bytes: 501,
                close: false
            }
        );
    }

    #[test]
    fn close_stops_parsing() {
        let mut buf = encode_request(16, 10, true);
        buf.extend(encode_request(16, 10, false));
        let mut p = RequestParser::default();
        assert_eq!(
            p.feed(&buf).unwrap(),
            Fed {
                reply_bytes: 10,
                close: true
            }
        );
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        let mut p = RequestParser::default();
        assert!(p.feed(&[0u8; 12]).is_err());
        let mut p = RequestParser::default();
        let mut big = encode_request(12, 1, false);
        big[8..12].copy_from_slice(&(MAX_LEN + 1).to_be_bytes());
        assert!(p.feed(&big).is_err());
        let mut p = RequestParser::default();
        let mut short = encode_request(12, 1, false);
        short[4..8].copy_from_slice(&4u32.to_be_bytes());
        assert!(p.feed(&short).is_err());
    }
}
