"""Prints the README's ablation table from `finecaption eval` reports of the four variants (see `make ablations`).

    python bench/ablation_table.py runs/ablation-{full,box,nomask,lowres}/eval.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [
    ("all attributes", "all"),
    ("touching regions", "touching"),
    ("apart regions", "apart"),
    ("texture (fine detail)", "texture"),
    ("category", "category"),
    ("color", "color"),
    ("size", "size"),
    ("position", "position"),
]


def main(paths: list[str]) -> None:
    reports = [(Path(p).parent.name, json.loads(Path(p).read_text())) for p in paths]
    header = "| variant | " + " | ".join(title for title, _ in COLUMNS) + " |"
    print(header)
    print("|" + "---|" * (len(COLUMNS) + 1))
    for name, report in reports:
        accuracy = report["attribute"]["accuracy"]
        cells = [f"{100 * accuracy[key]:.1f}%" if key in accuracy else "n/a" for _, key in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    by_name = {name.split("-")[-1]: report["attribute"]["accuracy"] for name, report in reports}
    if {"full", "box", "nomask"} <= set(by_name):
        full = by_name["full"]["touching"]
        print(f"\nmask vs box on touching regions: {100 * (full - by_name['box']['touching']):+.1f} points; "
              f"mask vs no mask: {100 * (full - by_name['nomask']['touching']):+.1f} points")
    if {"full", "lowres"} <= set(by_name):
        print(f"high-res vs low-res-only on texture: "
              f"{100 * (by_name['full']['texture'] - by_name['lowres']['texture']):+.1f} points")


if __name__ == "__main__":
    main(sys.argv[1:])
