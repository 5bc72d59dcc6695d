//! `tracing` events into the shim log, and nothing else.
//!
//! The shim log is the `log` fifo containerd opens in the bundle and copies into its own
//! log; [`to_containerd`] installs a `log` logger writing logrus-style lines to it. With no
//! `tracing` subscriber, tracing's `log` feature forwards every event *and a
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

/// The shim daemon's `log` logger: one logrus-style line per record into the bundle's
/// `log` fifo, which containerd reads. Installed before the zygote forks, so container
/// inits log there too.
struct FifoLogger(std::sync::Mutex<std::fs::File>);

impl log::Log for FifoLogger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = logrus_line(
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            record.level(),
            &record.args().to_string(),
        );
        use std::io::Write as _;
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// `time="…" level=info msg="…" runtime=…`, quoted as logrus quotes (containerd parses
/// nothing, but people grep).
fn logrus_line(time: &str, level: log::Level, msg: &str) -> String {
    format!(
        "time=\"{time}\" level={} msg={msg:?} runtime=io.containerd.wasmtime.v1\n",
        level.as_str().to_lowercase()
    )
}

/// Sends `log` records (and through [`LogForwarder`], our `tracing` events) to the `log`
/// fifo in the current directory (the bundle). `-debug` from containerd lowers the level.
pub fn to_containerd(debug: bool) {
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Info
    };
    match std::fs::OpenOptions::new().write(true).open("log") {
        Ok(f) => {
            if log::set_boxed_logger(Box::new(FifoLogger(std::sync::Mutex::new(f)))).is_ok() {
                log::set_max_level(level);
            }
        }
        Err(e) => eprintln!("containerd-shim-wasmtime-v1: no shim log: {e}"),
    }
}

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

/// libcgroups' v1 manager warns once per controller it finds no hierarchy for, on every
/// create and delete: for every controller when the shim placed the container itself
/// (youki is shown no cgroupfs, `crate::placement`), and for those a host does not mount.
fn is_noise(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::WARN && meta.target() == "libcgroups::v1::manager"
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
        meta.is_event() && log_level(meta.level()) <= log::max_level() && !is_noise(meta)
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

    #[test]
    fn logrus_lines_quote_the_message() {
        assert_eq!(
            logrus_line("2026-12-02T16:00:00Z", log::Level::Warn, "say \"hi\"\nbye"),
            "time=\"2026-12-02T16:00:00Z\" level=warn msg=\"say \\\"hi\\\"\\nbye\" runtime=io.containerd.wasmtime.v1\n"
        );
    }

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
