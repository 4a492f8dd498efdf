//! `lb`: run the balancer, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: size classes kept apart, so the handshake buffers of thousands of WebSockets opening
/// at once do not pin the pages of the tunnels that stay; built without transparent huge pages
/// (a 2 MiB page per arena chunk is resident memory an idle balancer does not need). Where
/// glibc's heap kept a burst's memory, mimalloc gives it back (see [`tune_allocator`] and
/// benches/RESULTS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

#[derive(Parser)]
#[command(
    name = "lb",
    version,
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
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Run { config } => run(&config),
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
