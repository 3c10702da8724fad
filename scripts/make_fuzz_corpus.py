#!/usr/bin/env python3
"""Writes seed corpora for the libFuzzer targets in tests/fuzz.

Usage: scripts/make_fuzz_corpus.py OUT_DIR

Creates OUT_DIR/<target>/ for every fuzz target and fills it with small valid inputs and
near-valid ones that stop at a different check each, so the fuzzers start deep inside
the parsers instead of at the JSON syntax. Standard library only.
"""

import json
import math
import os
import struct
import sys

F32, F16, BF16 = "F32", "F16", "BF16"


def encode(values, dtype):
    if dtype == F32:
        return struct.pack(f"<{len(values)}f", *values)
    if dtype == F16:
        return struct.pack(f"<{len(values)}e", *values)
    # bfloat16: the high half of the float32 bits, rounded to nearest even.
    out = bytearray()
    for bits in struct.unpack(f"<{len(values)}I", struct.pack(f"<{len(values)}f", *values)):
        bits += 0x7FFF + ((bits >> 16) & 1)
        out += struct.pack("<H", (bits >> 16) & 0xFFFF)
    return bytes(out)


def safetensors(tensors, dtype, align=8, metadata=True):
    """tensors: [(name, shape, values)] laid out back to back in the given order."""
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = {"format": "pt"}
    for name, shape, values in tensors:
        blob = encode(values, dtype)
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = json.dumps(header, separators=(",", ":")).encode()
    if align:
        text += b" " * ((align - (8 + len(text)) % align) % align)
    return struct.pack("<Q", len(text)) + text + data


def raw_safetensors(header_text, data):
    text = header_text.encode()
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    weights = [("model.embed_tokens.weight", [4, 3], [0.5 * i - 2 for i in range(12)]),
               ("model.norm.weight", [3], [1.0, 1.5, -0.25]),
               ("lm_head.bias", [0], [])]
    seeds = {}
    for dtype in (F32, F16, BF16):
        seeds[f"valid_{dtype.lower()}"] = safetensors(weights, dtype)
        seeds[f"valid_{dtype.lower()}_unaligned"] = safetensors(weights[:2], dtype, align=0,
                                                                metadata=False)
    seeds["valid_specials_f16"] = safetensors(
        [("x", [6], [math.inf, -math.inf, math.nan, 65504.0, 6e-8, -0.0])], F16)
    seeds["valid_empty"] = raw_safetensors("{}", b"")
    seeds["valid_out_of_order"] = raw_safetensors(
        '{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},'
        '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', encode([1.0, 2.0], F32))
    two = encode([1.0, 2.0, 3.0], F32)
    near = {
        "overlap": '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                   '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        "hole": '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}',
        "starts_late": '{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
        "trailing": '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
        "past_end": '{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}',
        "size_mismatch": '{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,12]}}',
        "bad_dtype": '{"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}}',
        "huge_shape": '{"a":{"dtype":"F32","shape":[4611686018427387904,4],'
                      '"data_offsets":[0,12]}}',
        "negative_dim": '{"a":{"dtype":"F32","shape":[-3],"data_offsets":[0,12]}}',
        "duplicate_key": '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                         '"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}',
        "bad_json": '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]',
        "not_object": "[1,2,3]",
    }
    for name, header in near.items():
        seeds[f"corrupt_{name}"] = raw_safetensors(header, two)
    good = seeds["valid_bf16"]
    seeds["corrupt_truncated"] = good[:len(good) - 3]
    seeds["corrupt_length_past_end"] = struct.pack("<Q", 1 << 40) + good[8:]
    seeds["corrupt_short"] = b"\x02\x00\x00"
    return seeds


def index_seeds():
    shard1, shard2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    valid = {"metadata": {"total_size": 28}, "weight_map": {"a": shard1, "c": shard1, "b": shard2}}
    seeds = {
        "valid": valid,
        "valid_one_shard": {"weight_map": {"a": shard1}},
        "valid_empty_map": {"weight_map": {}},
        "wrong_shard": {"weight_map": {"b": shard1}},
        "missing_shard": {"weight_map": {"a": "model-00009-of-00009.safetensors"}},
        "path_traversal": {"weight_map": {"a": "../" + shard1}},
        "index_as_shard": {"weight_map": {"a": "model.safetensors.index.json"}},
        "not_string": {"weight_map": {"a": 3}},
        "map_is_list": {"weight_map": [shard1]},
    }
    out = {name: json.dumps(value, indent=2).encode() for name, value in seeds.items()}
    out["bad_json"] = b'{"weight_map": {"a": "' + shard1.encode()
    return out


LLAMA31 = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": False,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 128256}

MISTRAL = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 32768}

QWEN2 = {
    "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151643,
    "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
    "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_sliding_window": False,
    "vocab_size": 151936}

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
        "vocab_size": 512, "max_position_embeddings": 512}


def patched(base, **changes):
    config = json.loads(json.dumps(base))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def config_seeds():
    linear = {"rope_type": "linear", "factor": 4.0}
    seeds = {
        "llama31": LLAMA31,
        "llama31_v5": patched(LLAMA31, rope_scaling=None, rope_theta=None, torch_dtype=None,
                              dtype="bfloat16",
                              rope_parameters=dict(LLAMA31["rope_scaling"], rope_theta=500000.0)),
        "llama_linear": patched(TINY, rope_scaling=linear),
        "llama_legacy_type": patched(TINY, rope_scaling={"type": "linear", "factor": 2.0}),
        "llama_default_v5": patched(TINY, rope_parameters={"rope_type": "default",
                                                           "rope_theta": 10000.0}),
        "llama_bias": patched(TINY, attention_bias=True, tie_word_embeddings=True),
        "llama_no_type": patched(TINY, model_type=None, architectures=["LlamaForCausalLM"]),
        "llama_head_dim": patched(TINY, head_dim=24),
        "mistral": MISTRAL,
        "mistral_window": patched(MISTRAL, sliding_window=4096),
        "qwen2": QWEN2,
        "qwen2_window": patched(QWEN2, use_sliding_window=True, sliding_window=4096),
        "tiny_llama3": patched(TINY, rope_theta=500000.0, rope_scaling=LLAMA31["rope_scaling"]),
        # Near-valid: each stops at one check.
        "bad_linear_tiny_factor": patched(TINY, rope_scaling={"rope_type": "linear",
                                                              "factor": 1e-45}),
        "bad_linear_huge_factor": patched(TINY, rope_theta=1e30,
                                          rope_scaling={"rope_type": "linear", "factor": 1e30}),
        "bad_llama3_band": patched(TINY, rope_scaling=dict(LLAMA31["rope_scaling"],
                                                          high_freq_factor=0.5)),
        "bad_theta": patched(TINY, head_dim=128, rope_theta=1e-45),
        "bad_yarn": patched(TINY, rope_scaling={"rope_type": "yarn", "factor": 4.0}),
        "bad_grouping": patched(TINY, num_key_value_heads=3),
        "bad_odd_head_dim": patched(TINY, head_dim=7),
        "bad_eos": patched(TINY, eos_token_id=[1, 512]),
        "bad_dtype": patched(TINY, torch_dtype="int8"),
        "bad_types": patched(TINY, hidden_size="64", rms_norm_eps=[1e-5]),
    }
    out = {name: json.dumps(value, indent=2).encode() for name, value in seeds.items()}
    out["bad_json"] = out["llama31"][:-10]
    return out


def gate_seeds():
    """Two leading bytes give (layers, KV heads); the rest is the TSV text."""
    def seed(layers, heads, text):
        return bytes([layers, heads]) + text.encode()

    table = "\n".join("\t".join(f"{((l * 7 + h * 3) % 10) / 9:.4f}" for h in range(4))
                      for l in range(3)) + "\n"
    return {
        "valid_3x4": seed(3, 4, table),
        "valid_spaces_crlf": seed(2, 2, "1 0\r\n0.25  0.75\r\n\r\n"),
        "valid_exponents": seed(1, 3, "1e-3\t-0\t+.5\n"),
        "wrong_row_count": seed(4, 4, table),
        "wrong_width": seed(3, 5, table),
        "not_a_number": seed(1, 2, "0.5\tabc\n"),
        "infinite": seed(1, 2, "inf\tnan\n"),
        "empty": seed(0, 0, ""),
    }


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip())
    corpora = {
        "safetensors_fuzzer": safetensors_seeds(),
        "checkpoint_index_fuzzer": index_seeds(),
        "model_config_fuzzer": config_seeds(),
        "gate_table_fuzzer": gate_seeds(),
    }
    for target, seeds in corpora.items():
        folder = os.path.join(sys.argv[1], target)
        os.makedirs(folder, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(folder, name), "wb") as out:
                out.write(data)


if __name__ == "__main__":
    main()
