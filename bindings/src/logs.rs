//! The library's log lines, handed to the app: a foreign `LogSink` fed by a `tracing` layer.
//!
//! The app installs one sink for the process (Android: `android.util.Log`; iOS: `os.Logger`;
//! see their READMEs) with a level, and may change either at any time. Lines carry a level, the
//! module they come from (`kryonix_core::sync::engine`) and a message with its fields
//! (`sync: wake-up now=…`). Keys and values of the app's data never appear at info level or
//! above. The sink is called on whatever thread logged (the bindings' runtime threads, or the
//! app's thread inside a call): keep it quick.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::error::KryonixError;

/// How much the sink is told, most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn of(level: tracing::Level) -> Self {
        match level {
            tracing::Level::ERROR => Self::Error,
            tracing::Level::WARN => Self::Warn,
            tracing::Level::INFO => Self::Info,
            tracing::Level::DEBUG => Self::Debug,
            _ => Self::Trace,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Self::Error => 1,
            Self::Warn => 2,
            Self::Info => 3,
            Self::Debug => 4,
            Self::Trace => 5,
        }
    }
}

/// Receives the library's log lines. Implemented by the app.
#[uniffi::export(with_foreign)]
pub trait LogSink: Send + Sync {
    fn log(&self, level: LogLevel, target: String, message: String);
}

/// The sink and the most verbose level it wants (0: no sink).
static SINK: RwLock<Option<Arc<dyn LogSink>>> = RwLock::new(None);
static MAX_RANK: AtomicU8 = AtomicU8::new(0);
/// Whether our layer is the process's subscriber (installed at the first `set_log_sink`).
static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Sends the library's log lines at `level` and above to `sink`, replacing any earlier sink;
/// `None` stops them. Fails with `Other` if another `tracing` subscriber already owns the
/// process (an app that embeds other Rust code and set one up itself).
#[uniffi::export]
pub fn set_log_sink(sink: Option<Arc<dyn LogSink>>, level: LogLevel) -> Result<(), KryonixError> {
    let installed = *INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(SinkLayer);
        tracing::subscriber::set_global_default(subscriber).is_ok()
    });
    if !installed {
        return Err(KryonixError::Other {
            reason: "another tracing subscriber already receives this process's logs".into(),
        });
    }
    let rank = if sink.is_some() { level.rank() } else { 0 };
    *SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
    MAX_RANK.store(rank, Ordering::Relaxed);
    // Callsites cached an interest; the level changed, so they must ask again.
    tracing::callsite::rebuild_interest_cache();
    Ok(())
}

/// Forwards events the sink's level admits.
struct SinkLayer;

impl<S: Subscriber> Layer<S> for SinkLayer {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // The level can change at run time: decide per event.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        LogLevel::of(*metadata.level()).rank() <= MAX_RANK.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(sink) = SINK.read().unwrap_or_else(PoisonError::into_inner).clone() else {
            return;
        };
        let mut line = Line::default();
        event.record(&mut line);
        let metadata = event.metadata();
        sink.log(
            LogLevel::of(*metadata.level()),
            metadata.target().to_owned(),
            line.finish(),
        );
    }
}

/// The message first, then the other fields as `name=value`.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Line {
    fn finish(self) -> String {
        if self.fields.is_empty() {
            self.message
        } else {
            format!("{}{}", self.message, self.fields)
        }
    }
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(LogLevel, String, String)>>);

    impl LogSink for Recorder {
        fn log(&self, level: LogLevel, target: String, message: String) {
            self.0.lock().unwrap().push((level, target, message));
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(LogLevel, String, String)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    // One test: the subscriber and the sink are process-wide.
    #[test]
    fn the_sink_gets_lines_at_its_level_and_above_and_can_be_changed_or_removed() {
        let sink = Arc::new(Recorder::default());
        set_log_sink(Some(sink.clone()), LogLevel::Info).unwrap();
        tracing::info!(items = 3, "sync: sent");
        tracing::debug!("sync: wake-up");
        let lines = sink.take();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let (level, target, message) = &lines[0];
        assert_eq!(*level, LogLevel::Info);
        assert_eq!(target, "kryonix_ffi::logs::tests");
        assert_eq!(message, "sync: sent items=3");

        set_log_sink(Some(sink.clone()), LogLevel::Debug).unwrap();
        tracing::debug!("sync: wake-up");
        tracing::trace!("noise");
        assert_eq!(sink.take().len(), 1);

        set_log_sink(None, LogLevel::Trace).unwrap();
        tracing::error!("nobody listens");
        assert!(sink.take().is_empty());
    }
}
