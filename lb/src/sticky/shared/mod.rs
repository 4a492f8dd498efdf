//! The shared store (`[sticky.shared]`): several balancers share what they learn through one
//! Valkey/Redis store.
//!
//! Values are node ids (the same in every balancer's configuration), never positions. Keys are
//! `{key_prefix}{kind}:{id}` (`s:` Qlik sessions, `t:` tickets), each with its life as the
//! key's TTL. A portal session id learned from the REST API is an `s:` entry: the browser
//! carries it as its Qlik session cookie, so another balancer finds it by the session lookup.
//!
//! - **Writes** ([`SharedStore::put_session`], [`SharedStore::put_ticket`],
//!   [`SharedStore::forget`]) never wait: they go to a
//!   bounded queue (a full queue drops the write and counts it); one background task sends
//!   them in pipelined batches. Only [`SharedStore::put_acked`] (what the REST API listener
//!   learns, which a portal hands to a browser that may reach another balancer at once) waits
//!   for the store, at most `lookup_timeout`, and falls back to the queue.
//! - **Lookups** ([`SharedStore::lookup`]) are made only for an id this balancer does not know,
//!   within `lookup_timeout`; a timeout, an error or a store known to be down is
//!   [`Lookup::Unavailable`] (the request proceeds as a miss). A definite session miss is
//!   remembered for [`NEGATIVE_SECS`] so that an id unknown everywhere costs one store call,
//!   not one per request (a ticket's miss is not: it comes once, right after it was made).
//! - **Faults**: the store's state (up/down) changes only on a command's outcome or the
//!   background probe (a `PING` each second), and each change is logged once. While down no
//!   lookup is attempted and writes wait in the queue; the probe reconnects.

mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use metrics::{Counter, Gauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::sticky::table::SessionKey;

/// How long a definite miss is remembered (no new lookup for that id meanwhile).
pub const NEGATIVE_SECS: u32 = 10;
/// Negative entries kept at most; past that the set starts over.
const NEGATIVE_MAX: usize = 100_000;
/// The background probe's period (reconnects and `/status` freshness).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What a store entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A Qlik session cookie value: learned from a node's `Set-Cookie` or, as a portal
    /// session id, from the REST API.
    Session,
    /// A ticket (its life as the TTL).
    Ticket,
}

impl Kind {
    fn tag(self) -> &'static [u8] {
        match self {
            Kind::Session => b"s:",
            Kind::Ticket => b"t:",
        }
    }
}

/// The answer of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The id of the node the entry names.
    Hit(String),
    /// The store answered: no such entry.
    Miss,
    /// No answer in time, an error, or the store is down: proceed as a miss.
    Unavailable,
}

enum Op {
    Set { node: Arc<str>, ttl_ms: u64 },
    Del,
}

struct Write {
    key: Vec<u8>,
    op: Op,
}

/// Counters for `/status` (the metrics carry the same).
#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    unavailable: AtomicU64,
    timeouts: AtomicU64,
    errors: AtomicU64,
    written: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_store_error: AtomicU64,
}

struct Handles {
    up: Gauge,
    hits: Counter,
    misses: Counter,
    unavailable: Counter,
    timeouts: Counter,
    errors: Counter,
    written: Counter,
    dropped_queue_full: Counter,
    dropped_store_error: Counter,
    queued: Gauge,
}

impl Handles {
    fn new() -> Handles {
        Handles {
            up: metrics::gauge!("lb_shared_store_up"),
            hits: metrics::counter!("lb_shared_store_lookups_total", "result" => "hit"),
            misses: metrics::counter!("lb_shared_store_lookups_total", "result" => "miss"),
            unavailable: metrics::counter!("lb_shared_store_lookups_total", "result" => "unavailable"),
            timeouts: metrics::counter!("lb_shared_store_timeouts_total"),
            errors: metrics::counter!("lb_shared_store_errors_total"),
            written: metrics::counter!("lb_shared_store_writes_total"),
            dropped_queue_full: metrics::counter!("lb_shared_store_dropped_writes_total", "reason" => "queue_full"),
            dropped_store_error: metrics::counter!("lb_shared_store_dropped_writes_total", "reason" => "store_error"),
            queued: metrics::gauge!("lb_shared_store_queued_writes"),
        }
    }
}

/// Why the store could not be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("sticky.shared.url: {0}")]
    Url(String),
    #[error(
        "sticky.shared.password_file: the store at {url} refused the credentials (sticky.shared.username / password_file): {msg}"
    )]
    Credentials { url: String, msg: String },
}

/// The shared store of one balancer.
pub struct SharedStore {
    url: String,
    prefix: Box<[u8]>,
    lookup_timeout: Duration,
    connect_timeout: Duration,
    write_timeout: Duration,
    write_batch: usize,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    up: AtomicBool,
    since_unix_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    tx: mpsc::Sender<Write>,
    rx: Mutex<Option<mpsc::Receiver<Write>>>,
    negative: DashMap<Box<[u8]>, u32>,
    counts: Counts,
    m: Handles,
}

impl SharedStore {
    /// The store of `cfg`, not yet connected (see [`SharedStore::start`]).
    pub fn new(cfg: &lb_config::SharedStore) -> Result<Arc<SharedStore>, StartError> {
        if cfg.tls {
            // The client's TLS takes the process default provider: the one this balancer uses.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let info = cfg
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| StartError::Url(format!("{:?}: {e}", cfg.url)))?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &cfg.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &cfg.password {
            settings = settings.set_password(p);
        }
        let info = info.set_redis_settings(settings);
        let client = match &cfg.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| StartError::Url(format!("{:?}: {e}", cfg.url)))?;
        let (tx, rx) = mpsc::channel(cfg.write_queue);
        let m = Handles::new();
        m.up.set(0.0);
        Ok(Arc::new(SharedStore {
            url: cfg.url.clone(),
            prefix: cfg.key_prefix.as_bytes().into(),
            lookup_timeout: cfg.lookup_timeout,
            connect_timeout: cfg.connect_timeout,
            write_timeout: cfg.write_timeout,
            write_batch: cfg.write_batch,
            client,
            conn: ArcSwapOption::empty(),
            up: AtomicBool::new(false),
            since_unix_ms: AtomicU64::new(crate::state::unix_ms()),
            last_error: Mutex::new(None),
            tx,
            rx: Mutex::new(Some(rx)),
            negative: DashMap::new(),
            counts: Counts::default(),
            m,
        }))
    }

    /// Connects once (within `connect_timeout`) and starts the writer. A store that refuses
    /// the credentials is an error; one that cannot be reached is not (the balancer serves on
    /// local state and the writer keeps trying).
    pub async fn start(
        self: &Arc<Self>,
        tasks: &tokio_util::task::TaskTracker,
        stop: CancellationToken,
    ) -> Result<(), StartError> {
        if let Err(e) = self.connect().await {
            if is_auth_error(&e) {
                return Err(StartError::Credentials {
                    url: self.url.clone(),
                    msg: e.to_string(),
                });
            }
            tracing::warn!(
                url = %self.url,
                error = %e,
                "shared store unreachable at start: serving on local state, retrying"
            );
            self.set_up(false, Some(e.to_string()));
        }
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            tasks.spawn(self.clone().writer(rx, stop));
        }
        Ok(())
    }

    async fn connect(&self) -> redis::RedisResult<()> {
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.write_timeout.max(self.lookup_timeout)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let fut = ConnectionManager::new_with_config(self.client.clone(), cfg);
        // The manager's own timeout covers one attempt; this bounds the whole handshake.
        let c = tokio::time::timeout(self.connect_timeout * 3, fut)
            .await
            .map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::Io, "connection timed out"))
            })??;
        self.conn.store(Some(Arc::new(c)));
        self.set_up(true, None);
        Ok(())
    }

    fn key(&self, kind: Kind, id: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 2 + id.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(kind.tag());
        k.extend_from_slice(id);
        k
    }

    /// The store is reachable (as of the last command or probe).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool, err: Option<String>) {
        if let Some(e) = &err {
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
        }
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.since_unix_ms
                .store(crate::state::unix_ms(), Ordering::Relaxed);
            self.m.up.set(if up { 1.0 } else { 0.0 });
            if up {
                tracing::info!(url = %self.url, "shared store up");
            } else {
                tracing::warn!(
                    url = %self.url,
                    error = err.as_deref().unwrap_or("unknown"),
                    "shared store down: serving on local state and route cookies"
                );
            }
        }
    }

    /// Records a Qlik session (learned from a node, or a portal session id from the REST API)
    /// on `node` for `idle` (its idle expiry). Never waits.
    pub fn put_session(&self, id: &[u8], node: &Arc<str>, idle: Duration) {
        self.put(Kind::Session, id, node, idle);
    }

    /// Records a ticket redeemed on `node`, valid for `ttl`. Never waits.
    pub fn put_ticket(&self, id: &[u8], node: &Arc<str>, ttl: Duration) {
        self.put(Kind::Ticket, id, node, ttl);
    }

    /// Records an entry of `kind`. Never waits: a full queue drops the write (counted).
    pub fn put(&self, kind: Kind, id: &[u8], node: &Arc<str>, ttl: Duration) {
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        self.enqueue(Write {
            key: self.key(kind, id),
            op: Op::Set {
                node: node.clone(),
                ttl_ms,
            },
        });
    }

    /// Writes an entry at once and waits for the store to take it, at most `lookup_timeout`:
    /// for what another balancer is asked for right after it is made (a portal's ticket or
    /// session, which the portal hands to a browser that may arrive anywhere). A store known to
    /// be down is not waited for; a write not taken in time (or failed) is queued as any other.
    /// Returns whether the store took it.
    pub async fn put_acked(&self, kind: Kind, id: &[u8], node: &Arc<str>, ttl: Duration) -> bool {
        let conn = if self.is_up() {
            self.conn.load_full()
        } else {
            None
        };
        let Some(conn) = conn else {
            self.put(kind, id, node, ttl);
            return false;
        };
        let mut c = (*conn).clone();
        let mut set = redis::cmd("SET");
        set.arg(self.key(kind, id))
            .arg(node.as_bytes())
            .arg("PX")
            .arg((ttl.as_millis() as u64).max(1));
        match tokio::time::timeout(self.lookup_timeout, set.query_async::<()>(&mut c)).await {
            Ok(Ok(())) => {
                self.counts.written.fetch_add(1, Ordering::Relaxed);
                self.m.written.increment(1);
                return true;
            }
            Ok(Err(e)) => self.failed(&e),
            Err(_) => {
                self.counts.timeouts.fetch_add(1, Ordering::Relaxed);
                self.m.timeouts.increment(1);
            }
        }
        self.put(kind, id, node, ttl);
        false
    }

    /// Removes an entry (the node removed the session). Never waits.
    pub fn forget(&self, kind: Kind, id: &[u8]) {
        self.enqueue(Write {
            key: self.key(kind, id),
            op: Op::Del,
        });
    }

    fn enqueue(&self, w: Write) {
        if self.tx.try_send(w).is_err() {
            self.counts
                .dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
            self.m.dropped_queue_full.increment(1);
        }
    }

    /// Asks the store for `id`, within `lookup_timeout`. Only for ids this balancer does not
    /// know; the caller learns a hit into its own table.
    pub async fn lookup(&self, kind: Kind, id: &[u8]) -> Lookup {
        let key = self.key(kind, id);
        let now = clock::now_secs();
        // A ticket is in a request once (its redirect target), soon after another balancer
        // learned it: a miss is not remembered (a reload of the same ticket asks again).
        let remember_miss = kind != Kind::Ticket;
        if let Some(until) = remember_miss
            .then(|| self.negative.get(&key[..]).map(|e| *e))
            .flatten()
        {
            if now < until {
                return Lookup::Miss;
            }
        }
        let conn = if self.is_up() {
            self.conn.load_full()
        } else {
            None
        };
        let Some(conn) = conn else {
            return self.unavailable();
        };
        let mut c = (*conn).clone();
        let mut get = redis::cmd("GET");
        get.arg(&key[..]);
        let get = get.query_async::<Option<String>>(&mut c);
        match tokio::time::timeout(self.lookup_timeout, get).await {
            Err(_) => {
                self.counts.timeouts.fetch_add(1, Ordering::Relaxed);
                self.m.timeouts.increment(1);
                self.unavailable()
            }
            Ok(Err(e)) => {
                self.failed(&e);
                self.unavailable()
            }
            Ok(Ok(Some(node))) => {
                self.counts.hits.fetch_add(1, Ordering::Relaxed);
                self.m.hits.increment(1);
                Lookup::Hit(node)
            }
            Ok(Ok(None)) => {
                self.counts.misses.fetch_add(1, Ordering::Relaxed);
                self.m.misses.increment(1);
                if !remember_miss {
                    return Lookup::Miss;
                }
                if self.negative.len() >= NEGATIVE_MAX {
                    self.negative.clear();
                }
                self.negative.insert(key.into(), now + NEGATIVE_SECS);
                Lookup::Miss
            }
        }
    }

    fn unavailable(&self) -> Lookup {
        self.counts.unavailable.fetch_add(1, Ordering::Relaxed);
        self.m.unavailable.increment(1);
        Lookup::Unavailable
    }

    /// A command failed: count it; a connection-level failure marks the store down.
    fn failed(&self, e: &redis::RedisError) {
        self.counts.errors.fetch_add(1, Ordering::Relaxed);
        self.m.errors.increment(1);
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || is_auth_error(e)
        {
            self.set_up(false, Some(e.to_string()));
        }
    }

    /// The store as `GET /status` shows it.
    pub fn status(&self) -> serde_json::Value {
        let c = &self.counts;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        serde_json::json!({
            "url": self.url,
            "state": if self.is_up() { "up" } else { "down" },
            "since_unix_ms": r(&self.since_unix_ms),
            "last_error": last_error,
            "lookups": { "hit": r(&c.hits), "miss": r(&c.misses), "unavailable": r(&c.unavailable) },
            "timeouts": r(&c.timeouts),
            "errors": r(&c.errors),
            "writes": r(&c.written),
            "queued_writes": self.tx.max_capacity() - self.tx.capacity(),
            "dropped_writes": {
                "queue_full": r(&c.dropped_queue_full),
                "store_error": r(&c.dropped_store_error),
            },
        })
    }
}

fn is_auth_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// The cookie value a session key was made from (GUID keys are lowercase GUIDs).
pub fn session_value(key: &SessionKey) -> Vec<u8> {
    match key {
        SessionKey::Text(t) => t.to_vec(),
        SessionKey::Guid([hi, lo]) => {
            let h = format!("{hi:016x}{lo:016x}");
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
            .into_bytes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_values_round_trip() {
        for v in [
            &b"f2b68d0c-e0f0-47fb-8fd6-60a95237db78"[..],
            b"0000abc",
            b"",
        ] {
            assert_eq!(session_value(&SessionKey::from_value(v)), v);
        }
    }
}
