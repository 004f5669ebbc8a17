"""Reference norms: rms_norm, fused_add_rms_norm, layer_norm, ada_layer_norm (forward and backward)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._common import _compute_dtype, _sum_rows


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, eps: float = 1e-6) -> torch.Tensor:
    xf = x.to(_compute_dtype(x.dtype))
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.to(x.dtype).contiguous()


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
