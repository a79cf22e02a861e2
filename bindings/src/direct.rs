//! Direct C entry points for the calls apps make in loops — cache `get`, `enqueue` and
//! `enqueueAll` — used by the Kotlin package instead of the generated ones.
//!
//! Through UniFFI, every Kotlin call marshals JNA `Structure`s: the call status, a `RustBuffer`
//! for each string or enum argument (each allocated by a call of its own), and one for the
//! result, then a call to free it. Measured from Kotlin on a release library, that is ~40 µs
//! around a 2.3 µs cache read (ADR 0024). These functions take only integers, byte arrays and a
//! direct buffer, which JNA's direct mapping passes without a `Structure`, and they report a
//! failure as a code: the Kotlin side then makes the generated call, which fails again with the
//! typed `KryonixException` and its message. No function has an effect when it fails (the
//! enqueues check everything they could fail on after the commit before committing), so that
//! second call never repeats a write. A batch crosses as one byte array of packed items.
//!
//! Agents are found by number (`KryonixAgent::direct_id`) in a registry of weak references, so a
//! stale number finds nothing instead of a freed agent. Swift calls the C ABI natively and has no
//! use for these.

// The one module of the crate that reads raw pointers: the callers' arrays and buffer.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock, Weak};

use crate::agent::KryonixAgent;
use crate::types::{Namespace, Op, Tier};

/// `kryonix_direct_get`: the key has no value.
pub const NONE: i64 = -1;
/// Either function: it failed and changed nothing; make the generated call for the typed error.
pub const FAILED: i64 = -2;
/// The length of an item id (a hyphenated UUID), which `kryonix_direct_enqueue` writes.
pub const ID_LEN: usize = 36;

static AGENTS: LazyLock<RwLock<HashMap<u64, Weak<KryonixAgent>>>> = LazyLock::new(Default::default);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn register(agent: &Arc<KryonixAgent>) {
    AGENTS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(agent.registry_id(), Arc::downgrade(agent));
}

pub(crate) fn unregister(id: u64) {
    AGENTS
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

fn agent(id: u64) -> Option<Arc<kryonix_core::Agent>> {
    let agents = AGENTS.read().unwrap_or_else(PoisonError::into_inner);
    agents.get(&id)?.upgrade()?.agent().ok()
}

fn pick<T: Copy>(all: &[T], index: i32) -> Option<T> {
    all.get(usize::try_from(index).ok()?).copied()
}

/// # Safety
/// `ptr` is null with `len` 0, or points to `len` readable bytes that outlive the call.
unsafe fn slice<'a>(ptr: *const u8, len: i32) -> Option<&'a [u8]> {
    let len = usize::try_from(len).ok()?;
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's contract above; JNA passes a copy of a Java array of that length.
    Some(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Reads the cached value of `key` (UTF-8, `key_len` bytes) in namespace number `namespace`
/// (Kotlin `Namespace.ordinal`) into `out`. Returns the value's length (copied only when it fits
/// in `out_cap`; otherwise call again with room for it), [`NONE`], or [`FAILED`].
///
/// # Safety
/// `key` points to `key_len` readable bytes and `out` to `out_cap` writable bytes (either may
/// be null when its length is 0), for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kryonix_direct_get(
    agent_id: u64,
    namespace: i32,
    key: *const u8,
    key_len: i32,
    out: *mut u8,
    out_cap: i32,
) -> i64 {
    let read = || -> Option<Option<Vec<u8>>> {
        let agent = agent(agent_id)?;
        let namespace = pick(&Namespace::ALL, namespace)?;
        // SAFETY: the caller's contract.
        let key = std::str::from_utf8(unsafe { slice(key, key_len) }?).ok()?;
        let key = agent.key(namespace.into(), key).ok()?;
        agent.cache().get(&key).ok()
    };
    match catch_unwind(AssertUnwindSafe(read)) {
        Ok(Some(None)) => NONE,
        Ok(Some(Some(value))) => {
            let Ok(len) = i64::try_from(value.len()) else {
                return FAILED;
            };
            if usize::try_from(out_cap).is_ok_and(|cap| value.len() <= cap) && !out.is_null() {
                // SAFETY: `out` has `out_cap` writable bytes (the caller's contract), and the
                // value is no longer than that; the two cannot overlap (the value is ours).
                unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), out, value.len()) };
            }
            len
        }
        Ok(None) | Err(_) => FAILED,
    }
}

/// Queues `payload` for `key` like `enqueueBlocking` (namespace, op and tier by Kotlin
/// `ordinal`) and writes the new item's id, [`ID_LEN`] ASCII bytes, to `id_out`. Returns
/// [`ID_LEN`] once the item is durable, or [`FAILED`] with nothing queued.
///
/// # Safety
/// `key`, `payload` and `id_out` point to `key_len`, `payload_len` and `id_cap` bytes
/// (readable, readable, writable; null only when the length is 0) for the duration of the call.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)] // a C signature: one scalar per field, no structs for JNA
pub unsafe extern "C" fn kryonix_direct_enqueue(
    agent_id: u64,
    namespace: i32,
    key: *const u8,
    key_len: i32,
    op: i32,
    payload: *const u8,
    payload_len: i32,
    tier: i32,
    id_out: *mut u8,
    id_cap: i32,
) -> i64 {
    let enqueue = || -> Option<()> {
        // Everything that can fail without a write comes first: after the commit, only the copy
        // of the id is left, into room checked here.
        if id_out.is_null() || usize::try_from(id_cap).ok()? < ID_LEN {
            return None;
        }
        let agent = agent(agent_id)?;
        let namespace = pick(&Namespace::ALL, namespace)?;
        let op = pick(&Op::ALL, op)?;
        let tier = pick(&Tier::ALL, tier)?;
        // SAFETY: the caller's contract.
        let key = std::str::from_utf8(unsafe { slice(key, key_len) }?).ok()?;
        // SAFETY: the caller's contract.
        let payload = unsafe { slice(payload, payload_len) }?;
        let id = agent
            .enqueue(namespace.into(), key, op.into(), payload, tier.into())
            .ok()?;
        let mut text = [0u8; ID_LEN];
        let written = id.0.hyphenated().encode_lower(&mut text).len();
        // SAFETY: `id_out` has at least ID_LEN writable bytes (checked above); `text` is ours.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), id_out, written) };
        Some(())
    };
    match catch_unwind(AssertUnwindSafe(enqueue)) {
        Ok(Some(())) => ID_LEN as i64,
        Ok(None) | Err(_) => FAILED,
    }
}

/// A cursor over the packed items of `kryonix_direct_enqueue_all`.
struct Packed<'a>(&'a [u8]);

impl<'a> Packed<'a> {
    fn int(&mut self) -> Option<i32> {
        let (head, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(i32::from_le_bytes(*head))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.int()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head)
    }

    /// One item: namespace, op and tier (ordinals), then the key and the payload, each as a
    /// length and its bytes; integers little-endian `i32`.
    fn item(&mut self) -> Option<kryonix_core::NewItem<'a>> {
        let namespace = pick(&Namespace::ALL, self.int()?)?;
        let op = pick(&Op::ALL, self.int()?)?;
        let tier = pick(&Tier::ALL, self.int()?)?;
        let key = std::str::from_utf8(self.bytes()?).ok()?;
        let payload = self.bytes()?;
        Some(kryonix_core::NewItem {
            namespace: namespace.into(),
            key,
            op: op.into(),
            payload,
            tier: tier.into(),
        })
    }
}

/// Queues `count` items packed in `items` (see `Packed::item`) in one transaction, like
/// `enqueueAllBlocking`, and writes their ids, [`ID_LEN`] bytes each in order, to `ids_out`.
/// Returns the bytes written (`count` × [`ID_LEN`]) once the items are durable, or [`FAILED`]
/// with nothing queued. The keys and payloads are read in place, never copied.
///
/// # Safety
/// `items` and `ids_out` point to `items_len` readable and `ids_cap` writable bytes (null only
/// when the length is 0) for the duration of the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn kryonix_direct_enqueue_all(
    agent_id: u64,
    items: *const u8,
    items_len: i32,
    count: i32,
    ids_out: *mut u8,
    ids_cap: i32,
) -> i64 {
    let enqueue = || -> Option<usize> {
        let count = usize::try_from(count).ok()?;
        let ids_len = count.checked_mul(ID_LEN)?;
        if usize::try_from(ids_cap).ok()? < ids_len || (ids_len > 0 && ids_out.is_null()) {
            return None;
        }
        // SAFETY: the caller's contract.
        let mut packed = Packed(unsafe { slice(items, items_len) }?);
        let batch = (0..count)
            .map(|_| packed.item())
            .collect::<Option<Vec<_>>>()?;
        if !packed.0.is_empty() {
            return None;
        }
        let agent = agent(agent_id)?;
        let ids = agent.enqueue_all(&batch).ok()?;
        let mut text = [0u8; ID_LEN];
        for (i, id) in ids.iter().enumerate() {
            let written = id.0.hyphenated().encode_lower(&mut text).len();
            // SAFETY: `ids_out` has `ids_len` = count × ID_LEN writable bytes (checked above),
            // and `i` < count; `text` is ours.
            unsafe {
                std::ptr::copy_nonoverlapping(text.as_ptr(), ids_out.add(i * ID_LEN), written)
            };
        }
        Some(ids_len)
    };
    match catch_unwind(AssertUnwindSafe(enqueue)) {
        Ok(Some(written)) => i64::try_from(written).unwrap_or(FAILED),
        Ok(None) | Err(_) => FAILED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_agent_or_index_fails_without_effect() {
        let mut out = [0u8; 8];
        let key = b"k";
        // SAFETY: valid buffers of the lengths given.
        let got = unsafe { kryonix_direct_get(u64::MAX, 0, key.as_ptr(), 1, out.as_mut_ptr(), 8) };
        assert_eq!(got, FAILED);
        assert_eq!(pick(&Namespace::ALL, 16), None);
        assert_eq!(pick(&Namespace::ALL, -1), None);
        assert_eq!(pick(&Tier::ALL, 3), Some(Tier::Background));
    }

    fn pack(items: &[(i32, i32, i32, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ns, op, tier, key, payload) in items {
            for n in [*ns, *op, *tier] {
                out.extend(n.to_le_bytes());
            }
            out.extend((key.len() as i32).to_le_bytes());
            out.extend(key.as_bytes());
            out.extend((payload.len() as i32).to_le_bytes());
            out.extend(*payload);
        }
        out
    }

    #[test]
    fn packed_items_parse_exactly_or_not_at_all() {
        let bytes = pack(&[(2, 0, 3, "k1", b"v"), (0, 2, 0, "ключ", b"")]);
        let mut packed = Packed(&bytes);
        let first = packed.item().unwrap();
        assert_eq!((first.key, first.payload), ("k1", &b"v"[..]));
        assert_eq!(first.namespace, kryonix_protocol::Namespace::UserCache);
        assert_eq!(first.tier, kryonix_protocol::Tier::Background);
        let second = packed.item().unwrap();
        assert_eq!(second.key, "ключ");
        assert_eq!(second.op, kryonix_protocol::wire::Op::Event);
        assert!(packed.0.is_empty() && packed.item().is_none());
        // A length past the end, a bad ordinal, bytes that are not UTF-8: no item.
        assert!(Packed(&bytes[..bytes.len() - 1]).item().is_some());
        assert!(Packed(&bytes[..9]).item().is_none());
        assert!(Packed(&pack(&[(16, 0, 0, "k", b"")])).item().is_none());
        let mut bad = pack(&[(0, 0, 0, "k", b"")]);
        bad[16] = 0xFF;
        assert!(Packed(&bad).item().is_none());
    }

    #[test]
    fn a_short_id_buffer_fails_before_anything_is_queued() {
        let mut id = [0u8; ID_LEN - 1];
        // SAFETY: valid buffers of the lengths given.
        let got = unsafe {
            kryonix_direct_enqueue(
                u64::MAX,
                0,
                b"k".as_ptr(),
                1,
                0,
                b"v".as_ptr(),
                1,
                0,
                id.as_mut_ptr(),
                (ID_LEN - 1) as i32,
            )
        };
        assert_eq!(got, FAILED);
    }
}
