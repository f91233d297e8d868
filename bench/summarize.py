#!/usr/bin/env python3
"""Medians of RESULT lines (peers and Lifeline), the ratios the targets name, and the W3 plot.

    python3 bench/summarize.py [--svg PATH] RAW_FILE...

Modelled on ../shared/peers/scripts/summarize.py; the SVG is written by hand (no matplotlib).
"""
import statistics
import sys
from collections import OrderedDict


def parse(paths):
    rows = OrderedDict()
    for path in paths:
        for line in open(path, encoding="utf-8"):
            if not line.startswith("RESULT "):
                continue
            kv = dict(tok.split("=", 1) for tok in line.split()[1:] if "=" in tok)
            rows.setdefault((kv["bench"], kv["case"]), []).append(kv)
    return rows


def num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def values(rows, key, field):
    return [v for v in (num(r.get(field)) for r in rows.get(key, [])) if v is not None]


def median(rows, key, field):
    vals = values(rows, key, field)
    return statistics.median(vals) if vals else None


def fmt(vals, digits):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(vals):,.{digits}f}–{max(vals):,.{digits}f})"


def table(rows):
    out = ["| system | case | ops | events/s median (min–max) | p50 ms | p99 ms | max ms | runs | load at start |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (bench, case), runs in rows.items():
        extra = ""
        if case == "w5_serve_peak_rss":
            extra = f" VmHWM {fmt([num(r.get('vmhwm_mib')) for r in runs], 1)} MiB"
        loads = ", ".join(r.get("load", "?").split(",")[0] for r in runs)
        out.append(
            f"| {bench} | {case}{extra} | {runs[0]['ops']} | {fmt([num(r['events_per_s']) for r in runs], 0)} | "
            f"{fmt([num(r['p50_ms']) for r in runs], 3)} | {fmt([num(r['p99_ms']) for r in runs], 3)} | "
            f"{fmt([num(r.get('max_ms')) for r in runs], 3)} | {len(runs)} | {loads} |")
    return "\n".join(out)


def verdict(ok, miss):
    if ok is None:
        return "not measured"
    return "**met**" if ok else f"**missed** ({miss})"


def targets(rows):
    L = "lifeline"
    out = ["| target | measured (medians) | ratio / value | goal | verdict |", "|---|---|---:|---:|---|"]

    def ratio_line(name, a_key, b_key, goal, label_a, label_b):
        a, b = median(rows, a_key, "events_per_s"), median(rows, b_key, "events_per_s")
        if a is None or b is None:
            out.append(f"| {name} | – | – | ≥ {goal}x | not measured |")
            return
        r = a / b
        out.append(f"| {name} | {label_a} {a:,.0f}/s vs {label_b} {b:,.0f}/s | {r:.2f}x | ≥ {goal}x | "
                   f"{verdict(r >= goal, f'{r / goal * 100:.0f}% of the goal; needs {goal * b:,.0f}/s, {goal * b / a:.2f}x more')} |")

    def at_most_line(name, key, field, goal, unit):
        v = median(rows, key, field)
        if v is None:
            out.append(f"| {name} | – | – | ≤ {goal} {unit} | not measured |")
            return
        out.append(f"| {name} | {key[1]} {field} | {v:,.1f} {unit} | ≤ {goal} {unit} | "
                   f"{verdict(v <= goal, f'by {v - goal:,.1f} {unit}, {v / goal:.1f}x the goal')} |")

    ratio_line("W1 c32 vs postgres-es c32", (L, "w1_store_append_group_c32"), ("cqrs-es", "A_record_birth_c32"), 5,
               "Lifeline group commit", "postgres-es")
    at_most_line("W1 c32 p99", (L, "w1_store_append_group_c32"), "p99_ms", 10, "ms")
    ratio_line("W1 c1 vs raw 1 row/commit c1", (L, "w1_store_append_group_c1"), ("sqlx-raw", "insert_1row_per_tx_c1"),
               0.75, "Lifeline", "raw INSERT")
    ratio_line("W2 c64 vs postgres-es c32", (L, "w2_http_post_births_c64"), ("cqrs-es", "A_record_birth_c32"), 2,
               "POST /v1/births", "postgres-es")
    at_most_line("W3 500/s first task p99 (inbox row)", (L, "w3_r500_first_task_inbox"), "p99_ms", 50, "ms")
    at_most_line("W3 500/s second step p99 (inbox rows)", (L, "w3_r500_second_step_inbox"), "p99_ms", 150, "ms")
    # W4: the largest rebuild measured, against postgres-es' replay measured in the same run.
    rebuilds = [k for k in rows if k[0] == L and k[1].startswith("w4_rebuild_projections_")]
    replay = ("cqrs-es", "C_replay_all_100k_pass1")
    for key in rebuilds:
        ratio_line(f"W4 {key[1]} vs postgres-es replay", key, replay, 3, "rebuild", "replay_all")
    w5 = median(rows, (L, "w5_serve_peak_rss"), "vmhwm_mib")
    if w5 is None:
        out.append("| W5 peak RSS | – | – | ≤ 200 MiB | not measured |")
    else:
        out.append(f"| W5 peak RSS of lifeline serve (VmHWM) | during W3-like 500/s | {w5:,.1f} MiB | ≤ 200 MiB | "
                   f"{verdict(w5 <= 200, f'by {w5 - 200:,.1f} MiB')} |")
    return "\n".join(out)


SERIES = [
    ("first_task_inbox", "p50_ms", "first task in inbox p50", "#1f77b4", ""),
    ("first_task_inbox", "p99_ms", "first task in inbox p99", "#1f77b4", "6,4"),
    ("second_step_inbox", "p50_ms", "second step in inbox p50", "#d62728", ""),
    ("second_step_inbox", "p99_ms", "second step in inbox p99", "#d62728", "6,4"),
    ("http_201", "p99_ms", "POST /v1/births 201 p99", "#2ca02c", "2,3"),
]


def svg(rows, path):
    import re
    rates = sorted({int(m.group(1)) for k in rows if k[0] == "lifeline"
                    for m in [re.match(r"^w3_r(\d+)_", k[1])] if m})
    if not rates:
        return
    series = []
    for suffix, field, label, colour, dash in SERIES:
        pts = [(r, median(rows, ("lifeline", f"w3_r{r}_{suffix}"), field)) for r in rates]
        pts = [(r, v) for r, v in pts if v is not None and v > 0]
        series.append((label, colour, dash, pts))
    ys = [v for _, _, _, pts in series for _, v in pts] + [50, 150]
    import math
    lo = 10 ** math.floor(math.log10(max(min(ys), 0.1)))
    hi = 10 ** math.ceil(math.log10(max(ys)))
    W, H, left, right, top, bottom = 720, 420, 70, 230, 40, 60
    pw, ph = W - left - right, H - top - bottom
    xmax = max(rates) * 1.05

    def x(rate):
        return left + pw * rate / xmax

    def y(v):
        return top + ph * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
             f'<rect width="{W}" height="{H}" fill="white"/>',
             f'<text x="{left}" y="22" font-size="14">W3: latency against arrival rate (medians of rounds; log scale)</text>',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="black"/>']
    decade = lo
    while decade <= hi * 1.0001:
        for m in (1, 2, 5):
            v = decade * m
            if lo <= v <= hi:
                parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + pw}" y2="{y(v):.1f}" stroke="#ddd"/>')
                parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        decade *= 10
    for r in rates:
        parts.append(f'<line x1="{x(r):.1f}" y1="{top + ph}" x2="{x(r):.1f}" y2="{top + ph + 5}" stroke="black"/>')
        parts.append(f'<text x="{x(r):.1f}" y="{top + ph + 18}" text-anchor="middle">{r}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{H - 15}" text-anchor="middle">arrival rate (births/s)</text>')
    parts.append(f'<text x="18" y="{top + ph / 2}" transform="rotate(-90 18 {top + ph / 2})" text-anchor="middle">ms</text>')
    for goal, label in ((50, "goal first task p99 50 ms"), (150, "goal second step p99 150 ms")):
        parts.append(f'<line x1="{left}" y1="{y(goal):.1f}" x2="{left + pw}" y2="{y(goal):.1f}" stroke="#999" stroke-dasharray="1,3"/>')
        parts.append(f'<text x="{left + 4}" y="{y(goal) - 3:.1f}" fill="#666" font-size="10">{label}</text>')
    for i, (label, colour, dash, pts) in enumerate(series):
        if pts:
            d = " ".join(f"{x(r):.1f},{y(v):.1f}" for r, v in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
            for r, v in pts:
                parts.append(f'<circle cx="{x(r):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>{label} at {r}/s: {v:.1f} ms</title></circle>')
        ly = top + 10 + i * 20
        parts.append(f'<line x1="{W - right + 15}" y1="{ly}" x2="{W - right + 45}" y2="{ly}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>')
        parts.append(f'<text x="{W - right + 50}" y="{ly + 4}">{label}</text>')
    parts.append("</svg>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")


def main():
    args = sys.argv[1:]
    svg_path = None
    if args[:1] == ["--svg"]:
        svg_path, args = args[1], args[2:]
    rows = parse(args)
    print("## Targets\n")
    print(targets(rows))
    print("\n## Every figure\n")
    print(table(rows))
    if svg_path:
        svg(rows, svg_path)


if __name__ == "__main__":
    main()
