//! The bounded gzip/lz4 codec both sides use: for cached values and stored rows on the device, for
//! request and answer bodies over HTTP in both directions.
//!
//! The choice follows the device: gzip on phones and tablets, where the radio and the flash are
//! the scarce resources and the extra CPU of deflate pays for itself, and LZ4 on desktops, where
//! bytes are cheap and CPU time is what the user notices. Small values (up to
//! [`COMPRESSION_THRESHOLD`] bytes) are never compressed: the headers of either format eat most of
//! the gain and every read would pay the decoder's start-up cost for nothing.
//!
//! The encoding always travels beside the bytes as an explicit tag (a storage column, a
//! `Content-Encoding` header), never guessed from the content, and decoding takes a length limit:
//! a corrupt row or a hostile body must not be able to make a phone or the server allocate
//! gigabytes (a "decompression bomb"). The LZ4 size prefix is checked before the decoder
//! allocates; gzip is read at most one byte past the limit.

use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

use crate::profile::{COMPRESSION_THRESHOLD, DeviceClass, Encoding};

/// Why bytes could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown encoding tag {0}: expected 0 (identity), 1 (gzip) or 2 (lz4)")]
    UnknownEncoding(i64),
    #[error("unsupported Content-Encoding {0:?}: use gzip, lz4 or identity")]
    UnsupportedContentEncoding(String),
    #[error(
        "{} data decodes to more than {max} bytes; refused as a possible decompression bomb",
        .encoding.as_str()
    )]
    TooLarge { encoding: Encoding, max: usize },
    #[error("{} data is corrupt: {reason}", .encoding.as_str())]
    Corrupt { encoding: Encoding, reason: String },
    #[error("{} encoder failed: {reason}", .encoding.as_str())]
    Encode { encoding: Encoding, reason: String },
}

/// The encoding stored under `tag` in a storage column.
pub fn encoding_from_tag(tag: i64) -> Result<Encoding, CodecError> {
    u8::try_from(tag)
        .ok()
        .and_then(Encoding::from_tag)
        .ok_or(CodecError::UnknownEncoding(tag))
}

/// The encoding an HTTP `Content-Encoding` value names: `gzip` (or its old alias `x-gzip`),
/// `lz4`, or `identity`; an absent or empty header is `identity`. Case and surrounding spaces do
/// not matter, as HTTP content codings are case-insensitive.
pub fn content_encoding(value: Option<&str>) -> Result<Encoding, CodecError> {
    match value.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") => Ok(Encoding::Identity),
        Some("x-gzip") => Ok(Encoding::Gzip),
        Some(name) => name
            .parse()
            .map_err(|_| CodecError::UnsupportedContentEncoding(name.to_owned())),
    }
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

/// Encodes `data` with `encoding`, whatever its size.
pub fn encode(encoding: Encoding, data: &[u8]) -> Result<Vec<u8>, CodecError> {
    match encoding {
        Encoding::Identity => Ok(data.to_vec()),
        Encoding::Gzip => {
            // Default level: on a phone the radio, not the CPU, is the scarce resource.
            let mut encoder = GzEncoder::new(
                Vec::with_capacity(data.len() / 2 + 32),
                Compression::default(),
            );
            encoder
                .write_all(data)
                .and_then(|()| encoder.finish())
                .map_err(|e| CodecError::Encode {
                    encoding,
                    reason: e.to_string(),
                })
        }
        Encoding::Lz4 => Ok(lz4_flex::block::compress_prepend_size(data)),
    }
}

/// Decodes `data`, refusing to produce more than `max_len` bytes.
pub fn decode(encoding: Encoding, data: &[u8], max_len: usize) -> Result<Vec<u8>, CodecError> {
    let too_large = || CodecError::TooLarge {
        encoding,
        max: max_len,
    };
    match encoding {
        Encoding::Identity => {
            if data.len() > max_len {
                return Err(too_large());
            }
            Ok(data.to_vec())
        }
        Encoding::Gzip => {
            // A guess at the decoded size saves regrowing the buffer; bounded by the limit so a
            // small hostile body cannot reserve much.
            let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(max_len));
            // Read at most one byte past the limit: enough to tell "too large" from "fits",
            // without ever inflating the rest of a bomb.
            let limit = u64::try_from(max_len).unwrap_or(u64::MAX).saturating_add(1);
            GzDecoder::new(data)
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| CodecError::Corrupt {
                    encoding,
                    reason: e.to_string(),
                })?;
            if out.len() > max_len {
                return Err(too_large());
            }
            Ok(out)
        }
        Encoding::Lz4 => {
            // The block format carries the decoded size up front; check it before the decoder
            // allocates a buffer of that size.
            let prefix = data
                .get(..4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .ok_or_else(|| CodecError::Corrupt {
                    encoding,
                    reason: "shorter than its 4-byte length prefix".to_owned(),
                })?;
            let declared = usize::try_from(u32::from_le_bytes(prefix)).unwrap_or(usize::MAX);
            if declared > max_len {
                return Err(too_large());
            }
            lz4_flex::block::decompress_size_prepended(data).map_err(|e| CodecError::Corrupt {
                encoding,
                reason: e.to_string(),
            })
        }
    }
}

/// Compresses `value` the way a device of class `device` stores and sends it.
///
/// Returns [`Encoding::Identity`] and a copy of the value when it is at most
/// [`COMPRESSION_THRESHOLD`] bytes or when compression would not make it smaller (already
/// compressed media, random tokens), so a stored value is never larger than it has to be.
pub fn compress_for(device: DeviceClass, value: &[u8]) -> (Encoding, Vec<u8>) {
    if value.len() <= COMPRESSION_THRESHOLD {
        return (Encoding::Identity, value.to_vec());
    }
    let encoding = device.compression();
    match encode(encoding, value) {
        Ok(compressed) if compressed.len() < value.len() => (encoding, compressed),
        // Not smaller, or the encoder failed (it writes to memory, so it cannot in practice):
        // storing the value as it is is always correct.
        _ => (Encoding::Identity, value.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic bytes that no compressor can shrink.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
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

    fn text(len: usize) -> Vec<u8> {
        b"{\"user\":42,\"name\":\"Ada\",\"tags\":[\"a\",\"b\"]} "
            .iter()
            .copied()
            .cycle()
            .take(len)
            .collect()
    }

    const SIZES: [usize; 9] = [0, 1, 1023, 1024, 1025, 1026, 4096, 65_537, 1 << 20];

    #[test]
    fn round_trip_around_the_threshold_is_bit_exact() {
        for device in [
            DeviceClass::Phone,
            DeviceClass::Tablet,
            DeviceClass::Desktop,
        ] {
            for len in SIZES {
                for (kind, value) in [("text", text(len)), ("noise", noise(len, len as u64))] {
                    let (encoding, stored) = compress_for(device, &value);
                    let expected = if len <= COMPRESSION_THRESHOLD || kind == "noise" {
                        Encoding::Identity
                    } else {
                        device.compression()
                    };
                    assert_eq!(encoding, expected, "{device:?} {kind} {len}");
                    if encoding != Encoding::Identity {
                        assert!(stored.len() < value.len(), "{device:?} {kind} {len}");
                    }
                    let back = decode(encoding, &stored, len).unwrap();
                    assert!(back == value, "{device:?} {kind} {len}: not bit-exact");
                }
            }
        }
    }

    #[test]
    fn explicit_encodings_round_trip_even_when_they_grow() {
        for encoding in [Encoding::Identity, Encoding::Gzip, Encoding::Lz4] {
            for len in [0, 1, 1025, 10_000] {
                let value = noise(len, 7);
                let encoded = encode(encoding, &value).unwrap();
                assert_eq!(decode(encoding, &encoded, len).unwrap(), value);
            }
        }
    }

    #[test]
    fn bombs_are_refused() {
        let zeros = vec![0u8; 8 << 20];
        for encoding in [Encoding::Gzip, Encoding::Lz4] {
            let encoded = encode(encoding, &zeros).unwrap();
            assert!(encoded.len() < 100_000, "{encoding:?}");
            let err = decode(encoding, &encoded, 1 << 20).unwrap_err();
            assert!(
                matches!(err, CodecError::TooLarge { max, .. } if max == 1 << 20),
                "{err}"
            );
            // Exactly at the limit is fine.
            assert_eq!(decode(encoding, &encoded, 8 << 20).unwrap().len(), 8 << 20);
        }
        let err = decode(Encoding::Identity, &[1, 2, 3], 2).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { max: 2, .. }));
    }

    #[test]
    fn a_lying_lz4_prefix_is_refused_before_allocating() {
        let mut encoded = encode(Encoding::Lz4, &text(2000)).unwrap();
        encoded[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = decode(Encoding::Lz4, &encoded, 1 << 20).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn corrupt_data_is_a_typed_error() {
        for encoding in [Encoding::Gzip, Encoding::Lz4] {
            let mut encoded = encode(encoding, &text(5000)).unwrap();
            let mid = encoded.len() / 2;
            encoded.truncate(mid);
            let err = decode(encoding, &encoded, 1 << 20).unwrap_err();
            assert!(
                matches!(err, CodecError::Corrupt { .. }),
                "{encoding:?}: {err}"
            );
        }
        assert!(matches!(
            decode(Encoding::Lz4, &[1, 2], 10),
            Err(CodecError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(Encoding::Gzip, b"not gzip at all", 100),
            Err(CodecError::Corrupt { .. })
        ));
        assert!(matches!(
            encoding_from_tag(3),
            Err(CodecError::UnknownEncoding(3))
        ));
        assert!(matches!(
            encoding_from_tag(-1),
            Err(CodecError::UnknownEncoding(-1))
        ));
        assert_eq!(encoding_from_tag(2).unwrap(), Encoding::Lz4);
    }

    /// A small JSON body as the server receives it, through each `Content-Encoding`.
    #[test]
    fn bodies_round_trip_through_their_content_encoding() {
        let body = b"{\"items\":[]}".repeat(100);
        for (header, encoding) in [("gzip", Encoding::Gzip), ("lz4", Encoding::Lz4)] {
            let packed = encode(encoding, &body).unwrap();
            assert!(packed.len() < body.len(), "{header}");
            let named = content_encoding(Some(header)).unwrap();
            assert_eq!(named, encoding);
            assert_eq!(decode(named, &packed, 10_000).unwrap(), body);
            assert!(matches!(
                decode(named, &packed, 100),
                Err(CodecError::TooLarge { max: 100, .. })
            ));
        }
        // An lz4 body cut after its prefix: the prefix alone does not make it valid.
        let mut cut = encode(Encoding::Lz4, &body).unwrap();
        cut.truncate(10);
        assert!(matches!(
            decode(Encoding::Lz4, &cut, 10_000),
            Err(CodecError::Corrupt { .. })
        ));
    }

    #[test]
    fn content_encoding_header_values() {
        for identity in [None, Some(""), Some("identity"), Some(" Identity ")] {
            assert_eq!(content_encoding(identity).unwrap(), Encoding::Identity);
        }
        for gzip in ["gzip", "x-gzip", "GZIP", " gzip "] {
            assert_eq!(content_encoding(Some(gzip)).unwrap(), Encoding::Gzip);
        }
        assert_eq!(content_encoding(Some("LZ4")).unwrap(), Encoding::Lz4);
        for other in ["br", "deflate", "gzip, br"] {
            assert!(
                matches!(
                    content_encoding(Some(other)),
                    Err(CodecError::UnsupportedContentEncoding(_))
                ),
                "{other}"
            );
        }
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
