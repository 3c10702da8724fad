#!/usr/bin/env python3
"""Trains the needle-in-a-haystack retrieval fixture and learns its streaming-head gates.

A small Llama (HF LlamaForCausalLM layout: RMSNorm, RoPE with rotate_half, GQA, SiLU MLP)
over bytes learns to copy a 7-digit key from a needle sentence hidden at a random depth
of essay text, through a length curriculum. Then, with the model frozen, one gate per
KV head mixes full attention with streaming attention (sink + local window) as
DuoAttention does; the gates learn from a distillation loss plus an L1 penalty and are
written as full_attention_heads.tsv. Not part of the serving path.

Token ids: bytes are 0..255; BOS 256, QUERY 257 (starts the question), EOS 258, KEY 259
(stands before the key, in the needle and at the end of the question). The haystack is
essay text with its ASCII digits removed, so the key is the only number; the key is 7
distinct digits. A prompt is BOS, the haystack with the needle " The secret key is "
KEY digits ". " inserted at byte offset round(depth * n), QUERY, QUESTION, KEY; the
answer is the key's 7 digit bytes, then EOS.

Outputs under --out: config.json, model.safetensors (bf16), full_attention_heads.tsv,
train_log.txt, metrics.json. Each is rewritten as training progresses, so a run stopped
early still leaves a usable checkpoint.

    python3 scripts/train_niah_model.py --haystack_dir DIR --out OUT [--minutes 8]
"""
import argparse
import json
import math
import os
import random
import struct
import time
import traceback

import torch
import torch.nn.functional as F
from torch import nn

BOS, QUERY, EOS, KEY = 256, 257, 258, 259
NEEDLE = (" The secret key is ", ". ")  # KEY and the digits go between
QUESTION = "What is the secret key? The secret key is "  # then KEY
KEY_DIGITS = 7
# Files held out of training; the engine's evaluation reads these.
HELD_OUT = ("desres.txt", "iflisp.txt", "popular.txt", "unions.txt")


def model_config(args):
    return dict(hidden_size=args.hidden, intermediate_size=args.intermediate,
                num_hidden_layers=args.layers, num_attention_heads=args.heads,
                num_key_value_heads=args.kv_heads, head_dim=args.head_dim, vocab_size=264,
                max_position_embeddings=32768, rope_theta=args.rope_theta, rms_norm_eps=1e-5,
                tie_word_embeddings=True, bos_token_id=BOS, eos_token_id=EOS)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv, self.d = (c["num_attention_heads"], c["num_key_value_heads"],
                                   c["head_dim"])
        hid = c["hidden_size"]
        self.q_proj = nn.Linear(hid, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(hid, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(hid, self.kv * self.d, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, hid, bias=False)

    def forward(self, x, cos, sin, gate=None, tail=0, sink=128, local=256):
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv, self.d).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = self.h // self.kv
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if gate is not None and tail > 0:
            # Streaming attention for the last `tail` rows only (the question and answer),
            # where the engine's decode window applies; mixed per KV head by the gate.
            rows = torch.arange(n - tail, n, device=x.device)[:, None]
            cols = torch.arange(n, device=x.device)[None, :]
            visible = (cols <= rows) & ((cols < sink) | (rows - cols < local))
            s = (q[:, :, n - tail:].float() @ k.float().transpose(-1, -2)) / math.sqrt(self.d)
            s = s.masked_fill(~visible, float("-inf"))
            stream = torch.softmax(s, dim=-1) @ v.float()
            a = gate.repeat_interleave(group)[None, :, None, None]
            mixed = a * out[:, :, n - tail:].float() + (1 - a) * stream
            out = torch.cat([out[:, :, :n - tail], mixed.to(out.dtype)], dim=2)
        out = out.transpose(1, 2).reshape(b, n, self.h * self.d)
        return self.o_proj(out)


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        hid, inter, eps = c["hidden_size"], c["intermediate_size"], c["rms_norm_eps"]
        self.input_layernorm = RMSNorm(hid, eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(hid, eps)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(hid, inter, bias=False)
        self.mlp.up_proj = nn.Linear(hid, inter, bias=False)
        self.mlp.down_proj = nn.Linear(inter, hid, bias=False)

    def forward(self, x, cos, sin, **kw):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, **kw)
        h = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(F.silu(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.model.layers = nn.ModuleList(Layer(c) for _ in range(c["num_hidden_layers"]))
        self.model.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        d = c["head_dim"]
        inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.register_buffer("inv_freq", inv, persistent=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)
        for layer in self.model.layers:  # scaled residual projections
            for p in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * c["num_hidden_layers"]))

    def hidden(self, ids, gates=None, tail=0):
        n = ids.shape[1]
        freqs = torch.arange(n, device=ids.device, dtype=torch.float32)[:, None] * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        x = self.model.embed_tokens(ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, gate=None if gates is None else gates[i], tail=tail)
        return self.model.norm(x)

    def logits(self, h):
        return h @ self.model.embed_tokens.weight.t()


# ----------------------------------------------------------------------------- data
def load_corpus(folder, held_out):
    names = sorted(f for f in os.listdir(folder) if f.endswith(".txt"))
    names = [f for f in names if (f in HELD_OUT) == held_out]
    data = b"".join(open(os.path.join(folder, f), "rb").read() for f in names)
    data = data.translate(None, b"0123456789")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), names


def make_batch(corpus, length, batch, rng, depth=None):
    """Token ids (batch, length) and the keys; the answer fills the last 8 positions."""
    q = torch.tensor([QUERY] + list(QUESTION.encode()) + [KEY], dtype=torch.long)
    needle_len = len(NEEDLE[0]) + 1 + KEY_DIGITS + len(NEEDLE[1])
    hay_len = length - 1 - needle_len - len(q) - KEY_DIGITS - 1
    assert hay_len > 0, length
    rows, keys = [], []
    for _ in range(batch):
        off = rng.randrange(0, len(corpus) - hay_len)
        hay = corpus[off:off + hay_len].long()
        d = rng.random() if depth is None else depth
        p = int(round(d * hay_len))
        key = "".join(rng.sample("0123456789", KEY_DIGITS))
        needle = torch.tensor(list(NEEDLE[0].encode()) + [KEY] + list(key.encode()) +
                              list(NEEDLE[1].encode()), dtype=torch.long)
        ans = torch.tensor(list(key.encode()) + [EOS], dtype=torch.long)
        rows.append(torch.cat([torch.tensor([BOS]), hay[:p], needle, hay[p:], q, ans]))
        keys.append(key)
    return torch.stack(rows), keys


def answer_loss_and_hits(model, ids, gates=None, tail=0):
    h = model.hidden(ids, gates=gates, tail=tail)
    logits = model.logits(h[:, -9:-1]).float()  # predicts the 7 digits and EOS
    target = ids[:, -8:]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
    hits = (logits[:, :KEY_DIGITS].argmax(-1) == target[:, :KEY_DIGITS]).all(-1)
    return ce, hits, h


# ----------------------------------------------------------------------------- export
def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        raw = t.detach().to(torch.bfloat16).contiguous().cpu().view(torch.int16)
        try:
            data = raw.numpy().tobytes()
        except (ImportError, RuntimeError):  # torch without numpy
            data = bytes(raw.view(torch.uint8).flatten().tolist())
        header[name] = {"dtype": "BF16", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


def export(model, out):
    c = model.c
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
              "hidden_act": "silu", "torch_dtype": "bfloat16", "attention_bias": False,
              **c}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tensors = {n: p for n, p in model.named_parameters()}
    write_safetensors(os.path.join(out, "model.safetensors"), tensors)


# ----------------------------------------------------------------------------- main
class Log:
    def __init__(self, path):
        self.path, self.t0 = path, time.time()

    def __call__(self, msg):
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


@torch.no_grad()
def accuracy(model, corpus, length, samples, rng, dev, amp, gates=None, tail=0, depth=None):
    per = max(1, min(samples, 65536 // length))
    hits = 0
    for start in range(0, samples, per):
        ids, _ = make_batch(corpus, length, min(per, samples - start), rng, depth)
        with amp():
            _, h, _ = answer_loss_and_hits(model, ids.to(dev), gates, tail)
        hits += int(h.sum())
    return hits / samples


def train_dense(model, args, train, val, dev, amp, log, metrics, deadline):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                            weight_decay=0.01)
    rng = random.Random(args.seed)
    stages = [int(x) for x in args.lengths.split(",")]
    fracs = [float(x) for x in args.stage_fracs.split(",")]
    t_start = time.time()
    total = deadline - t_start
    step = 0
    for si, length in enumerate(stages):
        stage_deadline = t_start + total * fracs[si]
        batch = max(1, args.tokens_per_step // length)
        stage_steps, best = 0, 0.0
        log(f"stage {si}: length {length}, batch {batch}")
        while time.time() < stage_deadline:
            # Mostly the stage's length, sometimes an earlier one so it is not forgotten.
            n = length if si == 0 or rng.random() < 0.75 else rng.choice(stages[:si])
            ids, _ = make_batch(train, n, max(1, args.tokens_per_step // n), rng)
            ids = ids.to(dev)
            # Warm-up, then cosine decay to a tenth over the dense time budget.
            frac = min(1.0, (time.time() - t_start) / total)
            lr = args.lr * min(1.0, (step + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = lr
            with amp():
                h = model.hidden(ids)
                logits = model.logits(h).float()
            lm = F.cross_entropy(logits[:, :-9].reshape(-1, logits.shape[-1]),
                                 ids[:, 1:-8].reshape(-1))
            ans = F.cross_entropy(logits[:, -9:-1].reshape(-1, logits.shape[-1]),
                                  ids[:, -8:].reshape(-1))
            loss = ans + args.lm_weight * lm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            stage_steps += 1
            if step % args.log_every == 0:
                log(f"step {step} len {n} loss {loss.item():.4f} answer {ans.item():.4f} "
                    f"lm {lm.item():.4f}")
            if stage_steps % args.eval_every == 0:
                acc = accuracy(model, val, length, args.eval_samples, rng, dev, amp)
                best = max(best, acc)
                log(f"stage {si} step {step}: held-out accuracy at {length} = {acc:.3f}")
                if acc >= args.advance_at and si + 1 < len(stages):
                    break
        acc = accuracy(model, val, length, args.eval_samples, rng, dev, amp)
        metrics["stages"].append({"length": length, "steps": stage_steps, "accuracy": acc,
                                  "seconds": round(time.time() - t_start, 1)})
        log(f"stage {si} done: {stage_steps} steps, held-out accuracy at {length} = {acc:.3f}")
        export(model, args.out)
    metrics["dense_steps"] = step


def train_gates(model, args, train, dev, amp, log, deadline):
    for p in model.parameters():
        p.requires_grad_(False)
    c = model.c
    gates = torch.ones(c["num_hidden_layers"], c["num_key_value_heads"], device=dev,
                       requires_grad=True)
    opt = torch.optim.Adam([gates], lr=args.gate_lr)
    rng = random.Random(args.seed + 1)
    lengths = [int(x) for x in args.gate_lengths.split(",")]
    step = 0
    while time.time() < deadline and step < args.gate_steps:
        n = rng.choice(lengths)
        ids, _ = make_batch(train, n, max(1, args.gate_tokens // n), rng)
        ids = ids.to(dev)
        with torch.no_grad(), amp():
            ref = model.hidden(ids)[:, -args.tail:].float()
        with amp():
            ce, _, h = answer_loss_and_hits(model, ids, gates, args.tail)
        h = h[:, -args.tail:].float()
        distill = (h - ref).pow(2).mean() / ref.pow(2).mean()
        l1 = gates.abs().mean()
        loss = distill + args.gate_ce * ce + args.l1 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            gates.clamp_(0.0, 1.0)
        step += 1
        if step % args.log_every == 0:
            log(f"gate step {step} len {n} distill {distill.item():.4f} ce {ce.item():.4f} "
                f"mean gate {l1.item():.3f}")
    log(f"gates after {step} steps:\n" + "\n".join(
        "  " + " ".join(f"{g:.3f}" for g in row) for row in gates.tolist()))
    return gates.detach()


def write_gates(path, gates):
    with open(path, "w") as f:
        for row in gates.tolist():
            f.write("\t".join(f"{g:.6e}" for g in row) + "\n")


def binary_gates(gates, ratio, keep=None):
    """1 for dense heads, 0 for streaming: the top (1 - ratio) gates, or the given mask."""
    flat = gates.flatten()
    if keep is None:
        k = round((1 - ratio) * flat.numel())
        keep = torch.zeros_like(flat)
        keep[flat.argsort(descending=True)[:k]] = 1
    return keep.view_as(gates)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--haystack_dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=8.0, help="whole run, gates included")
    ap.add_argument("--gate_minutes", type=float, default=1.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv_heads", type=int, default=2)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--rope_theta", type=float, default=500000.0)
    ap.add_argument("--lengths", default="512,2048,8192,16384")
    ap.add_argument("--stage_fracs", default="0.3,0.5,0.75,1.0")
    ap.add_argument("--tokens_per_step", type=int, default=32768)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lm_weight", type=float, default=0.1)
    ap.add_argument("--eval_every", type=int, default=100)
    ap.add_argument("--eval_samples", type=int, default=64)
    ap.add_argument("--advance_at", type=float, default=0.97)
    ap.add_argument("--log_every", type=int, default=50)
    ap.add_argument("--gate_lengths", default="1024,2048,4096")
    ap.add_argument("--gate_tokens", type=int, default=16384)
    ap.add_argument("--gate_steps", type=int, default=400)
    ap.add_argument("--gate_lr", type=float, default=0.02)
    ap.add_argument("--gate_ce", type=float, default=0.5)
    ap.add_argument("--l1", type=float, default=0.05)
    ap.add_argument("--tail", type=int, default=16)
    ap.add_argument("--final_lengths", default="512,1024,2048,4096,8192,16384")
    ap.add_argument("--final_samples", type=int, default=128)
    args = ap.parse_args()

    t0 = time.time()
    end = t0 + args.minutes * 60
    os.makedirs(args.out, exist_ok=True)
    log = Log(os.path.join(args.out, "train_log.txt"))
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        amp = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        import contextlib
        amp = contextlib.nullcontext
    train, train_names = load_corpus(args.haystack_dir, held_out=False)
    val, val_names = load_corpus(args.haystack_dir, held_out=True)
    log(f"train text {len(train)} bytes from {len(train_names)} files; held-out "
        f"{len(val)} bytes from {val_names}; args {vars(args)}")
    c = model_config(args)
    model = Llama(c).to(dev)
    log(f"parameters: {sum(p.numel() for p in model.parameters())} on "
        f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}")
    metrics = {"config": c, "args": vars(args), "stages": []}

    # Dense training gets everything but the gates' share and the final evaluations.
    reserve = args.gate_minutes * 60 + 15
    try:
        train_dense(model, args, train, val, dev, amp, log, metrics, end - reserve)
    except Exception:  # keep what was learned: export and evaluate it all the same
        log("dense training failed:\n" + traceback.format_exc())
    with torch.no_grad():  # evaluate and gate the weights as exported
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    export(model, args.out)
    rng = random.Random(7)
    metrics["dense_accuracy"] = {}
    for n in [int(x) for x in args.final_lengths.split(",")]:
        samples = args.final_samples if n <= 8192 else args.final_samples // 2
        acc = accuracy(model, val, n, samples, rng, dev, amp)
        metrics["dense_accuracy"][n] = acc
        log(f"dense held-out accuracy at {n}: {acc:.3f} ({samples} samples)")
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)

    try:
        gates = train_gates(model, args, train, dev, amp, log, end - 20)
    except Exception:
        log("gate training failed:\n" + traceback.format_exc())
        return
    write_gates(os.path.join(args.out, "full_attention_heads.tsv"), gates)
    metrics["gates"] = gates.tolist()
    # Decode-window check in PyTorch: learned top half dense against random halves.
    check = {}
    n = 2048
    candidates = [("learned_0.5", binary_gates(gates, 0.5))]
    for seed in range(3):
        idx = torch.randperm(gates.numel(), generator=torch.Generator().manual_seed(seed))
        keep = torch.zeros(gates.numel())
        keep[idx[:gates.numel() // 2]] = 1.0
        candidates.append((f"random_0.5_seed{seed}", binary_gates(gates, 0.5, keep.to(dev))))
    for name, g in candidates:
        acc = accuracy(model, val, n, 64, random.Random(9), dev, amp, gates=g, tail=args.tail)
        check[name] = {"gates": g.tolist(), "accuracy_2048": acc}
        log(f"{name}: accuracy at {n} with streaming tail = {acc:.3f}")
    metrics["gate_check"] = check
    metrics["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    log(f"done in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
