#!/usr/bin/env python3
"""A gpt-oss GGUF run in float64 with numpy: the exact answer of its (dequantized) weights, for telling a fault of
ours from rounding when Conclave's logits and llama.cpp's part ways on a quantized file.

Both engines round activations (to f16 for f16 weights, to Q8_0 blocks for quantized ones); this does not. For
each position it writes the logits and the smallest router gap of any layer (the K-th expert's router logit minus
the K+1-th's): where that gap is within rounding, the two engines may pick different experts (a near-tie).

Needs `gguf` and `numpy` from PyPI. Usage:
  gptoss_exact.py MODEL.gguf --tokens 1,450,... [-n 96] -o OUT.npz
OUT.npz holds `logits` [n, vocab] and `gap` [n]. The token ids come from `conclave tokenize` (or the `token`
field of `conclave logits`), so both engines and this read the same ids.
"""
import argparse
import numpy as np
import gguf


def load(path):
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"]
    arch = bytes(arch.parts[arch.data[0]]).decode()
    meta = {k[len(arch) + 1:]: f.parts[f.data[0]].tolist()[0] for k, f in r.fields.items() if k.startswith(arch + ".") and f.data}
    weights = {}
    for t in r.tensors:
        a = t.data if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else gguf.quants.dequantize(t.data, t.tensor_type)
        weights[t.name] = np.asarray(a, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)])
    return meta, weights


def run(meta, T, tokens):
    eps, L = meta["attention.layer_norm_rms_epsilon"], meta["block_count"]
    H, HKV, D = meta["attention.head_count"], meta["attention.head_count_kv"], meta["attention.key_length"]
    K, base = meta["expert_used_count"], meta.get("rope.freq_base", 10000.0)
    window = meta.get("attention.sliding_window", 0)
    n = len(tokens)
    rms = lambda x, w: x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    # NEOX rotation (pairs i, i + D/2), as llama.cpp ropes gpt-oss.
    inv = base ** (-np.arange(0, D, 2) / D)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # x [n, heads, D]
        a, b = x[..., :D // 2], x[..., D // 2:]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)

    x = T["token_embd.weight"][tokens].copy()
    gap = np.full(n, np.inf)
    for l in range(L):
        p = f"blk.{l}."
        h = rms(x, T[p + "attn_norm.weight"])
        q = rope((h @ T[p + "attn_q.weight"].T + T[p + "attn_q.bias"]).reshape(n, H, D))
        k = rope((h @ T[p + "attn_k.weight"].T + T[p + "attn_k.bias"]).reshape(n, HKV, D))
        v = (h @ T[p + "attn_v.weight"].T + T[p + "attn_v.bias"]).reshape(n, HKV, D)
        out = np.zeros((n, H, D))
        # gpt-oss alternates windowed and full layers, windowed first (llama.cpp's swa pattern 2).
        w = window if (window and l % 2 == 0) else n
        for hh in range(H):
            g = hh // (H // HKV)
            s = q[:, hh, :] @ k[:, g, :].T / np.sqrt(D)
            i, j = np.indices(s.shape)
            s = np.where((j <= i) & (i - j < w), s, -np.inf)
            sink = T[p + "attn_sinks.weight"][hh]
            m = np.maximum(s.max(axis=1), sink)
            e = np.exp(s - m[:, None])
            out[:, hh, :] = (e @ v[:, g, :]) / (e.sum(axis=1) + np.exp(sink - m))[:, None]
        x = x + out.reshape(n, H * D) @ T[p + "attn_output.weight"].T + T[p + "attn_output.bias"]
        h = rms(x, T[p + "post_attention_norm.weight"])
        logits = h @ T[p + "ffn_gate_inp.weight"].T + T[p + "ffn_gate_inp.bias"]
        moe = np.zeros_like(x)
        for r in range(n):
            order = np.argsort(-logits[r], kind="stable")
            gap[r] = min(gap[r], logits[r, order[K - 1]] - logits[r, order[K]])
            sel = order[:K]
            wt = np.exp(logits[r, sel] - logits[r, sel].max())
            wt /= wt.sum()
            for e_, we in zip(sel, wt):
                gt = T[p + "ffn_gate_exps.weight"][e_] @ h[r] + T[p + "ffn_gate_exps.bias"][e_]
                up = T[p + "ffn_up_exps.weight"][e_] @ h[r] + T[p + "ffn_up_exps.bias"][e_]
                gt, up = np.minimum(gt, 7.0), np.clip(up, -7.0, 7.0)
                a = gt / (1 + np.exp(-1.702 * gt)) * (up + 1)
                moe[r] += we * (T[p + "ffn_down_exps.weight"][e_] @ a + T[p + "ffn_down_exps.bias"][e_])
        x = x + moe
    head = T.get("output.weight", T["token_embd.weight"])
    return rms(x, T["output_norm.weight"]) @ head.T, gap


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids")
    ap.add_argument("-n", type=int, default=96)
    ap.add_argument("-o", required=True)
    a = ap.parse_args()
    meta, T = load(a.model)
    tokens = [int(t) for t in a.tokens.split(",")][:a.n]
    logits, gap = run(meta, T, tokens)
    np.savez(a.o, logits=logits, gap=gap)


if __name__ == "__main__":
    main()
