#!/usr/bin/env bash
# The shared store's cost, in one run on this machine (loopback only, bounded in time):
#   1. new-session churn (a new connection and a new Qlik session per request) through one
#      balancer without a store;
#   2. the same churn through two balancers at once that share a redis-server store (every new
#      session is a background write);
#   3. pinned keep-alive users through a store balancer and through the one without: the
#      store's lookup and write counters before and after show that a known pin makes no store
#      call;
#   4. portal sign-ins (a ticket from a REST API listener, redeemed by a new browser) through
#      the one balancer without a store, and through two with it: the ticket made on A,
#      redeemed on B.
# Usage: bash benches/shared.sh [SECONDS] (default 10). Needs redis-server (Debian:
# redis-server). LB_BIN / LB_BENCH_BIN name prebuilt binaries; otherwise release builds.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECS="${1:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${LB_BIN:-}" ] || [ -z "${LB_BENCH_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release --locked -p lb -p lb-bench)
fi
LB="${LB_BIN:-$CARGO_TARGET_DIR/release/lb}"
LBB="${LB_BENCH_BIN:-$CARGO_TARGET_DIR/release/lb-bench}"
command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port pid
    for _ in $(seq 1 150); do
        port_open "$1" && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
# Ports of this run, away from the examples' (which a demo may be using): balancers A, B and C
# on 28100, 28110, 28120 (admin +1; REST API listeners 28143, 28153, 28163, authentication
# +1), nodes on 29200-29202 (authentication 29240-29242, REST API 29260-29262), the store on
# 26379.
for p in 28100 28101 28110 28111 28120 28121 28143 28144 28153 28154 28163 28164 \
    29200 29201 29202 29240 29241 29242 29260 29261 29262 26379; do
    if port_open "$p"; then echo "127.0.0.1:$p is in use" >&2; exit 1; fi
done

OUT="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

redis-server --port 26379 --bind 127.0.0.1 --save '' --appendonly no --dir "$OUT" \
    >"$OUT/redis.log" 2>&1 &
PIDS+=($!)
wait_port 26379 "${PIDS[-1]}" || { echo "redis-server did not start" >&2; exit 1; }
# Anonymous sign-in: a request without a session gets a new one (the churn), and the nodes
# have the REST API that makes portal tickets.
"$LBB" sim --nodes 3 --base-port 29200 --threads 1 --auth anonymous >"$OUT/sim.log" 2>&1 &
PIDS+=($!)
for p in 29200 29201 29202; do wait_port "$p" "${PIDS[-1]}" || exit 1; done

# The examples, on this run's ports (and without the module listener).
cp "$ROOT/deploy/examples/shared-route.key" "$OUT/"
for side in a b; do
    sed -e 's/127.0.0.1:6379/127.0.0.1:26379/' -e '/^\[module\]/,/^$/d' \
        -e 's/127.0.0.1:180\([0-9][0-9]\)/127.0.0.1:281\1/' \
        -e 's/127.0.0.1:191\([046]\)\([0-2]\)/127.0.0.1:292\1\2/g' \
        "$ROOT/deploy/examples/shared-$side.toml" >"$OUT/$side.toml"
done
# C: balancer A's configuration on 28120/28121 (28163/28164) without [sticky.shared].
sed -e 's/127.0.0.1:28100/127.0.0.1:28120/' -e 's/127.0.0.1:28101/127.0.0.1:28121/' \
    -e 's/127.0.0.1:2814\([34]\)/127.0.0.1:2816\1/' \
    -e '/^\[sticky.shared\]/,/^$/d' "$OUT/a.toml" >"$OUT/c.toml"
for side in a b c; do
    "$LB" run --config "$OUT/$side.toml" >"$OUT/lb-$side.log" 2>&1 &
    PIDS+=($!)
done
wait_port 28100 "${PIDS[-3]}" && wait_port 28110 "${PIDS[-2]}" && wait_port 28120 "${PIDS[-1]}" \
    || { echo "a balancer did not start; see $OUT" >&2; exit 1; }

store() { # admin port -> the store's figures at that balancer
    curl -s "http://127.0.0.1:$1/status" | python3 -c '
import json, sys
s = json.load(sys.stdin)["sticky"]["shared_store"]
l, d = s["lookups"], s["dropped_writes"]
print("state %s, lookups hit/miss/unavailable %d/%d/%d, writes %d, dropped %d" % (
    s["state"], l["hit"], l["miss"], l["unavailable"], s["writes"],
    d["queue_full"] + d["store_error"]))'
}
rate() {
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
l = r["http_latency"]
print("%9.0f req/s  errors %d  p50 %d us  p99 %d us" % (
    r["requests_per_sec"], r["errors"], l["p50_us"], l["p99_us"]))' "$1"
}
churn() { # port json
    "$LBB" churn --url "http://127.0.0.1:$1" --duration-secs "$SECS" --connections 32 \
        --json "$2" >/dev/null
}

echo "== new-session churn, ${SECS}s each"
churn 28120 "$OUT/churn-c.json"
echo "one balancer, no store:        $(rate "$OUT/churn-c.json")"
churn 28100 "$OUT/churn-a.json" & ca=$!
churn 28110 "$OUT/churn-b.json" & cb=$!
wait "$ca" "$cb"
echo "two balancers with the store:  A $(rate "$OUT/churn-a.json")"
echo "                               B $(rate "$OUT/churn-b.json")"
sleep 1
echo "store at A: $(store 28101)"
echo "store at B: $(store 28111)"
echo "keys in the store: $(redis-cli -p 26379 DBSIZE)"

echo "== pinned keep-alive users, ${SECS}s each, in the order A C C A (a noisy machine)"
pinned() { # port json
    "$LBB" http --url "http://127.0.0.1:$1" --duration-secs "$SECS" --connections 32 \
        --json "$2" >/dev/null
}
before="$(store 28101)"
pinned 28100 "$OUT/http-a1.json"
pinned 28120 "$OUT/http-c1.json"
pinned 28120 "$OUT/http-c2.json"
pinned 28100 "$OUT/http-a2.json"
after="$(store 28101)"
echo "with the store (A):  $(rate "$OUT/http-a1.json")"
echo "                     $(rate "$OUT/http-a2.json")"
echo "without (C):         $(rate "$OUT/http-c1.json")"
echo "                     $(rate "$OUT/http-c2.json")"
echo "store at A before:   $before"
echo "store at A after:    $after  (writes: the 64 new users' first requests)"

echo "== portal sign-ins, ${SECS}s each (a ticket from the REST API listener, a new browser)"
portal() { # users port, REST port, json
    "$LBB" portal --url "http://127.0.0.1:$1" --rest-url "http://127.0.0.1:$2" \
        --duration-secs "$SECS" --portals 16 --json "$3" >/dev/null
}
signins() {
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
l = r["latency"]
print("%7.0f sign-ins/s  wrong user %d  errors %d  p50 %d us  p99 %d us" % (
    r["good_per_sec"], r["wrong_user"], r["errors"], l["p50_us"], l["p99_us"]))' "$1"
}
before="$(store 28111)"
portal 28120 28163 "$OUT/portal-c.json" || true
portal 28110 28143 "$OUT/portal-ab.json" || true
after="$(store 28111)"
echo "one balancer, no store (C -> C):      $(signins "$OUT/portal-c.json")"
echo "two with the store (ticket A, user B): $(signins "$OUT/portal-ab.json")"
echo "store at B before:   $before"
echo "store at B after:    $after  (a ticket lookup per sign-in)"
