"""Reference rotary embeddings: apply_rope and rms_norm_rope."""
from __future__ import annotations

import torch

from ._common import _compute_dtype


def _rope_tables(cos, sin, batch, seq, position_ids, interleaved, rotary_dim, dt):
    """cos and sin for every token as (batch, seq, 1, rotary_dim) in dtype dt: the table rows
    position_ids pick (row s without them) from a (P, C) table or batch b's (P, C) table of a
    (B or 1, P, C) one; a half table (C = rotary_dim/2) expanded to one value per element."""
    rows = cos.shape[-2]
    if position_ids is None:
        idx = torch.arange(seq, device=cos.device).expand(batch, seq)
    else:
        idx = position_ids.to(device=cos.device, dtype=torch.long).expand(batch, seq)
        if idx.numel() and idx.device.type != "meta" and (int(idx.min()) < 0 or int(idx.max()) >= rows):
            raise IndexError(f"position_ids must lie in [0, {rows}) (the rows of cos), got values from "
                             f"{int(idx.min())} to {int(idx.max())}")
    out = []
    for table in (cos, sin):
        table = table.to(dt)
        if table.dim() == 2:
            t = table[idx]
        else:
            t = table.expand(batch, *table.shape[1:])[torch.arange(batch, device=table.device)[:, None], idx]
        if t.shape[-1] != rotary_dim:  # one value per pair: the layout's order of elements
            t = t.repeat_interleave(2, dim=-1) if interleaved else torch.cat([t, t], dim=-1)
        out.append(t.unsqueeze(2))
    return out


def _rotate(x, cos, sin, interleaved, backward):
    """x (..., R): o1 = x1*c1 - x2*s1, o2 = x2*c2 + x1*s2 over the layout's pairs (x*cos +
    rotate_half(x)*sin); backward: the transpose, (s1, s2) -> (-s2, -s1)."""
    def halves(t):
        return (t[..., 0::2], t[..., 1::2]) if interleaved else t.chunk(2, dim=-1)
    (x1, x2), (c1, c2), (s1, s2) = halves(x), halves(cos), halves(sin)
    if backward:
        s1, s2 = -s2, -s1
    o1, o2 = x1 * c1 - x2 * s1, x2 * c2 + x1 * s2
    return torch.stack([o1, o2], dim=-1).flatten(-2) if interleaved else torch.cat([o1, o2], dim=-1)


def _rope4(x, tables, interleaved, rotary_dim, backward=False):
    """x (B, S, H, D) in the compute dtype: the first rotary_dim values of each head rotated."""
    rot = _rotate(x[..., :rotary_dim], *tables, interleaved, backward)
    return torch.cat([rot, x[..., rotary_dim:]], dim=-1) if rotary_dim < x.shape[-1] else rot


def apply_rope(q, k, cos, sin, position_ids=None, interleaved=False, rotary_dim=None, backward=False):
    """Rotary embedding of q (B, S, Hq, D) and k (B, S, Hk, D) (or (T, H, D) each); cos, sin:
    (P, C) or (B or 1, P, C) with C = rotary_dim (default: C) or rotary_dim/2.  Returns
    contiguous (q_out, k_out).  backward: the transpose (the gradient of the rotation)."""
    dt = _compute_dtype(q.dtype)
    rotary_dim = cos.shape[-1] if rotary_dim is None else rotary_dim
    squeeze = q.dim() == 3
    q4, k4 = (q.unsqueeze(0), k.unsqueeze(0)) if squeeze else (q, k)
    tables = _rope_tables(cos, sin, q4.shape[0], q4.shape[1], position_ids, interleaved, rotary_dim, dt)
    outs = [_rope4(t.to(dt), tables, interleaved, rotary_dim, backward).to(q.dtype) for t in (q4, k4)]
    return tuple((o.squeeze(0) if squeeze else o).contiguous() for o in outs)


def apply_rope_backward(dq, dk, cos, sin, position_ids=None, interleaved=False, rotary_dim=None):
    """(dq, dk): the rotation by -theta of the output gradients."""
    return apply_rope(dq, dk, cos, sin, position_ids, interleaved, rotary_dim, backward=True)


def _heads(x, head_dim):
    """x (B, S, H*D) or (T, H*D) as (B, S, H, D) (T: B = 1), in its own dtype."""
    x4 = x.unsqueeze(0) if x.dim() == 2 else x
    return x4.reshape(*x4.shape[:2], x4.shape[-1] // head_dim, head_dim)


def _norm_groups(xh, weight, eps, per_head):
    """(rstd, w) shaped to broadcast over (B, S, H, D): per head, or over the whole row."""
    b, s, h, d = xh.shape
    w = weight.to(xh.dtype).reshape(1, 1, -1, d) if not per_head else weight.to(xh.dtype)
    dims = (-1,) if per_head else (-2, -1)
    return torch.rsqrt(xh.square().mean(dims, keepdim=True) + eps), w


def rms_norm_rope(x, weight, cos, sin, head_dim, eps=1e-6, per_head=False, position_ids=None,
                  interleaved=False, rotary_dim=None):
    """RMSNorm (over each head's D values if per_head, else over the row) times weight, then
    RoPE; x (B, S, H*D) or (T, H*D); weight (D,) if per_head else (H*D,).  One rounding, at
    the end.  Returns a contiguous tensor of x's shape."""
    dt = _compute_dtype(x.dtype)
    rotary_dim = cos.shape[-1] if rotary_dim is None else rotary_dim
    xh = _heads(x, head_dim).to(dt)
    rstd, w = _norm_groups(xh, weight, eps, per_head)
    tables = _rope_tables(cos, sin, xh.shape[0], xh.shape[1], position_ids, interleaved, rotary_dim, dt)
    y = _rope4(xh * rstd * w, tables, interleaved, rotary_dim)
    return y.reshape(x.shape).to(x.dtype).contiguous()


def rms_norm_rope_backward(dy, x, weight, cos, sin, head_dim, eps=1e-6, per_head=False, position_ids=None,
                           interleaved=False, rotary_dim=None):
    """dz = rope^T(dy); dx = rstd * (w*dz - x_hat * mean(x_hat * w*dz)) over each group;
    dw = sum of dz * x_hat over tokens (and heads if per_head)."""
    dt = _compute_dtype(x.dtype)
    rotary_dim = cos.shape[-1] if rotary_dim is None else rotary_dim
    xh = _heads(x, head_dim).to(dt)
    rstd, w = _norm_groups(xh, weight, eps, per_head)
    tables = _rope_tables(cos, sin, xh.shape[0], xh.shape[1], position_ids, interleaved, rotary_dim, dt)
    dz = _rope4(_heads(dy, head_dim).to(dt), tables, interleaved, rotary_dim, backward=True)
    x_hat = xh * rstd
    wdz = dz * w
    dims = (-1,) if per_head else (-2, -1)
    dx = rstd * (wdz - x_hat * (x_hat * wdz).mean(dims, keepdim=True))
    dw = (dz * x_hat).reshape(-1, weight.numel()).sum(0)
    return dx.reshape(x.shape).to(x.dtype).contiguous(), dw.to(weight.dtype)
