//! The database key across the FFI: `KryonixAgent.rekey` and the free function
//! `encrypt_database`, both thin calls into `kryonix-core` (`Agent::rekey`,
//! `Store::encrypt_plaintext`).
//!
//! Both rewrite every page of the file, which takes seconds on a large database, so they are
//! `suspend` (Kotlin) / `async` (Swift) and run on the bindings' blocking pool rather than on the
//! caller's thread (often the UI thread). The key bytes arrive as a `Vec<u8>`; they are moved into
//! an [`EncryptionKey`] and the vector is zeroed (`TryFrom<Vec<u8>>`), so the bindings keep no other
//! copy. Keys never appear in errors or logs.

use kryonix_core::{EncryptionKey, Store};

use crate::agent::KryonixAgent;
use crate::error::KryonixError;
use crate::runtime;

/// The key the app passed, or `InvalidInput` when it is not 32 bytes.
pub(crate) fn key(bytes: Vec<u8>) -> Result<EncryptionKey, KryonixError> {
    EncryptionKey::try_from(bytes).map_err(|e| KryonixError::InvalidInput {
        reason: e.to_string(),
    })
}

#[uniffi::export]
impl KryonixAgent {
    /// Re-encrypts the open database under `new_key` (32 bytes). Other calls on this agent wait
    /// until it is done. Store the new key where the old one was only after this returns, and
    /// keep the old one until then: if it fails, the file is still under the old key. Fails with
    /// `NotEncrypted` on a plaintext database (use `encrypt_database`).
    pub async fn rekey(&self, new_key: Vec<u8>) -> Result<(), KryonixError> {
        let agent = self.agent()?;
        let new_key = key(new_key)?;
        runtime::spawn_blocking(move || Ok(agent.rekey(&new_key)?)).await
    }
}

/// Encrypts the plaintext database at `db_path` under `key` (32 bytes), in place, before an
/// agent opens it with that key. The app's one-time migration: an agent opened with a key on a
/// plaintext file fails with `NotEncrypted` and never converts it by itself.
///
/// Every cache entry and queued item is kept; the encrypted copy replaces the original only
/// once it is complete (a crash leaves the plaintext file as it was). Fails with `AlreadyOpen`
/// while an agent has the file open, with `WrongKey` if the file is already encrypted, and does
/// nothing when there is no file yet.
#[uniffi::export]
pub async fn encrypt_database(db_path: String, key: Vec<u8>) -> Result<(), KryonixError> {
    let key = self::key(key)?;
    runtime::spawn_blocking(move || Ok(Store::encrypt_plaintext(&db_path, &key)?)).await
}
