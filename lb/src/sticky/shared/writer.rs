//! The store's background writer: queued writes go out in pipelined batches; while the store
//! is down it only probes, and reconnects by itself.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Op, SharedStore, Write, PROBE_EVERY};
use crate::clock;

impl SharedStore {
    /// The writer: batches of queued writes as one pipeline; while the store is down it only
    /// probes (the queue fills and later writes are dropped, counted).
    pub(super) async fn writer(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Write>,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(self.write_batch);
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !self.is_up() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = probe.tick() => self.probe().await,
                }
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => {
                    // What is queued at shutdown gets one try (the queue never closes: its
                    // sender lives as long as the store, so take only what is there).
                    while batch.len() < self.write_batch {
                        match rx.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    if !batch.is_empty() {
                        self.flush(&mut batch).await;
                    }
                    return;
                }
                n = rx.recv_many(&mut batch, self.write_batch) => {
                    if n == 0 {
                        return;
                    }
                    self.flush(&mut batch).await;
                    self.m.queued.set((rx.max_capacity() - rx.capacity()) as f64);
                }
                _ = probe.tick() => self.probe().await,
            }
        }
    }

    async fn probe(&self) {
        self.negative.retain(|_, until| *until > clock::now_secs());
        let Some(conn) = self.conn.load_full() else {
            if let Err(e) = self.connect().await {
                self.counts.errors.fetch_add(1, Ordering::Relaxed);
                self.m.errors.increment(1);
                self.set_up(false, Some(e.to_string()));
            }
            return;
        };
        let mut c = (*conn).clone();
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut c);
        match tokio::time::timeout(self.write_timeout, ping).await {
            Ok(Ok(_)) => self.set_up(true, None),
            Ok(Err(e)) => self.failed(&e),
            Err(_) => {
                self.counts.timeouts.fetch_add(1, Ordering::Relaxed);
                self.m.timeouts.increment(1);
                self.set_up(false, Some("PING timed out".into()));
            }
        }
    }

    async fn flush(&self, batch: &mut Vec<Write>) {
        let n = batch.len() as u64;
        let mut pipe = redis::pipe();
        for w in batch.drain(..) {
            match w.op {
                Op::Set { node, ttl_ms } => {
                    pipe.cmd("SET")
                        .arg(w.key)
                        .arg(node.as_bytes())
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore();
                }
                Op::Del => {
                    pipe.cmd("DEL").arg(w.key).ignore();
                }
            }
        }
        let Some(conn) = self.conn.load_full() else {
            return self.dropped(n);
        };
        let mut c = (*conn).clone();
        match tokio::time::timeout(self.write_timeout, pipe.query_async::<()>(&mut c)).await {
            Ok(Ok(())) => {
                self.counts.written.fetch_add(n, Ordering::Relaxed);
                self.m.written.increment(n);
                self.set_up(true, None);
            }
            Ok(Err(e)) => {
                self.failed(&e);
                self.dropped(n);
            }
            Err(_) => {
                self.counts.timeouts.fetch_add(1, Ordering::Relaxed);
                self.m.timeouts.increment(1);
                self.set_up(false, Some("write timed out".into()));
                self.dropped(n);
            }
        }
    }

    fn dropped(&self, n: u64) {
        self.counts
            .dropped_store_error
            .fetch_add(n, Ordering::Relaxed);
        self.m.dropped_store_error.increment(n);
    }
}
