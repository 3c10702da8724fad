#!/usr/bin/env python3
"""Hugging Face transformers (SDPA attention) on the checkpoint engine_context_bench uses.

The peer of bench/engine_context_bench.cc, at the same contexts and batches: time to the
first token of one prompt of N tokens (one forward pass, logits of the last row only, then
greedy argmax on the host) and the median decode step with a KV cache of N tokens per
sequence (the prefilled cache repeated into distinct memory per batch). Write the
checkpoint with `lserve_synthetic --geometry=llama3-8b --dtype=bfloat16 --out=DIR`, so
both programs run the same weights. Contexts that do not fit print the error.

Usage: python3 bench/engine_baselines.py --model=DIR [--contexts=32768,65536]
           [--batches=1,8] [--decode_steps=16] [--device=cuda] [--json=PATH]
"""
import argparse
import datetime
import json
import os
import statistics
import time
import warnings

import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def prompt(length, vocab):
    ids = [(i * 7919 + 13) % (vocab - 3) + 3 for i in range(length)]
    return torch.tensor([ids])


def cache_tensors(cache):
    """(keys, values) per layer, in the cache API of transformers v5 or v4."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def repeat_cache(cache, batch):
    """The prefilled cache repeated `batch` times along the batch axis, in fresh memory (the
    prefilled cache itself stays as it is for the next batch)."""
    repeated = DynamicCache()
    for layer, (keys, values) in enumerate(cache_tensors(cache)):
        repeated.update(keys.repeat(batch, 1, 1, 1), values.repeat(batch, 1, 1, 1), layer)
    return repeated


def measure(model, context, batches, steps, device):
    vocab = model.config.vocab_size
    ids = prompt(context, vocab).to(device)
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        first = int(out.logits[0, -1].argmax())
        ttft_ms = (time.perf_counter() - start) * 1e3
        cache = out.past_key_values
        del out
        rows = []
        for batch in batches:
            row = {"context": context, "batch": batch, "ttft_ms": ttft_ms}
            try:
                step_cache = repeat_cache(cache, batch)
                token = torch.full((batch, 1), first, device=device)
                times = []
                for step in range(steps + 2):
                    position = torch.tensor([context + step], device=device)
                    sync(device)
                    start = time.perf_counter()
                    out = model(input_ids=token, past_key_values=step_cache, use_cache=True,
                                cache_position=position)
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
                    token.cpu()
                    if step >= 2:
                        times.append((time.perf_counter() - start) * 1e3)
                    step_cache = out.past_key_values
                row["decode_step_ms"] = statistics.median(times)
                del step_cache
            except (RuntimeError, torch.OutOfMemoryError) as error:
                row["decode_step_ms"] = None
                row["error"] = str(error)[:120]
            if device == "cuda":
                torch.cuda.empty_cache()
            rows.append(row)
        return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--contexts", default="32768,65536,131072,262144")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--decode_steps", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    model = AutoModelForCausalLM.from_pretrained(
        args.model, torch_dtype=torch.bfloat16 if args.device == "cuda" else torch.float32,
        attn_implementation="sdpa").to(args.device).eval()
    model.config.max_position_embeddings = max(model.config.max_position_embeddings,
                                               max(contexts) + args.decode_steps + 8)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": os.environ.get("LSERVE_COMMIT", ""),
        "command": "python3 bench/engine_baselines.py " + " ".join(
            f"--{k}={v}" for k, v in vars(args).items() if v not in ("", None)),
        "runs": [],
    }
    warnings.filterwarnings("ignore", category=FutureWarning)
    measure(model, 64, [1], 2, args.device)  # warm-up: kernels, allocator
    print(f"transformers {transformers.__version__} (sdpa), {args.device}")
    print(f"{'context':>8} {'batch':>6} {'TTFT ms':>10} {'decode ms':>12}")
    for context in contexts:
        try:
            rows = measure(model, context, batches, args.decode_steps, args.device)
        except (RuntimeError, torch.OutOfMemoryError) as error:
            rows = [{"context": context, "batch": b, "ttft_ms": None, "decode_step_ms": None,
                     "error": str(error)[:120]} for b in batches]
        for row in rows:
            ttft = "-" if row["ttft_ms"] is None else f"{row['ttft_ms']:.1f}"
            decode = "-" if row["decode_step_ms"] is None else f"{row['decode_step_ms']:.2f}"
            note = f"  ({row['error'][:60]})" if "error" in row else ""
            print(f"{context:>8} {row['batch']:>6} {ttft:>10} {decode:>12}{note}")
            report["runs"].append(row)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
