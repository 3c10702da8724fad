#!/usr/bin/env python3
"""Summarizes `ncu --page source --csv --print-source sass` output: the SASS
instructions with the most warp-stall samples, each with its top stall reasons.
Usage: ncu -i report.ncu-rep --page source --csv --print-source sass | ncu_hotspots.py [N]"""
import csv
import sys


def main():
    top = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    lines = [l for l in sys.stdin if l.strip()]
    start = next(i for i, l in enumerate(lines) if l.startswith('"Address"'))
    rows = list(csv.DictReader(lines[start:]))
    if not rows:
        print("no rows")
        return
    cols = list(rows[0].keys())
    samples = next(c for c in cols if c.startswith("Warp Stall Sampling (All"))
    reasons = [c for c in cols if c.startswith("stall_") and "Not Issued" not in c]

    def num(v):
        try:
            return float(str(v).replace(",", ""))
        except ValueError:
            return 0.0

    total = sum(num(r[samples]) for r in rows) or 1.0
    print(f"columns: {len(cols)}; stall reason columns: {len(reasons)}; samples {total:.0f}")
    by_reason = {c: sum(num(r[c]) for r in rows) for c in reasons}
    for c, v in sorted(by_reason.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {c:40s} {100 * v / total:5.1f}%")
    rows.sort(key=lambda r: -num(r[samples]))
    for r in rows[:top]:
        why = sorted(((num(r[c]), c) for c in reasons), reverse=True)[:3]
        why_text = " ".join(f"{c.replace('stall_', '')}={v:.0f}" for v, c in why if v > 0)
        print(f"{100 * num(r[samples]) / total:5.1f}% {r.get('Address', '')} "
              f"{r.get('Source', '')[:70]:70s} {why_text}")


if __name__ == "__main__":
    main()
