//! Compression of cached values: the bounded codec and the device's compression policy live in
//! [`kryonix_protocol::codec`], shared with the server (which decodes the same bodies); they are
//! re-exported here so the cache and its callers keep one path for them.

pub use kryonix_protocol::codec::{CodecError, compress_for, decode, encode, encoding_from_tag};

#[cfg(test)]
pub(super) mod tests {
    /// Deterministic bytes that no compressor can shrink.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    }

    pub(crate) fn text(len: usize) -> Vec<u8> {
        b"{\"user\":42,\"name\":\"Ada\",\"tags\":[\"a\",\"b\"]} "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }
}
