"""apply_rope: rotary position embedding of q and k in one launch  (Triton kernel, kernels/triton/rope.py).

q: (B, S, Hq, D) or (T, Hq, D); k: the same with Hk heads (GQA: Hq != Hk); both may be strided
views (e.g. slices of a fused qkv projection) with a contiguous last dimension.
cos, sin: (P, C) tables indexed by position_ids ((B, S) or (S,) integers; row s without), or
per-batch (B or 1, P, C) tables.  C = rotary_dim (the Hugging Face convention: each pair's value
twice, in the layout's order) or rotary_dim / 2 (one value per pair).  rotary_dim defaults to C,
so a half table needs rotary_dim given.  Values [rotary_dim, D) pass through unchanged.
Layouts: half-split (NeoX/Llama rotate_half) or interleaved (GPT-J, pairs 2i, 2i+1).
The backward is the same kernel rotating by -theta.  cos and sin get no gradient.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _lib, reference
from ._common import FLOAT_DTYPES, _TENSORS, _names, is_compiling, register

OP = "apply_rope"
_INDEX_DTYPES = (torch.int64, torch.int32)
_I32 = 2**31 - 1


class Layout:
    """A validated call: the 4-D views and what the kernel needs besides pointers."""
    __slots__ = ("q", "k", "rotary_dim", "half_table")

    def __init__(self, q, k, rotary_dim, half_table):
        self.q, self.k, self.rotary_dim, self.half_table = q, k, rotary_dim, half_table


def _device_of(op, name, t, ref):
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but q is on {ref.device}")


def check_tables(op, ref, cos, sin, batch, seq, head_dim, position_ids, rotary_dim, what="q"):
    """Validate cos, sin, position_ids and rotary_dim against tokens (batch, seq) of heads of
    head_dim values; return (rotary_dim, half_table).  Shared with rms_norm_rope."""
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} dtype {t.dtype} does not match {what} dtype {ref.dtype}")
        _device_of(op, name, t, ref)
    if cos.shape != sin.shape:
        raise ValueError(f"{op}: sin has shape {tuple(sin.shape)} but cos has shape {tuple(cos.shape)}")
    if cos.dim() not in (2, 3) or (cos.dim() == 3 and cos.shape[0] not in (1, batch)):
        raise ValueError(f"{op}: cos and sin must be (positions, dim) or (batch, positions, dim) with batch "
                         f"1 or {batch}, got shape {tuple(cos.shape)}")
    cols, rows = cos.shape[-1], cos.shape[-2]
    if rotary_dim is None:
        if cols > head_dim:
            raise ValueError(f"{op}: cos has {cols} columns but head_dim is {head_dim}; cos needs one column per "
                             "rotated value (at most head_dim), or give rotary_dim")
        rotary_dim = cols
    elif isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise TypeError(f"{op}: rotary_dim must be an int or None, got {type(rotary_dim).__name__}")
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"{op}: rotary_dim must be a positive even number, got {rotary_dim}")
    if rotary_dim > head_dim:
        raise ValueError(f"{op}: rotary_dim {rotary_dim} exceeds head_dim {head_dim}")
    if cols not in (rotary_dim, rotary_dim // 2):
        raise ValueError(f"{op}: cos has {cols} columns; with rotary_dim {rotary_dim} expected {rotary_dim} "
                         f"(one value per element) or {rotary_dim // 2} (one per pair)")
    if position_ids is None:
        if rows < seq:
            raise ValueError(f"{op}: cos has {rows} rows but the sequence has {seq} positions; pass "
                             "position_ids or a table with a row per position")
    else:
        if not isinstance(position_ids, torch.Tensor):
            raise TypeError(f"{op}: position_ids must be a torch.Tensor or None, got {type(position_ids).__name__}")
        if position_ids.dtype not in _INDEX_DTYPES:
            raise TypeError(f"{op}: position_ids must be int64 or int32, got {position_ids.dtype}")
        _device_of(op, "position_ids", position_ids, ref)
        shape = tuple(position_ids.shape)
        if shape not in ((batch, seq), (1, seq), (seq,)):
            raise ValueError(f"{op}: position_ids must be (batch, seq) = {(batch, seq)} or (seq,) = ({seq},), "
                             f"got shape {shape}")
        if position_ids.device.type == "cpu" and position_ids.numel() and not is_compiling():
            lo, hi = int(position_ids.min()), int(position_ids.max())
            if lo < 0 or hi >= rows:
                raise IndexError(f"{op}: position_ids must lie in [0, {rows}) (the rows of cos), got values "
                                 f"from {lo} to {hi}")
    if rows > _I32 or batch * seq > _I32:
        raise ValueError(f"{op}: more than 2^31 - 1 table rows or tokens are not supported")
    return rotary_dim, cols != rotary_dim


def _check(op, q, k, cos, sin, position_ids, rotary_dim) -> Layout:
    """Every argument checked, in one pass; errors name what is wrong and what was expected."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: q must be {_names(FLOAT_DTYPES)}, got {q.dtype}")
    if q.device.type not in ("cuda", "cpu", "meta"):
        raise ValueError(f"{op}: tensors on {q.device.type!r} are not supported; use CUDA or CPU tensors")
    if k.dtype != q.dtype:
        raise TypeError(f"{op}: k dtype {k.dtype} does not match q dtype {q.dtype}")
    _device_of(op, "k", k, q)
    if q.dim() not in (3, 4):
        raise ValueError(f"{op}: q must be (batch, seq, heads, head_dim) or (tokens, heads, head_dim), "
                         f"got shape {tuple(q.shape)}")
    if k.dim() != q.dim() or k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"{op}: k has shape {tuple(k.shape)} but q has shape {tuple(q.shape)}; k must match q "
                         "in every dimension but the number of heads")
    q4, k4 = (q.unsqueeze(0), k.unsqueeze(0)) if q.dim() == 3 else (q, k)
    batch, seq, hq, head_dim = q4.shape
    if batch * seq * (hq + k4.shape[2]) > _I32 * 8:
        raise ValueError(f"{op}: {batch * seq} tokens of {hq + k4.shape[2]} heads are more than one launch takes")
    rotary_dim, half = check_tables(op, q, cos, sin, batch, seq, head_dim, position_ids, rotary_dim)
    return Layout(q4, k4, rotary_dim, half)


def _table_strides(cos, sin):
    """(cos, sin, batch stride, row stride, rows): last dimension contiguous, strides shared."""
    def strides(t):
        rows = t.shape[-2]
        sb = t.stride(0) if t.dim() == 3 and t.shape[0] > 1 else 0
        return sb, (t.stride(-2) if rows > 1 else 0)
    if cos.stride(-1) != 1 or sin.stride(-1) != 1 or strides(cos) != strides(sin):
        cos, sin = cos.contiguous(), sin.contiguous()
    return (cos, sin, *strides(cos), cos.shape[-2])


def _head_strides(t):
    # a dimension of size 1 takes stride 0: the kernel only multiplies it by 0
    b, s, h, _ = t.shape
    return (t.stride(0) if b > 1 else 0, t.stride(1) if s > 1 else 0, t.stride(2) if h > 1 else 0)


def positions(position_ids, seq):
    """(pointer, batch stride) of int64 positions for the kernels; (0, 0) without."""
    if position_ids is None:
        return None, 0, 0
    pos = position_ids
    if pos.dtype != torch.int64 or not pos.is_contiguous():
        pos = pos.to(torch.int64).contiguous()
    return pos, pos.data_ptr(), (seq if pos.dim() == 2 and pos.shape[0] > 1 else 0)


def table_flags(pos, half_table) -> int:
    """The kernels' flags: 1 = positions given, 2 = half tables (one value per pair)."""
    return (1 if pos is not None else 0) | (2 if half_table else 0)


def _launch(lib, dev, lay: Layout, cos, sin, position_ids, interleaved, backward, outs=None):
    """Rotate lay.q and lay.k into new contiguous tensors, or into `outs` (in place: q, k)."""
    q, k = lay.q, lay.k
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if outs is None:
        q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
        copy_end = q.shape[3]              # the pass-through columns are copied
    else:
        q_out, k_out = outs
        copy_end = lay.rotary_dim          # in place they are already there
    batch, seq, hq, _ = q.shape
    hk = k.shape[2]
    if batch * seq == 0 or hq + hk == 0:
        return q_out, k_out
    cos, sin, stride_cb, stride_cs, rows = _table_strides(cos, sin)
    pos, pos_ptr, stride_pb = positions(position_ids, seq)
    fn = lib.rope_interleaved if interleaved else lib.rope
    rc = fn(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[q.dtype], q.data_ptr(), k.data_ptr(), cos.data_ptr(),
            sin.data_ptr(), pos_ptr, q_out.data_ptr(), k_out.data_ptr(), *_head_strides(q), *_head_strides(k),
            *_head_strides(q_out), *_head_strides(k_out), stride_cb, stride_cs, stride_pb, batch * seq, seq, hq, hk,
            lay.rotary_dim // 2, copy_end, rows, table_flags(pos, lay.half_table) | (4 if backward else 0))
    if rc:
        raise lib.error(rc, OP + (" backward" if backward else ""))
    return q_out, k_out


def _run(q, k, cos, sin, position_ids, interleaved, rotary_dim, backward):
    lay = _check(OP, q, k, cos, sin, position_ids, rotary_dim)
    lib = _lib.device_library(q.get_device()) if q.is_cuda else None
    if lib is None:
        fn = reference.apply_rope_backward if backward else reference.apply_rope
        return fn(q, k, cos, sin, position_ids, interleaved, rotary_dim)
    q_out, k_out = _launch(lib, q.get_device(), lay, cos, sin, position_ids, interleaved, backward)
    return q_out.view(q.shape), k_out.view(k.shape)


def _forward(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             position_ids: Optional[torch.Tensor], interleaved: bool,
             rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(q, k, cos, sin, position_ids, interleaved, rotary_dim, False)


def _backward(dq: torch.Tensor, dk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              position_ids: Optional[torch.Tensor], interleaved: bool,
              rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _run(dq, dk, cos, sin, position_ids, interleaved, rotary_dim, True)


def _fake(q, k, cos, sin, position_ids, interleaved, rotary_dim):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _save(ctx, inputs, output):
    q, k, cos, sin, position_ids, interleaved, rotary_dim = inputs
    ctx.save_for_backward(cos, sin, position_ids)
    ctx.interleaved, ctx.rotary_dim = interleaved, rotary_dim
    ctx.shapes = (q.shape, k.shape, q.dtype, q.device)


def _grad(ctx, backward, dq, dk):
    cos, sin, position_ids = ctx.saved_tensors
    q_shape, k_shape, dtype, device = ctx.shapes
    dq = torch.zeros(q_shape, dtype=dtype, device=device) if dq is None else dq
    dk = torch.zeros(k_shape, dtype=dtype, device=device) if dk is None else dk
    dq, dk = backward(dq, dk, cos, sin, position_ids, ctx.interleaved, ctx.rotary_dim)
    return dq, dk, None, None, None, None, None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _fake, _save, _grad)


@torch.library.custom_op("fusedaot::apply_rope_", mutates_args=("q", "k"))
def _inplace_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                position_ids: Optional[torch.Tensor], interleaved: bool, rotary_dim: int) -> None:
    _inplace(q, k, cos, sin, position_ids, interleaved, rotary_dim)


@_inplace_op.register_fake
def _inplace_fake(q, k, cos, sin, position_ids, interleaved, rotary_dim):
    return None


def _inplace(q, k, cos, sin, position_ids, interleaved, rotary_dim):
    lay = _check(OP + "_", q, k, cos, sin, position_ids, rotary_dim)
    lib = _lib.device_library(q.get_device()) if q.is_cuda else None
    if lib is None:
        q_out, k_out = reference.apply_rope(q, k, cos, sin, position_ids, interleaved, rotary_dim)
        q.copy_(q_out)
        k.copy_(k_out)
        return
    for name, t in (("q", q), ("k", k)):
        if t.stride(-1) != 1:
            raise ValueError(f"{OP}_: {name}'s last dimension must be contiguous (stride 1) to be rotated in "
                             f"place, got stride {t.stride(-1)}; use apply_rope")
    _launch(lib, q.get_device(), lay, cos, sin, position_ids, interleaved, False, outs=(lay.q, lay.k))


def _fast(q, k, cos, sin, position_ids):
    """The direct path's test: CUDA tensors of one supported dtype, nothing to record or trace."""
    return (type(q) in _TENSORS and type(k) in _TENSORS and q.is_cuda and q.dtype in FLOAT_DTYPES
            and k.dtype == q.dtype and type(cos) in _TENSORS and type(sin) in _TENSORS
            and not ((q.requires_grad or k.requires_grad) and torch.is_grad_enabled()) and not is_compiling())


def _no_table_grad(op, cos, sin):
    if (cos.requires_grad or sin.requires_grad) and torch.is_grad_enabled():
        raise ValueError(f"{op}: cos and sin get no gradient; pass them detached (torch.no_grad() or .detach())")


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
               position_ids: Optional[torch.Tensor] = None, interleaved: bool = False,
               rotary_dim: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of q and k; returns new contiguous (q_out, k_out) of their shapes.

    q: (B, S, Hq, D) or (T, Hq, D) fp16|bf16|fp32; k: the same with Hk heads; cos, sin:
    (P, C) or (B or 1, P, C) of q's dtype; position_ids: (B, S) or (S,) int64|int32 rows of the
    tables (default: row s); interleaved: GPT-J pairs (2i, 2i+1) instead of rotate_half;
    rotary_dim: the rotated leading values of each head (default C; C may be rotary_dim or
    rotary_dim/2).  A position outside the table raises on CPU; on CUDA (no host sync) it
    makes that token's rotated values NaN.
    """
    if _fast(q, k, cos, sin, position_ids) and not (cos.requires_grad or sin.requires_grad):
        lib = _lib.device_library(q.get_device())
        if lib is not None:
            lay = _check(OP, q, k, cos, sin, position_ids, rotary_dim)
            q_out, k_out = _launch(lib, q.get_device(), lay, cos, sin, position_ids, interleaved, False)
            return q_out.view(q.shape), k_out.view(k.shape)
    lay = _check(OP, q, k, cos, sin, position_ids, rotary_dim)
    _no_table_grad(OP, cos, sin)
    interleaved = bool(interleaved)
    if is_compiling():
        return _op(q, k, cos, sin, position_ids, interleaved, lay.rotary_dim)
    if (q.requires_grad or k.requires_grad) and torch.is_grad_enabled():
        return _EagerAutograd.apply(q, k, cos, sin, position_ids, interleaved, lay.rotary_dim)
    return _forward(q, k, cos, sin, position_ids, interleaved, lay.rotary_dim)


def apply_rope_(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                position_ids: Optional[torch.Tensor] = None, interleaved: bool = False,
                rotary_dim: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """apply_rope in place, for inference: q and k (any strides, last dimension contiguous) are
    overwritten and returned.  No autograd."""
    lay = _check(OP + "_", q, k, cos, sin, position_ids, rotary_dim)
    if (q.requires_grad or k.requires_grad or cos.requires_grad or sin.requires_grad) and torch.is_grad_enabled():
        raise ValueError(f"{OP}_: rotating in place records no gradient, and q, k, cos or sin requires grad; "
                         "use apply_rope for training")
    if is_compiling():
        torch.ops.fusedaot.apply_rope_(q, k, cos, sin, position_ids, bool(interleaved), lay.rotary_dim)
    else:
        _inplace(q, k, cos, sin, position_ids, bool(interleaved), lay.rotary_dim)
    return q, k


__all__ = ["apply_rope", "apply_rope_"]
