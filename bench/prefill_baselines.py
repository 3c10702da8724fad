#!/usr/bin/env python3
"""Peer baselines for bench/cuda_prefill_bench at the same shapes (GPU machine, PyTorch).

One Llama-3-8B layer (32 query heads, 8 KV heads, head_dim 128, bf16), one sequence of
8K-128K tokens attending causally to itself:
* dense: SDPA with the flash (FlashAttention-2) and cuDNN backends, and FlexAttention with
  a causal block mask; TFLOP/s counts the causal half (4 * L^2 / 2 * head_dim * heads);
* hybrid, what a PyTorch user would write today: `torch.compile(flex_attention)` with a
  per-head block mask from `create_block_mask` in which the query heads of every other KV
  head see only the sink (128) and the local window (8192), `enable_gqa=True`.

Usage: python3 bench/prefill_baselines.py --json=PATH [--quick]
"""
import argparse
import datetime
import json
import os
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from decode_baselines import time_ms

Q_HEADS, KV_HEADS, DIM = 32, 8, 128
SINK, LOCAL = 128, 8192


def tflops(tokens, ms):
    return 4.0 * tokens * tokens / 2 * DIM * Q_HEADS / (ms * 1e-3) / 1e12


def inputs(tokens):
    q = torch.randn(1, Q_HEADS, tokens, DIM, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, KV_HEADS, tokens, DIM, device="cuda", dtype=torch.bfloat16)
    return q, k, torch.randn_like(k)


def sdpa(tokens, backend):
    q, k, v = inputs(tokens)
    with sdpa_kernel([backend]):
        return time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                              enable_gqa=True))


def flex(tokens, hybrid, compiled):
    q, k, v = inputs(tokens)
    group = Q_HEADS // KV_HEADS
    streaming = torch.tensor([hybrid and (h // group) % 2 == 1 for h in range(Q_HEADS)],
                             device="cuda")

    def mask(b, h, q_idx, kv_idx):
        window = (kv_idx < SINK) | (q_idx - kv_idx < LOCAL)
        return (kv_idx <= q_idx) & (~streaming[h] | window)

    warnings.filterwarnings("ignore", message="_compile flag")
    # _compile builds the block mask without materializing the element mask (the eager
    # path needs heads x tokens^2 bytes, beyond the GPU from 32K on).
    block_mask = create_block_mask(mask, B=None, H=Q_HEADS, Q_LEN=tokens, KV_LEN=tokens,
                                   device="cuda", _compile=True)
    return time_ms(lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=True))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default="")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    lengths = [8192, 32768] if args.quick else [8192, 32768, 65536, 131072]
    compiled = torch.compile(flex_attention)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "commit": os.environ.get("LSERVE_COMMIT", ""),
        "command": "python3 bench/prefill_baselines.py" + (" --quick" if args.quick else ""),
        "prefill": [],
    }
    print("Prefill peers, Llama-3-8B layer (GQA 32/8, d128, bf16), one sequence")
    print(f"{'tokens':>8} {'method':>14} {'ms':>10} {'TFLOP/s':>8}")
    methods = (
        ("sdpa_flash", lambda n: sdpa(n, SDPBackend.FLASH_ATTENTION)),
        ("sdpa_cudnn", lambda n: sdpa(n, SDPBackend.CUDNN_ATTENTION)),
        ("flex_dense", lambda n: flex(n, False, compiled)),
        ("flex_hybrid", lambda n: flex(n, True, compiled)),
    )
    for tokens in lengths:
        for name, run in methods:
            try:
                ms = run(tokens)
            except (RuntimeError, torch.OutOfMemoryError) as error:
                print(f"{tokens:>8} {name:>14} unavailable: {str(error)[:60]}")
                torch.cuda.empty_cache()
                continue
            # Hybrid TFLOP/s counts the dense work, so it reads as effective throughput.
            print(f"{tokens:>8} {name:>14} {ms:>10.3f} {tflops(tokens, ms):>8.1f}")
            report["prefill"].append({"tokens": tokens, "method": name, "ms": ms,
                                      "tflops_dense_equivalent": tflops(tokens, ms)})
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
