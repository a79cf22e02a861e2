//! Toolchain self-test: one of each uniffi feature the Kryonix bindings rely on, small enough to
//! build in seconds. `../selftest.sh` generates Kotlin and Swift from the built library and runs
//! `kotlin/Main.kt` on the JVM and `swift/main.swift` in the Swift root against it.
//!
//! Layout of the exported surface:
//! - `greet`: a plain function returning `Result` (error enum -> Kotlin exception / Swift `Error`);
//! - `SelftestError`: the error enum, one unit variant and one with a field;
//! - `Counter`: an object with a constructor, methods and a foreign observer;
//! - `Observer`: a foreign trait (implemented in Kotlin/Swift, called from Rust, also from a Rust thread);
//! - `delayed_echo`: an async fn, driven by a thread-backed timer so no async runtime is needed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

uniffi::setup_scaffolding!();

/// Longest name `greet` accepts.
const MAX_NAME: usize = 16;

#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum SelftestError {
    #[error("empty input")]
    Empty,
    #[error("input too long: {len} bytes")]
    TooLong { len: u32 },
}

fn check_name(name: &str) -> Result<(), SelftestError> {
    match name.len() {
        0 => Err(SelftestError::Empty),
        len if len > MAX_NAME => Err(SelftestError::TooLong {
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }),
        _ => Ok(()),
    }
}

#[uniffi::export]
pub fn greet(name: String) -> Result<String, SelftestError> {
    check_name(&name)?;
    Ok(format!("hello, {name}"))
}

/// Foreign trait: the app implements it; Rust calls it on whatever thread it is on.
#[uniffi::export(with_foreign)]
pub trait Observer: Send + Sync {
    fn on_count(&self, value: u64);
}

#[derive(uniffi::Object)]
pub struct Counter {
    value: Mutex<u64>,
    observer: Mutex<Option<Arc<dyn Observer>>>,
}

#[uniffi::export]
impl Counter {
    #[uniffi::constructor]
    pub fn new(start: u64) -> Arc<Self> {
        Arc::new(Self {
            value: Mutex::new(start),
            observer: Mutex::new(None),
        })
    }

    pub fn get(&self) -> u64 {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `n` (saturating) and tells the observer, on the caller's thread.
    pub fn add(&self, n: u64) -> u64 {
        let v = {
            let mut g = self.value.lock().unwrap_or_else(PoisonError::into_inner);
            *g = g.saturating_add(n);
            *g
        };
        self.notify(v);
        v
    }

    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        *self.observer.lock().unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// Tells the observer the current value from a thread Rust spawns (not known to the JVM/Swift).
    pub fn notify_from_thread(self: Arc<Self>) {
        let v = self.get();
        let this = Arc::clone(&self);
        // A panic in the thread would only mean the observer panicked; nothing to propagate.
        let _ = std::thread::spawn(move || this.notify(v)).join();
    }
}

impl Counter {
    fn notify(&self, v: u64) {
        // Clone out of the lock: the observer may call back into this object.
        let obs = self
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(o) = obs {
            o.on_count(v);
        }
    }
}

/// Async fn: echoes `value` after `delay_ms`, or fails like `greet` would.
#[uniffi::export]
pub async fn delayed_echo(value: String, delay_ms: u64) -> Result<String, SelftestError> {
    Delay::new(Duration::from_millis(delay_ms)).await;
    check_name(&value)?;
    Ok(value)
}

/// A timer future backed by one sleeping thread: keeps the self-test free of an async runtime.
struct Delay {
    state: Arc<Mutex<(bool, Option<Waker>)>>,
}

impl Delay {
    fn new(d: Duration) -> Self {
        let state = Arc::new(Mutex::new((false, None::<Waker>)));
        let s = Arc::clone(&state);
        std::thread::spawn(move || {
            std::thread::sleep(d);
            let mut g = s.lock().unwrap_or_else(PoisonError::into_inner);
            g.0 = true;
            if let Some(w) = g.1.take() {
                w.wake();
            }
        });
        Delay { state }
    }
}

impl Future for Delay {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if g.0 {
            Poll::Ready(())
        } else {
            g.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}
