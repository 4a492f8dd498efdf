#!/usr/bin/env bash
# Installs what the tests use (when missing), runs the whole test suite, then builds the .deb
# and .rpm (scripts/package.sh) and checks them (scripts/check-package.sh: installs the .deb on
# this machine, checks it, and purges it again).
# Needs root (or sudo) for the Debian packages on a machine that lacks them and for dpkg -i.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v systemd-analyze >/dev/null || need+=(systemd)
[ -x /bin/kill ] || need+=(procps)
command -v rpmbuild >/dev/null || need+=(rpm)
command -v objdump >/dev/null || need+=(binutils)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ -x target/tools/python/bin/cfn-lint ]; then export PATH="$PWD/target/tools/python/bin:$PATH"; fi
if ! command -v cfn-lint >/dev/null; then
  # Debian's own python3 refuses pip installs outside a virtual environment (PEP 668).
  if ! python3 -m pip install -q cfn-lint 2>/dev/null; then
    python3 -m venv target/tools/python
    target/tools/python/bin/pip install -q cfn-lint
    export PATH="$PWD/target/tools/python/bin:$PATH"
  fi
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
cargo test --workspace --locked
start=$(date +%s)
bash scripts/package.sh
$SUDO bash scripts/check-package.sh
echo "packages built and checked in $(($(date +%s) - start)) s"
