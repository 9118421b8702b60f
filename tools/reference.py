#!/usr/bin/python3
"""reference.py — an independent PyTorch implementation of the ds4 model
(SPEC §1: RMSNorm, RoPE rotate-half, GQA causal attention, dense SwiGLU,
hierarchical MoE with biased selection and unbiased weights, shared experts)
that writes the small fixtures the C tests compare against.

usage: /usr/bin/python3 tools/reference.py [--out tests/fixtures/ref]
Needs Debian's python3-torch; the tests only read the committed fixtures."""
import argparse, json, math, os, struct
import torch

torch.manual_seed(0)
torch.set_default_dtype(torch.float32)

CONFIG = {
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False, "first_k_dense_replace": 1, "n_routed_experts": 8,
    "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
    "topk_per_group": 2, "routed_scaling_factor": 2.0, "norm_topk_prob": True,
    "scoring_func": "sigmoid",
}
B, T, STEPS = 2, 16, 10
LR, WD, BETAS, EPS, CLIP = 1e-2, 0.1, (0.9, 0.95), 1e-8, 1.0


def param_shapes(c):
    D, H, K, Dh = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    F, Fm, E, S = c["intermediate_size"], c["moe_intermediate_size"], c["n_routed_experts"], c["n_shared_experts"]
    shapes = {"model.embed_tokens.weight": (c["vocab_size"], D)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        shapes[p + "input_layernorm.weight"] = (D,)
        shapes[p + "self_attn.q_proj.weight"] = (H * Dh, D)
        shapes[p + "self_attn.k_proj.weight"] = (K * Dh, D)
        shapes[p + "self_attn.v_proj.weight"] = (K * Dh, D)
        shapes[p + "self_attn.o_proj.weight"] = (D, H * Dh)
        shapes[p + "post_attention_layernorm.weight"] = (D,)
        if l < c["first_k_dense_replace"]:
            shapes[p + "mlp.gate_proj.weight"] = (F, D)
            shapes[p + "mlp.up_proj.weight"] = (F, D)
            shapes[p + "mlp.down_proj.weight"] = (D, F)
        else:
            shapes[p + "mlp.gate.weight"] = (E, D)
            shapes[p + "mlp.gate.e_score_correction_bias"] = (E,)
            for j in range(E):
                shapes[p + f"mlp.experts.{j}.gate_proj.weight"] = (Fm, D)
                shapes[p + f"mlp.experts.{j}.up_proj.weight"] = (Fm, D)
                shapes[p + f"mlp.experts.{j}.down_proj.weight"] = (D, Fm)
            shapes[p + "mlp.shared_experts.gate_proj.weight"] = (S * Fm, D)
            shapes[p + "mlp.shared_experts.up_proj.weight"] = (S * Fm, D)
            shapes[p + "mlp.shared_experts.down_proj.weight"] = (D, S * Fm)
    shapes["model.norm.weight"] = (D,)
    shapes["lm_head.weight"] = (c["vocab_size"], D)
    return shapes


def init_params(c):
    P = {}
    for name, shp in param_shapes(c).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shp)
        elif name.endswith("e_score_correction_bias"):
            t = 0.05 * torch.randn(shp)           # nonzero: selection differs from weighting
        else:
            t = 0.2 * torch.randn(shp)             # large enough for nontrivial routing
        P[name] = t.requires_grad_(not name.endswith("e_score_correction_bias"))
    return P


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, theta):                                 # x [B, T, h, Dh], rotate-half
    Dh = x.shape[-1]
    inv = theta ** (-torch.arange(0, Dh, 2, dtype=torch.float64) / Dh)
    ang = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * inv[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1).float()[None, :, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1).float()[None, :, None, :]
    x1, x2 = x[..., : Dh // 2], x[..., Dh // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def swiglu(x, g, u, d):
    return torch.nn.functional.silu(x @ g.T) * (x @ u.T) @ d.T


def moe(c, P, p, x):                                # x [n, D]
    E, G, tg, tpg = c["n_routed_experts"], c["n_group"], c["topk_group"], c["topk_per_group"]
    per = E // G
    logits = x @ P[p + "mlp.gate.weight"].T
    s = torch.sigmoid(logits) if c["scoring_func"] == "sigmoid" else torch.softmax(logits, -1)
    sel = (s + P[p + "mlp.gate.e_score_correction_bias"]).detach()
    g = sel.view(-1, G, per)
    gs = g.topk(min(2, per), dim=-1).values.sum(-1)
    gidx = gs.topk(tg, dim=-1).indices                                 # [n, tg]
    if tpg > 0:
        within = g.gather(1, gidx[..., None].expand(-1, -1, per))
        experts = (within.topk(tpg, dim=-1).indices + gidx[..., None] * per).reshape(x.shape[0], -1)
    else:
        mask = torch.zeros(x.shape[0], G, dtype=torch.bool).scatter_(1, gidx, True)
        masked = sel.masked_fill(~mask.repeat_interleave(per, 1), float("-inf"))
        experts = masked.topk(c["num_experts_per_tok"], dim=-1).indices
    w = s.gather(1, experts)
    if c["norm_topk_prob"]:
        w = w / w.sum(-1, keepdim=True)
    w = w * c["routed_scaling_factor"]
    y = swiglu(x, P[p + "mlp.shared_experts.gate_proj.weight"], P[p + "mlp.shared_experts.up_proj.weight"],
               P[p + "mlp.shared_experts.down_proj.weight"])
    for e in range(E):
        hit = experts == e                                             # [n, k]
        rows = hit.any(-1).nonzero().squeeze(-1)
        if rows.numel() == 0:
            continue
        we = (w * hit).sum(-1)[rows]
        q = p + f"mlp.experts.{e}."
        ye = swiglu(x[rows], P[q + "gate_proj.weight"], P[q + "up_proj.weight"], P[q + "down_proj.weight"])
        y = y.index_add(0, rows, we[:, None] * ye)
    return y


def forward(c, P, ids):                              # ids [B, T] -> logits [B, T, V]
    H, K, Dh = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    Bn, Tn = ids.shape
    h = P["model.embed_tokens.weight"][ids]
    mask = torch.full((Tn, Tn), float("-inf")).triu(1)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        x = rmsnorm(h, P[p + "input_layernorm.weight"], c["rms_norm_eps"])
        q = rope((x @ P[p + "self_attn.q_proj.weight"].T).view(Bn, Tn, H, Dh), c["rope_theta"])
        k = rope((x @ P[p + "self_attn.k_proj.weight"].T).view(Bn, Tn, K, Dh), c["rope_theta"])
        v = (x @ P[p + "self_attn.v_proj.weight"].T).view(Bn, Tn, K, Dh)
        k = k.repeat_interleave(H // K, dim=2)
        v = v.repeat_interleave(H // K, dim=2)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(Dh) + mask
        o = torch.einsum("bhts,bshd->bthd", att.softmax(-1), v).reshape(Bn, Tn, H * Dh)
        h = h + o @ P[p + "self_attn.o_proj.weight"].T
        x = rmsnorm(h, P[p + "post_attention_layernorm.weight"], c["rms_norm_eps"])
        if l < c["first_k_dense_replace"]:
            f = swiglu(x, P[p + "mlp.gate_proj.weight"], P[p + "mlp.up_proj.weight"], P[p + "mlp.down_proj.weight"])
        else:
            f = moe(c, P, p, x.reshape(Bn * Tn, -1)).view(Bn, Tn, -1)
        h = h + f
    return rmsnorm(h, P["model.norm.weight"], c["rms_norm_eps"]) @ P["lm_head.weight"].T


def write_safetensors(path, tensors, meta=None):
    """Writes the format by hand (8-byte LE length, JSON header, raw data)."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dt = {torch.float32: "F32", torch.int32: "I32"}[t.dtype]
        raw = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ref"))
    a = ap.parse_args()
    c = CONFIG
    P = init_params(c)
    os.makedirs(os.path.join(a.out, "model"), exist_ok=True)
    with open(os.path.join(a.out, "model", "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    write_safetensors(os.path.join(a.out, "model", "model.safetensors"), P)

    ids = torch.randint(0, c["vocab_size"], (B, T + 1))
    logits = forward(c, P, ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, c["vocab_size"]), ids[:, 1:].reshape(-1))
    loss.backward()
    out = {"inputs": ids.to(torch.int32), "logits": logits, "loss": loss.detach().reshape(1)}
    for name, t in P.items():
        if t.requires_grad:
            out["grad." + name] = t.grad.clone()

    # 10 AdamW steps (decay on matrices only, constant lr, global-norm clip).
    train = [t for t in P.values() if t.requires_grad]
    decay = [t for t in train if t.dim() >= 2]
    nodecay = [t for t in train if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        l = torch.nn.functional.cross_entropy(forward(c, P, ids[:, :-1]).reshape(-1, c["vocab_size"]),
                                              ids[:, 1:].reshape(-1))
        l.backward()
        torch.nn.utils.clip_grad_norm_(train, CLIP)
        opt.step()
        losses.append(l.item())
    out["losses"] = torch.tensor(losses)
    meta = {"lr": str(LR), "weight_decay": str(WD), "beta1": str(BETAS[0]), "beta2": str(BETAS[1]),
            "eps": str(EPS), "clip": str(CLIP), "steps": str(STEPS)}
    write_safetensors(os.path.join(a.out, "fixture.safetensors"), out, meta)
    print(f"wrote {a.out}: loss {loss.item():.6f}, losses {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
