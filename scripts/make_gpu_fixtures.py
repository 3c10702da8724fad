#!/usr/bin/env python3
"""Writes transformers parity fixtures with GPU-sized heads (head_dim 64 and 128).

Each fixture is a small random checkpoint saved by `transformers` as bf16 safetensors
plus `expected.json`: per prompt, the ids, the float32 logits transformers computes at
every position (teacher-forced, in `logits_<i>.f32`, little-endian, rows x vocab), the
16 greedy ids float32 transformers continues with, and the top-2 logit margin at each of
those steps. The reference runs in float32 on the CPU, on the saved bf16 weights upcast,
which is exactly what the engine loads.

The fixtures take about 3 MB of logits per long prompt, so they are not committed: the
GPU run makes them in a scratch folder (tests/kernels/cuda/engine_parity_test.cc reads
$LSERVE_GPU_FIXTURES). Needs torch and transformers (v4 or v5):
    python3 scripts/make_gpu_fixtures.py --out /tmp/gpu_fixtures
"""
import argparse
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_hf_fixtures import fresh_float32, logits_of, randomize, rope_args  # noqa: E402

VOCAB = 512
PROMPT_LENGTHS = (1500, 77)
GREEDY_TOKENS = 16
# Llama 3.1 scaling with a short original context, so a 1,500-token prompt reaches all
# three frequency bands (kept, smoothed, divided).
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 256}


def common(hidden, heads, kv_heads, layers=3):
    return dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=VOCAB,
                max_position_embeddings=2048, rms_norm_eps=1e-5)


def fixtures():
    """(name, model class, config, seed): head dims 64 and 128, GQA groups 2 and 4."""
    return [
        ("llama3_d128_g4", LlamaForCausalLM,
         LlamaConfig(**common(512, 4, 1), **rope_args(500000.0, LLAMA3_SCALING),
                     tie_word_embeddings=False), 11),
        ("llama3_d64_g2", LlamaForCausalLM,
         LlamaConfig(**common(256, 4, 2), **rope_args(500000.0, LLAMA3_SCALING),
                     tie_word_embeddings=False), 12),
        ("llama3_d64_g4", LlamaForCausalLM,
         LlamaConfig(**common(512, 8, 2), **rope_args(500000.0, LLAMA3_SCALING),
                     tie_word_embeddings=False), 13),
        ("qwen2_d64_bias_tied", Qwen2ForCausalLM,
         Qwen2Config(**common(256, 4, 2), **rope_args(1000000.0, None), tie_word_embeddings=True,
                     use_sliding_window=False), 14),
        ("mistral_d128_g2", MistralForCausalLM,
         MistralConfig(**common(512, 4, 2), **rope_args(1000000.0, None), sliding_window=None,
                       head_dim=128, tie_word_embeddings=False), 15),
    ]


def greedy(model, ids, steps):
    """Greedy ids and each step's top-2 margin, by full forward passes (no cache)."""
    ids = list(ids)
    out, margins = [], []
    for _ in range(steps):
        last = logits_of(model, ids)[-1]
        top = torch.topk(last, 2).values
        token = int(torch.argmax(last))
        out.append(token)
        margins.append(float(top[0] - top[1]))
        ids.append(token)
    return out, margins


def write(out_dir, name, model_class, config, seed, checkpoint_only=False):
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    model = model_class._from_config(config, attn_implementation="eager")
    randomize(model, seed)
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(folder, safe_serialization=True)
    if checkpoint_only:
        print(name, "checkpoint only")
        return
    reference = fresh_float32(model)
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for i, length in enumerate(PROMPT_LENGTHS):
        ids = torch.randint(0, VOCAB, (length,), generator=gen).tolist()
        logits = logits_of(reference, ids).contiguous()
        logits.numpy().astype("<f4").tofile(os.path.join(folder, "logits_%d.f32" % i))
        greedy_ids, margins = greedy(reference, ids, GREEDY_TOKENS)
        prompts.append({"ids": ids, "logits_file": "logits_%d.f32" % i,
                        "greedy_ids": greedy_ids, "greedy_margins": margins})
    expected = {"vocab_size": VOCAB, "prompts": prompts,
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__}
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, separators=(",", ":"))
    print(name, "head_dim", config.hidden_size // config.num_attention_heads
          if not getattr(config, "head_dim", None) else config.head_dim,
          "group", config.num_attention_heads // config.num_key_value_heads,
          "min greedy margin", ["%.3g" % min(p["greedy_margins"]) for p in prompts])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="", help="comma-separated fixture names (default: all)")
    parser.add_argument("--checkpoints_only", action="store_true",
                        help="write the checkpoints without the transformers reference")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    for name, model_class, config, seed in fixtures():
        if not only or name in only:
            write(args.out, name, model_class, config, seed, args.checkpoints_only)


if __name__ == "__main__":
    main()
