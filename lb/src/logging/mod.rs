//! Where log lines go, off the hot path.
//!
//! Every line (the access log included) is formatted by the thread that logs it and handed to
//! a bounded queue ([`queue`]: one buffer per core, drained in batches); a writer thread of
//! its own writes them to stderr (the default) or to `server.log_file`. A full queue never
//! blocks a worker: the line is dropped and counted in `lb_log_lines_dropped_total`. The file is reopened at its path after SIGUSR1 ([`reopen`]),
//! so logrotate can rename it and signal. ANSI colours only when stderr is a terminal; no
//! timestamp when stderr is the journal (it stamps every line itself).

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

mod queue;

use lb_config::LogFormat;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Lines dropped because the writer's queue was full.
pub const DROPPED_METRIC: &str = "lb_log_lines_dropped_total";

/// Set by [`reopen`], acted on by the writer thread before its next line.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// The queue [`init`] installed, for the access log's own formatter.
static DIRECT: OnceLock<Direct> = OnceLock::new();

struct Direct {
    queue: Queue,
    json: bool,
    time: bool,
}

/// One access-log line.
pub struct AccessLine<'a> {
    pub client: SocketAddr,
    /// The client's IP address as text (prepared once per connection).
    pub client_ip: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub node: &'a str,
    pub sticky: &'a str,
    pub micros: u64,
}

/// Queues one access-log line, formatted here without `core::fmt` for the strings (the
/// generic event formatter costs about a third of a proxied request's instructions). The line
/// has the fields and the shape of the other log lines (text or JSON). Returns false when
/// [`init`] did not run (a balancer inside a test process): the caller logs an event instead.
pub fn access(line: &AccessLine<'_>) -> bool {
    let Some(d) = DIRECT.get() else {
        return false;
    };
    thread_local! {
        static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
    }
    BUF.with(|b| {
        let mut s = b.borrow_mut();
        s.clear();
        format_access(&mut s, line, d.json, d.time.then(SystemTime::now));
        let _ = d.queue.make_writer().write(&s);
    });
    true
}

/// The line's bytes (UTF-8: every piece is a `str` or ASCII), appended whole slices at a time.
fn format_access(s: &mut Vec<u8>, l: &AccessLine<'_>, json: bool, at: Option<SystemTime>) {
    let ms_whole = l.micros / 1000;
    let ms_frac = l.micros % 1000;
    if json {
        s.push(b'{');
        if let Some(t) = at {
            s.extend_from_slice(b"\"timestamp\":\"");
            push_time(s, t);
            s.extend_from_slice(b"\",");
        }
        s.extend_from_slice(b"\"level\":\"INFO\",\"client\":\"");
        push_client(s, l);
        s.extend_from_slice(b"\",\"method\":\"");
        push_escaped(s, l.method);
        s.extend_from_slice(b"\",\"path\":\"");
        push_escaped(s, l.path);
        s.extend_from_slice(b"\",\"status\":");
        push_u64(s, l.status as u64);
        s.extend_from_slice(b",\"node\":\"");
        push_escaped(s, l.node);
        s.extend_from_slice(b"\",\"sticky\":\"");
        push_escaped(s, l.sticky);
        s.extend_from_slice(b"\",\"ms\":");
        push_u64(s, ms_whole);
        s.push(b'.');
        push_frac3(s, ms_frac);
        s.extend_from_slice(b",\"target\":\"lb::access\"}\n");
    } else {
        if let Some(t) = at {
            push_time(s, t);
            s.push(b' ');
        }
        s.extend_from_slice(b" INFO lb::access: client=");
        push_client(s, l);
        s.extend_from_slice(b" method=");
        s.extend_from_slice(l.method.as_bytes());
        s.extend_from_slice(b" path=\"");
        push_escaped(s, l.path);
        s.extend_from_slice(b"\" status=");
        push_u64(s, l.status as u64);
        s.extend_from_slice(b" node=");
        s.extend_from_slice(l.node.as_bytes());
        s.extend_from_slice(b" sticky=");
        s.extend_from_slice(l.sticky.as_bytes());
        s.extend_from_slice(b" ms=");
        push_u64(s, ms_whole);
        s.push(b'.');
        push_frac3(s, ms_frac);
        s.push(b'\n');
    }
}

fn push_client(s: &mut Vec<u8>, l: &AccessLine<'_>) {
    if l.client.is_ipv6() {
        s.push(b'[');
        s.extend_from_slice(l.client_ip.as_bytes());
        s.push(b']');
    } else {
        s.extend_from_slice(l.client_ip.as_bytes());
    }
    s.push(b':');
    push_u64(s, l.client.port() as u64);
}

fn push_u64(s: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    s.extend_from_slice(&buf[i..]);
}

fn push_frac3(s: &mut Vec<u8>, n: u64) {
    s.extend_from_slice(&[
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// A string inside quotes: `"` and `\` escaped, control characters as `\u00XX` (valid JSON,
/// and unambiguous in the text format). Runs that need nothing are copied whole.
fn push_escaped(s: &mut Vec<u8>, v: &str) {
    let needs = |b: u8| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f;
    let mut rest = v.as_bytes();
    while let Some(i) = rest.iter().position(|&b| needs(b)) {
        s.extend_from_slice(&rest[..i]);
        match rest[i] {
            b'"' => s.extend_from_slice(b"\\\""),
            b'\\' => s.extend_from_slice(b"\\\\"),
            c => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                s.extend_from_slice(b"\\u00");
                s.push(HEX[(c >> 4) as usize]);
                s.push(HEX[(c & 15) as usize]);
            }
        }
        rest = &rest[i + 1..];
    }
    s.extend_from_slice(rest);
}

/// RFC 3339 UTC with microseconds, as the other log lines carry; the date and time of day are
/// formatted once per second per thread.
fn push_time(s: &mut Vec<u8>, t: SystemTime) {
    thread_local! {
        static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
    }
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        text = civil_time(secs);
        SECOND.set((secs, text));
    }
    s.extend_from_slice(&text);
    s.push(b'.');
    let us = d.subsec_micros() as u64;
    push_frac3(s, us / 1000);
    push_frac3(s, us % 1000);
    s.push(b'Z');
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (UTC), by the days-from-civil inverse.
fn civil_time(secs: u64) -> [u8; 19] {
    let days = (secs / 86_400) as i64;
    let tod = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 19];
    let mut put = |at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            out[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, tod / 3600, 2);
    put(14, tod / 60 % 60, 2);
    put(17, tod % 60, 2);
    for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        out[i] = c;
    }
    out
}

/// What [`init`] needs: `[server]`'s logging keys.
#[derive(Debug, Clone)]
pub struct Options {
    pub format: LogFormat,
    pub file: Option<PathBuf>,
    pub queue_lines: usize,
}

impl From<&lb_config::Server> for Options {
    fn from(s: &lb_config::Server) -> Self {
        Options {
            format: s.log_format,
            file: s.log_file.clone(),
            queue_lines: s.log_queue_lines,
        }
    }
}

/// Keeps the writer thread; dropping it writes out what is queued (up to a second).
pub struct Logging {
    _worker: queue::Worker,
}

/// Installs the process's log subscriber: `RUST_LOG` filters (default `info`), lines go
/// through the bounded queue to stderr or the log file. Fails only when the file cannot be
/// opened.
pub fn init(opts: &Options) -> io::Result<Logging> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (sink, ansi, time) = match &opts.file {
        Some(path) => (Sink::file(path)?, false, true),
        None => {
            let stderr = io::stderr();
            let ansi = stderr.is_terminal();
            // systemd sets JOURNAL_STREAM when stderr is connected to the journal.
            let time = std::env::var_os("JOURNAL_STREAM").is_none();
            (Sink::Stderr(BufWriter::new(stderr)), ansi, time)
        }
    };
    let (writer, worker) = queue(sink, opts.queue_lines);
    let _ = DIRECT.set(Direct {
        queue: writer.clone(),
        json: opts.format == LogFormat::Json,
        time,
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let installed = match (opts.format, time) {
        (LogFormat::Text, true) => builder.try_init(),
        (LogFormat::Text, false) => builder.without_time().try_init(),
        (LogFormat::Json, true) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Json, false) => builder.json().flatten_event(true).without_time().try_init(),
    };
    if let Err(e) = installed {
        return Err(io::Error::other(e.to_string()));
    }
    Ok(Logging { _worker: worker })
}

/// The bounded, lossy queue in front of `sink` and its writer thread.
fn queue<W: Write + Send + 'static>(sink: W, lines: usize) -> (Queue, queue::Worker) {
    let (q, worker) = queue::start(sink, lines);
    (Queue(q), worker)
}

/// Asks the writer thread to reopen the log file at its path before its next line (SIGUSR1).
/// Logs a line saying so, which is the first line in the new file. Without a log file, it only
/// logs that line.
pub fn reopen() {
    REOPEN.store(true, Ordering::Release);
    tracing::info!("SIGUSR1: reopening the log file");
}

/// A reload cannot move the log or resize the runtime: says so for each such key that changed.
pub fn warn_restart_only(old: &lb_config::Server, new: &lb_config::Server) {
    let changed = [
        (
            "server.worker_threads",
            old.worker_threads != new.worker_threads,
        ),
        ("server.log_format", old.log_format != new.log_format),
        ("server.log_file", old.log_file != new.log_file),
        (
            "server.log_queue_lines",
            old.log_queue_lines != new.log_queue_lines,
        ),
    ];
    for (key, _) in changed.iter().filter(|(_, c)| *c) {
        tracing::warn!("{key} changed: it applies after a restart");
    }
}

/// Registers `lb_log_lines_dropped_total` (at its current count) with the metrics recorder.
pub fn register_metric() {
    metrics::counter!(DROPPED_METRIC).increment(0);
}

/// The logging side of the queue: every write is one line; a full queue drops it.
#[derive(Clone)]
struct Queue(queue::Queue);

impl<'a> MakeWriter<'a> for Queue {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(self)
    }
}

/// One formatted line on its way into the queue.
struct Line<'a>(&'a Queue);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.0 .0.push(buf) {
            // Rare (the queue is full): the counter is looked up only then.
            metrics::counter!(DROPPED_METRIC).absolute(self.0 .0.dropped());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the writer thread writes: stderr or a file it can reopen. Buffered; the thread
/// flushes after each batch it drains from the queue.
enum Sink {
    Stderr(BufWriter<io::Stderr>),
    File { path: PathBuf, out: BufWriter<File> },
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Sink {
    fn file(path: &Path) -> io::Result<Sink> {
        let f = open(path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
        })?;
        Ok(Sink::File {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(64 * 1024, f),
        })
    }

    fn out(&mut self) -> &mut dyn Write {
        if let Sink::File { path, out } = self {
            if REOPEN.swap(false, Ordering::AcqRel) {
                let _ = out.flush();
                match open(path) {
                    Ok(f) => *out = BufWriter::with_capacity(64 * 1024, f),
                    Err(e) => {
                        // Keep the file already open; say so in it.
                        let _ = writeln!(
                            out,
                            "lb: cannot reopen the log file {}: {e}; still writing to the old one",
                            path.display()
                        );
                    }
                }
            }
        }
        match self {
            Sink::Stderr(w) => w,
            Sink::File { out, .. } => out,
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stderr(w) => w.flush(),
            Sink::File { out, .. } => out.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_are_formatted_like_the_other_lines() {
        assert_eq!(&civil_time(0), b"1970-01-01T00:00:00");
        assert_eq!(&civil_time(1_700_000_000), b"2023-11-14T22:13:20");
        assert_eq!(&civil_time(951_782_400), b"2000-02-29T00:00:00");
        let l = AccessLine {
            client: "[::1]:4242".parse().unwrap(),
            client_ip: "::1",
            method: "GET",
            path: "/a\"b\\c\u{1}\u{7f}é",
            status: 200,
            node: "qps1",
            sticky: "new",
            micros: 12_345,
        };
        let mut b = Vec::new();
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_042);
        format_access(&mut b, &l, false, Some(at));
        assert_eq!(
            String::from_utf8(b.clone()).unwrap(),
            "2023-11-14T22:13:20.000042Z  INFO lb::access: client=[::1]:4242 method=GET \
             path=\"/a\\\"b\\\\c\\u0001\\u007fé\" status=200 node=qps1 sticky=new ms=12.345\n"
        );
        b.clear();
        format_access(&mut b, &l, true, None);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\u{1}\u{7f}é");
        assert_eq!(v["client"], "[::1]:4242");
        assert_eq!(v["status"], 200);
        assert_eq!(v["ms"], 12.345);
        assert_eq!(v["target"], "lb::access");
    }

    #[test]
    fn the_file_is_reopened_at_its_path() {
        let dir = std::env::temp_dir().join(format!("lb-logging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.log");
        let mut sink = Sink::file(&path).unwrap();
        writeln!(sink, "first").unwrap();
        sink.flush().unwrap();
        std::fs::rename(&path, dir.join("lb.log.1")).unwrap();
        writeln!(sink, "still the old file").unwrap();
        REOPEN.store(true, Ordering::Release);
        writeln!(sink, "second").unwrap();
        sink.flush().unwrap();
        let old = std::fs::read_to_string(dir.join("lb.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old, "first\nstill the old file\n");
        assert_eq!(new, "second\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
