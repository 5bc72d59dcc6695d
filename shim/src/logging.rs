//! `tracing` events into the shim log, and nothing else.
//!
//! The shim log is the `log` logger containerd-shimkit installs (it writes to containerd's
//! log). With no `tracing` subscriber, tracing's `log` feature forwards every event *and a
//! log record per span* to it, and wasmtime-wasi instruments each WASI host call with an
//! info-level span: every guest `fd_write`, every host call of every HTTP request became a
//! line formatted, written to containerd and parsed there (measured: a wasi:http server at
//! 0.43x the requests/s of `wasmtime serve`). [`LogForwarder`] is a subscriber that never
//! enables spans and hands events at or above `log`'s level to the logger, so our own
//! messages (and Wasmtime's warnings) still reach the shim log.
//!
//! `log` is reached through `tracing::log`, tracing's re-export for exactly this bridge.

use std::fmt::Write as _;

use tracing::log;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber, field, span};

/// See the module docs.
pub struct LogForwarder;

/// Installs [`LogForwarder`] as the process-wide subscriber. `main` calls it before the
/// zygote forks, so the container inits have it too.
pub fn install() {
    // Err only if one is set already (tests that call it twice), which is as good.
    let _ = tracing::subscriber::set_global_default(LogForwarder);
}

fn log_level(level: &Level) -> log::Level {
    match *level {
        Level::ERROR => log::Level::Error,
        Level::WARN => log::Level::Warn,
        Level::INFO => log::Level::Info,
        Level::DEBUG => log::Level::Debug,
        Level::TRACE => log::Level::Trace,
    }
}

impl Subscriber for LogForwarder {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.is_span() {
            Interest::never()
        } else {
            // the logger's level is only known once containerd-shimkit set it up
            Interest::sometimes()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.is_event() && log_level(meta.level()) <= log::max_level()
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        // unreachable in practice: no span is ever enabled
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut text = Text::default();
        event.record(&mut text);
        let mut line = text.message;
        if !text.fields.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&text.fields);
        }
        log::logger().log(
            &log::Record::builder()
                .level(log_level(meta.level()))
                .target(meta.target())
                .module_path(meta.module_path())
                .file(meta.file())
                .line(meta.line())
                .args(format_args!("{line}"))
                .build(),
        );
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// `message` plus the other fields as `name=value`, the way tracing's own bridge writes
/// them.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl field::Visit for Text {
    fn record_str(&mut self, f: &field::Field, value: &str) {
        if f.name() == "message" {
            self.message.push_str(value);
        } else {
            self.push(f, format_args!("{value:?}"));
        }
    }

    fn record_debug(&mut self, f: &field::Field, value: &dyn std::fmt::Debug) {
        if f.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.push(f, format_args!("{value:?}"));
        }
    }
}

impl Text {
    fn push(&mut self, f: &field::Field, value: std::fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={value}", f.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Collects what reaches `log`.
    struct Capture(Mutex<Vec<(log::Level, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((record.level(), record.args().to_string()));
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    /// Events at or above the logger's level arrive with their fields; spans (what
    /// `#[instrument]` makes of every WASI host call) and quieter events do not.
    #[test]
    fn events_reach_log_and_spans_do_not() {
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Info);
        tracing::subscriber::with_default(LogForwarder, || {
            let span = tracing::info_span!("fd_write", fd = 1);
            let _entered = span.enter();
            tracing::info!(code = 3, reason = %"done", "guest exited");
            tracing::debug!("too quiet");
            tracing::warn!("careful");
        });
        let got = CAPTURE.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                (
                    log::Level::Info,
                    "guest exited code=3 reason=done".to_string()
                ),
                (log::Level::Warn, "careful".to_string()),
            ]
        );
    }
}
