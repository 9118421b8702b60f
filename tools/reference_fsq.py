#!/usr/bin/python3
"""reference_fsq.py — an independent PyTorch implementation of FSQ as SPEC §3
states it, writing tests/fixtures/video/fsq_ref.txt for test_video_fsq.c:
bound(z), q, the code index (mixed radix, first channel least significant)
and the straight-through gradient dq/dz, for several level sets.

Everything is computed in float64 from float32 inputs; rows whose bound()
lies within 1e-3 of a rounding boundary (x.5) are skipped so a float32
implementation must agree exactly on q and the code.

usage: /usr/bin/python3 tools/reference_fsq.py [OUT]   (default tests/fixtures/video/fsq_ref.txt)
"""
import sys

import torch

LEVEL_SETS = [[8, 5, 5, 5], [7, 6, 3], [4, 3, 16], [5]]
ROWS = 48


def fsq(z, levels):
    """z [n, C] float64 (requires grad) -> bound, q (straight-through), codes."""
    L = torch.tensor(levels, dtype=torch.float64)
    half = (L - 1) * (1 - 1e-3) / 2
    offset = torch.where(L % 2 == 0, torch.tensor(0.5, dtype=torch.float64),
                         torch.tensor(0.0, dtype=torch.float64))
    shift = torch.atanh(offset / half)
    b = torch.tanh(z + shift) * half - offset
    r = b + (torch.round(b) - b).detach()          # straight-through round
    hl = torch.div(L, 2, rounding_mode="floor")
    q = r / hl
    digits = (q * hl + hl).round().long()
    basis = torch.cumprod(torch.tensor([1] + levels[:-1], dtype=torch.long), 0)
    codes = (digits * basis).sum(-1)
    return b, q, codes


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/video/fsq_ref.txt"
    g = torch.Generator().manual_seed(1234)
    lines = ["# FSQ reference (tools/reference_fsq.py, PyTorch %s, float64)" % torch.__version__,
             "# per set: 'levels C L0 .. LC-1', 'rows N', then N rows of",
             "#   z[C] bound[C] q[C] code dqdz[C]   (dqdz: d q_c / d z_c, straight-through)"]
    for levels in LEVEL_SETS:
        C = len(levels)
        # a spread of scales: near 0, moderate, saturated
        cand = torch.cat([torch.randn(ROWS * 2, C, generator=g) * s for s in (0.3, 1.0, 3.0)])
        cand = cand.to(torch.float32).to(torch.float64)
        z = cand.clone().requires_grad_(True)
        b, q, codes = fsq(z, levels)
        frac = (b.detach() - torch.floor(b.detach())) - 0.5
        keep = (frac.abs() > 1e-3).all(-1).nonzero().flatten()[:ROWS]
        q.sum().backward()
        grad = z.grad
        lines.append("levels %d %s" % (C, " ".join(str(x) for x in levels)))
        lines.append("rows %d" % len(keep))
        for i in keep.tolist():
            row = [*("%.9g" % v for v in z[i].tolist()), *("%.12g" % v for v in b[i].tolist()),
                   *("%.12g" % v for v in q[i].tolist()), "%d" % codes[i].item(),
                   *("%.12g" % v for v in grad[i].tolist())]
            lines.append(" ".join(row))
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s (%d level sets)" % (out, len(LEVEL_SETS)))


if __name__ == "__main__":
    main()
