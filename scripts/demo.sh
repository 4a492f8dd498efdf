#!/usr/bin/env bash
# The demo: three simulated Qlik nodes on 127.0.0.1:19100-19102, the balancer on
# deploy/examples/local.toml (127.0.0.1:18000), and a short mixed load of many users through it;
# then the same nodes signing users in with Windows authentication (authentication ports
# 19140-19142) behind deploy/examples/windows-auth.toml (users 18000, authentication 18044), and
# 200 users signing in through the balancer (NTLM, three legs). Stops by itself; exits non-zero
# if any request failed, any session left its node, or any user could not sign in.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p lb -p lb-bench
./target/release/lb-bench demo --config deploy/examples/local.toml "$@"
exec ./target/release/lb-bench demo --windows-auth --config deploy/examples/windows-auth.toml \
    --users "${SIGNIN_USERS:-200}"
