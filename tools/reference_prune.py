#!/usr/bin/python3
"""reference_prune.py — an independent PyTorch implementation of token pruning
(SPEC §1.3) and indexed sparse attention (SPEC §1.4), written with dense
masks and autograd (no compaction, no KV cache), that writes the fixtures
tests/test_model_prune_ref.c compares ds4 against.

For each variant it writes DIR/<variant>/model/{config.json,model.safetensors}
and DIR/<variant>/fixture.safetensors holding: inputs [B, T+1]; logits_causal
[B, T, V] (inference rule: keep iff sigmoid(r) > 0.5, position 0 always);
the training objective's parts (LM loss, per-layer router BCE and indexer
KL, keep counts) under the training rule (top ceil((1-rho)T) per sequence);
grad.<name> of LM + prune_loss_weight * sum BCE + sum KL; and for indexer
variants the warm-up (dense attention) KL and indexer gradients.

usage: /usr/bin/python3 tools/reference_prune.py [--out tests/fixtures/prune]"""
import argparse, json, math, os, struct
import torch

torch.set_default_dtype(torch.float32)

BASE = {
    "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64,
    "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    "prune_layers": [1, 2], "prune_ratio": [0.25, 0.5], "prune_loss_weight": 0.3,
}
VARIANTS = {
    # pruning with a sliding window and attention sinks, dense attention otherwise
    "window": dict(BASE, sliding_window=4, attention_sinks=True),
    # pruning + lightning indexer (top-5 keys) + window 3 + sinks
    "indexer": dict(BASE, index_n_heads=2, index_head_dim=8, index_topk=5, sliding_window=3,
                    attention_sinks=True),
}
B, T = 2, 16


def shapes(c):
    D, H, K, Dh, F = (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"],
                      c["intermediate_size"])
    out = {"model.embed_tokens.weight": (c["vocab_size"], D)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out[p + "input_layernorm.weight"] = (D,)
        out[p + "self_attn.q_proj.weight"] = (H * Dh, D)
        out[p + "self_attn.k_proj.weight"] = (K * Dh, D)
        out[p + "self_attn.v_proj.weight"] = (K * Dh, D)
        out[p + "self_attn.o_proj.weight"] = (D, H * Dh)
        if c.get("attention_sinks"):
            out[p + "self_attn.sinks"] = (H,)
        if c.get("index_topk", 0) > 0:
            Hi, Di = c["index_n_heads"], c["index_head_dim"]
            out[p + "self_attn.indexer.wq.weight"] = (Hi * Di, D)
            out[p + "self_attn.indexer.wk.weight"] = (Di, D)
            out[p + "self_attn.indexer.k_norm.weight"] = (Di,)
            out[p + "self_attn.indexer.weights_proj.weight"] = (Hi, D)
        if ratio(c, l) > 0:
            out[p + "prune_router.weight"] = (1, D)
        out[p + "post_attention_layernorm.weight"] = (D,)
        out[p + "mlp.gate_proj.weight"] = (F, D)
        out[p + "mlp.up_proj.weight"] = (F, D)
        out[p + "mlp.down_proj.weight"] = (D, F)
    out["model.norm.weight"] = (D,)
    out["lm_head.weight"] = (c["vocab_size"], D)
    return out


def ratio(c, l):
    for i, L in enumerate(c.get("prune_layers", [])):
        if L == l:
            return c["prune_ratio"][i]
    return 0.0


def init(c, seed):
    g = torch.Generator().manual_seed(seed)
    P = {}
    for name, shp in shapes(c).items():
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shp, generator=g)
        elif name.endswith("sinks"):
            t = 0.5 * torch.randn(shp, generator=g)
        else:
            t = 0.25 * torch.randn(shp, generator=g)
        P[name] = t.requires_grad_(True)
    return P


def rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rotary(x, theta):                                  # x [B, T, heads, d], positions 0..T-1
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2.0 / d)
    ang = torch.arange(x.shape[1], dtype=torch.float64)[:, None] * freq[None, :]
    c, s = ang.cos().float()[None, :, None, :], ang.sin().float()[None, :, None, :]
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([a * c - b * s, b * c + a * s], -1)


def sorted_desc(v):
    """Indices sorting v descending along the last dim, ties to the lower index."""
    return torch.sort(v, dim=-1, descending=True, stable=True).indices


def forward(c, P, ids, rule, warmup=False):
    """rule: 'topk' (training) or 'causal' (inference). Returns logits and the
    per-layer auxiliary terms."""
    D, H, K, Dh = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    eps, theta = c["rms_norm_eps"], c["rope_theta"]
    Bn, Tn = ids.shape
    t_idx = torch.arange(Tn)
    causal = t_idx[None, :] <= t_idx[:, None]                             # [t, s]
    win = c.get("sliding_window", 0)
    topk = c.get("index_topk", 0)
    h = P["model.embed_tokens.weight"][ids]
    aux = {"bce": [], "kl": [], "kept": []}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        x = rms(h, P[p + "input_layernorm.weight"], eps)
        rho = ratio(c, l)
        if rho > 0:
            r = (x @ P[p + "prune_router.weight"].T)[..., 0]                # [B, T]
            n_keep = max(1, math.ceil((1 - rho) * Tn - 1e-6))
            rr = r.detach().clone()
            rr[:, 0] = float("inf")                                         # position 0 always kept
            member = torch.zeros(Bn, Tn, dtype=torch.bool)
            member.scatter_(1, sorted_desc(rr)[:, :n_keep], True)
            keep = member if rule == "topk" else (r.detach() > 0) | (t_idx == 0)[None, :]
            aux["bce"].append(torch.nn.functional.binary_cross_entropy_with_logits(
                r[:, 1:], member[:, 1:].float()))
            gate = torch.sigmoid(r)
        else:
            keep = torch.ones(Bn, Tn, dtype=torch.bool)
            gate = torch.ones(Bn, Tn)
        aux["kept"].append(int(keep.sum()))
        valid = causal[None] & keep[:, None, :]                             # [B, t, s]: key s visible to t
        q = rotary((x @ P[p + "self_attn.q_proj.weight"].T).view(Bn, Tn, H, Dh), theta)
        k = rotary((x @ P[p + "self_attn.k_proj.weight"].T).view(Bn, Tn, K, Dh), theta)
        v = (x @ P[p + "self_attn.v_proj.weight"].T).view(Bn, Tn, K, Dh)
        k = k.repeat_interleave(H // K, 2)
        v = v.repeat_interleave(H // K, 2)
        near = (t_idx[:, None] - t_idx[None, :] < win)[None] if win > 0 else None
        if topk > 0:
            Hi, Di = c["index_n_heads"], c["index_head_dim"]
            xd = x.detach()                                                 # the indexer's input is detached
            qi = rotary((xd @ P[p + "self_attn.indexer.wq.weight"].T).view(Bn, Tn, Hi, Di), theta)
            ki = rotary(rms(xd @ P[p + "self_attn.indexer.wk.weight"].T, P[p + "self_attn.indexer.k_norm.weight"],
                            eps).view(Bn, Tn, 1, Di), theta)[:, :, 0]
            w = (xd @ P[p + "self_attn.indexer.weights_proj.weight"].T) / math.sqrt(Hi)
            I = (torch.einsum("bthd,bsd->bths", qi, ki).relu() * w[..., None]).sum(2) / math.sqrt(Di)
            Im = I.detach().masked_fill(~valid, float("-inf"))
            chosen = torch.zeros_like(valid)
            chosen.scatter_(2, sorted_desc(Im)[..., :topk], True)
            chosen &= valid
            dense = valid.sum(-1, keepdim=True) <= topk
            sel = torch.where(dense, valid, chosen)
            if near is not None:
                sel = sel | (valid & near)
            attend = valid if warmup else sel
        else:
            attend = valid & near if near is not None else valid
        attend = attend | ~keep[:, :, None]         # dropped queries: any nonempty row (output unused)
        s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(Dh)
        s = s.masked_fill(~attend[:, None], float("-inf"))
        if c.get("attention_sinks"):
            sink = P[p + "self_attn.sinks"].view(1, H, 1, 1).expand(Bn, H, Tn, 1)
            prob = torch.cat([s, sink], -1).softmax(-1)[..., :Tn]
        else:
            prob = s.softmax(-1)
        o = torch.einsum("bhts,bshd->bthd", prob, v).reshape(Bn, Tn, H * Dh)
        a = o @ P[p + "self_attn.o_proj.weight"].T
        kp = keep[..., None]
        hm = torch.where(kp, h + gate[..., None] * a, h)
        xf = rms(hm, P[p + "post_attention_layernorm.weight"], eps)
        f = (torch.nn.functional.silu(xf @ P[p + "mlp.gate_proj.weight"].T) * (xf @ P[p + "mlp.up_proj.weight"].T)
             ) @ P[p + "mlp.down_proj.weight"].T
        h = torch.where(kp, hm + gate[..., None] * f, h)
        if topk > 0:
            pd = prob.detach().sum(1)                                       # [B, t, s] summed over heads
            pd = pd / pd.sum(-1, keepdim=True)
            logq = torch.log_softmax(I.masked_fill(~attend, -1e30), -1)
            kl = torch.where(pd > 0, pd * (torch.log(pd.clamp_min(1e-30)) - logq), torch.zeros(()))
            aux["kl"].append(kl.sum(-1)[keep].mean())                      # mean over kept queries
    logits = rms(h, P["model.norm.weight"], eps) @ P["lm_head.weight"].T
    return logits, aux


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        dt = {torch.float32: "F32", torch.int32: "I32"}[t.dtype]
        raw = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def make(name, c, out_dir, seed):
    P = init(c, seed)
    d = os.path.join(out_dir, name)
    os.makedirs(os.path.join(d, "model"), exist_ok=True)
    with open(os.path.join(d, "model", "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    write_safetensors(os.path.join(d, "model", "model.safetensors"), P)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, c["vocab_size"], (B, T + 1), generator=g)
    out = {"inputs": ids.to(torch.int32)}
    with torch.no_grad():
        out["logits_causal"] = forward(c, P, ids[:, :-1], "causal")[0]
    logits, aux = forward(c, P, ids[:, :-1], "topk")
    lm = torch.nn.functional.cross_entropy(logits.reshape(-1, c["vocab_size"]), ids[:, 1:].reshape(-1))
    total = lm + c["prune_loss_weight"] * sum(aux["bce"]) + sum(aux["kl"], torch.zeros(()))
    total.backward()
    out["loss_lm"] = lm.detach().reshape(1)
    out["bce"] = torch.stack([b.detach() for b in aux["bce"]])
    out["kept"] = torch.tensor(aux["kept"], dtype=torch.int32)
    if aux["kl"]:
        out["kl"] = torch.stack([k.detach() for k in aux["kl"]])
    for n, t in P.items():
        out["grad." + n] = t.grad.clone()
    if c.get("index_topk", 0) > 0:
        for t in P.values():
            t.grad = None
        _, aux = forward(c, P, ids[:, :-1], "topk", warmup=True)
        sum(aux["kl"]).backward()
        out["kl_warmup"] = torch.stack([k.detach() for k in aux["kl"]])
        for n, t in P.items():
            if ".indexer." in n:
                out["grad_warmup." + n] = t.grad.clone()
    write_safetensors(os.path.join(d, "fixture.safetensors"), out)
    print(f"{name}: LM {lm.item():.6f}, BCE {[round(b.item(), 5) for b in aux['bce']]}, kept {aux['kept']}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "prune"))
    a = ap.parse_args()
    for i, (name, c) in enumerate(VARIANTS.items()):
        make(name, c, a.out, 100 + i)


if __name__ == "__main__":
    main()
