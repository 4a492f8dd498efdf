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
    // paths that exist are named: cargo reruns a build script on every build for a missing
    // one. A packed branch has no file yet, so its folder is watched for the one a commit adds.
    let watch = |path: &Path| {
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        println!("cargo:rerun-if-changed={}", abs.display());
    };
    for name in ["HEAD", "packed-refs"] {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            if Path::new(&path).is_file() {
                watch(Path::new(&path));
            }
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(&["rev-parse", "--git-path", &branch]) {
            let path = Path::new(&path);
            match path.parent() {
                _ if path.is_file() => watch(path),
                Some(dir) if dir.is_dir() => watch(dir),
                _ => {}
            }
        }
    }
}
