"""Modules: drop-in replacements for their torch.nn counterparts."""
from __future__ import annotations

import numbers
from typing import Optional

import torch

from .ops.fused_add_rms_norm import fused_add_rms_norm
from .ops.rms_norm import rms_norm

__all__ = ["RMSNorm"]


class RMSNorm(torch.nn.Module):
    """Drop-in for torch.nn.RMSNorm (same arguments, same state_dict key "weight", same
    numerics within rounding).  Normalizing over several trailing dimensions flattens them
    into one row (a view where x's layout allows, else one copy).

    eps=None uses fp32's machine epsilon, as torch does for fp16, bf16 and fp32 inputs.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        normalized_shape = tuple(int(n) for n in normalized_shape)
        if not normalized_shape:
            raise ValueError("RMSNorm: normalized_shape must name at least one dimension")
        self.normalized_shape = normalized_shape
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """rms_norm(x), or with `residual` the pre-norm decoder's fused step:
        (rms_norm(x + residual), x + residual) in one pass (fusedaot.fused_add_rms_norm)."""
        k = len(self.normalized_shape)
        if tuple(x.shape[x.dim() - k:]) != self.normalized_shape:
            raise ValueError(f"RMSNorm: expected input with trailing dimensions {self.normalized_shape}, "
                             f"got shape {tuple(x.shape)}")
        w = None if self.weight is None else self.weight.reshape(-1)
        rows = x if k == 1 else x.reshape(*x.shape[:-k], -1)
        if residual is None:
            return rms_norm(rows, w, self.eps).view(x.shape)
        if residual.shape != x.shape:
            raise ValueError(f"RMSNorm: residual has shape {tuple(residual.shape)} but x has shape {tuple(x.shape)}")
        res = residual if k == 1 else residual.reshape(rows.shape)
        if w is None:  # no weight to fuse with: the sum, then the norm
            s = rows + res
            return rms_norm(s, None, self.eps).view(x.shape), s.view(x.shape)
        y, s = fused_add_rms_norm(rows, res, w, self.eps)
        return y.view(x.shape), s.view(x.shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
