"""Reference FP8 quantization and GEMMs: quantize/dequantize_fp8, fp8_gemm, fused_gated_mlp,
attention_scores."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ._common import _compute_dtype, _gelu_grad


FP8_MAX = 448.0              # largest finite float8_e4m3fn


FP8_MIN_SCALE = 2.0 ** -126  # smallest normal fp32: x / scale stays finite


def fp8_scale(amax: torch.Tensor) -> torch.Tensor:
    """scale = amax / 448 (fp32, correctly rounded), at least 2^-126; 1 where amax == 0."""
    # a tensor divisor: dividing a CUDA tensor by a Python number multiplies by its rounded
    # reciprocal, which is 1 ulp off the quotient for some amax (and moves q across ties)
    s = amax / torch.full_like(amax, FP8_MAX)
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
