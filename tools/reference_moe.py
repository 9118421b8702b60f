#!/usr/bin/python3
"""reference_moe.py — an independent PyTorch reference of one hierarchical MoE
layer (SPEC §1.2): scores (sigmoid or softmax), biased two-tier selection
(groups by the sum of their top-2, then top-k per group, or DeepSeek-V3's
top-k inside the chosen groups), weights from unbiased scores, routed and
shared SwiGLU experts, and the sequence-wise balance loss; forward and, by
autograd, the backward of L = sum(y * dy) + alpha * balance.

usage: /usr/bin/python3 tools/reference_moe.py [--out tests/fixtures/moe]
Writes one small safetensors file per case; the C test only reads them."""
import argparse, json, os, struct
import torch

torch.set_default_dtype(torch.float32)

BASE = {"vocab_size": 8, "hidden_size": 16, "intermediate_size": 8, "moe_intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8,
        "max_position_embeddings": 32, "first_k_dense_replace": 0}
CASES = {
    # hierarchical, sigmoid, normalised weights, shared expert, aux loss
    "sigmoid_hier": dict(n_routed_experts=16, n_group=4, topk_group=2, topk_per_group=2, num_experts_per_tok=4,
                         n_shared_experts=1, scoring_func="sigmoid", norm_topk_prob=True,
                         routed_scaling_factor=2.5, aux_loss_alpha=0.5),
    # hierarchical, softmax scores, unnormalised weights
    "softmax_hier": dict(n_routed_experts=16, n_group=4, topk_group=2, topk_per_group=2, num_experts_per_tok=4,
                         n_shared_experts=1, scoring_func="softmax", norm_topk_prob=False,
                         routed_scaling_factor=1.0, aux_loss_alpha=0.05),
    # DeepSeek-V3 mode (topk_per_group 0): top-3 inside 2 chosen groups, no shared expert
    "dsv3": dict(n_routed_experts=16, n_group=4, topk_group=2, topk_per_group=0, num_experts_per_tok=3,
                 n_shared_experts=0, scoring_func="sigmoid", norm_topk_prob=True,
                 routed_scaling_factor=1.0, aux_loss_alpha=0.0),
    # k equal to the group size (2 experts per group, both taken), 3 of 4 groups
    "full_group": dict(n_routed_experts=8, n_group=4, topk_group=3, topk_per_group=2, num_experts_per_tok=6,
                       n_shared_experts=1, scoring_func="sigmoid", norm_topk_prob=True,
                       routed_scaling_factor=1.0, aux_loss_alpha=0.1),
}
N_SEQ, T = 2, 12            # two sequences of 12 tokens: the aux loss is per sequence
MARGIN = 1e-3               # selections closer than this are re-drawn (no float near-ties)


def swiglu(x, g, u, d):
    return (torch.nn.functional.silu(x @ g.T) * (x @ u.T)) @ d.T


def select(c, sel):
    """Biased selection for every token: experts [n, k] and the smallest gap
    between a chosen and a rejected candidate (tier 1 and tier 2)."""
    E, G, tg, tpg = c["n_routed_experts"], c["n_group"], c["topk_group"], c["topk_per_group"]
    per = E // G
    rows, gap = [], float("inf")
    for t in range(sel.shape[0]):
        s = sel[t].tolist()
        gsc = []
        for g in range(G):
            vals = sorted(s[g * per:(g + 1) * per], reverse=True)
            gsc.append(sum(vals[:min(2, per)]))
        order = sorted(range(G), key=lambda g: -gsc[g])
        if tg < G:
            gap = min(gap, gsc[order[tg - 1]] - gsc[order[tg]])
        chosen = order[:tg]
        ex = []
        if tpg > 0:
            for g in chosen:
                idx = sorted(range(g * per, (g + 1) * per), key=lambda e: -s[e])
                if tpg < per:
                    gap = min(gap, s[idx[tpg - 1]] - s[idx[tpg]])
                ex += idx[:tpg]
        else:
            cand = sorted([e for g in chosen for e in range(g * per, (g + 1) * per)], key=lambda e: -s[e])
            k = c["num_experts_per_tok"]
            if k < len(cand):
                gap = min(gap, s[cand[k - 1]] - s[cand[k]])
            ex = cand[:k]
        rows.append(ex)
    return torch.tensor(rows, dtype=torch.int64), gap


def layer(c, P, x, seq_len):
    E = c["n_routed_experts"]
    logits = x @ P["router"].T
    s = torch.sigmoid(logits) if c["scoring_func"] == "sigmoid" else torch.softmax(logits, -1)
    experts, gap = select(c, (s + P["bias"]).detach())
    w = s.gather(1, experts)
    if c["norm_topk_prob"]:
        w = w / w.sum(-1, keepdim=True)
    w = w * c["routed_scaling_factor"]
    y = torch.zeros_like(x)
    if c["n_shared_experts"] > 0:
        y = y + swiglu(x, P["sh_gate"], P["sh_up"], P["sh_down"])
    for t in range(x.shape[0]):
        for j in range(experts.shape[1]):
            e = experts[t, j].item()
            y_te = swiglu(x[t:t + 1], P["exp_gate"][e], P["exp_up"][e], P["exp_down"][e])[0]
            y = y.index_add(0, torch.tensor([t]), (w[t, j] * y_te)[None])
    # sequence-wise balance statistic: E * sum_i f_i P_i, mean over sequences
    k = experts.shape[1]
    stats = []
    for q in range(x.shape[0] // seq_len):
        ex = experts[q * seq_len:(q + 1) * seq_len]
        f = torch.bincount(ex.reshape(-1), minlength=E).float() / (k * seq_len)
        sn = s[q * seq_len:(q + 1) * seq_len]
        p = (sn / sn.sum(-1, keepdim=True)).mean(0)
        stats.append(E * (f * p).sum())
    balance = torch.stack(stats).mean()
    return y, experts, balance, gap


def write_safetensors(path, tensors, meta):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dt = {torch.float32: "F32", torch.int32: "I32"}[t.dtype]
        raw = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def make_case(name, extra, seed):
    c = dict(BASE, **extra)
    D, Fm, E, S = c["hidden_size"], c["moe_intermediate_size"], c["n_routed_experts"], c["n_shared_experts"]
    for attempt in range(1000):
        g = torch.Generator().manual_seed(seed + attempt)
        r = lambda *shape, sd=0.3: (sd * torch.randn(*shape, generator=g)).requires_grad_()
        P = {"router": r(E, D, sd=0.5), "exp_gate": r(E, Fm, D), "exp_up": r(E, Fm, D), "exp_down": r(E, D, Fm)}
        if S > 0:
            P.update(sh_gate=r(S * Fm, D), sh_up=r(S * Fm, D), sh_down=r(D, S * Fm))
        P["bias"] = 0.1 * torch.randn(E, generator=g)          # not trained: selection only
        x = torch.randn(N_SEQ * T, D, generator=g).requires_grad_()
        dy = torch.randn(N_SEQ * T, D, generator=g)
        y, experts, balance, gap = layer(c, P, x, T)
        if gap > MARGIN:
            break
    else:
        raise SystemExit(f"{name}: no draw without near-ties")
    loss = (y * dy).sum() + c["aux_loss_alpha"] * balance
    loss.backward()
    out = {"x": x, "dy": dy, "y": y, "dx": x.grad, "experts": experts.to(torch.int32),
           "balance": balance.detach().reshape(1), "bias": P["bias"]}
    for k_, t in P.items():
        if k_ != "bias":
            out[k_] = t
            out["grad." + k_] = t.grad
    meta = {"config": json.dumps(c), "seq_len": str(T), "min_gap": f"{gap:.6g}"}
    return out, meta, gap


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "moe"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for i, (name, extra) in enumerate(CASES.items()):
        out, meta, gap = make_case(name, extra, 100 * (i + 1))
        write_safetensors(os.path.join(a.out, name + ".safetensors"), out, meta)
        print(f"{name}: balance {out['balance'].item():.5f}, min selection gap {gap:.4g}")


if __name__ == "__main__":
    main()
