"""fused_gated_mlp: y = act(x @ w_gate^T) * (x @ w_up^T) in one kernel (Triton,
kernels/triton/gated_mlp.py).

x: (..., H) fp16|bf16 (rows may be strided); w_gate, w_up: (I, H) of x's dtype
(nn.Linear weights); activation: "silu" (SwiGLU), "gelu" (GeGLU, erf) or "gelu_tanh".
Both products share each x tile and stay in registers (fp32); only y, (..., I), reaches
memory, rounded once.  The backward recomputes the two products with torch matmuls in
x's dtype (the reference composition, fusedaot.reference.fused_gated_mlp_backward).
"""
from __future__ import annotations

import torch

from .. import _lib, reference
from ._common import _TENSORS, _names, is_compiling, launch_rows, native, register

OP = "fused_gated_mlp"
DTYPES = (torch.float16, torch.bfloat16)
ACTIVATIONS = {"silu": 0, "gelu": 1, "gelu_tanh": 2}
_DEVICE_TYPES = ("cuda", "cpu", "meta")


def _forward(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, activation: str) -> torch.Tensor:
    lib, dev = native(x)
    if lib is None:
        return reference.fused_gated_mlp(x, w_gate, w_up, activation)
    return _launch(lib, dev, x, w_gate, w_up, activation)


def _weight(w: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """w with a unit column stride, and its row stride (k for a single row)."""
    if w.stride(1) != 1 and k > 1:
        w = w.contiguous()
    return w, (w.stride(0) if w.shape[0] > 1 else k)


def _launch(lib, dev, x, w_gate, w_up, activation):
    n = w_gate.shape[0]
    y = torch.empty(x.shape[:-1] + (n,), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if x.shape[-1] == 0:
        return y.zero_()   # empty sums: act(0) * 0
    x2, m, k, stride = launch_rows(x)
    wg, stride_g = _weight(w_gate, k)
    wu, stride_u = _weight(w_up, k)
    scratch = _lib.scratch("gated_mlp", lib, dev, x.device)   # (aot/specs/gated_mlp.py)
    rc = lib.gated_mlp(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], x2.data_ptr(), wg.data_ptr(),
                       wu.data_ptr(), y.data_ptr(), stride, stride_g, stride_u, n, m, n, k, ACTIVATIONS[activation],
                       scratch.ptr, scratch.bytes)
    if rc:
        raise lib.error(rc, OP)
    return y


def _backward(dy: torch.Tensor, x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
              activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return reference.fused_gated_mlp_backward(dy, x, w_gate, w_up, activation)


def _fake(x, w_gate, w_up, activation):
    return x.new_empty(x.shape[:-1] + (w_gate.shape[0],))


def _backward_fake(dy, x, w_gate, w_up, activation):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w_gate), torch.empty_like(w_up)


def _save(ctx, inputs, output):
    x, w_gate, w_up, activation = inputs
    ctx.save_for_backward(x, w_gate, w_up)
    ctx.activation = activation


def _grad(ctx, backward, dy):
    x, w_gate, w_up = ctx.saved_tensors
    dx, dwg, dwu = backward(dy, x, w_gate, w_up, ctx.activation)
    need = ctx.needs_input_grad
    return dx if need[0] else None, dwg if need[1] else None, dwu if need[2] else None, None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def _check(x, w_gate, w_up, activation) -> None:
    for name, t in (("x", x), ("w_gate", w_gate), ("w_up", w_up)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{OP}: {name} must be {_names(DTYPES)}, got {t.dtype}")
        if t.device.type not in _DEVICE_TYPES:
            raise ValueError(f"{OP}: tensors on {t.device.type!r} are not supported; use CUDA or CPU tensors")
    if x.dim() < 1:
        raise ValueError(f"{OP}: x must have at least one dimension, got a scalar")
    for name, w in (("w_gate", w_gate), ("w_up", w_up)):
        if w.dim() != 2 or w.shape[1] != x.shape[-1]:
            raise ValueError(f"{OP}: {name} has shape {tuple(w.shape)} but must be (intermediate, "
                             f"{x.shape[-1]}): x has shape {tuple(x.shape)} (hidden = {x.shape[-1]})")
        if w.dtype != x.dtype:
            raise TypeError(f"{OP}: {name} dtype {w.dtype} does not match x dtype {x.dtype}")
        if w.device != x.device:
            raise ValueError(f"{OP}: {name} is on {w.device} but x is on {x.device}")
    if w_up.shape != w_gate.shape:
        raise ValueError(f"{OP}: w_gate has shape {tuple(w_gate.shape)} but w_up has shape {tuple(w_up.shape)}; "
                         "they must match")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{OP}: activation must be 'silu', 'gelu' or 'gelu_tanh', got {activation!r}")


def fused_gated_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                    activation: str = "silu") -> torch.Tensor:
    """act(x @ w_gate^T) * (x @ w_up^T) in one kernel.

    x: (..., H) fp16|bf16; w_gate, w_up: (I, H) of x's dtype; activation "silu" | "gelu" |
    "gelu_tanh".  Returns (..., I), contiguous.  Differentiable in x and both weights.
    """
    if (type(x) in _TENSORS and type(w_gate) in _TENSORS and type(w_up) in _TENSORS and x.is_cuda
            and x.dtype in DTYPES and x.dim() and w_gate.dtype == x.dtype and w_up.dtype == x.dtype
            and w_gate.dim() == 2 and w_gate.shape == w_up.shape and w_gate.shape[1] == x.shape[-1]
            and w_gate.get_device() == x.get_device() == w_up.get_device() and activation in ACTIVATIONS
            and not (torch.is_grad_enabled() and (x.requires_grad or w_gate.requires_grad or w_up.requires_grad))
            and not is_compiling()):
        lib = _lib.device_library(x.get_device())
        if lib is not None:
            return _launch(lib, x.get_device(), x, w_gate, w_up, activation)
    _check(x, w_gate, w_up, activation)
    if is_compiling():
        return _op(x, w_gate, w_up, activation)
    if torch.is_grad_enabled() and (x.requires_grad or w_gate.requires_grad or w_up.requires_grad):
        return _EagerAutograd.apply(x, w_gate, w_up, activation)
    return _forward(x, w_gate, w_up, activation)


__all__ = ["fused_gated_mlp"]
