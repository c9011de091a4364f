#!/usr/bin/env python3
"""Grouped horizontal bar chart as a standalone SVG, from a CSV whose first column
labels a group and whose other columns are values (no plotting library needed).

    plot-bars.py DATA.csv OUT.svg TITLE SERIES_NAME...
"""
import csv
import sys

data_path, out_path, title, *names = sys.argv[1:]
with open(data_path) as f:
    rows = list(csv.reader(f))[1:]
colors = ["#9e9e9e", "#1f77b4", "#6baed6", "#ff7f0e"]
bar_h, gap, left, width = 16, 14, 170, 520
vmax = max(float(v) for r in rows for v in r[1:]) or 1
n = len(names)
height = 60 + len(rows) * (n * bar_h + gap) + 30 * ((n + 1) // 2)
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<text x="10" y="20" font-size="14" font-weight="bold">{title}</text>']
y = 40
for r in rows:
    out.append(f'<text x="{left - 8}" y="{y + n * bar_h / 2 + 4}" text-anchor="end">{r[0]}</text>')
    for i, v in enumerate(r[1:]):
        w = max(1.0, float(v) / vmax * width)
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{colors[i % len(colors)]}"/>')
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 5}">{float(v):.2f} s</text>')
        y += bar_h
    y += gap
for i, name in enumerate(names):
    lx, ly = 10 + (i % 2) * 330, y + 10 + (i // 2) * 20
    out.append(f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colors[i % len(colors)]}"/>')
    out.append(f'<text x="{lx + 18}" y="{ly + 10}">{name}</text>')
out.append("</svg>")
with open(out_path, "w") as f:
    f.write("\n".join(out) + "\n")
