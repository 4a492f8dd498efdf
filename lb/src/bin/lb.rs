//! `lb`: run the balancer, check a configuration file, or drain a running balancer.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc (libmimalloc-sys, through [`Mi`]): size classes kept apart, so the handshake buffers of thousands of WebSockets opening
/// at once do not pin the pages of the tunnels that stay; built without transparent huge pages
/// (a 2 MiB page per arena chunk is resident memory an idle balancer does not need). Where
/// glibc's heap kept a burst's memory, mimalloc gives it back (see [`tune_allocator`] and
/// benches/RESULTS.md).
#[global_allocator]
static ALLOC: Mi = Mi;

/// mimalloc through its plain `mi_malloc` / `mi_realloc` / `mi_zalloc` whenever the layout asks
/// no more than what these guarantee (the rule of Rust's own `System` allocator: an alignment
/// of at most 16 and at most the size). `mimalloc::MiMalloc` calls the aligned variants for
/// every allocation, and mimalloc 3 takes a generic slow path for them: about 250 instructions
/// an allocation instead of 30, 3 % of a proxied request.
struct Mi;

/// What `mi_malloc` aligns every block to (`MI_MAX_ALIGN_SIZE`), and blocks smaller than that to
/// their size.
const MI_MAX_ALIGN: usize = 16;

#[allow(unsafe_code)]
// SAFETY: every method hands the layout to mimalloc's allocator, which returns null or a block
// of at least the size, aligned as asked: the aligned variants for any alignment, the plain ones
// only where the alignment is at most 16 and at most the size, which they guarantee.
unsafe impl std::alloc::GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MAX_ALIGN && layout.align() <= layout.size() {
            unsafe { mi::mi_malloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MAX_ALIGN && layout.align() <= layout.size() {
            unsafe { mi::mi_zalloc(layout.size()).cast() }
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        if layout.align() <= MI_MAX_ALIGN && layout.align() <= new_size {
            unsafe { mi::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            unsafe { mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast() }
        }
    }
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (include/mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Free pages go back to the system as soon as they are free (mimalloc's default waits 1 s,
/// and 10 s for whole arena chunks): resident memory follows the open connections down after
/// a burst. Called first in `main`, before any other thread exists (mimalloc's options are not
/// thread safe).
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: sets one integer option of the allocator; no other thread runs yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

/// Called when a runtime thread runs out of work: at most once a second, the allocator collects
/// that thread's heap. Blocks that other threads freed wait in a thread's heap until it
/// allocates again, so a worker that goes idle after a burst would keep the pages of the
/// connections it opened; collected, the empty ones go back to the system.
#[allow(unsafe_code)]
fn collect_when_idle() {
    thread_local! {
        static LAST: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    let now = lb::clock::now_ms();
    if now.saturating_sub(LAST.get()) < 1000 {
        return;
    }
    LAST.set(now);
    // SAFETY: collects the calling thread's own heap; no pointer is handed over.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

#[derive(Parser)]
#[command(
    name = "lb",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("LB_GIT_COMMIT"), ")"),
    about = "Sticky, WebSocket-aware load balancer for Qlik Sense proxy nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the balancer.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Check a configuration file exactly as a start or reload would, print a summary, and
    /// exit with status 1 if it has errors.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Drain a running balancer through its admin API: its `/ready` answers 503 so the load
    /// balancer in front stops sending it connections; users and WebSockets continue. Waits
    /// until it is drained (no connection and no WebSocket left) and exits 0: it can then be
    /// stopped or upgraded. Exits 1 on an error, or when it is still not drained 30 s after the
    /// deadline.
    Drain {
        #[command(flatten)]
        admin: AdminArgs,
        /// Close the WebSockets still open after this long (1001, "going away"), e.g. "10m".
        /// Without it they may stay as long as they like.
        #[arg(long)]
        deadline: Option<String>,
        /// Start the drain and return at once.
        #[arg(long)]
        no_wait: bool,
    },
    /// End a drain: the balancer is ready again (`/ready` 200).
    Undrain {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API is and its token.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API address (`host:port`). Default: `[admin] address` of `--config`, else
    /// 127.0.0.1:18001.
    #[arg(long)]
    admin: Option<String>,
    /// File holding the admin bearer token (trimmed). Default: `[admin] token` of `--config`.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The balancer's configuration file, for the admin address and token.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config } => run(&config),
        Cmd::Drain {
            admin,
            deadline,
            no_wait,
        } => admin_command(admin, |c| drain::drain(c, deadline, no_wait)),
        Cmd::Undrain { admin } => admin_command(admin, drain::undrain),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match lb::check_config(path) {
        Ok(cfg) => {
            println!("{}: configuration ok", path.display());
            print!("{}", lb::summary(&cfg));
            ExitCode::SUCCESS
        }
        Err(errors) => print_errors(path, &errors),
    }
}

fn print_errors(path: &std::path::Path, errors: &lb_config::ConfigErrors) -> ExitCode {
    eprintln!(
        "{}: configuration has {} error(s):",
        path.display(),
        errors.0.len()
    );
    for e in &errors.0 {
        eprintln!("  {e}");
    }
    ExitCode::FAILURE
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match lb::check_config(path) {
        Ok(c) => c,
        Err(errors) => return print_errors(path, &errors),
    };
    // Kept to the end of `run`: dropping it writes out the queued lines.
    let _logging = match lb::logging::init(&(&config.server).into()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lb: logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One worker: the current-thread scheduler, without work-stealing overhead.
    let mut builder = if config.server.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if config.server.worker_threads > 0 {
            b.worker_threads(config.server.worker_threads);
        }
        b
    };
    builder.on_thread_park(collect_when_idle);
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(lb::run_until_signal(config, path.to_path_buf())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn admin_command<F, Fut>(args: AdminArgs, f: F) -> ExitCode
where
    F: FnOnce(lb::admin::client::AdminClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let client = match admin_client(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lb: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f(client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn admin_client(args: &AdminArgs) -> anyhow::Result<lb::admin::client::AdminClient> {
    use anyhow::Context as _;
    let from_config = match &args.config {
        Some(p) => Some(
            lb_config::Config::from_file(p)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .admin
                .with_context(|| format!("{}: no [admin] section", p.display()))?,
        ),
        None => None,
    };
    let addr = match (&args.admin, &from_config) {
        (Some(a), _) => lb::admin::client::AdminClient::resolve(a)?,
        (None, Some(a)) => lb::admin::client::AdminClient::resolve(&a.address.to_string())?,
        (None, None) => lb::admin::client::AdminClient::resolve("127.0.0.1:18001")?,
    };
    let token = match (&args.token_file, from_config) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("token file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, Some(a)) => a.token,
        (None, None) => None,
    };
    Ok(lb::admin::client::AdminClient {
        addr,
        token,
        timeout: std::time::Duration::from_secs(10),
    })
}

mod drain {
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context as _};
    use http::Method;
    use lb::admin::client::{AdminClient, Answer};

    /// How long `lb drain` waits past the deadline for the last connections to close.
    const PAST_DEADLINE: Duration = Duration::from_secs(30);

    fn ok(a: Answer, what: &str) -> anyhow::Result<serde_json::Value> {
        if a.status != 200 {
            bail!("{what}: HTTP {}: {}", a.status, a.body.trim());
        }
        a.json()
    }

    pub async fn drain(
        c: AdminClient,
        deadline: Option<String>,
        no_wait: bool,
    ) -> anyhow::Result<()> {
        let limit =
            match &deadline {
                Some(d) => Some(humantime::parse_duration(d.trim()).with_context(|| {
                    format!("--deadline {d:?} (expected e.g. \"90s\", \"10m\")")
                })?),
                None => None,
            };
        let path = match limit {
            Some(d) => format!("/drain?deadline={}ms", d.as_millis()),
            None => "/drain".to_string(),
        };
        let started = Instant::now();
        let d = ok(c.call(Method::POST, &path).await?, "POST /drain")?;
        println!(
            "draining {}: {} connection(s), {} WebSocket(s) open{}",
            c.addr,
            d["open_connections"],
            d["open_websockets"],
            limit.map_or(String::new(), |l| format!(
                "; WebSockets left in {} will be closed",
                humantime::format_duration(l)
            ))
        );
        if no_wait {
            return Ok(());
        }
        let mut last = (i64::MIN, i64::MIN);
        loop {
            let s = ok(c.call(Method::GET, "/status").await?, "GET /status")?;
            let d = &s["drain"];
            if d["draining"] != true {
                bail!("the drain was ended (POST /ready or /undrain) before it completed");
            }
            if d["drained"] == true {
                println!(
                    "drained: no connection and no WebSocket left; the balancer can be stopped"
                );
                return Ok(());
            }
            let now = (
                d["open_connections"].as_i64().unwrap_or(-1),
                d["open_websockets"].as_i64().unwrap_or(-1),
            );
            if now != last {
                println!("  {} connection(s), {} WebSocket(s) open", now.0, now.1);
                last = now;
            }
            if limit.is_some_and(|l| started.elapsed() > l + PAST_DEADLINE) {
                bail!(
                    "not drained {} after the deadline: {} connection(s), {} WebSocket(s) open",
                    humantime::format_duration(PAST_DEADLINE),
                    now.0,
                    now.1
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn undrain(c: AdminClient) -> anyhow::Result<()> {
        ok(c.call(Method::POST, "/undrain").await?, "POST /undrain")?;
        println!("{}: ready (drain ended)", c.addr);
        Ok(())
    }
}
