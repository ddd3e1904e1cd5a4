//! Logging that can never stop or slow the daemon: events are formatted on the thread that logs
//! them and handed to a bounded queue; one writer thread of its own moves them to stderr.
//!
//! * A full queue drops the line and counts it (`typha_logs_dropped`, Typha's name): a slow or
//!   stuck log reader must never stall the reactor, least of all in a reconnect storm.
//! * A failed write (the reader has gone: `EPIPE`) is counted (`typha_log_errors`) and
//!   otherwise ignored. Nothing in this module panics or prints through `eprintln!`.
//! * Lines about one connection (events with a `peer` field) are limited to
//!   [`LogSettings::per_connection_lines_per_sec`] per call site and second; the rest are
//!   counted, and the writer thread reports each second's count in one summary line.
//! * Text output escapes control characters in every field and quotes values holding spaces,
//!   quotes or `=`, so a peer-supplied hostname cannot forge lines or colour the terminal.
//!   ANSI colour is used only when stderr is a terminal. JSON output is one object per line.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FormatFields, MakeWriter};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the queue was full, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Failed writes to stderr, since the process started.
pub fn write_errors() -> u64 {
    WRITE_ERRORS.load(Ordering::Relaxed)
}

/// Per-connection lines held back by the storm limit, since the process started.
pub fn suppressed_lines() -> u64 {
    SUPPRESSED.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Typha's level names (`debug`, `info`, `warning`, `error`, `fatal`, `panic`, `none`) or
    /// an `EnvFilter` directive.
    pub level: String,
    pub format: LogFormat,
    /// Lines the queue holds before dropping.
    pub queue_lines: usize,
    /// Per call site and second, for events that carry a `peer` field.
    pub per_connection_lines_per_sec: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: LogFormat::Text,
            queue_lines: 4096,
            per_connection_lines_per_sec: 20,
        }
    }
}

#[derive(Debug, Error)]
pub enum LoggingError {
    #[error("invalid log level {level:?}: {msg}")]
    Level { level: String, msg: String },
    #[error("cannot start the log writer thread: {0}")]
    Thread(std::io::Error),
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been written.
    Flush(crossbeam_channel::Sender<()>),
}

/// Keeps the writer reachable for a final flush.
pub struct LogGuard {
    tx: crossbeam_channel::Sender<Msg>,
}

impl LogGuard {
    /// Waits up to `limit` for the queued lines to reach stderr; never longer, so a stuck
    /// reader cannot hold up the exit.
    pub fn flush(&self, limit: Duration) {
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        if self.tx.send_timeout(Msg::Flush(ack_tx), limit).is_ok() {
            let _ = ack_rx.recv_timeout(limit);
        }
    }
}

/// The `MakeWriter` of the fmt layer: each event arrives as one `write_all` of a whole line.
#[derive(Clone)]
struct QueueWriter {
    tx: crossbeam_channel::Sender<Msg>,
}

impl Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.tx.try_send(Msg::Line(buf.to_vec())).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Moves queued lines to `out`, several per write when they pile up, and once a second
/// reports the lines the storm limit held back.
fn run_writer(
    rx: crossbeam_channel::Receiver<Msg>,
    mut out: impl Write,
    limiter: Arc<StormLimiter>,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut next_summary = Instant::now() + Duration::from_secs(1);
    loop {
        let first = match rx.recv_deadline(next_summary) {
            Ok(m) => Some(m),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
        };
        let mut acks = Vec::new();
        for m in first.into_iter().chain(rx.try_iter().take(1024)) {
            match m {
                Msg::Line(l) => buf.extend_from_slice(&l),
                Msg::Flush(ack) => acks.push(ack),
            }
        }
        if !buf.is_empty() {
            if out.write_all(&buf).is_err() {
                WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
            }
            buf.clear();
        }
        for a in acks {
            let _ = a.try_send(());
        }
        if Instant::now() >= next_summary {
            next_summary = Instant::now() + Duration::from_secs(1);
            // These go through the subscriber like any event (this thread is not inside a
            // dispatch), so they are formatted, filtered and queued as usual.
            for (site, n) in limiter.take_suppressed() {
                tracing::warn!(
                    suppressed = n,
                    call_site = site,
                    "per-connection log lines suppressed in the last second"
                );
            }
        }
    }
}

/// Per call site, within the current one-second window: lines let through and lines held back.
#[derive(Default)]
struct Window {
    started: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

/// The storm limit on per-connection lines (see the module docs).
pub struct StormLimiter {
    per_sec: u32,
    sites: Mutex<HashMap<&'static str, Window>>,
}

impl StormLimiter {
    pub fn new(per_sec: u32) -> Self {
        StormLimiter {
            per_sec,
            sites: Mutex::new(HashMap::new()),
        }
    }

    fn is_per_connection(meta: &Metadata<'_>) -> bool {
        meta.is_event() && meta.fields().field("peer").is_some()
    }

    /// Whether an event from `site` may be written now.
    pub fn admit(&self, site: &'static str, now: Instant) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let w = sites.entry(site).or_default();
        if !matches!(w.started, Some(s) if now.duration_since(s) < Duration::from_secs(1)) {
            w.started = Some(now);
            w.passed = 0;
        }
        if w.passed < self.per_sec {
            w.passed += 1;
            true
        } else {
            w.suppressed += 1;
            SUPPRESSED.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// The counts held back since the last call, per call site.
    pub fn take_suppressed(&self) -> Vec<(&'static str, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (site, w) in sites.iter_mut() {
            if w.suppressed > 0 {
                out.push((*site, std::mem::take(&mut w.suppressed)));
            }
        }
        out.sort_unstable();
        out
    }
}

/// The storm limit as a per-layer filter: decided per event, after the level filter.
struct StormFilter(Arc<StormLimiter>);

impl<S: Subscriber> Filter<S> for StormFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        !StormLimiter::is_per_connection(meta) || self.0.admit(meta.name(), Instant::now())
    }
}

/// Text field formatting that no field value can break out of: see [`escape_into`].
struct EscapingFields;

impl<'w> FormatFields<'w> for EscapingFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let mut s = String::with_capacity(value.len() + field.name().len() + 4);
        if !self.first {
            s.push(' ');
        }
        self.first = false;
        if field.name() == "message" {
            escape_into(&mut s, value, false);
        } else {
            s.push_str(field.name());
            s.push('=');
            escape_into(&mut s, value, true);
        }
        self.result = self.writer.write_str(&s);
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let s = format!("{value:?}");
        self.write(field, &s);
    }
}

/// Appends `value` with every control character escaped (`\n`, `\t`, `\r`, `\u{1b}`...), so it
/// stays on one line and cannot carry terminal escapes. With `quote_if_needed`, a value that is
/// empty or holds whitespace, `"`, `\` or `=` is written in double quotes, so it reads as one
/// field.
pub fn escape_into(out: &mut String, value: &str, quote_if_needed: bool) {
    let needs_quotes = quote_if_needed
        && (value.is_empty()
            || value
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '=')));
    if needs_quotes {
        out.push('"');
    }
    for c in value.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' | '\\' if needs_quotes => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    if needs_quotes {
        out.push('"');
    }
}

/// Typha's level names mapped onto an `EnvFilter` directive.
fn env_filter(level: &str) -> Result<EnvFilter, LoggingError> {
    let directive = match level.to_ascii_lowercase().as_str() {
        "none" => "off".to_owned(),
        "warning" => "warn".to_owned(),
        "fatal" | "panic" | "critical" => "error".to_owned(),
        l => l.to_owned(),
    };
    EnvFilter::try_new(&directive).map_err(|e| LoggingError::Level {
        level: level.to_owned(),
        msg: e.to_string(),
    })
}

/// Installs the process-wide subscriber writing to stderr through the queue. Keep the guard to
/// flush at exit.
pub fn init(settings: &LogSettings) -> Result<LogGuard, LoggingError> {
    init_with_output(settings, std::io::stderr(), std::io::stderr().is_terminal())
}

/// As [`init`], writing to `out` (tests hand it a pipe or a failing writer).
pub fn init_with_output(
    settings: &LogSettings,
    out: impl Write + Send + 'static,
    ansi: bool,
) -> Result<LogGuard, LoggingError> {
    let filter = env_filter(&settings.level)?;
    let (tx, rx) = crossbeam_channel::bounded(settings.queue_lines.max(1));
    let limiter = Arc::new(StormLimiter::new(settings.per_connection_lines_per_sec));
    let writer = QueueWriter { tx: tx.clone() };
    let storm = StormFilter(limiter.clone());
    let layer = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .fmt_fields(EscapingFields)
            .log_internal_errors(false)
            .with_filter(storm)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_ansi(false)
            .log_internal_errors(false)
            .with_filter(storm)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .map_err(|_| LoggingError::AlreadyInstalled)?;
    std::thread::Builder::new()
        .name("typha-log-writer".into())
        .spawn(move || run_writer(rx, out, limiter))
        .map_err(LoggingError::Thread)?;
    Ok(LogGuard { tx })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(v: &str, q: bool) -> String {
        let mut s = String::new();
        escape_into(&mut s, v, q);
        s
    }

    #[test]
    fn values_cannot_forge_lines_or_fields() {
        assert_eq!(esc("node-1", true), "node-1");
        assert_eq!(
            esc("evil\n2026-01-01 INFO fake", true),
            "\"evil\\n2026-01-01 INFO fake\""
        );
        assert_eq!(esc("a\u{1b}[31mred", true), "\"a\\u{1b}[31mred\"");
        assert_eq!(esc("x=1 y=\"2\"", true), "\"x=1 y=\\\"2\\\"\"");
        assert_eq!(esc("", true), "\"\"");
        // Messages are not quoted, but still stay on one line.
        assert_eq!(esc("two\nlines", false), "two\\nlines");
    }

    #[test]
    fn storm_limit_is_per_site_and_per_second() {
        let l = StormLimiter::new(3);
        let t0 = Instant::now();
        let admitted = (0..10).filter(|_| l.admit("a", t0)).count();
        assert_eq!(admitted, 3);
        assert!(l.admit("b", t0), "another call site has its own budget");
        assert_eq!(l.take_suppressed(), vec![("a", 7)]);
        assert!(
            l.take_suppressed().is_empty(),
            "each count is reported once"
        );
        assert!(l.admit("a", t0 + Duration::from_secs(1)), "a new window");
    }

    /// A writer whose reader has gone: every write fails.
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
    }

    #[test]
    fn a_broken_output_is_counted_never_fatal() {
        let (tx, rx) = crossbeam_channel::bounded(4);
        let limiter = Arc::new(StormLimiter::new(1));
        let t = std::thread::spawn(move || run_writer(rx, Broken, limiter));
        let mut w = QueueWriter { tx: tx.clone() };
        let before = write_errors();
        w.write_all(b"one\n").unwrap();
        let (ack_tx, ack_rx) = crossbeam_channel::bounded(1);
        tx.send(Msg::Flush(ack_tx)).unwrap();
        ack_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(write_errors() > before);
        drop((w, tx));
        t.join()
            .expect("the writer thread survives a broken output");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // No writer thread: the queue fills and stays full.
        let (tx, _rx) = crossbeam_channel::bounded(2);
        let mut w = QueueWriter { tx };
        let before = dropped_lines();
        for _ in 0..5 {
            w.write_all(b"line\n").unwrap();
        }
        assert!(dropped_lines() >= before + 3);
    }
}
