//! The access log, off the request path.
//!
//! A request hands a small record (no formatting, no I/O) to a writer
//! thread through a bounded channel and moves on; the thread formats the
//! lines and writes them in batches, flushing within 100 ms and at
//! shutdown. When the channel is full the record is dropped and counted in
//! `sluice_log_dropped_total`: a slow disk or pipe never blocks a request.
//!
//! Settings come from `[log]` and change on reload: `access` (on/off),
//! `format` (text or JSON), `access_file` (access lines only; reopened on
//! SIGUSR1 for logrotate; stderr when unset). `RUST_LOG` still rules: with
//! `RUST_LOG=warn` no access line is produced at all.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{LogConfig, LogFormat};

/// Records waiting for the writer, at most (about 150 bytes each): 100 ms
/// of 300k requests/s.
const QUEUE: usize = 32 * 1024;
/// A line is on its way out within this.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One request, as the access line tells it.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    /// Milliseconds since the Unix epoch when the answer was ready.
    pub at_ms: u64,
    pub route: Arc<str>,
    pub decision: &'static str,
    pub status: u16,
    pub method: http::Method,
    /// The request target; its path is logged.
    pub uri: http::Uri,
    /// The client's address, rendered once per connection.
    pub client: http::HeaderValue,
    pub duration_us: u64,
    /// From the request's `traceparent`, when it has a valid one.
    pub trace_id: Option<[u8; 16]>,
}

// Lines are nearly every message; boxing them would cost an allocation
// per request to save bytes on the rare flush.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(AccessRecord),
    /// Write out what is queued, then answer.
    Flush(SyncSender<()>),
}

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    format: LogFormat,
    file: Option<PathBuf>,
}

pub struct AccessLog {
    tx: SyncSender<Msg>,
    enabled: AtomicBool,
    settings: Arc<Mutex<Settings>>,
    reopen: Arc<AtomicBool>,
    dropped: prometheus::IntCounter,
}

impl AccessLog {
    /// Starts the writer thread.
    pub fn start(cfg: &LogConfig, dropped: prometheus::IntCounter) -> AccessLog {
        let (tx, rx) = sync_channel(QUEUE);
        let settings = Arc::new(Mutex::new(Settings {
            format: cfg.format,
            file: cfg.access_file.clone(),
        }));
        let reopen = Arc::new(AtomicBool::new(true));
        let writer = Writer {
            settings: settings.clone(),
            reopen: reopen.clone(),
            out: None,
        };
        let spawned = std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || writer.run(rx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; access lines are dropped");
        }
        AccessLog {
            tx,
            enabled: AtomicBool::new(cfg.access),
            settings,
            reopen,
            dropped,
        }
    }

    /// Whether requests should hand over records at all.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed) && tracing::enabled!(target: "sluice::access", tracing::Level::INFO)
    }

    /// Queues one record; never blocks.
    pub fn log(&self, rec: AccessRecord) {
        match self.tx.try_send(Msg::Line(rec)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Takes the `[log]` settings of a reloaded config.
    pub fn configure(&self, cfg: &LogConfig) {
        self.enabled.store(cfg.access, Ordering::Relaxed);
        let mut s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        let new = Settings {
            format: cfg.format,
            file: cfg.access_file.clone(),
        };
        if s.file != new.file {
            self.reopen.store(true, Ordering::Release);
        }
        *s = new;
    }

    /// Closes and reopens the access file (SIGUSR1, after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }

    /// Writes out everything queued (shutdown), waiting at most `within`.
    pub fn flush(&self, within: Duration) {
        let (done, wait) = sync_channel(1);
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(within);
        }
    }
}

struct Writer {
    settings: Arc<Mutex<Settings>>,
    reopen: Arc<AtomicBool>,
    /// The access file, when one is set and open.
    out: Option<std::fs::File>,
}

impl Writer {
    /// The writer sleeps and then takes everything queued, rather than
    /// blocking on the channel: a sender only wakes a *waiting* receiver,
    /// and that wake-up (a futex call on the request's worker, per line)
    /// cost more than formatting the line.
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut clock = SecondCache::default();
        loop {
            std::thread::sleep(FLUSH_EVERY);
            let settings = self.settings.lock().unwrap_or_else(|p| p.into_inner()).clone();
            // Open (or reopen) the file before writing anything, so the
            // first lines go where the config says.
            if self.reopen.swap(false, Ordering::AcqRel) {
                self.open(&settings);
            }
            let mut flushed = Vec::new();
            let mut gone = false;
            // Take everything waiting: one write for the lot.
            let queued = std::iter::from_fn(|| match rx.try_recv() {
                Ok(m) => Some(m),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    None
                }
            });
            for m in queued {
                match m {
                    Msg::Line(rec) => format_line(&mut buf, &rec, settings.format, &mut clock),
                    Msg::Flush(done) => flushed.push(done),
                }
                if buf.len() >= 256 * 1024 {
                    self.write(&mut buf);
                }
            }
            self.write(&mut buf);
            for done in flushed {
                let _ = done.send(());
            }
            if gone {
                return;
            }
        }
    }

    fn open(&mut self, settings: &Settings) {
        self.out = None;
        if let Some(path) = &settings.file {
            match OpenOptions::new().create(true).append(true).open(path) {
                Ok(f) => self.out = Some(f),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open log.access_file; access lines go to stderr")
                }
            }
        }
    }

    fn write(&mut self, buf: &mut Vec<u8>) {
        if buf.is_empty() {
            return;
        }
        let res = match &mut self.out {
            Some(f) => f.write_all(buf),
            None => std::io::stderr().lock().write_all(buf),
        };
        if let Err(e) = res {
            // Nowhere better to say it than stderr; don't loop on it.
            let _ = writeln!(std::io::stderr(), "sluice: access log write failed: {e}");
        }
        buf.clear();
    }
}

/// The date and time to the second, rendered once per second: lines in
/// the same second share it.
#[derive(Default)]
struct SecondCache {
    second: u64,
    text: Vec<u8>,
}

impl SecondCache {
    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    fn write(&mut self, out: &mut Vec<u8>, ms: u64) {
        let second = ms / 1000;
        if self.text.is_empty() || second != self.second {
            self.text.clear();
            timestamp(&mut self.text, second * 1000);
            self.text.truncate(self.text.len() - 5); // ".000Z"
            self.second = second;
        }
        out.extend_from_slice(&self.text);
        let millis = ms % 1000;
        out.extend_from_slice(&[
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
        ]);
    }
}

/// Milliseconds with three decimals, from microseconds, without floats.
fn duration_ms(out: &mut Vec<u8>, us: u64) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(us / 1000).as_bytes());
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// RFC 3339 UTC with milliseconds, from Unix milliseconds.
fn timestamp(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    );
}

fn format_line(out: &mut Vec<u8>, r: &AccessRecord, format: LogFormat, clock: &mut SecondCache) {
    let mut n = itoa::Buffer::new();
    match format {
        LogFormat::Text => {
            clock.write(out, r.at_ms);
            out.extend_from_slice(b"  INFO sluice::access: request route=");
            out.extend_from_slice(r.route.as_bytes());
            out.extend_from_slice(b" decision=");
            out.extend_from_slice(r.decision.as_bytes());
            out.extend_from_slice(b" status=");
            out.extend_from_slice(n.format(r.status).as_bytes());
            out.extend_from_slice(b" method=");
            out.extend_from_slice(r.method.as_str().as_bytes());
            out.extend_from_slice(b" path=");
            out.extend_from_slice(r.uri.path().as_bytes());
            out.extend_from_slice(b" client=");
            out.extend_from_slice(r.client.as_bytes());
            out.extend_from_slice(b" duration_ms=");
            duration_ms(out, r.duration_us);
            if let Some(t) = &r.trace_id {
                out.extend_from_slice(b" trace_id=");
                crate::trace::push_hex(out, t);
            }
            out.push(b'\n');
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            clock.write(out, r.at_ms);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"route\":");
            json_str(out, &r.route);
            out.extend_from_slice(b",\"decision\":\"");
            out.extend_from_slice(r.decision.as_bytes());
            out.extend_from_slice(b"\",\"status\":");
            out.extend_from_slice(n.format(r.status).as_bytes());
            out.extend_from_slice(b",\"method\":");
            json_str(out, r.method.as_str());
            out.extend_from_slice(b",\"path\":");
            json_str(out, r.uri.path());
            out.extend_from_slice(b",\"client\":\"");
            out.extend_from_slice(r.client.as_bytes());
            out.extend_from_slice(b"\",\"duration_ms\":");
            duration_ms(out, r.duration_us);
            if let Some(t) = &r.trace_id {
                out.extend_from_slice(b",\"trace_id\":\"");
                crate::trace::push_hex(out, t);
                out.push(b'"');
            }
            out.extend_from_slice(b",\"target\":\"sluice::access\"}\n");
        }
    }
}

/// A JSON string literal (paths may hold anything a client sent).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> AccessRecord {
        AccessRecord {
            at_ms: 1_764_516_000_123,
            route: Arc::from("api"),
            decision: "forwarded",
            status: 200,
            method: http::Method::GET,
            uri: path.parse().unwrap(),
            client: http::HeaderValue::from_static("127.0.0.1"),
            duration_us: 1234,
            trace_id: None,
        }
    }

    #[test]
    fn a_trace_id_is_logged_when_the_request_has_one() {
        let mut r = rec("/a");
        r.trace_id = Some([0xab; 16]);
        for format in [LogFormat::Text, LogFormat::Json] {
            let mut out = Vec::new();
            format_line(&mut out, &r, format, &mut SecondCache::default());
            let line = String::from_utf8(out).unwrap();
            assert!(line.contains(&"ab".repeat(16)), "{line}");
            if format == LogFormat::Json {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["trace_id"], "ab".repeat(16));
            }
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let mut out = Vec::new();
        timestamp(&mut out, 1_764_516_000_123);
        assert_eq!(String::from_utf8(out).unwrap(), "2025-11-30T15:20:00.123Z");
        let mut out = Vec::new();
        timestamp(&mut out, 951_782_400_000); // 2000-02-29, a leap day
        assert_eq!(String::from_utf8(out).unwrap(), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn json_lines_parse_and_escape_what_clients_send() {
        let mut out = Vec::new();
        format_line(
            &mut out,
            &rec("/a/%22b?q=1"),
            LogFormat::Json,
            &mut SecondCache::default(),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["path"], "/a/%22b");
        assert_eq!(v["route"], "api");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["target"], "sluice::access");
        // Whatever a path may hold comes out as a valid JSON string.
        let mut out = Vec::new();
        json_str(&mut out, "/a\"b\\c\u{1}é");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "/a\"b\\c\u{1}é");
    }

    #[test]
    fn text_lines_carry_every_field_and_no_colour() {
        let mut out = Vec::new();
        format_line(&mut out, &rec("/x"), LogFormat::Text, &mut SecondCache::default());
        let line = String::from_utf8(out).unwrap();
        assert!(line.starts_with("2025-11-30T15:20:00.123Z  INFO sluice::access: request route=api decision=forwarded status=200 method=GET path=/x client=127.0.0.1 duration_ms=1.234"), "{line}");
        assert!(!line.contains('\u{1b}'));
    }

    #[test]
    fn the_cached_second_turns_over_and_durations_keep_three_decimals() {
        let mut c = SecondCache::default();
        let mut out = Vec::new();
        c.write(&mut out, 1_764_516_000_999);
        out.push(b' ');
        c.write(&mut out, 1_764_516_001_005);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2025-11-30T15:20:00.999Z 2025-11-30T15:20:01.005Z"
        );
        for (us, text) in [(5, "0.005"), (1_234, "1.234"), (60_000_000, "60000.000")] {
            let mut out = Vec::new();
            duration_ms(&mut out, us);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_blocks() {
        let dropped = prometheus::IntCounter::new("d", "d").unwrap();
        let (tx, _rx) = sync_channel(2);
        let log = AccessLog {
            tx,
            enabled: AtomicBool::new(true),
            settings: Arc::new(Mutex::new(Settings {
                format: LogFormat::Text,
                file: None,
            })),
            reopen: Arc::new(AtomicBool::new(false)),
            dropped: dropped.clone(),
        };
        for _ in 0..5 {
            log.log(rec("/x"));
        }
        assert_eq!(dropped.get(), 3);
    }
}
