//! Reading access traces: the LIRS text traces (gzip, one integer key per line, `*` lines
//! skipped) and the cache2k binary traces (xz, big-endian unsigned 32-bit keys), or the same
//! uncompressed.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

/// A trace that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The trace file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The xz stream is corrupt.
    #[error("{path}: not a valid xz stream: {reason}")]
    Xz {
        /// The trace file.
        path: PathBuf,
        /// The decoder's complaint.
        reason: String,
    },
    /// A text line is not a key.
    #[error("{path}:{line}: {text:?} is not an integer key")]
    Key {
        /// The trace file.
        path: PathBuf,
        /// The line number (from 1).
        line: usize,
        /// The line.
        text: String,
    },
    /// A binary trace whose length is not a whole number of 4-byte keys.
    #[error("{path}: {len} bytes is not a whole number of 32-bit keys")]
    Truncated {
        /// The trace file.
        path: PathBuf,
        /// Its decompressed length.
        len: usize,
    },
    /// The file name says neither text nor binary.
    #[error(
        "{path}: unknown trace format (expected *.trace[.gz] text or *.trace.xz / *.bin binary)"
    )]
    Format {
        /// The trace file.
        path: PathBuf,
    },
}

/// A trace: its name and its keys in access order.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The file name without its `.trace…` suffix.
    pub name: String,
    /// The accessed keys.
    pub keys: Vec<u64>,
}

impl Trace {
    /// Reads a trace, picking the format from the file name.
    pub fn read(path: &Path) -> Result<Self, TraceError> {
        let io = |source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = file_name
            .split(".trace")
            .next()
            .unwrap_or(&file_name)
            .trim_end_matches(".bin")
            .trim_end_matches(".txt")
            .to_string();
        let file = BufReader::new(File::open(path).map_err(io)?);
        let keys = if file_name.ends_with(".xz") {
            let mut bytes = Vec::new();
            lzma_rs::xz_decompress(&mut BufReader::new(file), &mut bytes).map_err(|e| {
                TraceError::Xz {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }
            })?;
            binary(path, &bytes)?
        } else if file_name.ends_with(".bin") {
            let mut bytes = Vec::new();
            BufReader::new(file).read_to_end(&mut bytes).map_err(io)?;
            binary(path, &bytes)?
        } else if file_name.ends_with(".gz") {
            text(path, BufReader::new(GzDecoder::new(file)))?
        } else if file_name.ends_with(".trace") || file_name.ends_with(".txt") {
            text(path, file)?
        } else {
            return Err(TraceError::Format {
                path: path.to_path_buf(),
            });
        };
        Ok(Self { name, keys })
    }

    /// The number of distinct keys.
    pub fn distinct(&self) -> u64 {
        let mut seen = std::collections::HashSet::with_capacity(self.keys.len() / 4);
        self.keys.iter().filter(|&&key| seen.insert(key)).count() as u64
    }
}

fn binary(path: &Path, bytes: &[u8]) -> Result<Vec<u64>, TraceError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(TraceError::Truncated {
            path: path.to_path_buf(),
            len: bytes.len(),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|word| u64::from(u32::from_be_bytes([word[0], word[1], word[2], word[3]])))
        .collect())
}

fn text(path: &Path, reader: impl BufRead) -> Result<Vec<u64>, TraceError> {
    let mut keys = Vec::new();
    for (at, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let line = line.trim();
        if line.is_empty() || line == "*" {
            continue;
        }
        let key = line.parse::<u64>().map_err(|_| TraceError::Key {
            path: path.to_path_buf(),
            line: at + 1,
            text: line.to_string(),
        })?;
        keys.push(key);
    }
    Ok(keys)
}
