//! Sets `LB_GIT_COMMIT` for `lb --version`: the short commit of the checkout being built
//! (`git rev-parse --short HEAD`), `LB_GIT_COMMIT` from the environment when set (builds from
//! a source archive), or `unknown` outside a git checkout.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=LB_GIT_COMMIT");
    let from_env = std::env::var("LB_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty());
    let commit = from_env
        .or_else(|| git(&["rev-parse", "--short", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=LB_GIT_COMMIT={commit}");

    // Rebuild when HEAD moves: HEAD itself (a branch switch or a detached checkout), the
    // branch it names (a commit), and packed-refs (where a branch lives after `git gc`). Only
    // files that exist are named: cargo reruns a build script on every build for a missing one.
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for name in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).is_file() {
                let abs = std::fs::canonicalize(&path).unwrap_or_else(|_| path.into());
                println!("cargo:rerun-if-changed={}", abs.display());
            }
        }
    }
}
