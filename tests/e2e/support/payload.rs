//! Deterministic pseudo-random payloads, sent in random-sized writes and checked by SHA-256.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A deterministic pseudo-random byte stream (xorshift64*), cheap even in debug builds.
pub struct Payload {
    state: u64,
}

impl Payload {
    pub fn new(seed: u64) -> Payload {
        Payload {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Writes `len` payload bytes from `seed` to `w` in random-sized writes; returns their SHA-256.
pub async fn send_payload(w: &mut (impl AsyncWriteExt + Unpin), seed: u64, len: u64) -> [u8; 32] {
    try_send_payload(w, seed, len).await.expect("write payload")
}

/// Like `send_payload`, but a write error is returned rather than a panic (for load where a
/// broken connection is an outcome to count, not a test failure).
pub async fn try_send_payload(
    w: &mut (impl AsyncWriteExt + Unpin),
    seed: u64,
    len: u64,
) -> std::io::Result<[u8; 32]> {
    let mut payload = Payload::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    let mut sizes = Payload::new(seed ^ 0x5555);
    while left > 0 {
        let mut size_bytes = [0u8; 4];
        sizes.fill(&mut size_bytes);
        let n = (u32::from_le_bytes(size_bytes) as u64 % buf.len() as u64 + 1).min(left) as usize;
        payload.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

/// Reads to EOF; returns (bytes read, SHA-256 of them).
pub async fn receive_all(r: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(u64, [u8; 32])> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hasher.finalize().into()));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// SHA-256 of `len` payload bytes from `seed`, as `send_payload` produces them.
pub fn payload_digest(seed: u64, len: u64) -> [u8; 32] {
    let mut payload = Payload::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    let mut sizes = Payload::new(seed ^ 0x5555);
    while left > 0 {
        let mut size_bytes = [0u8; 4];
        sizes.fill(&mut size_bytes);
        let n = (u32::from_le_bytes(size_bytes) as u64 % buf.len() as u64 + 1).min(left) as usize;
        payload.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    hasher.finalize().into()
}
