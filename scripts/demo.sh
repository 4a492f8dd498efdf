#!/usr/bin/env bash
# The demo: three simulated Qlik nodes on 127.0.0.1:19100-19102, the balancer on
# deploy/examples/local.toml (127.0.0.1:18000), and a short mixed load of many users through it.
# Stops by itself; exits non-zero if any request failed or any session left its node.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p lb -p lb-bench
exec ./target/release/lb-bench demo --config deploy/examples/local.toml "$@"
