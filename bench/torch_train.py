#!/usr/bin/python3
"""torch_train.py — the PyTorch peer for `ds4 bench train`: trains the same
dense config (default: the 17.3M model of SPEC §4, B 8 x T 256, AdamW) on
random tokens with the same thread count and prints tokens/s plus a JSON line.

usage: /usr/bin/python3 bench/torch_train.py [--threads 2] [--steps 4] [--batch 8] [--seq 256]
Optional peer: needs Debian's python3-torch; no test depends on it."""
import argparse, json, math, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.w, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


class Block(nn.Module):
    def __init__(self, D, H, F_):
        super().__init__()
        self.H = H
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.g, self.u = nn.Linear(D, F_, bias=False), nn.Linear(D, F_, bias=False)
        self.d = nn.Linear(F_, D, bias=False)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        h = self.n1(x)
        q, k, v = (p(h).view(B, T, self.H, -1).transpose(1, 2) for p in (self.q, self.k, self.v))

        def rope(t):
            t1, t2 = t.chunk(2, -1)
            return t * cos + torch.cat([-t2, t1], -1) * sin
        q, k = rope(q), rope(k)
        if hasattr(F, "scaled_dot_product_attention"):       # PyTorch >= 2.0
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:                                                # Debian bookworm's 1.13
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            a = s.softmax(-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        h = self.n2(x)
        return x + self.d(F.silu(self.g(h)) * self.u(h))


class Model(nn.Module):
    def __init__(self, V, D, L, H, F_):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block(D, H, F_) for _ in range(L))
        self.norm, self.head = RMSNorm(D), nn.Linear(D, V, bias=False)
        self.H = H

    def forward(self, ids):
        T, Dh = ids.shape[1], self.emb.weight.shape[1] // self.H
        inv = 10000.0 ** (-torch.arange(0, Dh, 2).float() / Dh)
        ang = torch.arange(T).float()[:, None] * inv[None]
        cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x, cos, sin)
        return self.head(self.norm(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--ffn", type=int, default=1024)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    V, D, L, H, F_ = a.vocab, a.hidden, a.layers, a.heads, a.ffn
    m = Model(V, D, L, H, F_)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95))
    ids = torch.randint(0, V, (a.batch, a.seq + 1))
    times = []
    for s in range(a.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.cross_entropy(m(ids[:, :-1]).reshape(-1, V), ids[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
        if s > 0:
            times.append(time.perf_counter() - t0)
    mean = sum(times) / len(times)
    tps = a.batch * a.seq / mean
    print(f"PyTorch {torch.__version__} train: {tps:.0f} tok/s ({a.threads} threads, step {mean:.3f} s)")
    print(json.dumps({"bench": "torch_train", "torch": torch.__version__, "threads": a.threads,
                      "tokens_per_s": round(tps, 1), "step_s": round(mean, 4)}))


if __name__ == "__main__":
    main()
