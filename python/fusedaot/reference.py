"""Plain PyTorch implementations of every op.

They are the CPU path, the fallback on GPUs older than sm80 and under FUSEDAOT_DISABLE=1,
and the tests' oracle (called on float64 inputs).  Half-precision inputs are computed
in fp32 and rounded once, like the kernels.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    xf = x.to(_compute_dtype(x.dtype))
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.to(x.dtype).contiguous()


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    dt = _compute_dtype(x.dtype)
    return F.gelu(x.to(dt) + bias.to(dt), approximate=approximate).to(x.dtype).contiguous()


def _sum_rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1]).sum(0)


def _rms_norm_grads(dy, x, weight, eps):
    """dx = rstd * (w*dy - x_hat * mean(x_hat * w*dy)),  dw = sum over rows of dy * x_hat;
    dx in the compute dtype (not rounded yet)."""
    dt = _compute_dtype(x.dtype)
    xf, dyf = x.to(dt), dy.to(dt)
    rstd = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    x_hat = xf * rstd
    wdy = dyf * weight.to(dt) if weight is not None else dyf
    dx = rstd * (wdy - x_hat * (x_hat * wdy).mean(-1, keepdim=True))
    dw = _sum_rows(dyf * x_hat).to(weight.dtype) if weight is not None else x.new_empty(0)
    return dx, dw


def rms_norm_backward(dy, x, weight, eps):
    dx, dw = _rms_norm_grads(dy, x, weight, eps)
    return dx.to(x.dtype).contiguous(), dw


def fused_add_rms_norm(x, residual, weight, eps=1e-6):
    """(rms_norm(s) * weight, s) with s = x + residual rounded to x's dtype, as the unfused add."""
    s = (x + residual).contiguous()
    return rms_norm(s, weight, eps), s


def fused_add_rms_norm_backward(dy, ds, s, weight, eps):
    """d(s) = rms_norm's dx + ds (the gradient that reached s directly), and dweight."""
    dx, dw = _rms_norm_grads(dy, s, weight, eps)
    return (dx + ds.to(dx.dtype)).to(s.dtype).contiguous(), dw


def _gelu_grad(u: torch.Tensor, approximate: str) -> torch.Tensor:
    if approximate == "tanh":
        k = math.sqrt(2.0 / math.pi)
        t = torch.tanh(k * (u + 0.044715 * u ** 3))
        return 0.5 * (1 + t) + 0.5 * u * (1 - t * t) * k * (1 + 3 * 0.044715 * u * u)
    # Phi(u) + u * phi(u)
    return 0.5 * (1 + torch.erf(u / math.sqrt(2.0))) + u * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


def bias_gelu_backward(dy, x, bias, approximate):
    """dx = dy * gelu'(x + bias),  dbias = sum over rows of dx (before rounding)."""
    dt = _compute_dtype(x.dtype)
    dx = dy.to(dt) * _gelu_grad(x.to(dt) + bias.to(dt), approximate)
    return dx.to(x.dtype).contiguous(), _sum_rows(dx).to(bias.dtype)


# --- swiglu / geglu: act(gate) * up, separate (gate, up) or packed x = [gate | up] ------------

def _glu_act(g: torch.Tensor, activation: str) -> torch.Tensor:
    """activation: "silu", or gelu's approximate ("none" | "tanh")."""
    return F.silu(g) if activation == "silu" else F.gelu(g, approximate=activation)


def _glu_act_grad(g: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "silu":  # silu' = s (1 + g (1 - s))
        s = torch.sigmoid(g)
        return s * (1 + g * (1 - s))
    return _gelu_grad(g, activation)


def _halves(x: torch.Tensor):
    n = x.shape[-1] // 2
    return x[..., :n], x[..., n:]


def _glu(gate, up, activation):
    dt = _compute_dtype(gate.dtype)
    return (_glu_act(gate.to(dt), activation) * up.to(dt)).to(gate.dtype).contiguous()


def _glu_backward(dy, gate, up, activation):
    """dgate = dy * up * act'(gate),  dup = dy * act(gate)."""
    dt = _compute_dtype(gate.dtype)
    g, u, d = gate.to(dt), up.to(dt), dy.to(dt)
    dgate = d * u * _glu_act_grad(g, activation)
    dup = d * _glu_act(g, activation)
    return dgate.to(gate.dtype).contiguous(), dup.to(up.dtype).contiguous()


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _glu(gate, up, "silu")


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return _glu(gate, up, approximate)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _glu(*_halves(x), "silu")


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return _glu(*_halves(x), approximate)


def swiglu_backward(dy, gate, up):
    return _glu_backward(dy, gate, up, "silu")


def geglu_backward(dy, gate, up, approximate):
    return _glu_backward(dy, gate, up, approximate)


def silu_and_mul_backward(dy, x):
    """dx = [dgate | dup], x's shape."""
    return torch.cat(_glu_backward(dy, *_halves(x), "silu"), dim=-1)


def gelu_and_mul_backward(dy, x, approximate):
    return torch.cat(_glu_backward(dy, *_halves(x), approximate), dim=-1)


# --- FP8 (e4m3fn) quantization and GEMM, fused gated MLP, attention scores ---------------------

FP8_MAX = 448.0              # largest finite float8_e4m3fn
FP8_MIN_SCALE = 2.0 ** -126  # smallest normal fp32: x / scale stays finite


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """scale = amax / 448 (fp32, correctly rounded), at least 2^-126; 1 where amax == 0."""
    s = amax / FP8_MAX
    s = torch.where(s < FP8_MIN_SCALE, torch.full_like(s, FP8_MIN_SCALE), s)  # NaN stays NaN
    return torch.where(amax == 0, torch.ones_like(s), s)


def quantize_fp8(x: torch.Tensor, scaling: str = "tensor", dtype=torch.float8_e4m3fn):
    """(q, scale): q = e4m3(clamp(x / scale, -448, 448)) with x / scale in fp32.
    scaling "tensor": scale is a 0-d tensor; "row": x.shape[:-1] + (1,)."""
    xf = x.to(torch.float32)
    if scaling == "row":
        amax = (xf.abs().amax(-1, keepdim=True) if x.shape[-1] else
                xf.new_zeros(x.shape[:-1] + (1,)))
    else:
        amax = xf.abs().max() if x.numel() else xf.new_zeros(())
    scale = fp8_scale(amax)
    q = (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(dtype)
    return q.contiguous(), scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, out_dtype=torch.bfloat16) -> torch.Tensor:
    """q * scale in fp32 (float64 for a float64 scale), rounded once; scale has one element or
    one per row (q.shape[:-1] or q.shape[:-1] + (1,))."""
    dt = torch.float64 if scale.dtype == torch.float64 else torch.float32
    s = scale.reshape(()) if scale.numel() == 1 else scale.reshape(q.shape[:-1] + (1,))
    return (q.to(dt) * s.to(dt)).to(out_dtype).contiguous()


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
             out_dtype=torch.bfloat16, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(a @ b^T) * a_scale * b_scale (+ bias), emulated in fp32 (float64 for float64 inputs):
    a (M, K) and b (N, K) hold FP8 values (exact in fp32), a_scale one element or (M,),
    b_scale one element or (N,)."""
    dt = torch.float64 if a.dtype == torch.float64 else torch.float32
    out = (a.to(dt) @ b.to(dt).T) * a_scale.to(dt).reshape(-1, 1) * b_scale.to(dt).reshape(1, -1)
    if bias is not None:
        out = out + bias.to(dt)
    return out.to(out_dtype)


_GATED_ACTIVATIONS = ("silu", "gelu", "gelu_tanh")


def _gated_act(g: torch.Tensor, activation: str) -> torch.Tensor:
    """silu, gelu or gelu_tanh, in forms without cancellation for g << 0 (as the kernel):
    0.5 g (1 + erf(g/sqrt 2)) = 0.5 g erfc(-g/sqrt 2);  0.5 g (1 + tanh(z)) = g sigmoid(2z)."""
    if activation == "silu":
        return F.silu(g)
    if activation == "gelu":
        return 0.5 * g * torch.special.erfc(-g * math.sqrt(0.5))
    return g * torch.sigmoid(2 * math.sqrt(2 / math.pi) * (g + 0.044715 * g ** 3))


def _gated_act_grad(g: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "silu":  # silu' = s (1 + g (1 - s))
        s = torch.sigmoid(g)
        return s * (1 + g * (1 - s))
    return _gelu_grad(g, "tanh" if activation == "gelu_tanh" else "none")


def fused_gated_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                    activation: str = "silu") -> torch.Tensor:
    """act(x @ w_gate^T) * (x @ w_up^T), computed in fp32 and rounded once."""
    dt = _compute_dtype(x.dtype)
    xf = x.to(dt)
    g = xf @ w_gate.to(dt).T
    u = xf @ w_up.to(dt).T
    return (_gated_act(g, activation) * u).to(x.dtype).contiguous()


def fused_gated_mlp_backward(dy, x, w_gate, w_up, activation):
    """(dx, dw_gate, dw_up), recomputing the two products with x's dtype's matmuls:
    dg = dy * u * act'(g),  du = dy * act(g),  dx = dg @ w_gate + du @ w_up,
    dw_gate = dg^T @ x,  dw_up = du^T @ x  (x and dy flattened to rows)."""
    dt = _compute_dtype(x.dtype)
    x2 = x.reshape(-1, x.shape[-1])
    d = dy.reshape(-1, dy.shape[-1]).to(dt)
    g = (x2 @ w_gate.T).to(dt)
    u = (x2 @ w_up.T).to(dt)
    dg = (d * u * _gated_act_grad(g, activation)).to(x.dtype)
    du = (d * _gated_act(g, activation)).to(x.dtype)
    dx = torch.addmm(dg @ w_gate, du, w_up)
    return dx.reshape(x.shape), (dg.T @ x2).to(w_gate.dtype), (du.T @ x2).to(w_up.dtype)


def attention_scores(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """q @ k^T * scale over the last two dimensions, in fp32, rounded once."""
    dt = _compute_dtype(q.dtype)
    return (torch.matmul(q.to(dt), k.to(dt).transpose(-1, -2)) * scale).to(q.dtype).contiguous()


def _bmm_scaled(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """a @ b * scale over the last two dimensions with one rounding (the scale is applied
    to the matmul's fp32 sums): baddbmm with beta = 0, alpha = scale."""
    lead = a.shape[:-2]
    a3, b3 = a.reshape(lead.numel(), *a.shape[-2:]), b.reshape(lead.numel(), *b.shape[-2:])
    out = torch.baddbmm(a3.new_empty(a3.shape[0], a3.shape[1], b3.shape[2]), a3, b3, beta=0, alpha=scale)
    return out.reshape(*lead, a.shape[-2], b.shape[-1])


def attention_scores_backward(dy, q, k, scale):
    """dq = dy @ k * scale,  dk = dy^T @ q * scale."""
    return _bmm_scaled(dy, k.to(dy.dtype), scale), _bmm_scaled(dy.transpose(-1, -2), q.to(dy.dtype), scale)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, activation: Optional[str] = None) -> torch.Tensor:
    """act(layer_norm(x) * weight + bias), act = identity or "relu"; weight/bias may be fp32."""
    dt = _compute_dtype(x.dtype)
    y = F.layer_norm(x.to(dt), x.shape[-1:], None if weight is None else weight.to(dt),
                     None if bias is None else bias.to(dt), eps)
    if activation == "relu":
        y = torch.relu(y)
    return y.to(x.dtype).contiguous()


def layer_norm_backward(dy, x, weight, bias, eps, activation):
    """dyp = dy * act'(pre), g = dyp * w:  dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)),
    dw = sum over rows of dyp * x_hat,  db = sum over rows of dyp (empty for absent parameters)."""
    dt = _compute_dtype(x.dtype)
    xf, dyf = x.to(dt), dy.to(dt)
    xc = xf - xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt(xc.square().mean(-1, keepdim=True) + eps)
    x_hat = xc * rstd
    w = 1.0 if weight is None else weight.to(dt)
    if activation == "relu":
        dyf = dyf * (x_hat * w + (0.0 if bias is None else bias.to(dt)) > 0)
    g = dyf * w
    dx = rstd * (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True))
    dw = _sum_rows(dyf * x_hat).to(weight.dtype) if weight is not None else x.new_empty(0)
    db = _sum_rows(dyf).to(bias.dtype) if bias is not None else x.new_empty(0)
    return dx.to(x.dtype).contiguous(), dw, db


def ada_layer_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """layer_norm(x) * (1 + scale) + shift; scale/shift broadcast (N,), (B, 1, N) or x's shape."""
    dt = _compute_dtype(x.dtype)
    y = F.layer_norm(x.to(dt), x.shape[-1:], eps=eps) * (1 + scale.to(dt)) + shift.to(dt)
    return y.to(x.dtype).contiguous()


def ada_layer_norm_backward(dy, x, scale, eps):
    """dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with g = dy * (1 + scale);
    dscale = dy * x_hat and dshift = dy, summed to scale's shape (over the broadcast rows)."""
    dt = _compute_dtype(x.dtype)
    xf, dyf = x.to(dt), dy.to(dt)
    xc = xf - xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt(xc.square().mean(-1, keepdim=True) + eps)
    x_hat = xc * rstd
    g = dyf * (1 + scale.to(dt))
    dx = rstd * (g - g.mean(-1, keepdim=True) - x_hat * (g * x_hat).mean(-1, keepdim=True))
    dscale = (dyf * x_hat).sum_to_size(scale.shape).to(scale.dtype).contiguous()
    # a copy even where dy already has scale's shape and dtype: an op's output never aliases its input
    dshift = dyf.sum_to_size(scale.shape).to(scale.dtype).clone(memory_format=torch.contiguous_format)
    return dx.to(x.dtype).contiguous(), dscale, dshift


# --- rotary embedding (rope, rms_norm_rope) ---------------------------------------------

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


# --- add_relu, mul_tanh: b of a's shape or (N,) broadcast over a's rows ------------------------

def _rows_sum(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t summed to `like`'s shape: over the rows for a broadcast (N,) operand, else t."""
    return t if like.shape == t.shape else t.reshape(-1, t.shape[-1]).sum(0)


def add_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dt = _compute_dtype(a.dtype)
    return torch.relu(a.to(dt) + b.to(dt)).to(a.dtype).contiguous()


def add_relu_backward(dy, y, broadcast: bool):
    """da = dy where y > 0, else 0 (torch's threshold_backward); db = da (returned empty) or,
    for a broadcast b, da summed over the rows."""
    dt = _compute_dtype(y.dtype)
    da = torch.where(y.to(dt) <= 0, 0, dy.to(dt))
    db = da.reshape(-1, da.shape[-1]).sum(0).to(y.dtype) if broadcast else y.new_empty(0)
    return da.to(y.dtype).contiguous(), db


def mul_tanh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dt = _compute_dtype(a.dtype)
    return torch.tanh(a.to(dt) * b.to(dt)).to(a.dtype).contiguous()


def mul_tanh_backward(dy, a, b):
    """da = dy (1 - t^2) b,  db = dy (1 - t^2) a (summed over the rows for a broadcast b)."""
    dt = _compute_dtype(a.dtype)
    af, bf = a.to(dt), b.to(dt)
    t = torch.tanh(af * bf)
    g = dy.to(dt) * (1 - t * t)
    return (g * bf).to(a.dtype).contiguous(), _rows_sum(g * af, b).to(b.dtype).contiguous()


# --- gelu_dropout: the mask from Philox4x32-10, bit-identical to the kernel's ---------------------

_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
_U32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor):
    """(high, low) 32-bit halves of a * b for uint32 values held in int64: the product is
    assembled from 16-bit halves so that no intermediate leaves int64's range."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    mid = a_hi * b_lo + a_lo * b_hi                      # < 2^33
    low = a_lo * b_lo + ((mid & 0xFFFF) << 16)           # < 2^33
    high = a_hi * b_hi + (mid >> 16) + (low >> 32)
    return high & _U32, low & _U32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 (Salmon et al., SC 2011) on uint32 values held in int64 tensors (or ints):
    the four output words for counters (c0, c1, c2, c3) and key (k0, k1)."""
    c = [torch.as_tensor(v, dtype=torch.int64) for v in (c0, c1, c2, c3)]
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M[0], c[0])
        hi1, lo1 = _mulhilo32(_PHILOX_M[1], c[2])
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + _PHILOX_W[0]) & _U32, (k1 + _PHILOX_W[1]) & _U32
    return c


def dropout_threshold(p: float) -> int:
    """An element is kept when its 32-bit random word is >= round(p * 2^32)."""
    return min(round(p * 4294967296.0), 4294967295)


def dropout_keep(n: int, p: float, seed: int, counter: int, device=None) -> torch.Tensor:
    """The keep mask (bool, n elements) of gelu_dropout: element e is kept when word e % 4 of
    Philox4x32-10(counter=(lo(counter), hi(counter), lo(e // 4), hi(e // 4)), key=(lo(seed),
    hi(seed))) is >= dropout_threshold(p).  seed and counter are 64-bit (any sign)."""
    q = torch.arange((n + 3) // 4, dtype=torch.int64, device=device)
    words = philox4x32_10(counter & _U32, (counter >> 32) & _U32, q & _U32, (q >> 32) & _U32,
                          seed & _U32, (seed >> 32) & _U32)
    return (torch.stack(words, dim=1).reshape(-1)[:n] >= dropout_threshold(p))


def _seed_counter(seed: int, counter: int, rng):
    return (int(rng[0]), int(rng[1])) if rng is not None else (seed, counter)


def _gelu_erfc(u: torch.Tensor) -> torch.Tensor:
    """gelu(u) = u Phi(u) = u erfc(-u / sqrt 2) / 2: the erf form without 1 + erf(u / sqrt 2)'s
    cancellation for u < 0 (which leaves 0 below u = -8.3 even in float64)."""
    return 0.5 * u * torch.erfc(-u * (1 / math.sqrt(2.0)))


def _gelu_erfc_grad(u: torch.Tensor) -> torch.Tensor:
    """gelu'(u) = Phi(u) + u phi(u)."""
    return 0.5 * torch.erfc(-u * (1 / math.sqrt(2.0))) + u * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


def gelu_dropout(x: torch.Tensor, p: float, seed: int = 0, counter: int = 0, rng=None) -> torch.Tensor:
    """gelu(x) (erf form) times keep / (1 - p); p = 0 is plain GELU.  (seed, counter) pick the
    mask (see dropout_keep), or rng = a tensor holding them."""
    dt = _compute_dtype(x.dtype)
    y = _gelu_erfc(x.to(dt))
    if p > 0:
        keep = dropout_keep(x.numel(), p, *_seed_counter(seed, counter, rng), device=x.device)
        y = y * keep.view(x.shape).to(dt) * (1.0 / (1.0 - p))
    return y.to(x.dtype).contiguous()


def gelu_dropout_backward(dy, x, p: float, seed: int = 0, counter: int = 0, rng=None):
    """dx = dy * gelu'(x) * keep / (1 - p), the same mask as the forward."""
    dt = _compute_dtype(x.dtype)
    dx = dy.to(dt) * _gelu_erfc_grad(x.to(dt))
    if p > 0:
        keep = dropout_keep(x.numel(), p, *_seed_counter(seed, counter, rng), device=x.device)
        dx = dx * keep.view(x.shape).to(dt) * (1.0 / (1.0 - p))
    return dx.to(x.dtype).contiguous()


# --- reductions over one dimension --------------------------------------------------------------

def reduce_sum_squared(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    return x.to(_compute_dtype(x.dtype)).square().sum(dim, keepdim=keepdim).to(x.dtype)


def reduce_mean_abs(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    return x.to(_compute_dtype(x.dtype)).abs().mean(dim, keepdim=keepdim).to(x.dtype)


def _expand_grad(dy, x, dim, keepdim, dt):
    return dy.to(dt) if keepdim else dy.to(dt).unsqueeze(dim % x.dim())


def reduce_sum_squared_backward(dy, x, dim: int = -1, keepdim: bool = False):
    """dx = 2 x dy."""
    dt = _compute_dtype(x.dtype)
    return (2 * x.to(dt) * _expand_grad(dy, x, dim, keepdim, dt)).to(x.dtype).contiguous()


def reduce_mean_abs_backward(dy, x, dim: int = -1, keepdim: bool = False):
    """dx = sign(x) dy / n, n the reduced dimension's size."""
    dt = _compute_dtype(x.dtype)
    g = _expand_grad(dy, x, dim, keepdim, dt) / max(x.shape[dim], 1)
    return (torch.sign(x.to(dt)) * g).to(x.dtype).contiguous()
