"""Modules: drop-in replacements for their torch.nn counterparts."""
from __future__ import annotations

import numbers

import torch

from .ops.rms_norm import rms_norm

__all__ = ["RMSNorm"]


class RMSNorm(torch.nn.Module):
    """Drop-in for torch.nn.RMSNorm over the last dimension (same arguments, same
    state_dict key "weight", same numerics within rounding).

    eps=None uses torch.finfo(x.dtype).eps, as torch does.
    """

    def __init__(self, normalized_shape, eps=None, elementwise_affine=True, device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (int(normalized_shape),)
        normalized_shape = tuple(normalized_shape)
        if len(normalized_shape) != 1:
            raise ValueError(f"fusedaot.nn.RMSNorm normalizes over the last dimension only; "
                             f"got normalized_shape={normalized_shape}")
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1:] != self.normalized_shape:
            raise ValueError(f"RMSNorm: expected input with last dimension {self.normalized_shape[0]}, "
                             f"got shape {tuple(x.shape)}")
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
