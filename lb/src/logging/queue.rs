//! The bounded, lossy line queue between the threads that log and the writer thread.
//!
//! A worker never waits on the writer and never wakes it for a line: each thread appends its
//! line to a buffer of its own shard (one per core, picked once per thread; its lock is
//! taken by that thread and, a few dozen times a second, by the writer), and the writer
//! drains every shard each [`INTERVAL`] while lines arrive. An idle writer sleeps until the
//! first line after the pause wakes it; a shard half full wakes it early. A shard that holds
//! its share of `log_queue_lines` drops the line and counts it. Lines of one thread keep their
//! order; lines of different threads written in the same interval may come out of order by
//! up to the interval.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, Thread};
use std::time::Duration;

/// How long the writer lets lines gather while they keep coming.
pub(super) const INTERVAL: Duration = Duration::from_millis(20);

/// A drained buffer larger than this is given back instead of kept for the next batch.
const KEEP_CAPACITY: usize = 1 << 20;

/// A shard whose buffer grows past this many bytes wakes the writer at once.
const WAKE_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Shard {
    buf: Vec<u8>,
    lines: usize,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    dropped: AtomicU64,
    /// Set by the writer before it sleeps without a timeout.
    sleeping: AtomicBool,
    stop: AtomicBool,
    writer: Thread,
}

/// The side that logs: cheap to clone, shared by every thread.
#[derive(Clone)]
pub(super) struct Queue(Arc<Inner>);

/// Stops the writer when dropped, after it wrote out what is queued (waiting up to a second
/// for a writer that is stuck on its sink).
pub(super) struct Worker {
    inner: Arc<Inner>,
    done: mpsc::Receiver<()>,
}

/// The queue for `lines` lines in all (at least 64 per shard) in front of `sink`, and its
/// writer thread `lb-log`.
pub(super) fn start<W: Write + Send + 'static>(mut sink: W, lines: usize) -> (Queue, Worker) {
    let shards = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 64);
    let (ready_tx, ready_rx) = mpsc::sync_channel::<Arc<Inner>>(1);
    let (done_tx, done) = mpsc::channel();
    let handle = thread::Builder::new()
        .name("lb-log".into())
        .spawn(move || {
            let Ok(inner) = ready_rx.recv() else { return };
            drain(&inner, &mut sink);
            let _ = done_tx.send(());
        })
        .expect("spawn the log writer thread");
    let inner = Arc::new(Inner {
        shards: (0..shards).map(|_| Mutex::default()).collect(),
        per_shard: (lines / shards).max(64),
        dropped: AtomicU64::new(0),
        sleeping: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        writer: handle.thread().clone(),
    });
    let _ = ready_tx.send(inner.clone());
    (Queue(inner.clone()), Worker { inner, done })
}

/// The writer thread's loop: every shard's lines to the sink, until told to stop.
fn drain(inner: &Inner, sink: &mut dyn Write) {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        let stop = inner.stop.load(Ordering::Acquire);
        let mut wrote = false;
        for shard in inner.shards.iter() {
            {
                let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
                if s.buf.is_empty() {
                    continue;
                }
                s.lines = 0;
                std::mem::swap(&mut s.buf, &mut spare);
            }
            // A sink that fails (stderr closed) loses the lines; nothing else is to be done.
            let _ = sink.write_all(&spare);
            spare.clear();
            if spare.capacity() > KEEP_CAPACITY {
                spare = Vec::new();
            }
            wrote = true;
        }
        if wrote {
            let _ = sink.flush();
        }
        if stop {
            return;
        }
        if wrote {
            thread::park_timeout(INTERVAL);
            continue;
        }
        // Nothing came in a whole interval: sleep until a line does. The flag is set before
        // the last look, and a logger reads it after its line is in, so one of the two sees
        // the other (and an unpark before the park is kept).
        // The buffers a burst grew are given back first: a buffer kept through the pause would
        // hold on to the allocator page it came from, which the burst's other blocks filled.
        inner.sleeping.store(true, Ordering::SeqCst);
        spare = Vec::new();
        let empty = inner.shards.iter().all(|s| {
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            if s.buf.is_empty() {
                s.buf = Vec::new();
            }
            s.buf.is_empty()
        });
        if empty && !inner.stop.load(Ordering::SeqCst) {
            thread::park();
        }
        inner.sleeping.store(false, Ordering::SeqCst);
    }
}

thread_local! {
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl Queue {
    /// Appends one line (its bytes as given); false when its shard is full and it was dropped.
    pub(super) fn push(&self, line: &[u8]) -> bool {
        let inner = &*self.0;
        let mut i = SHARD.get();
        if i == usize::MAX {
            i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
            SHARD.set(i);
        }
        let shard = &inner.shards[i % inner.shards.len()];
        let wake_early = {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            if s.lines >= inner.per_shard {
                drop(s);
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            s.buf.extend_from_slice(line);
            s.lines += 1;
            s.lines == inner.per_shard / 2
                || (s.buf.len() >= WAKE_BYTES && s.buf.len() - line.len() < WAKE_BYTES)
        };
        if wake_early
            || (inner.sleeping.load(Ordering::SeqCst)
                && inner.sleeping.swap(false, Ordering::SeqCst))
        {
            inner.writer.unpark();
        }
        true
    }

    /// Lines dropped so far.
    pub(super) fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.writer.unpark();
        let _ = self.done.recv_timeout(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;
    use std::time::Instant;

    /// A sink that keeps what it is given, optionally blocking until released (as a stalled
    /// journald or a full pipe would).
    #[derive(Clone, Default)]
    pub(crate) struct Held(pub Arc<(Mutex<bool>, Condvar, Mutex<Vec<u8>>)>);

    impl Held {
        fn open() -> Held {
            let h = Held::default();
            h.release();
            h
        }
        fn release(&self) {
            let (open, cv, _) = &*self.0;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.0 .2.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv, out) = &*self.0;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_never_blocks_the_logger_and_drops_are_counted() {
        let sink = Held::default();
        let (q, worker) = start(sink.clone(), 64);
        let start = Instant::now();
        let mut refused = 0;
        for i in 0..10_000 {
            if !q.push(format!("line {i}\n").as_bytes()) {
                refused += 1;
            }
        }
        // 10,000 lines against a writer that takes none: returns at once, most dropped (the
        // writer may hold one batch it took before the sink stalled).
        assert!(start.elapsed() < Duration::from_secs(2));
        let dropped = q.dropped();
        assert_eq!(dropped, refused);
        assert!(
            (10_000 - 2 * 64..10_000).contains(&dropped),
            "dropped {dropped}"
        );
        sink.release();
        drop(q);
        drop(worker);
        let out = sink.text();
        let kept = out.lines().count() as u64;
        assert_eq!(kept + dropped, 10_000, "every line written or counted");
        assert!(out.starts_with("line 0\n"), "{}", &out[..out.len().min(40)]);
    }

    #[test]
    fn a_pause_gives_the_grown_buffers_back() {
        let sink = Held::open();
        let (q, worker) = start(sink.clone(), 100_000);
        let line = [b'x'; 200];
        for _ in 0..2_000 {
            assert!(q.push(&line));
        }
        let t0 = Instant::now();
        loop {
            let held: usize =
                q.0.shards
                    .iter()
                    .map(|s| s.lock().unwrap().buf.capacity())
                    .sum();
            if held == 0 && sink.text().len() == 2_000 * 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "buffers still hold {held} bytes after the pause"
            );
            thread::sleep(INTERVAL);
        }
        drop(q);
        drop(worker);
    }

    #[test]
    fn lines_reach_the_sink_soon_after_a_pause_and_in_order() {
        let sink = Held::open();
        let (q, worker) = start(sink.clone(), 16_384);
        for round in 0..3 {
            // Let the writer fall asleep, then one line must still come out promptly.
            thread::sleep(INTERVAL * 3);
            assert!(q.push(format!("alone {round}\n").as_bytes()));
            let t0 = Instant::now();
            while !sink.text().contains(&format!("alone {round}\n")) {
                assert!(
                    t0.elapsed() < Duration::from_secs(2),
                    "line {round} not written"
                );
                thread::sleep(Duration::from_millis(1));
            }
        }
        // Many threads at once: every line arrives, each thread's in its order.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                thread::spawn(move || {
                    for i in 0..5_000 {
                        while !q.push(format!("t{t} {i}\n").as_bytes()) {
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(q);
        drop(worker);
        let out = sink.text();
        for t in 0..4 {
            let seq: Vec<usize> = out
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(seq, (0..5_000).collect::<Vec<_>>(), "thread {t}");
        }
    }
}
