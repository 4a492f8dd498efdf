//! One polling task per engine: GET the health check, parse it, publish the result.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use lb_module_api::{parse_healthcheck, EngineSample, RankPolicy};
use metrics::{Counter, Gauge};
use rand::Rng;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Published, Slot};

/// Weight of the newest CPU sample in the smoothed CPU (an exponentially weighted moving
/// average): `smoothed = smoothed + SMOOTHING * (cpu - smoothed)`.
pub const CPU_SMOOTHING: f64 = 0.5;

/// Largest health check body read; real ones are a few KB.
const MAX_BODY: usize = 1024 * 1024;

const MB: f64 = 1024.0 * 1024.0;

/// Everything one poll task needs, fixed for its lifetime.
pub(super) struct PollJob {
    pub id: String,
    pub url: Uri,
    pub headers: HeaderMap,
    pub interval: Duration,
    pub timeout: Duration,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub slot: Arc<Slot>,
    pub policy: Arc<ArcSwap<RankPolicy>>,
    pub cancel: CancellationToken,
}

/// Why one poll failed; its `Display` is the reason shown in status and logs.
#[derive(Debug, thiserror::Error)]
pub(super) enum PollError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("health check answered HTTP {0}")]
    Status(http::StatusCode),
    #[error("reading health check body: {0}")]
    Body(String),
    #[error("{0}")]
    Parse(#[from] lb_module_api::ParseError),
    #[error("bad request: {0}")]
    Request(String),
}

impl PollError {
    fn result_label(&self) -> &'static str {
        match self {
            PollError::Timeout(_) => "timeout",
            PollError::Connect { .. } | PollError::Tls(_) | PollError::Http(_) => "error",
            PollError::Status(_) => "bad_status",
            PollError::Body(_) | PollError::Parse(_) => "bad_body",
            PollError::Request(_) => "error",
        }
    }
}

/// An open HTTP/1 connection to the engine, reused across polls while it stays healthy.
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct EngineMetrics {
    cpu: Gauge,
    free: Gauge,
    total: Gauge,
    saturated: Gauge,
    sessions: Gauge,
    up: Gauge,
    ok: Counter,
    timeout: Counter,
    error: Counter,
    bad_status: Counter,
    bad_body: Counter,
}

impl EngineMetrics {
    fn new(node: &str) -> Self {
        let n = node.to_owned();
        let polls = |result: &'static str| metrics::counter!("lb_engine_polls_total", "node" => n.clone(), "result" => result);
        Self {
            cpu: metrics::gauge!("lb_engine_cpu_percent", "node" => n.clone()),
            free: metrics::gauge!("lb_engine_memory_free_bytes", "node" => n.clone()),
            total: metrics::gauge!("lb_engine_memory_total_bytes", "node" => n.clone()),
            saturated: metrics::gauge!("lb_engine_saturated", "node" => n.clone()),
            sessions: metrics::gauge!("lb_engine_sessions_active", "node" => n.clone()),
            up: metrics::gauge!("lb_engine_up", "node" => n.clone()),
            ok: polls("ok"),
            timeout: polls("timeout"),
            error: polls("error"),
            bad_status: polls("bad_status"),
            bad_body: polls("bad_body"),
        }
    }

    fn poll_failed(&self, e: &PollError) {
        match e.result_label() {
            "timeout" => self.timeout.increment(1),
            "bad_status" => self.bad_status.increment(1),
            "bad_body" => self.bad_body.increment(1),
            _ => self.error.increment(1),
        }
        self.up.set(0.0);
    }
}

/// Whether the last logged state was up; used to log once per change.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logged {
    Nothing,
    Up,
    Down,
}

pub(super) async fn run(job: PollJob) {
    let metrics = EngineMetrics::new(&job.id);
    let mut conn: Option<Conn> = None;
    let mut logged = Logged::Nothing;
    loop {
        let outcome = tokio::select! {
            biased;
            _ = job.cancel.cancelled() => break,
            r = tokio::time::timeout(job.timeout, poll_once(&job, &mut conn)) => {
                r.unwrap_or(Err(PollError::Timeout(job.timeout)))
            }
        };
        let now = Instant::now();
        let previous = job.slot.snapshot.load_full();
        match outcome {
            Ok(sample) => {
                let smoothed = match previous.smoothed_cpu {
                    Some(prev) if prev.is_finite() => {
                        prev + CPU_SMOOTHING * (sample.cpu_total - prev)
                    }
                    _ => sample.cpu_total,
                };
                record_sample(&metrics, &sample, smoothed, &job.policy.load());
                job.slot.snapshot.store(Arc::new(Published {
                    sample: Some(Arc::new(sample)),
                    at: Some(now),
                    smoothed_cpu: Some(smoothed),
                    failure: None,
                    last_error: previous.last_error.clone(),
                }));
                if logged != Logged::Up {
                    tracing::info!(node = %job.id, url = %job.url, "engine telemetry is up");
                    logged = Logged::Up;
                }
            }
            Err(e) => {
                conn = None;
                metrics.poll_failed(&e);
                let reason = e.to_string();
                if logged != Logged::Down {
                    tracing::warn!(node = %job.id, url = %job.url, reason = %reason, "engine telemetry is unreachable");
                    logged = Logged::Down;
                } else {
                    tracing::debug!(node = %job.id, reason = %reason, "engine poll failed again");
                }
                job.slot.snapshot.store(Arc::new(Published {
                    sample: previous.sample.clone(),
                    at: previous.at,
                    smoothed_cpu: previous.smoothed_cpu,
                    failure: Some(reason.clone()),
                    last_error: Some(reason),
                }));
            }
        }
        let wait = jittered(job.interval);
        tokio::select! {
            biased;
            _ = job.cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn record_sample(metrics: &EngineMetrics, s: &EngineSample, smoothed: f64, policy: &RankPolicy) {
    metrics.ok.increment(1);
    metrics.up.set(1.0);
    metrics.cpu.set(s.cpu_total);
    metrics.free.set(s.mem_free * MB);
    if let Some(total) = s.mem_total_physical {
        metrics.total.set(total * MB);
    }
    metrics.saturated.set(if policy.is_saturated(s, smoothed) {
        1.0
    } else {
        0.0
    });
    metrics.sessions.set(s.sessions_active as f64);
}

/// `interval` scaled by a random factor in [0.9, 1.1], so pollers do not march in step.
pub(super) fn jittered(interval: Duration) -> Duration {
    let factor: f64 = rand::rng().random_range(0.9..=1.1);
    interval.mul_f64(factor)
}

async fn poll_once(job: &PollJob, conn: &mut Option<Conn>) -> Result<EngineSample, PollError> {
    // Reuse the open connection when it is still usable; otherwise open a new one.
    let reusable = match conn.as_mut() {
        Some(c) if !c.sender.is_closed() => c.sender.ready().await.is_ok(),
        _ => false,
    };
    if !reusable {
        *conn = None;
        *conn = Some(connect(job).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(PollError::Request("no connection".into()));
    };
    c.sender.ready().await?;

    let mut req = Request::get(job.url.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .body(Empty::<Bytes>::new())
        .map_err(|e| PollError::Request(e.to_string()))?;
    *req.headers_mut() = job.headers.clone();
    if let Some(authority) = job.url.authority() {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req.headers_mut()
        .entry(header::ACCEPT)
        .or_insert(HeaderValue::from_static("application/json"));

    let resp = c.sender.send_request(req).await?;
    let status = resp.status();
    if !status.is_success() {
        return Err(PollError::Status(status));
    }
    let body = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| PollError::Body(e.to_string()))?
        .to_bytes();
    Ok(parse_healthcheck(&body)?)
}

async fn connect(job: &PollJob) -> Result<Conn, PollError> {
    let https = job.url.scheme_str() == Some("https");
    let raw_host = job.url.host().unwrap_or_default();
    let host = raw_host.trim_start_matches('[').trim_end_matches(']');
    let port = job.url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| PollError::Connect {
            addr: format!("{raw_host}:{port}"),
            source,
        })?;
    let _ = tcp.set_nodelay(true);

    let (sender, driver) = if https {
        let Some(tls) = job.tls.clone() else {
            return Err(PollError::Request("https without TLS settings".into()));
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| PollError::Request(format!("server name {host:?}: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(PollError::Tls)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender, driver)
    } else {
        let (sender, connection) = http1::handshake(TokioIo::new(tcp)).await?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender, driver)
    };
    Ok(Conn { sender, driver })
}
