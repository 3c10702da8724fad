#!/usr/bin/env python3
"""Kernel time of one engine decode step, from Nsight Compute's per-kernel durations.

Run engine_context_bench under
  ncu --metrics gpu__time_duration.sum --clock-control none --cache-control none --csv
with one context, one batch and --decode_steps=1: the kernels of the last step (those
after the next-to-last sampling kernel) are summed by kind and set beside the step's
wall time that the same bench measured without the profiler (--bench_json). Their ratio
is the step's kernel-busy fraction: what is left is host time between kernels (launches,
the step's bookkeeping and the copy of the sampled tokens). ncu runs kernels one at a
time, so overlap between kernels, if any, is not counted.

Usage: step_kernel_summary.py --ncu_csv=PATH --bench_json=PATH [--mode=dense] [--context=N]
  [--batch=1] [--json=PATH]
"""
import argparse
import collections
import csv
import io
import json

KINDS = [("gemm", ("nvjet", "gemm", "Gemm", "splitK", "cutlass")),
         ("decode attention", ("Decode",)), ("selector", ("Score", "Select")),
         ("append", ("Append",)), ("rope", ("Rope",)), ("rmsnorm", ("RmsNorm",)),
         ("silu-mul", ("SiluMul",)), ("sampling", ("Sample",)), ("embedding", ("Embedding",))]


def kind_of(name):
    for kind, needles in KINDS:
        if any(n in name for n in needles):
            return kind
    return "other"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ncu_csv", required=True)
    parser.add_argument("--bench_json", required=True)
    parser.add_argument("--mode", default="dense")
    parser.add_argument("--context", type=int, default=0, help="0: the first measured")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    lines = [line for line in open(args.ncu_csv) if line.startswith('"')]
    rows = list(csv.DictReader(io.StringIO("".join(lines))))
    scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}
    kernels = [(r["Kernel Name"], float(r["Metric Value"].replace(",", "")) *
                scale[r["Metric Unit"]]) for r in rows if r["Metric Name"] == "gpu__time_duration.sum"]
    ends = [i for i, (name, _) in enumerate(kernels) if "SampleKernel" in name]
    if len(ends) < 2:
        raise SystemExit("step_kernel_summary: fewer than two sampling kernels in the trace")
    step = kernels[ends[-2] + 1:ends[-1] + 1]
    by_kind = collections.defaultdict(lambda: [0, 0.0])
    for name, ms in step:
        by_kind[kind_of(name)][0] += 1
        by_kind[kind_of(name)][1] += ms
    bench = json.load(open(args.bench_json))
    run = next(r for r in bench["runs"]
               if r["mode"] == args.mode and r["batch"] == args.batch and r.get("decode_step_ms")
               and args.context in (0, r["context"]))
    kernel_ms = sum(ms for _, ms in step)
    step_ms = run["decode_step_ms"]
    print(f"{args.mode} decode step, context {run['context']}, batch {run['batch']}: "
          f"{len(step)} kernels, {kernel_ms:.3f} ms of kernels in a {step_ms:.3f} ms step: "
          f"kernel-busy fraction {kernel_ms / step_ms:.3f}")
    for kind, (count, ms) in sorted(by_kind.items(), key=lambda item: -item[1][1]):
        print(f"  {kind:18s} {count:5d} kernels {ms:8.3f} ms ({ms / kernel_ms:5.1%})")
    if args.json:
        json.dump({"mode": args.mode, "context": run["context"], "batch": run["batch"],
                   "kernels": len(step), "kernel_ms": kernel_ms, "step_ms": step_ms,
                   "kernel_busy_fraction": kernel_ms / step_ms,
                   "by_kind": {k: {"kernels": c, "ms": ms} for k, (c, ms) in by_kind.items()}},
                  open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
