"""rms_norm_rope: RMSNorm then rotary embedding in one pass  (Triton kernels, kernels/triton/rope.py).

x: (B, S, H*D) or (T, H*D) fp16|bf16|fp32, token rows may be strided (last dimension
contiguous).  per_head=False: the norm is over the whole row with weight (H*D,) (OLMo-2's
QK-norm); per_head=True: over each head's D values with weight (D,) shared by the heads (Qwen3).
cos, sin, position_ids, interleaved and rotary_dim as for apply_rope.  The backward gives dx and
dweight; dweight is added up per program in fp32 and the partial sums in a fixed order
(deterministic, no atomics).  cos and sin get no gradient.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _lib, reference
from ._common import FLOAT_DTYPES, _TENSORS, _names, check_eps, is_compiling, register
from .rope import _I32, _no_table_grad, _table_strides, check_tables, positions, table_flags

OP = "rms_norm_rope"


class Layout:
    __slots__ = ("x", "heads", "rotary_dim", "half_table")

    def __init__(self, x, heads, rotary_dim, half_table):
        self.x, self.heads, self.rotary_dim, self.half_table = x, heads, rotary_dim, half_table


def _check(x, weight, cos, sin, head_dim, per_head, position_ids, rotary_dim) -> Layout:
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{OP}: x must be {_names(FLOAT_DTYPES)}, got {x.dtype}")
    if x.device.type not in ("cuda", "cpu", "meta"):
        raise ValueError(f"{OP}: tensors on {x.device.type!r} are not supported; use CUDA or CPU tensors")
    if x.dim() not in (2, 3):
        raise ValueError(f"{OP}: x must be (batch, seq, heads * head_dim) or (tokens, heads * head_dim), "
                         f"got shape {tuple(x.shape)}")
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"{OP}: head_dim must be a positive int, got {head_dim!r}")
    hidden = x.shape[-1]
    if hidden % head_dim:
        raise ValueError(f"{OP}: x's last dimension {hidden} is not a multiple of head_dim {head_dim}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{OP}: weight dtype {weight.dtype} does not match x dtype {x.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{OP}: weight is on {weight.device} but x is on {x.device}")
    want = (head_dim,) if per_head else (hidden,)
    if tuple(weight.shape) != want:
        raise ValueError(f"{OP}: weight has shape {tuple(weight.shape)} but per_head={bool(per_head)} needs "
                         f"{'(head_dim,)' if per_head else '(heads * head_dim,)'} = {want}")
    x3 = x.unsqueeze(0) if x.dim() == 2 else x
    rotary_dim, half = check_tables(OP, x, cos, sin, x3.shape[0], x3.shape[1], head_dim, position_ids, rotary_dim,
                                    what="x")
    if hidden > _I32:
        raise ValueError(f"{OP}: rows of more than 2^31 - 1 values are not supported")
    return Layout(x3, hidden // head_dim, rotary_dim, half)


def _token_strides(t):
    b, s, _ = t.shape
    return (t.stride(0) if b > 1 else 0, t.stride(1) if s > 1 else 0)


def _launch(lib, dev, lay: Layout, weight, cos, sin, position_ids, head_dim, eps, per_head, interleaved):
    x = lay.x if lay.x.stride(-1) == 1 else lay.x.contiguous()
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    batch, seq, _ = x.shape
    if batch * seq == 0 or x.shape[2] == 0:
        return y
    w = weight.contiguous()
    cos, sin, stride_cb, stride_cs, rows = _table_strides(cos, sin)
    pos, pos_ptr, stride_pb = positions(position_ids, seq)
    fn = lib.rms_norm_rope_fwd_interleaved if interleaved else lib.rms_norm_rope_fwd
    rc = fn(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], x.data_ptr(), w.data_ptr(), cos.data_ptr(),
            sin.data_ptr(), pos_ptr, y.data_ptr(), *_token_strides(x), *_token_strides(y),
            0 if per_head else head_dim, stride_cb, stride_cs, stride_pb, batch * seq, seq, lay.heads, head_dim,
            lay.rotary_dim // 2, rows, eps, bool(per_head), table_flags(pos, lay.half_table))
    if rc:
        raise lib.error(rc, OP)
    return y


def _forward(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             position_ids: Optional[torch.Tensor], head_dim: int, eps: float, per_head: bool, interleaved: bool,
             rotary_dim: int) -> torch.Tensor:
    lay = _check(x, weight, cos, sin, head_dim, per_head, position_ids, rotary_dim)
    lib = _lib.device_library(x.get_device()) if x.is_cuda else None
    if lib is None:
        return reference.rms_norm_rope(x, weight, cos, sin, head_dim, eps, per_head, position_ids, interleaved,
                                       rotary_dim)
    return _launch(lib, x.get_device(), lay, weight, cos, sin, position_ids, head_dim, eps, per_head,
                   interleaved).view(x.shape)


def _backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              position_ids: Optional[torch.Tensor], head_dim: int, eps: float, per_head: bool, interleaved: bool,
              rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    lay = _check(x, weight, cos, sin, head_dim, per_head, position_ids, rotary_dim)
    lib = _lib.device_library(x.get_device()) if x.is_cuda else None
    if lib is None:
        return reference.rms_norm_rope_backward(dy, x, weight, cos, sin, head_dim, eps, per_head, position_ids,
                                                interleaved, rotary_dim)
    dev = x.get_device()
    xs = lay.x if lay.x.stride(-1) == 1 else lay.x.contiguous()
    dys = dy.unsqueeze(0) if dy.dim() == 2 else dy
    dys = dys if dys.stride(-1) == 1 else dys.contiguous()
    dx = torch.empty(xs.shape, dtype=x.dtype, device=x.device)
    batch, seq, hidden = xs.shape
    tokens, width = batch * seq, weight.numel()
    dw = torch.empty(weight.shape, dtype=weight.dtype, device=x.device)
    if tokens == 0 or hidden == 0:
        return dx.view(x.shape), dw.zero_()
    # G x C programs, each owning one fp32 row of dweight's partial sums.  G walk the tokens:
    # 16 per SM per head (small programs of a few heads, aot/specs/rms_norm_rope.py), 4 per SM
    # over the row (a program holds the row; the partial rows are H*D wide).  Per head, fewer
    # tokens than that share theirs among C programs along the heads (those past the last chunk
    # of heads add nothing and write zeros).  One program (one token over the row) writes dw
    # itself: no third launch.
    programs = (16 if per_head else 4) * _lib.sm_count(dev)
    g = min(tokens, programs)
    c = min(lay.heads, -(-programs // tokens)) if per_head else 1
    partial = torch.empty((g * c, width), dtype=torch.float32, device=x.device)
    w = weight.contiguous()
    cos, sin, stride_cb, stride_cs, rows = _table_strides(cos, sin)
    pos, pos_ptr, stride_pb = positions(position_ids, seq)
    stream, code = _lib.current_stream(dev), _lib.DTYPE_CODES[x.dtype]
    fn = lib.rms_norm_rope_bwd_interleaved if interleaved else lib.rms_norm_rope_bwd
    rc = fn(stream, dev, code, dys.data_ptr(), xs.data_ptr(), w.data_ptr(), cos.data_ptr(), sin.data_ptr(), pos_ptr,
            dx.data_ptr(), partial.data_ptr(), dw.data_ptr(), *_token_strides(dys), *_token_strides(xs),
            *_token_strides(dx), 0 if per_head else head_dim, stride_cb, stride_cs, stride_pb, tokens, seq, lay.heads,
            head_dim, lay.rotary_dim // 2, rows, eps, bool(per_head), table_flags(pos, lay.half_table), g, c, width)
    if rc == 0 and g * c > 1:  # one program writes dw itself
        rc = lib.rms_norm_rope_dw(stream, dev, code, partial.data_ptr(), dw.data_ptr(), g * c, width)
    if rc:
        raise lib.error(rc, OP + " backward")
    return dx.view(x.shape), dw


def _fake(x, weight, cos, sin, position_ids, head_dim, eps, per_head, interleaved, rotary_dim):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _backward_fake(dy, x, weight, cos, sin, position_ids, head_dim, eps, per_head, interleaved, rotary_dim):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(weight)


def _save(ctx, inputs, output):
    x, weight, cos, sin, position_ids, *rest = inputs
    ctx.save_for_backward(x, weight, cos, sin, position_ids)
    ctx.rest = rest


def _grad(ctx, backward, dy):
    x, weight, cos, sin, position_ids = ctx.saved_tensors
    dx, dw = backward(dy, x, weight, cos, sin, position_ids, *ctx.rest)
    return (dx, dw if ctx.needs_input_grad[1] else None) + (None,) * 8


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, head_dim: int,
                  eps: Optional[float] = 1e-6, per_head: bool = False, position_ids: Optional[torch.Tensor] = None,
                  interleaved: bool = False, rotary_dim: Optional[int] = None) -> torch.Tensor:
    """rope(rms_norm(x) * weight): a contiguous tensor of x's shape and dtype.

    x: (B, S, H*D) or (T, H*D) fp16|bf16|fp32; weight: (H*D,) (norm over the row), or (D,) with
    per_head=True (norm over each head); head_dim: D; eps > 0 (None: fp32's machine epsilon);
    cos, sin, position_ids, interleaved, rotary_dim: as for apply_rope.
    """
    eps = check_eps(OP, eps)
    lay = _check(x, weight, cos, sin, head_dim, per_head, position_ids, rotary_dim)
    _no_table_grad(OP, cos, sin)
    per_head, interleaved = bool(per_head), bool(interleaved)
    grad = (x.requires_grad or weight.requires_grad) and torch.is_grad_enabled()
    if type(x) in _TENSORS and x.is_cuda and not grad and not is_compiling():
        lib = _lib.device_library(x.get_device())
        if lib is not None:  # the direct path: no dispatcher, no autograd
            return _launch(lib, x.get_device(), lay, weight, cos, sin, position_ids, head_dim, eps, per_head,
                           interleaved).view(x.shape)
    args = (x, weight, cos, sin, position_ids, head_dim, eps, per_head, interleaved, lay.rotary_dim)
    if is_compiling():
        return _op(*args)
    if grad:
        return _EagerAutograd.apply(*args)
    return _forward(*args)


__all__ = ["rms_norm_rope"]
