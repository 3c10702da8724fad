#!/usr/bin/env python3
"""Writes the Hugging Face parity fixtures under tests/fixtures/hf/.

Each fixture is a small random checkpoint saved by `transformers` (config.json +
safetensors) and `expected.json` with the logits that `transformers` computes on CPU for
fixed input ids. The engine tests load the checkpoint and compare logits.

Needs torch and transformers (v4 or v5). Run from the repository root:
    python3 scripts/make_hf_fixtures.py [--out tests/fixtures/hf]
"""
import argparse
import json
import os
import shutil

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

V5 = int(transformers.__version__.split(".")[0]) >= 5
COMMON = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=128, max_position_embeddings=512,
              rms_norm_eps=1e-5)


def rope_args(theta, scaling):
    """Rope settings in the style of the installed transformers version."""
    if V5:
        params = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            params.update(scaling)
        return {"rope_parameters": params}
    args = {"rope_theta": theta}
    if scaling:
        args["rope_scaling"] = scaling
    return args


def randomize(model, seed):
    """Random weights everywhere, biases included (init leaves them at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif "embed" in name or "lm_head" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = param.shape[-1] if param.dim() > 1 else 64
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in ** 0.5)


def fresh_float32(model):
    dtype_arg = {"dtype": torch.float32} if V5 else {"torch_dtype": torch.float32}
    fresh = type(model)._from_config(model.config, attn_implementation="eager", **dtype_arg)
    fresh.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    return fresh.float().eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def write(out_dir, name, model, ids, extra=None, dtype=None, shard=None):
    folder = os.path.join(out_dir, name)
    shutil.rmtree(folder, ignore_errors=True)
    model.eval()
    if dtype is not None:
        model = model.to(dtype)
    kwargs = {"safe_serialization": True}
    if shard:
        kwargs["max_shard_size"] = shard
    model.save_pretrained(folder, **kwargs)
    # Reference logits in float32 from exactly the weights that were saved, in a fresh
    # float32 model: casting a model also rounds its rotary inv_freq buffer.
    reference = fresh_float32(model)
    expected = {"input_ids": ids, "transformers_version": transformers.__version__,
                "torch_version": torch.__version__,
                "logits": [[float("%.7g" % v) for v in row] for row in logits_of(reference, ids).tolist()]}
    if extra:
        expected.update(extra)
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(expected, f, separators=(",", ":"))
    print(name, sorted(os.listdir(folder)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="tests/fixtures/hf")
    args = parser.parse_args()
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (24,), generator=torch.Generator().manual_seed(7)).tolist()
    attn = {"attn_implementation": "eager"}

    # Llama 3.1 style: llama3 rope scaling with a short original context so all three
    # frequency bands (kept, smoothed, divided) occur at head_dim 16.
    llama3 = LlamaConfig(**COMMON, **rope_args(500000.0, {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}), tie_word_embeddings=False)
    model = LlamaForCausalLM._from_config(llama3, **attn)
    randomize(model, 1)
    write(args.out, "llama3_rope_scaling", model, ids)

    mistral = MistralConfig(**COMMON, **rope_args(1000000.0, None), sliding_window=None,
                            head_dim=16, tie_word_embeddings=False)
    model = MistralForCausalLM._from_config(mistral, **attn)
    randomize(model, 2)
    write(args.out, "mistral", model, ids)

    qwen2 = Qwen2Config(**COMMON, **rope_args(1000000.0, None), tie_word_embeddings=True,
                        use_sliding_window=False)
    model = Qwen2ForCausalLM._from_config(qwen2, **attn)
    randomize(model, 3)
    write(args.out, "qwen2_qkv_bias_tied", model, ids)

    # Sharded BF16 checkpoint with linear rope scaling. `logits` come from the float32
    # upcast of the saved bf16 weights; `logits_bf16_compute` from transformers running in
    # bf16, to bound what a bf16 backend may differ by.
    llama_linear = LlamaConfig(**COMMON, **rope_args(10000.0, {"rope_type": "linear", "factor": 2.0}),
                               tie_word_embeddings=False)
    model = LlamaForCausalLM._from_config(llama_linear, **attn)
    randomize(model, 4)
    bf16_model = LlamaForCausalLM._from_config(llama_linear, **attn)
    bf16_model.load_state_dict(model.state_dict())
    bf16_logits = logits_of(bf16_model.to(torch.bfloat16).eval(), ids)
    write(args.out, "llama_bf16_sharded", model, ids, dtype=torch.bfloat16, shard="60KB",
          extra={"logits_bf16_compute": [[float("%.5g" % v) for v in row]
                                         for row in bf16_logits.tolist()]})


if __name__ == "__main__":
    main()
