//! `lb-bench`: Qlik node simulator, load scenarios and the `lb` demo.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use lb_bench::placement;
use lb_bench::report::Report;
use lb_bench::scenario::{self, Scenario, ScenarioOpts};
use lb_sim::{SimCluster, SimOptions};

#[derive(Parser)]
#[command(
    name = "lb-bench",
    version,
    about = "Qlik node simulator, load generator and demo for lb"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run simulated Qlik Sense nodes until Ctrl-C.
    Sim {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Port of the first node; the others follow (0 = ephemeral ports).
        #[arg(long, default_value_t = 19100)]
        base_port: u16,
        /// Session cookie name.
        #[arg(long, default_value = "X-Qlik-Session")]
        cookie_name: String,
        /// Node name prefix (nodes are <prefix>1, <prefix>2, ...).
        #[arg(long, default_value = "node")]
        name_prefix: String,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Sign-in: first-request (a session on the first request), windows (NTLM/Kerberos on
        /// an authentication port at base port + 40, REST API at + 60), anonymous,
        /// saml=<identity provider SSO URL>, external=<module URL> or header=<header name>.
        #[arg(long, default_value = "first-request")]
        auth: lb_sim::Auth,
        /// Authentication port the sign-in redirects name (default: each node's own; a
        /// balancer's authentication listener when one is in front).
        #[arg(long)]
        advertised_auth_port: Option<u16>,
    },
    /// The product demo: 3 simulated nodes, the balancer as a child process, the qlik scenario.
    Demo {
        /// The balancer executable (default: `lb` next to this executable).
        #[arg(long)]
        lb_bin: Option<PathBuf>,
        /// The balancer configuration.
        #[arg(long, default_value = "deploy/examples/local.toml")]
        config: PathBuf,
        /// Concurrent users.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// How long users keep going.
        #[arg(long, default_value_t = 20.0)]
        duration_secs: f64,
        /// Address the balancer serves on (from the config).
        #[arg(long, default_value = "127.0.0.1:18000")]
        listen: SocketAddr,
        /// Load generator worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Write the result as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Let the balancer write to this terminal (by default its output goes to a log file).
        #[arg(long)]
        show_lb_output: bool,
        /// The nodes sign users in with Windows authentication (authentication ports
        /// 19140-19142, REST API 19160-19162) and the users sign in through the balancer's
        /// authentication listener (use with deploy/examples/windows-auth.toml).
        #[arg(long)]
        windows_auth: bool,
        /// The balancer's authentication listener the nodes redirect to (with --windows-auth).
        #[arg(long, default_value_t = 18044)]
        auth_port: u16,
    },
    /// Mixed Qlik user journeys: login, hub/qmc requests, an app WebSocket with an echo burst.
    Qlik {
        #[command(flatten)]
        common: Common,
        /// Users.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Users running a journey at the same time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// HTTP requests after the login in each journey.
        #[arg(long, default_value_t = 5)]
        requests_per_user: usize,
        /// Echo messages in each journey.
        #[arg(long, default_value_t = 10)]
        messages_per_user: usize,
        /// Size of the binary echo messages.
        #[arg(long, default_value_t = 256)]
        message_size: usize,
        /// Journeys per user (0 = repeat until the time is up).
        #[arg(long, default_value_t = 0)]
        journeys: u64,
    },
    /// Keep-alive users with sticky sessions.
    Http {
        #[command(flatten)]
        common: Common,
        /// Connections (one user each).
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Request path.
        #[arg(long, default_value = "/hub")]
        path: String,
    },
    /// Every request without cookies: a new session each time.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Connections.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Request path.
        #[arg(long, default_value = "/hub")]
        path: String,
    },
    /// WebSockets exchanging messages, round-trip latency.
    WsEcho {
        #[command(flatten)]
        common: Common,
        /// WebSockets.
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Message size in bytes.
        #[arg(long, default_value_t = 1024)]
        message_size: usize,
    },
    /// Soak: mixed users against the balancer (a child process on loopback) while a fault
    /// script reloads it, kills and restarts a node, drains one and sends bad clients; the
    /// invariants are checked throughout. Exits non-zero when one breaks.
    Soak {
        /// The balancer executable (default: `lb` next to this executable).
        #[arg(long)]
        lb_bin: Option<PathBuf>,
        /// Users.
        #[arg(long, default_value_t = 30)]
        users: usize,
        /// How long the soak runs.
        #[arg(long, default_value_t = 60.0)]
        duration_secs: f64,
        /// Seconds between two faults.
        #[arg(long, default_value_t = 3.0)]
        fault_every_secs: f64,
        /// Load generator worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Portal sign-ins: a ticket from a REST API listener (`--rest-url`), redeemed by a new
    /// browser at a users' listener (`--url`, possibly another balancer's); loopback only.
    Portal {
        /// The balancer's users' listener the browsers arrive at.
        #[arg(long, default_value = "http://127.0.0.1:18000")]
        url: String,
        /// The REST API listener the portal asks for tickets.
        #[arg(long, default_value = "http://127.0.0.1:18043")]
        rest_url: String,
        /// Portal workers signing users in at the same time.
        #[arg(long, default_value_t = 16)]
        portals: usize,
        /// How long the sign-ins go on.
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
        /// Load generator worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Engine placement simulator: policies compared over a simulated Qlik day (no network).
    Placement {
        /// Seed of the workload and of the random policies.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Load levels in percent of cluster capacity, comma separated.
        #[arg(long, value_delimiter = ',', default_values_t = [50u32, 60, 70, 80, 90, 100, 110, 120])]
        levels: Vec<u32>,
        /// A short run (08:30 to 09:30) for smoke tests.
        #[arg(long)]
        quick: bool,
        /// Write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the chart as SVG to this file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Ranking policy keys (the `[ranking]` section of the lb config) as JSON, e.g.
        /// `{"placement_spread": 0.3}`; unset keys keep their defaults.
        #[arg(long)]
        ranking_json: Option<String>,
    },
    /// Many idle WebSockets held for --duration-secs, then verified; balancer memory per tunnel.
    WsIdle {
        #[command(flatten)]
        common: Common,
        /// WebSockets.
        #[arg(long, default_value_t = 10000)]
        connections: usize,
        /// Sockets opened at the same time.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Balancer process id (reads /proc/<pid>/status VmRSS).
        #[arg(long)]
        pid: Option<u32>,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Target URL, `http://`, `https://`, `ws://` or `wss://`, optionally with a virtual proxy
    /// prefix.
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    url: String,
    /// Allow a target that is not a loopback address (then at most 1000 users and 1 h unless
    /// --max-users / --max-duration-secs say otherwise).
    #[arg(long)]
    allow_remote: bool,
    /// PEM CA bundle that signed the target's certificate (default: the system roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Accept any certificate of an https:// or wss:// target.
    #[arg(long)]
    insecure: bool,
    /// Extra request header, `Name: value` (repeatable), e.g. for header authentication.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Cookie every user starts with, `name=value` (repeatable), e.g. a Qlik session taken
    /// from a signed-in browser.
    #[arg(long = "cookie")]
    cookies: Vec<String>,
    /// At most this many requests (messages for ws-echo) per second across all users.
    #[arg(long)]
    rate: Option<f64>,
    /// Users start spread over this many seconds, and the rate limit grows from 0 over them.
    #[arg(long, default_value_t = 0.0)]
    ramp_secs: f64,
    /// Refuse runs with more users than this (default 100000, or 1000 with --allow-remote).
    #[arg(long)]
    max_users: Option<usize>,
    /// Refuse runs longer than this (default 24 h, or 1 h with --allow-remote).
    #[arg(long)]
    max_duration_secs: Option<f64>,
    /// Time bound in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Count bound: total requests (http, churn) or messages (ws-echo).
    #[arg(long)]
    count: Option<u64>,
    /// Load generator worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Timeout of one request, upgrade or round trip, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Common {
    fn opts(&self) -> ScenarioOpts {
        ScenarioOpts {
            url: self.url.clone(),
            allow_remote: self.allow_remote,
            duration: Duration::from_secs_f64(self.duration_secs.max(0.0)),
            max_count: self.count,
            threads: self.threads.max(1),
            timeout: Duration::from_millis(self.timeout_ms),
            target: lb_bench::client::TargetOpts {
                ca_file: self.ca_file.clone(),
                insecure: self.insecure,
                headers: self.headers.clone(),
                cookies: self.cookies.clone(),
            },
            rate: self.rate,
            ramp: Duration::from_secs_f64(self.ramp_secs.max(0.0)),
            max_users: self.max_users.unwrap_or(if self.allow_remote {
                scenario::MAX_REMOTE_USERS
            } else {
                scenario::MAX_USERS
            }),
            max_duration: self
                .max_duration_secs
                .map(|s| Duration::from_secs_f64(s.max(0.0)))
                .unwrap_or(if self.allow_remote {
                    scenario::MAX_REMOTE_DURATION
                } else {
                    scenario::MAX_DURATION
                }),
            ..ScenarioOpts::default()
        }
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    Ok(b.enable_all().build()?)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match real_main(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lb-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let (scenario, common, opts) = match cli.cmd {
        Cmd::Sim {
            nodes,
            base_port,
            cookie_name,
            name_prefix,
            threads,
            auth,
            advertised_auth_port,
        } => {
            scenario::raise_nofile();
            let opts = SimOptions {
                cookie_name,
                name_prefix,
                auth,
                advertised_auth_port,
                ..SimOptions::default()
            };
            runtime(threads)?.block_on(run_sim(nodes, base_port, opts))?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Placement {
            seed,
            levels,
            quick,
            json,
            svg,
            ranking_json,
        } => {
            let base = if quick {
                placement::SimConfig::quick()
            } else {
                placement::SimConfig::default()
            };
            let cfg = placement::SimConfig {
                seed,
                levels: if quick && levels.len() == 8 {
                    base.levels.clone()
                } else {
                    levels.iter().map(|&l| f64::from(l) / 100.0).collect()
                },
                ranking: match ranking_json {
                    Some(text) => serde_json::from_str(&text).context("--ranking-json")?,
                    None => base.ranking.clone(),
                },
                ..base
            };
            if let Err(e) = cfg.ranking.validate() {
                bail!("--ranking-json: {e}");
            }
            let report = placement::report(&cfg);
            print!(
                "{}\n{}",
                placement::summary_markdown(&report),
                placement::markdown(&report)
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if let Some(path) = svg {
                std::fs::write(&path, placement::svg(&report))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Soak {
            lb_bin,
            users,
            duration_secs,
            fault_every_secs,
            threads,
            json,
        } => {
            scenario::raise_nofile();
            let lb_bin = match lb_bin {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("lb"),
            };
            let opts = lb_bench::soak::SoakOpts {
                duration: Duration::from_secs_f64(duration_secs.max(1.0)),
                users: users.max(1),
                fault_every: Duration::from_secs_f64(fault_every_secs.max(0.5)),
            };
            return runtime(threads.max(1))?.block_on(soak(lb_bin, opts, json));
        }
        Cmd::Portal {
            url,
            rest_url,
            portals,
            duration_secs,
            threads,
            json,
        } => {
            let users = lb_bench::client::Target::parse(&url, false)?;
            let rest = lb_bench::client::Target::parse(&rest_url, false)?;
            let duration = Duration::from_secs_f64(duration_secs.clamp(0.1, 3600.0));
            let r = runtime(threads.max(1))?.block_on(lb_bench::portal::portal_sign_ins(
                rest,
                users,
                portals.clamp(1, 10_000),
                duration,
            ));
            println!(
                "portal sign-ins: {} in {:.1}s, {:.0}/s as the ticket's user; wrong user {}, errors {}; \
                 p50 {} us, p99 {} us",
                r.sign_ins,
                r.secs,
                r.good_per_sec,
                r.wrong_user,
                r.errors,
                r.latency.p50_us,
                r.latency.p99_us
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&r)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            return Ok(if r.wrong_user == 0 && r.errors == 0 && r.good > 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        Cmd::Demo {
            lb_bin,
            config,
            users,
            duration_secs,
            listen,
            threads,
            json,
            show_lb_output,
            windows_auth,
            auth_port,
        } => {
            scenario::raise_nofile();
            let lb_bin = match lb_bin {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("lb"),
            };
            let opts = ScenarioOpts {
                url: format!("http://{listen}"),
                duration: Duration::from_secs_f64(duration_secs.max(0.0)),
                connections: users,
                message_size: 256,
                threads: threads.max(1),
                ..ScenarioOpts::default()
            };
            let demo_opts = DemoOpts {
                lb_bin,
                config,
                listen,
                json,
                show_lb_output,
                windows_auth: windows_auth.then_some(auth_port),
            };
            return runtime(threads)?.block_on(demo(demo_opts, opts));
        }
        Cmd::Qlik {
            common,
            users,
            concurrency,
            requests_per_user,
            messages_per_user,
            message_size,
            journeys,
        } => {
            let opts = ScenarioOpts {
                connections: users,
                concurrency,
                requests_per_user,
                messages_per_user,
                message_size,
                journeys,
                ..common.opts()
            };
            (Scenario::Qlik, common, opts)
        }
        Cmd::Http {
            common,
            connections,
            path,
        } => {
            let opts = ScenarioOpts {
                connections,
                path,
                ..common.opts()
            };
            (Scenario::Http, common, opts)
        }
        Cmd::Churn {
            common,
            connections,
            path,
        } => {
            let opts = ScenarioOpts {
                connections,
                path,
                ..common.opts()
            };
            (Scenario::Churn, common, opts)
        }
        Cmd::WsEcho {
            common,
            connections,
            message_size,
        } => {
            let opts = ScenarioOpts {
                connections,
                message_size,
                ..common.opts()
            };
            (Scenario::WsEcho, common, opts)
        }
        Cmd::WsIdle {
            common,
            connections,
            concurrency,
            pid,
        } => {
            let opts = ScenarioOpts {
                connections,
                concurrency,
                pid,
                ..common.opts()
            };
            (Scenario::WsIdle, common, opts)
        }
    };
    let report = runtime(opts.threads)?.block_on(scenario::run(scenario, &opts))?;
    finish(&report, common.json.as_deref())?;
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn finish(report: &Report, json: Option<&std::path::Path>) -> anyhow::Result<()> {
    print!("{}", report.table());
    if let Some(path) = json {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn run_sim(nodes: usize, base_port: u16, opts: SimOptions) -> anyhow::Result<()> {
    let cluster = SimCluster::start(nodes, base_port, opts.clone())
        .await
        .context("starting the simulated nodes")?;
    for n in cluster.nodes() {
        print!("{} listening on http://{}", n.name(), n.addr());
        if let (Some(a), Some(r)) = (n.auth_addr(), n.rest_addr()) {
            print!(", authentication http://{a}, REST API http://{r}");
        }
        println!();
    }
    println!("session cookie {}; Ctrl-C to stop", opts.cookie_name);
    tokio::signal::ctrl_c().await?;
    for n in cluster.nodes() {
        println!("{} {:?}", n.name(), n.stats());
    }
    cluster.stop_all().await;
    Ok(())
}

/// Sends SIGTERM to the child and waits for it (SIGKILL after 10 s).
fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct DemoOpts {
    lb_bin: PathBuf,
    config: PathBuf,
    listen: SocketAddr,
    json: Option<PathBuf>,
    show_lb_output: bool,
    /// Sign users in with Windows authentication through this balancer port.
    windows_auth: Option<u16>,
}

/// The module API of `deploy/examples/local.toml`.
const MODULE_API: &str = "127.0.0.1:18002";

/// Asks the balancer's Qlik load balancing module to rank the three simulated engines; the
/// answer as node names, most preferred first.
async fn module_order(cluster: &SimCluster) -> Option<Vec<String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let engines: Vec<String> = cluster
        .addrs()
        .iter()
        .map(|a| format!("wss://{a}"))
        .collect();
    let body = serde_json::json!({"AppName": "demo-app", "QlikSenseEngines": engines}).to_string();
    let mut s = tokio::net::TcpStream::connect(MODULE_API).await.ok()?;
    let req = format!(
        "POST /loadbalancing/prioritize HTTP/1.1\r\nHost: {MODULE_API}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&raw);
    let json: serde_json::Value = serde_json::from_str(&text[text.find("\r\n\r\n")? + 4..]).ok()?;
    let names = json["QlikSenseEngines"]
        .as_array()?
        .iter()
        .map(|e| {
            let e = e.as_str().unwrap_or_default();
            cluster
                .nodes()
                .iter()
                .find(|n| e.ends_with(&n.addr().to_string()))
                .map_or_else(|| e.to_string(), |n| n.name().to_string())
        })
        .collect();
    Some(names)
}

/// Shows the module API's engine ranking following the engines' live telemetry.
async fn show_ranking(cluster: &SimCluster) {
    use lb_sim::EngineTelemetry;
    let Some(before) = module_order(cluster).await else {
        println!("module API not reachable on {MODULE_API}: ranking demo skipped");
        return;
    };
    println!("Qlik load balancing module on {MODULE_API} (engines ranked from live telemetry):");
    println!(
        "  all engines idle:                       {}",
        before.join(" > ")
    );
    cluster.node(0).set_telemetry(EngineTelemetry {
        cpu: 70.0,
        mem_free_mb: 6_000.0,
        active_sessions: 40,
        ..EngineTelemetry::default()
    });
    cluster.node(1).set_telemetry(EngineTelemetry {
        cpu: 96.0,
        mem_free_mb: 1_500.0,
        saturated: Some(true),
        ..EngineTelemetry::default()
    });
    let want = ["node3", "node1", "node2"];
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut after = before;
    while Instant::now() < deadline {
        if let Some(o) = module_order(cluster).await {
            after = o;
            if after == want {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "  node1 busy (70% CPU), node2 saturated:   {}",
        after.join(" > ")
    );
    for n in cluster.nodes() {
        n.set_telemetry(EngineTelemetry::default());
    }
}

fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `lb-bench soak`: three simulated nodes, the balancer as a child process watching its
/// configuration file, the soak scenario.
async fn soak(
    lb_bin: PathBuf,
    opts: lb_bench::soak::SoakOpts,
    json: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    use lb_bench::soak;
    if !lb_bin.exists() {
        bail!(
            "balancer executable {} not found (build it with `cargo build --release -p lb`, or pass --lb-bin)",
            lb_bin.display()
        );
    }
    let cluster = SimCluster::start(3, 0, SimOptions::default())
        .await
        .context("starting simulated nodes")?;
    let free = || -> anyhow::Result<SocketAddr> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
    };
    let (proxy, admin) = (free()?, free()?);
    let configs = [0, 1].map(|v| soak::config(proxy, admin, &cluster.addrs(), v));
    let dir = std::env::temp_dir().join(format!("lb-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config_path = dir.join("lb.toml");
    std::fs::write(&config_path, &configs[0])?;
    let log_path = dir.join("lb.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(&lb_bin)
        .arg("run")
        .arg("--config")
        .arg(&config_path)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", lb_bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(proxy).await.is_err() {
        if child.try_wait()?.is_some() || Instant::now() >= deadline {
            stop_child(&mut child);
            bail!("the balancer did not start\n{}", log_tail(&log_path));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "soak: {} users for {:.0} s, a fault every {:.1} s; balancer pid {} on {proxy} (admin {admin}, log {})",
        opts.users,
        opts.duration.as_secs_f64(),
        opts.fault_every.as_secs_f64(),
        child.id(),
        log_path.display()
    );
    let target = soak::SoakTarget {
        proxy,
        admin,
        config_path,
        configs,
        pid: child.id(),
        node_ids: vec!["qps1".into(), "qps2".into(), "qps3".into()],
    };
    let result = soak::run(&cluster, &target, &opts).await;
    stop_child(&mut child);
    cluster.stop_all().await;
    let report = result?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(p) = json {
        std::fs::write(&p, text + "\n").with_context(|| format!("cannot write {}", p.display()))?;
    }
    let ok = report.ok();
    println!("soak {}", if ok { "PASSED" } else { "FAILED" });
    let _ = std::fs::remove_dir_all(&dir);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn demo(d: DemoOpts, opts: ScenarioOpts) -> anyhow::Result<ExitCode> {
    let DemoOpts {
        lb_bin,
        config,
        listen,
        json,
        show_lb_output,
        windows_auth,
    } = d;
    if !lb_bin.exists() {
        bail!(
            "balancer executable {} not found (build it with `cargo build -p lb`, or pass --lb-bin)",
            lb_bin.display()
        );
    }
    if !config.exists() {
        bail!(
            "configuration {} not found (pass --config)",
            config.display()
        );
    }
    if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
        bail!("{listen} is already in use: stop whatever listens there first");
    }
    let sim_opts = match windows_auth {
        Some(port) => SimOptions {
            advertised_auth_port: Some(port),
            ..SimOptions::with_auth(lb_sim::Auth::Windows)
        },
        None => SimOptions::default(),
    };
    let cluster = SimCluster::start(3, 19100, sim_opts)
        .await
        .context("starting simulated nodes on 127.0.0.1:19100-19102")?;
    for n in cluster.nodes() {
        match (n.auth_addr(), n.rest_addr()) {
            (Some(a), Some(r)) => println!(
                "simulated {} on {} (Windows authentication {a}, REST API {r})",
                n.name(),
                n.addr()
            ),
            _ => println!("simulated {} on {}", n.name(), n.addr()),
        }
    }
    let log_path = std::env::temp_dir().join(format!("lb-demo-{}.log", std::process::id()));
    let mut cmd = Command::new(&lb_bin);
    cmd.arg("run").arg("--config").arg(&config);
    if !show_lb_output {
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        println!(
            "starting {} run --config {} (output in {})",
            lb_bin.display(),
            config.display(),
            log_path.display()
        );
    } else {
        println!(
            "starting {} run --config {}",
            lb_bin.display(),
            config.display()
        );
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", lb_bin.display()))?;

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the balancer exited before serving on {listen}: {status}\n{}",
                log_tail(&log_path)
            );
        }
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            break;
        }
        if Instant::now() >= deadline {
            stop_child(&mut child);
            bail!("the balancer did not accept connections on {listen} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(port) = windows_auth {
        println!(
            "balancer up on {listen}; {} users sign in with Windows authentication (NTLM) \
             through the authentication listener on port {port}",
            opts.connections
        );
        let cluster = std::sync::Arc::new(cluster);
        let r = lb_bench::signin::windows_sign_ins(
            listen,
            cluster.clone(),
            opts.connections,
            Duration::from_millis(50),
        )
        .await;
        stop_child(&mut child);
        let failures: u64 = cluster
            .nodes()
            .iter()
            .map(|n| n.stats().ntlm_failures)
            .sum();
        println!("simulated nodes:");
        for n in cluster.nodes() {
            let s = n.stats();
            println!(
                "  {:<6} NTLM sign-ins {:>5}  tickets {:>5}  sessions {:>5}  websockets {:>5}",
                n.name(),
                s.ntlm_logins,
                s.tickets_issued,
                n.session_count(),
                s.ws_accepted
            );
        }
        cluster.stop_all().await;
        if let Some(path) = json.as_deref() {
            std::fs::write(path, serde_json::to_string_pretty(&r)? + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let ok = r.signed_in == r.users && r.broken == 0 && failures == 0;
        println!(
            "demo {}: {} of {} users signed in through Windows authentication, {} broken \
             handshakes, {} WebSockets on their own node",
            if ok { "PASSED" } else { "FAILED" },
            r.signed_in,
            r.users,
            r.broken as u64 + failures,
            r.websockets_on_own_node
        );
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    println!(
        "balancer up on {listen}; running the qlik scenario with {} users for {:.0} s",
        opts.connections,
        opts.duration.as_secs_f64()
    );
    let result = scenario::run(Scenario::Qlik, &opts).await;
    if result.is_ok() {
        show_ranking(&cluster).await;
    }
    stop_child(&mut child);
    let report = result?;
    finish(&report, json.as_deref())?;
    println!("simulated nodes:");
    for n in cluster.nodes() {
        let s = n.stats();
        println!(
            "  {:<6} requests {:>7}  sessions {:>5}  401s {:>3}  websockets {:>5}",
            n.name(),
            s.requests,
            s.sessions_issued,
            s.foreign_rejections,
            s.ws_accepted
        );
    }
    cluster.stop_all().await;
    let ok = report.violations == 0
        && report.errors == 0
        && report.users_served == opts.connections as u64;
    println!(
        "demo {}: {} of {} users served, {} errors, {} stickiness violations",
        if ok { "PASSED" } else { "FAILED" },
        report.users_served,
        opts.connections,
        report.errors,
        report.violations
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}
