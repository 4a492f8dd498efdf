#!/usr/bin/env python3
"""Collect the lb-bench results of benches/compare.sh into one summary JSON and print a table.

usage: summarize.py OUT_DIR SUMMARY_JSON

Reads OUT_DIR/<balancer>-t<threads>-<scenario>.json (lb-bench --json output; t0 is lb's
default thread count), the interleaved HTTP rounds OUT_DIR/rounds/<balancer>-t<threads>-http-r<N>.json
(their medians are the HTTP figures) and OUT_DIR/machine.json. Standard library only.
"""
import json
import os
import re
import statistics
import sys

# key, label, scenario, how to read it from a report, which way is better
METRICS = [
    ("http_rps", "HTTP req/s (sticky keep-alive)", "http",
     lambda r: r["requests_per_sec"], "higher"),
    ("http_p99_ms", "HTTP p99 latency (ms)", "http",
     lambda r: lat(r, "http_latency", "p99_us"), "lower"),
    ("churn_rps", "New sessions/s (churn)", "churn",
     lambda r: r["requests_per_sec"], "higher"),
    ("churn_p99_ms", "Churn p99 latency (ms)", "churn",
     lambda r: lat(r, "http_latency", "p99_us"), "lower"),
    ("ws_msgs", "WebSocket echoes/s (1 KiB)", "ws-echo",
     lambda r: r["messages_per_sec"], "higher"),
    ("ws_p99_ms", "WebSocket round trip p99 (ms)", "ws-echo",
     lambda r: lat(r, "ws_latency", "p99_us"), "lower"),
    ("idle_kib", "Memory per idle WebSocket (KiB)", "ws-idle",
     lambda r: r.get("rss_per_tunnel_kb"), "lower"),
    ("idle_closed_pct", "Memory 5 s after they closed (% over before)", "ws-idle",
     lambda r: 100.0 * (r["rss_closed_kb"] - r["rss_before_kb"]) / r["rss_before_kb"], "lower"),
    ("idle_open", "Idle WebSockets alive at the end (%)", "ws-idle",
     lambda r: 100.0 * r["ws_open_at_end"] / r["users"] if r.get("users") else None, "higher"),
]

PEERS = ["haproxy", "nginx", "haproxy-stick"]
ORDER = ["ours", "ours-nolog", "ours-1w"] + PEERS


def lat(report, field, pct):
    l = report.get(field)
    return None if not l else l[pct] / 1000.0


def target_rows(results, threads):
    """lb at its defaults (t0) over the best HAProxy thread count, and the access log's cost."""
    ours = results.get("ours", {}).get("0")
    if not ours:
        return []
    hap = results.get("haproxy", {})
    rows = []
    for key, label, _s, _g, better in METRICS:
        pv = [hap[str(t)].get(key) for t in threads if str(t) in hap]
        pv = [v for v in pv if v]
        ov = ours.get(key)
        if ov is None or not pv or key == "idle_open":
            continue
        best = max(pv) if better == "higher" else min(pv)
        if key == "idle_closed_pct":
            rows.append({"key": key, "label": label,
                         "value": f"ours {ov:.1f} % (HAProxy best {best:.1f} %)"})
            continue
        rows.append({"key": key, "label": f"{label}: ours / best HAProxy",
                     "value": f"{ov / best:.2f}x ({fmt(ov)} / {fmt(best)})"})
    nolog = results.get("ours-nolog", {}).get("0", {}).get("http_rps")
    if nolog and ours.get("http_rps"):
        cost = 100.0 * (1.0 - ours["http_rps"] / nolog)
        rows.append({"key": "access_log_cost", "label": "Access log cost (HTTP req/s, medians)",
                     "value": f"{cost:.1f} % ({fmt(ours['http_rps'])} with, {fmt(nolog)} without)"})
    # The labelled variant with one worker (a machine shared with the generator and nodes).
    one = results.get("ours-1w", {}).get("1", {})
    for key, label, better in [("http_rps", "HTTP req/s", "higher"),
                               ("http_p99_ms", "HTTP p99 latency (ms)", "lower")]:
        pv = [hap[str(t)].get(key) for t in threads if str(t) in hap]
        pv = [v for v in pv if v]
        if one.get(key) is None or not pv:
            continue
        best = max(pv) if better == "higher" else min(pv)
        rows.append({"key": f"1w_{key}", "label": f"{label}: lb worker_threads = 1 / best HAProxy",
                     "value": f"{one[key] / best:.2f}x ({fmt(one[key])} / {fmt(best)})"})
    return rows


def fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir, summary_path = sys.argv[1], sys.argv[2]
    machine = {}
    mpath = os.path.join(out_dir, "machine.json")
    if os.path.exists(mpath):
        with open(mpath) as f:
            machine = json.load(f)

    runs = {}
    pat = re.compile(r"^(?P<b>[a-z0-9-]+?)-t(?P<t>\d+)-(?P<s>http|churn|ws-echo|ws-idle)\.json$")
    for name in sorted(os.listdir(out_dir)):
        m = pat.match(name)
        if not m:
            continue
        with open(os.path.join(out_dir, name)) as f:
            runs[(m["b"], int(m["t"]), m["s"])] = json.load(f)

    # Interleaved HTTP rounds: the median of each figure stands for the balancer.
    rounds = {}
    rdir = os.path.join(out_dir, "rounds")
    rpat = re.compile(r"^(?P<b>[a-z0-9-]+?)-t(?P<t>\d+)-(?P<s>http|ws-echo)-r(?P<r>\d+)\.json$")
    for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
        m = rpat.match(name)
        if m:
            with open(os.path.join(rdir, name)) as f:
                rounds.setdefault((m["b"], int(m["t"]), m["s"]), []).append(json.load(f))
    for (b, t, s), reps in rounds.items():
        # The rate and the latency field of each scenario.
        rate, field = ("requests_per_sec", "http_latency") if s == "http" \
            else ("messages_per_sec", "ws_latency")
        med = dict(reps[0])
        med[rate] = statistics.median(r[rate] for r in reps)
        p99s = [lat(r, field, "p99_us") for r in reps]
        p99s = [p for p in p99s if p is not None]
        med[field] = {"p99_us": statistics.median(p99s) * 1000.0} if p99s else None
        med["errors"] = sum(r.get("errors", 0) for r in reps)
        med["violations"] = sum(r.get("violations", 0) for r in reps)
        med["rounds_rate"] = [r[rate] for r in reps]
        runs[(b, t, s)] = med

    balancers = [b for b in ORDER if any(k[0] == b for k in runs)]
    threads = sorted({k[1] for k in runs})
    results = {b: {str(t): {} for t in threads} for b in balancers}
    problems = []
    for (b, t, s), r in runs.items():
        for key, _label, scen, get, _better in METRICS:
            if scen == s:
                try:
                    v = get(r)
                except (KeyError, TypeError, ZeroDivisionError):
                    v = None
                results[b][str(t)][key] = None if v is None else round(float(v), 3)
        if "rounds_rate" in r:
            results[b][str(t)][f"{s.replace('-', '_')}_rounds"] = r["rounds_rate"]
        if r.get("errors") or r.get("violations"):
            problems.append({"balancer": b, "threads": t, "scenario": s,
                             "errors": r.get("errors"), "violations": r.get("violations"),
                             "samples": r.get("error_samples", {})})

    targets = target_rows(results, threads)
    summary = {
        "targets": targets,
        "machine": machine,
        "balancers": balancers,
        "threads": threads,
        "metrics": [{"key": k, "label": l, "scenario": s, "better": b}
                    for k, l, s, _g, b in METRICS],
        "results": results,
        "problems": problems,
    }
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    # Table: one row per metric and thread count.
    peers = [p for p in PEERS if p in balancers]
    head = ["metric", "thr"] + balancers + [f"ours/{p}" for p in peers if "ours" in balancers]
    rows = []
    for key, label, _s, _g, _b in METRICS:
        for t in threads:
            vals = [results[b][str(t)].get(key) for b in balancers]
            row = [label, str(t)] + [fmt(v) for v in vals]
            if "ours" in balancers:
                ours = results["ours"][str(t)].get(key)
                for p in peers:
                    pv = results[p][str(t)].get(key)
                    row.append(f"{ours / pv:.2f}" if ours is not None and pv else "-")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r))
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    if targets:
        print("\nlb defaults (t0) against the best HAProxy thread count of this run:")
        for t in targets:
            print(f"  {t['label']:<48} {t['value']}")
    if problems:
        print("\nruns with errors or stickiness violations:")
        for p in problems:
            print(f"  {p['balancer']} t{p['threads']} {p['scenario']}: "
                  f"{p['errors']} errors, {p['violations']} violations {p['samples']}")
    else:
        print("\nno errors and no stickiness violations in any run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
