#!/usr/bin/env python3
"""Draws the heatmaps of lserve_niah JSON files: one panel per attention variant,
context length down, needle depth across, exact-match accuracy as colour and text.
With several files (same grid), each panel's title also names its gate file.

    python3 scripts/plot_niah.py RESULTS.json [MORE.json ...] OUT.png
Needs matplotlib.
"""
import os
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    variants = []
    for path in sys.argv[1:-1]:
        with open(path) as f:
            data = json.load(f)
        for v in data["variants"]:
            gates = v["attention"]["gate_file"]
            if len(sys.argv) > 3 and v["attention"]["streaming_ratio"] < 1 and v["name"] != "dense":
                stem = os.path.basename(gates).replace(".tsv", "")
                v["name"] += (" seeded" if not gates else " learned" if stem == "full_attention_heads"
                              else " gates " + stem.rsplit("-", 1)[-1])
            variants.append(v)
    contexts, depths = data["contexts"], data["depths"]
    cols = min(4, len(variants))
    rows = math.ceil(len(variants) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.45 * len(contexts) * rows + 1.4 * rows),
                             squeeze=False)
    for ax in axes.flat[len(variants):]:
        ax.axis("off")
    for ax, variant in zip(axes.flat, variants):
        grid = [[math.nan] * len(depths) for _ in contexts]
        for cell in variant["cells"]:
            r, c = contexts.index(cell["context"]), depths.index(cell["depth"])
            grid[r][c] = cell["correct"] / cell["trials"]
        ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        for r in range(len(contexts)):
            for c in range(len(depths)):
                ax.text(c, r, f"{100 * grid[r][c]:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths], fontsize=7)
        ax.set_yticks(range(len(contexts)), [str(n) for n in contexts], fontsize=7)
        ax.set_title(f"{variant['name']}: {100 * variant['accuracy']:.1f}%", fontsize=9)
        ax.set_xlabel("needle depth", fontsize=7)
        ax.set_ylabel("context (tokens)", fontsize=7)
    fig.suptitle(f"NIAH exact match through the engine ({data['backend']}, "
                 f"{data['trials']} per cell)", fontsize=10)
    fig.tight_layout()
    fig.savefig(sys.argv[-1], dpi=110)


if __name__ == "__main__":
    main()
