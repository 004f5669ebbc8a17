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
