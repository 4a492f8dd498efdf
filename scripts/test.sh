#!/usr/bin/env bash
# Installs what the tests use (when missing) and runs the whole test suite.
# Needs root (or sudo) for the Debian packages on a machine that lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /bin/kill ] || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! command -v cfn-lint >/dev/null; then
  python3 -m pip install -q cfn-lint
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
cargo test --workspace --locked
