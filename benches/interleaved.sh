#!/usr/bin/env bash
# Interleaved A/B runs for noisy machines: ours and HAProxy take turns, ROUNDS times, on the
# same scenario, so that load from elsewhere hits both alike; prints each run and the medians
# with their ratio. Complements compare.sh (which runs each balancer once, one after another).
#
#   benches/interleaved.sh [ROUNDS] [SECONDS]        (defaults: 5 rounds of 5 s)
#
# Scenarios: http (vs haproxy, cookie insert) and churn (vs haproxy-stick, stick table on the
# Qlik cookie), at 1 and 2 balancer threads. Loopback only; every run is bounded.
set -euo pipefail
ROUNDS=${1:-5}
DUR=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT="$ROOT/benches/out/interleaved"
mkdir -p "$OUT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LB=${LB_BIN:-$TARGET/release/lb}
BENCH=${LB_BENCH_BIN:-$TARGET/release/lb-bench}
export PATH="$PATH:/usr/sbin"
command -v haproxy >/dev/null || { echo "haproxy is needed (apt-get install haproxy)" >&2; exit 2; }
[ -x "$LB" ] && [ -x "$BENCH" ] || (cd "$ROOT" && cargo build --release -p lb -p lb-bench)

"$BENCH" sim --nodes 3 --base-port 19100 >"$OUT/sim.log" 2>&1 &
SIM=$!
BAL=""
cleanup() { [ -n "$BAL" ] && kill "$BAL" 2>/dev/null; kill "$SIM" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/18000) 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

start() { # $1 name, $2 threads
    case "$1" in
        ours)
            sed -e "s/^worker_threads = .*/worker_threads = $2/" >"$OUT/lb.toml" <<'EOF'
[server]
worker_threads = 1
access_log = false
[listener]
address = "127.0.0.1:18000"
[sticky]
route_key = "bench-route-key-0123456789"
[health]
enabled = false
[[nodes]]
id = "qps1"
address = "127.0.0.1:19100"
[[nodes]]
id = "qps2"
address = "127.0.0.1:19101"
[[nodes]]
id = "qps3"
address = "127.0.0.1:19102"
EOF
            RUST_LOG=warn "$LB" run --config "$OUT/lb.toml" >"$OUT/ours.log" 2>&1 &
            ;;
        haproxy|haproxy-stick)
            sed -e "s/@NBTHREAD@/$2/" "$ROOT/benches/peers/$1.cfg" >"$OUT/$1.cfg"
            haproxy -f "$OUT/$1.cfg" -db >"$OUT/$1.log" 2>&1 &
            ;;
    esac
    BAL=$!
    wait_port
}

stop() { kill "$BAL" 2>/dev/null; wait "$BAL" 2>/dev/null || true; BAL=""; sleep 0.3; }

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for t in 1 2; do
    for pair in "http haproxy" "churn haproxy-stick"; do
        set -- $pair
        scenario=$1 peer=$2
        : >"$OUT/ours-$scenario-t$t.txt"
        : >"$OUT/$peer-$scenario-t$t.txt"
        for r in $(seq 1 "$ROUNDS"); do
            for b in ours "$peer"; do
                start "$b" "$t"
                rps=$("$BENCH" "$scenario" --url http://127.0.0.1:18000 --connections 50 \
                    --duration-secs "$DUR" 2>&1 | awk '/requests\/s/ {print $2}')
                stop
                echo "$rps" >>"$OUT/$b-$scenario-t$t.txt"
                echo "t=$t $scenario round $r $b: $rps req/s"
            done
        done
        ours=$(median <"$OUT/ours-$scenario-t$t.txt")
        peer_m=$(median <"$OUT/$peer-$scenario-t$t.txt")
        ratio=$(awk -v a="$ours" -v b="$peer_m" 'BEGIN {printf "%.2f", a / b}')
        echo "== t=$t $scenario: median ours $ours, $peer $peer_m, ours/$peer $ratio"
    done
done
