//! What the packaged binary tells an operator about itself: `lb --version` names the version
//! and the git commit it was built from (`lb/build.rs`).
//!
//! The binary is target/<profile>/lb of this build, brought up to date by the test.
//! The package itself (file lists, install, `lb check` of the installed configuration) is
//! checked by `scripts/check-package.sh`, which `scripts/test.sh` runs after the tests.

use std::path::PathBuf;
use std::process::Command;

/// target/<profile>/lb, built first: `cargo test -p lb-tests` alone does not build another
/// package's binary, and a stale one would carry an old commit.
fn lb_binary() -> PathBuf {
    // target/<profile>/deps/package-<hash> -> target/<profile>/lb
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev".to_string(),
        Some(other) => other.to_string(),
        None => panic!("no profile folder in {}", exe.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            "lb",
            "--bin",
            "lb",
            "--profile",
        ])
        .arg(&profile)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo build -p lb");
    assert!(status.success(), "cargo build -p lb: {status}");
    let bin = profile_dir.join(format!("lb{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.is_file(), "{} was not built", bin.display());
    bin
}

#[test]
fn version_names_the_commit() {
    let out = Command::new(lb_binary())
        .arg("--version")
        .output()
        .expect("run lb --version");
    assert!(out.status.success(), "lb --version: {}", out.status);
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let git = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let commit = match git {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
        _ => "unknown".to_string(),
    };
    assert_eq!(
        line.trim_end(),
        format!("lb {} (commit {commit})", env!("CARGO_PKG_VERSION")),
        "a build of this checkout names its commit"
    );
}
