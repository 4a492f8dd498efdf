#!/usr/bin/env python3
"""Draw the peer comparison summary (benches/out/summary.json) as an SVG bar chart.

usage: chart.py SUMMARY_JSON OUT_SVG

One panel per metric; in each, a group of bars per balancer thread count. Standard library only.
"""
import json
import sys
from xml.sax.saxutils import escape

COLORS = {
    "ours": "#1f77b4",
    "ours-nolog": "#9ecae1",
    "ours-1w": "#6baed6",
    "haproxy": "#ff7f0e",
    "nginx": "#2ca02c",
    "haproxy-stick": "#d62728",
}
PANEL_W, PANEL_H = 420, 230
COLS = 2
MARGIN = 20
TOP = 70


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v/1000:.1f}k"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.2f}"


def group_label(t):
    if t == 0:
        return "lb default (1 per core)"
    return f"{t} thread{'s' if t != 1 else ''}"


def panel(x0, y0, metric, summary):
    key, label, better = metric["key"], metric["label"], metric["better"]
    threads = summary["threads"]
    res = summary["results"]
    # Only the balancers that ran this metric's scenario.
    balancers = [b for b in summary["balancers"]
                 if any(res[b][str(t)].get(key) is not None for t in threads)]
    vals = [res[b][str(t)].get(key) for t in threads for b in balancers]
    vmax = max([v for v in vals if v is not None] or [1.0]) or 1.0
    out = []
    arrow = "higher is better" if better == "higher" else "lower is better"
    out.append(f'<text x="{x0 + 10}" y="{y0 + 20}" font-size="14" font-weight="bold">'
               f'{escape(label)}</text>')
    out.append(f'<text x="{x0 + PANEL_W - 10}" y="{y0 + 20}" font-size="11" fill="#666" '
               f'text-anchor="end">{arrow}</text>')
    plot_top, plot_bottom = y0 + 40, y0 + PANEL_H - 30
    plot_h = plot_bottom - plot_top
    out.append(f'<line x1="{x0 + 10}" y1="{plot_bottom}" x2="{x0 + PANEL_W - 10}" '
               f'y2="{plot_bottom}" stroke="#999"/>')
    group_w = (PANEL_W - 20) / max(len(threads), 1)
    bar_w = min(40, (group_w - 20) / max(len(balancers), 1))
    for gi, t in enumerate(threads):
        gx = x0 + 10 + gi * group_w
        inner = bar_w * len(balancers)
        bx0 = gx + (group_w - inner) / 2
        for bi, b in enumerate(balancers):
            v = res[b][str(t)].get(key)
            h = 0 if v is None else plot_h * v / vmax
            bx = bx0 + bi * bar_w
            color = COLORS.get(b, "#888")
            out.append(f'<rect x="{bx + 2:.1f}" y="{plot_bottom - h:.1f}" width="{bar_w - 4:.1f}" '
                       f'height="{h:.1f}" fill="{color}"><title>{escape(b)}, {t} thread(s): '
                       f'{fmt(v)}</title></rect>')
            out.append(f'<text x="{bx + bar_w / 2:.1f}" y="{plot_bottom - h - 4:.1f}" '
                       f'font-size="10" text-anchor="middle">{fmt(v)}</text>')
        out.append(f'<text x="{gx + group_w / 2:.1f}" y="{plot_bottom + 18}" font-size="12" '
                   f'text-anchor="middle">{group_label(t)}</text>')
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        summary = json.load(f)
    metrics = summary["metrics"]
    rows = (len(metrics) + COLS - 1) // COLS
    width = COLS * PANEL_W + (COLS + 1) * MARGIN
    height = TOP + rows * (PANEL_H + MARGIN) + MARGIN
    m = summary.get("machine", {})
    subtitle = (f'{m.get("cores", "?")} cores ({escape(str(m.get("cpu", "?")))}), '
                f'{m.get("mode", "?")} run, {m.get("date", "")}; '
                f'HAProxy {escape(str(m.get("haproxy", "?")))}, '
                f'nginx {escape(str(m.get("nginx", "?")))}')
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN}" y="28" font-size="18" font-weight="bold">'
        f'lb against HAProxy and nginx, three simulated Qlik nodes</text>',
        f'<text x="{MARGIN}" y="48" font-size="12" fill="#444">{subtitle}</text>',
    ]
    lx = width - MARGIN
    for b in reversed(summary["balancers"]):
        label = {"ours": "lb defaults", "ours-nolog": "lb, access_log off",
                 "ours-1w": "lb, worker_threads = 1"}.get(b, b)
        w = 18 + 7 * len(label)
        lx -= w + 10
        parts.append(f'<rect x="{lx}" y="56" width="12" height="12" '
                     f'fill="{COLORS.get(b, "#888")}"/>')
        parts.append(f'<text x="{lx + 16}" y="66" font-size="12">{escape(label)}</text>')
    for i, metric in enumerate(metrics):
        col, row = i % COLS, i // COLS
        x0 = MARGIN + col * (PANEL_W + MARGIN)
        y0 = TOP + row * (PANEL_H + MARGIN)
        parts.append(f'<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" '
                     f'fill="#fafafa" stroke="#ddd"/>')
        parts.extend(panel(x0, y0, metric, summary))
    parts.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
