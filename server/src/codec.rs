//! Compressed HTTP bodies: requests may arrive gzip-encoded (a phone on a slow link compresses its
//! push) or lz4-encoded (a desktop, where CPU matters more than bytes: an LZ4 block with a
//! little-endian `u32` size prefix, as the device's cache stores it), and JSON answers above the
//! compression threshold are gzip-encoded for clients that accept it.
//!
//! Decoding is bounded: the decoded size is capped like the raw size, so a small "gzip bomb"
//! cannot make the server allocate gigabytes.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("the gzip body does not decode: {0}")]
    BadGzip(std::io::Error),
    #[error("the decoded body is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the lz4 body does not decode: {0}")]
    BadLz4(String),
    #[error("unsupported Content-Encoding {0:?}: use gzip, lz4 or identity")]
    Unsupported(String),
}

/// What a `Content-Encoding` header asks for.
pub fn decode_body(
    content_encoding: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, CodecError> {
    match content_encoding
        .map(|s| s.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => Ok(None),
        Some("gzip") | Some("x-gzip") => gunzip(body, limit).map(Some),
        Some("lz4") => unlz4(body, limit).map(Some),
        Some(other) => Err(CodecError::Unsupported(other.to_owned())),
    }
}

/// Decodes gzip, refusing output over `limit` bytes.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    GzDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(CodecError::BadGzip)?;
    if out.len() > limit {
        return Err(CodecError::TooLarge { limit });
    }
    Ok(out)
}

/// Decodes a size-prefixed LZ4 block, refusing a declared size over `limit` before allocating.
pub fn unlz4(body: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let prefix: [u8; 4] = body
        .get(..4)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| CodecError::BadLz4("shorter than its size prefix".into()))?;
    let declared = usize::try_from(u32::from_le_bytes(prefix)).unwrap_or(usize::MAX);
    if declared > limit {
        return Err(CodecError::TooLarge { limit });
    }
    lz4_flex::block::decompress_size_prepended(body).map_err(|e| CodecError::BadLz4(e.to_string()))
}

/// Encodes gzip at the default level: the radio is the scarce resource on a phone.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 3), Compression::default());
    encoder.write_all(body)?;
    encoder.finish()
}

/// Whether an `Accept-Encoding` header value accepts gzip (a `q=0` refusal is honoured).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|part| {
        let mut pieces = part.split(';').map(str::trim);
        let coding = pieces.next().unwrap_or_default();
        let refused = pieces.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let body = b"{\"items\":[]}".repeat(100);
        let packed = gzip(&body).unwrap();
        assert!(packed.len() < body.len());
        assert_eq!(
            decode_body(Some("gzip"), &packed, 10_000).unwrap().unwrap(),
            body
        );
        assert!(matches!(
            decode_body(Some("gzip"), &packed, 100),
            Err(CodecError::TooLarge { limit: 100 })
        ));
        assert!(matches!(
            decode_body(Some("gzip"), b"not gzip", 100),
            Err(CodecError::BadGzip(_))
        ));
        assert!(matches!(
            decode_body(Some("br"), b"x", 100),
            Err(CodecError::Unsupported(_))
        ));
        assert_eq!(decode_body(None, b"x", 100).unwrap(), None);
    }

    #[test]
    fn lz4_round_trip_and_limits() {
        let body = b"{\"items\":[]}".repeat(100);
        let packed = lz4_flex::block::compress_prepend_size(&body);
        assert_eq!(
            decode_body(Some("lz4"), &packed, 10_000).unwrap().unwrap(),
            body
        );
        assert!(matches!(
            decode_body(Some("lz4"), &packed, 100),
            Err(CodecError::TooLarge { limit: 100 })
        ));
        assert!(matches!(
            decode_body(Some("lz4"), b"ab", 100),
            Err(CodecError::BadLz4(_))
        ));
        let mut lying = packed.clone();
        lying.truncate(10);
        assert!(matches!(
            decode_body(Some("lz4"), &lying, 10_000),
            Err(CodecError::BadLz4(_))
        ));
    }

    #[test]
    fn accept_encoding_parsing() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("br, gzip;q=0.5"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("br, deflate"));
    }
}
