//! `lb`: run the balancer, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match lb::check_config(path) {
        Ok(c) => c,
        Err(errors) => return print_errors(path, &errors),
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
