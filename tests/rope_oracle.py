"""The rotary-embedding oracle shared by test_rope.py and test_rms_norm_rope.py.

Written the way model code writes it (Hugging Face's `x * cos + rotate_half(x) * sin`, GPT-J's
rotate-every-two), independently of fusedaot.reference, and evaluated in float64 by the tests.
"""
from __future__ import annotations

import torch


def rope_tables(rows, rotary_dim, dtype, device, kind="rope", half=False, interleaved=False, batch=0, base=10000.0):
    """(cos, sin) of shape (rows, C) or (batch, rows, C), C = rotary_dim (or rotary_dim/2 if half).

    kind "rope": the angles of a real model, position * base^(-2i/rotary_dim) (per-batch tables
    get a per-batch offset); "random": arbitrary values in (-1, 1), so that the two values of a
    pair's table entries differ and the formula is tested for any table, not only rotations."""
    n = rotary_dim // 2
    lead = (batch,) if batch else ()
    if kind == "random":
        width = n if half else rotary_dim
        c = torch.rand(*lead, rows, width, dtype=torch.float64) * 2 - 1
        s = torch.rand(*lead, rows, width, dtype=torch.float64) * 2 - 1
    else:
        inv = base ** (-torch.arange(n, dtype=torch.float64) * 2 / rotary_dim)
        ang = torch.arange(rows, dtype=torch.float64)[:, None] * inv
        if batch:
            ang = ang + torch.randn(batch, 1, 1, dtype=torch.float64)
        c, s = ang.cos(), ang.sin()
        if not half:
            c, s = (t.repeat_interleave(2, -1) if interleaved else torch.cat([t, t], -1) for t in (c, s))
    return c.to(dtype).to(device), s.to(dtype).to(device)


def token_tables(cos, sin, batch, seq, position_ids, interleaved, rotary_dim):
    """cos, sin per token, (batch, seq, 1, rotary_dim): one value per element."""
    idx = torch.arange(seq, device=cos.device) if position_ids is None else position_ids.to(cos.device).long()
    idx = idx.expand(batch, seq)
    out = []
    for t in (cos, sin):
        if t.dim() == 3:
            t = t.expand(batch, *t.shape[1:])
            t = torch.stack([t[b][idx[b]] for b in range(batch)]) if batch else t[:, :0]
        else:
            t = t[idx]
        if t.shape[-1] != rotary_dim:
            t = t.repeat_interleave(2, -1) if interleaved else torch.cat([t, t], -1)
        out.append(t[:, :, None, :])
    return out


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rotate_every_two(x):
    return torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)


def rope(x, cos, sin, position_ids=None, interleaved=False, rotary_dim=None, absolute=False):
    """x (B, S, H, D): the first rotary_dim values of each head -> x*cos + rotate(x)*sin.
    absolute: |x|*|cos| + |rotate(x)|*|sin|, the magnitude scale of each result."""
    rotary_dim = cos.shape[-1] if rotary_dim is None else rotary_dim
    c, s = token_tables(cos, sin, x.shape[0], x.shape[1], position_ids, interleaved, rotary_dim)
    xr, xp = x[..., :rotary_dim], x[..., rotary_dim:]
    rot = (rotate_every_two if interleaved else rotate_half)(xr)
    if absolute:
        xr, rot, c, s = xr.abs(), rot.abs(), c.abs(), s.abs()
        xp = xp.abs()
    return torch.cat([xr * c + rot * s, xp], dim=-1)


def rope_transposed_abs(dy, cos, sin, position_ids=None, interleaved=False, rotary_dim=None):
    """Magnitude scale of the backward dx = rope^T(dy): |dy|*|cos| + |partner of dy|*|partner's sin|."""
    rotary_dim = cos.shape[-1] if rotary_dim is None else rotary_dim
    c, s = token_tables(cos, sin, dy.shape[0], dy.shape[1], position_ids, interleaved, rotary_dim)
    g = (dy[..., :rotary_dim] * s).abs()
    partner = (rotate_every_two if interleaved else rotate_half)(g).abs()
    return torch.cat([dy[..., :rotary_dim].abs() * c.abs() + partner, dy[..., rotary_dim:].abs()], dim=-1)
