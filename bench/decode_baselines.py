#!/usr/bin/env python3
"""Peer baselines for bench/cuda_decode_bench at the same shapes (GPU machine, PyTorch).

* Dense: SDPA decode (one query per sequence) on contiguous KV, Llama-3-8B heads (32 query
  heads, 8 KV heads, head_dim 128, bf16), with the flash and cuDNN backends; effective
  bandwidth = bytes of K and V / time.
* Hybrid: what a PyTorch user would write for LServe-style decode: half the KV heads
  attend sink 128 + local 256 (SDPA on a slice); the other half score logical pages of 16
  with Quest's bound over kmax/kmin per query head, take the max per page of 64, `topk`
  64 pages (4096 tokens), gather them and run SDPA. Selection is recomputed every step
  (the reuse schedule is an lserve feature); the time is reported with and without it.

Usage: python3 bench/decode_baselines.py --json=PATH [--quick]
"""
import argparse
import datetime
import json
import os
import subprocess

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

Q_HEADS, KV_HEADS, DIM, PAGE, LOGICAL = 32, 8, 128, 64, 16
SINK, LOCAL, BUDGET = 128, 256, 4096


def time_ms(fn, min_ms=50.0):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    reps = 10
    while True:
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        stop.record()
        stop.synchronize()
        ms = start.elapsed_time(stop)
        if ms > min_ms or reps >= 2000:
            return ms / reps
        reps *= 4


def dense(batch, keys, backend):
    q = torch.randn(batch, Q_HEADS, 1, DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, KV_HEADS, keys, DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    with sdpa_kernel([backend]):
        ms = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    bytes_kv = 2 * k.numel() * k.element_size()
    return ms, bytes_kv / (ms * 1e-3) / 1e12


def quest(batch, keys, select_every_step=True):
    dense_heads = KV_HEADS // 2
    group = Q_HEADS // KV_HEADS
    pages = keys // PAGE
    q = torch.randn(batch, Q_HEADS, 1, DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, dense_heads, pages, PAGE, DIM, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    kmax = k.view(batch, dense_heads, pages * PAGE // LOGICAL, LOGICAL, DIM).amax(3)
    kmin = k.view(batch, dense_heads, pages * PAGE // LOGICAL, LOGICAL, DIM).amin(3)
    ks = torch.randn(batch, dense_heads, SINK + LOCAL, DIM, device="cuda", dtype=torch.bfloat16)
    vs = torch.randn_like(ks)
    half_q = Q_HEADS // 2
    qd = q[:, :half_q]
    qs = q[:, half_q:]
    top = min(BUDGET // PAGE, pages)

    def select():
        qg = qd.view(batch, dense_heads, group, 1, DIM)
        s = torch.maximum(qg * kmax.unsqueeze(2), qg * kmin.unsqueeze(2)).sum(-1)
        s = s.view(batch, dense_heads, group, pages, PAGE // LOGICAL).amax(-1)
        return s.topk(top, dim=-1).indices  # [batch, dense heads, group, top]

    idx = select()

    def attend(idx):
        gather = idx[..., None, None].expand(-1, -1, -1, -1, PAGE, DIM)
        kk = k.unsqueeze(2).expand(-1, -1, group, -1, -1, -1)
        vv = v.unsqueeze(2).expand(-1, -1, group, -1, -1, -1)
        ksel = torch.gather(kk, 3, gather).reshape(batch, half_q, top * PAGE, DIM)
        vsel = torch.gather(vv, 3, gather).reshape(batch, half_q, top * PAGE, DIM)
        od = F.scaled_dot_product_attention(qd, ksel, vsel)
        os_ = F.scaled_dot_product_attention(qs, ks, vs, enable_gqa=True)
        return od, os_

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        step = time_ms(lambda: attend(select()))
        attend_only = time_ms(lambda: attend(idx))
    return step, attend_only


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    lengths = [8192, 32768] if args.quick else [8192, 16384, 32768, 65536, 131072, 262144]
    report = {
        "date": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "commit": os.environ.get("LSERVE_COMMIT", ""),
        "command": "python3 bench/decode_baselines.py " + " ".join(
            a for a in ["--quick" if args.quick else ""] if a),
        "dense": [],
        "quest": [],
    }
    print("SDPA decode on contiguous KV (GQA 32/8, d128, bf16)")
    print(f"{'batch':>6} {'keys':>8} {'backend':>8} {'ms':>10} {'TB/s':>8}")
    for batch in (1, 8, 32):
        for keys in lengths:
            for name, backend in (("flash", SDPBackend.FLASH_ATTENTION),
                                  ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    ms, tbs = dense(batch, keys, backend)
                except RuntimeError as error:
                    print(f"{batch:>6} {keys:>8} {name:>8} unavailable: {str(error)[:60]}")
                    continue
                print(f"{batch:>6} {keys:>8} {name:>8} {ms:>10.4f} {tbs:>8.3f}")
                report["dense"].append({"batch": batch, "keys": keys, "backend": name,
                                        "ms": ms, "tb_per_s": tbs})
                torch.cuda.empty_cache()
    print("\nQuest in PyTorch (score, topk, gather, SDPA; half the heads streaming)")
    print(f"{'batch':>6} {'keys':>8} {'step ms':>10} {'no-select ms':>13}")
    for batch in (1, 8, 32):
        for keys in lengths:
            try:
                step, attend_only = quest(batch, keys)
            except torch.OutOfMemoryError:
                print(f"{batch:>6} {keys:>8} out of memory")
                torch.cuda.empty_cache()
                continue
            print(f"{batch:>6} {keys:>8} {step:>10.4f} {attend_only:>13.4f}")
            report["quest"].append({"batch": batch, "keys": keys, "step_ms": step,
                                    "attend_only_ms": attend_only})
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
