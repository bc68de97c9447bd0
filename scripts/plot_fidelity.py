#!/usr/bin/env python3
"""The MU-fidelity plot: for each trace, the best policy's SLO attainment against the
nominal load (`sluice sim --load`), from the tables `sluice sim --policy all` prints.

    scripts/plot_fidelity.py OUT.svg DIR...

Each DIR holds files named TRACE-LOAD.txt (the sim's standard output). Python's
standard library only; writes one SVG.
"""
import glob
import os
import sys
from collections import defaultdict

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def best_attainment(path):
    lines = open(path).read().splitlines()
    head = [i for i, l in enumerate(lines) if l.startswith("policy")]
    if not head:
        return None
    best = None
    for line in lines[head[0] + 1:]:
        cols = line.split()
        if len(cols) < 14:
            break
        slo = float(cols[9])
        best = slo if best is None else max(best, slo)
    return best


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out, dirs = sys.argv[1], sys.argv[2:]
    series = defaultdict(dict)
    for d in dirs:
        for f in glob.glob(os.path.join(d, "*.txt")):
            name, load = os.path.basename(f)[:-4].rsplit("-", 1)
            v = best_attainment(f)
            if v is not None:
                series[name][float(load)] = v
    if not series:
        sys.exit("no sim tables found")
    loads = sorted({l for s in series.values() for l in s})
    w, h, left, right, top, bottom = 720, 420, 60, 170, 20, 50
    lo, hi = min(loads), max(loads)
    x = lambda l: left + (l - lo) / (hi - lo or 1) * (w - left - right)
    y = lambda v: top + (100 - v) / 100 * (h - top - bottom)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    for v in range(0, 101, 20):
        svg.append(f'<line x1="{left}" x2="{w - right}" y1="{y(v)}" y2="{y(v)}" stroke="#ddd"/>')
        svg.append(f'<text x="{left - 8}" y="{y(v) + 4}" text-anchor="end">{v}%</text>')
    svg.append(f'<line x1="{left}" x2="{w - right}" y1="{y(90)}" y2="{y(90)}" stroke="#999" stroke-dasharray="4 3"/>')
    for l in loads:
        svg.append(f'<text x="{x(l)}" y="{h - bottom + 18}" text-anchor="middle">{l:g}</text>')
    svg.append(f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle">nominal load (offered MU / fleet capacity)</text>')
    svg.append(f'<text x="14" y="{(top + h - bottom) / 2}" transform="rotate(-90 14 {(top + h - bottom) / 2})" text-anchor="middle">best policy: requests within the SLO</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        c = COLORS[i % len(COLORS)]
        p = " ".join(f"{x(l):.1f},{y(v):.1f}" for l, v in sorted(pts.items()))
        svg.append(f'<polyline points="{p}" fill="none" stroke="{c}" stroke-width="2"/>')
        for l, v in sorted(pts.items()):
            svg.append(f'<circle cx="{x(l):.1f}" cy="{y(v):.1f}" r="3" fill="{c}"/>')
        svg.append(f'<text x="{w - right + 12}" y="{top + 16 + 18 * i}" fill="{c}">{name}</text>')
    svg.append("</svg>")
    open(out, "w").write("\n".join(svg) + "\n")


main()
