"""reduce_sum_squared and reduce_mean_abs: sum(x^2) and mean(|x|) over one dimension  (CUDA C++
kernels, kernels/cuda/reduce.cu, compiled by NVRTC).

x: any shape with at least one dimension, fp16|bf16|fp32|fp64; dim: any dimension (negative
counts from the end); keepdim as in torch.sum.  x is viewed as (outer, reduced, inner) without
a copy when its layout allows (a contiguous x, or rows with a stride), else copied once.
Accumulation is fp32 (fp64 for fp64) in a fixed order: results are deterministic.  The output
has x's dtype.  An empty reduced dimension gives 0 (sum) or NaN (mean), as torch does.
Backward: dx = 2 x dy, and dx = sign(x) dy / n.
"""
from __future__ import annotations

import math

import torch

from .. import _lib, reference
from ._binary import DTYPES, check_tensor
from ._common import acc_dtype, autograd_needed, direct, is_compiling, native, register

KINDS = {"reduce_sum_squared": 0, "reduce_mean_abs": 1}
_REFERENCE = {0: (reference.reduce_sum_squared, reference.reduce_sum_squared_backward),
              1: (reference.reduce_mean_abs, reference.reduce_mean_abs_backward)}
_UNROLL = 4         # RED_UNROLL: loads in flight per thread in reduce_rows
_MAX_SERIAL = 64    # vectors a running sum of reduce_rows may take before a row is split
_COLS_THREADS = 128     # RED_COLS_THREADS: reduce_cols' block
_COLS_UNROLL = 8        # RED_COLS_UNROLL: rows in flight per thread in reduce_cols
_COLS_ONE_PASS = 256    # rows a reduce_cols thread may add in a launch without a split
_COLS_SERIAL = 1024     # rows a reduce_cols running sum may take at most


def _pow2_ceil(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _canonical(x: torch.Tensor, d: int):
    """(x as (M, R, N) = (outer, reduced, inner) with a unit stride where the kernel reads
    contiguously, M, R, N): a view when x's layout allows, else a contiguous copy."""
    shape = x.shape
    m, r, n = math.prod(shape[:d]), shape[d], math.prod(shape[d + 1:])
    try:
        x3 = x.view(m, r, n)
    except RuntimeError:  # dimensions that do not merge into one stride
        x3 = x.reshape(m, r, n)
    if (n == 1 and r > 1 and x3.stride(1) != 1) or (n > 1 and x3.stride(2) != 1):
        x3 = x3.contiguous()
    return x3, m, r, n


def _out_shape(x: torch.Tensor, d: int, keepdim: bool):
    shape = list(x.shape)
    if keepdim:
        shape[d] = 1
    else:
        del shape[d]
    return shape


def _cols_launch(m: int, r: int, n: int, vec: int, sms: int) -> tuple[int, int]:
    """reduce_cols' shape for x as (m, r, n), n > 1: (L, S) = (16-byte lanes of a block across a
    row, chunks of the reduced dimension).  A block is L lanes by 128 / L rows.

    Measured on an H100 over tiles of 2-16 lanes and 1-33 chunks (bf16, fp16, fp32; 512-65536
    rows of 1024-16384; docs/benchmarks.md, "Reductions over a leading dimension: narrow
    tiles"), the best shapes had about two blocks an SM: without a split (S = 1: no partial
    sums, no second launch) the widest tile that leaves that many blocks, where a thread adds at
    most _COLS_ONE_PASS rows (or half as many blocks where it adds at most 64); otherwise the
    widest tile (16 lanes, 256 bytes of each row) and chunks for two blocks an SM, at least a
    trip of _COLS_UNROLL rows and at most _COLS_SERIAL rows a thread."""
    pieces = _cdiv(n, vec)  # 16-byte pieces of a row
    widest, target = min(16, _pow2_ceil(pieces)), 2 * sms
    lanes = widest
    while lanes > 2 and 8 * m * _cdiv(pieces, lanes) < 7 * target:
        lanes //= 2
    tiles, rows = m * _cdiv(pieces, lanes), _cdiv(r, _COLS_THREADS // lanes)
    if rows <= _COLS_ONE_PASS and (8 * tiles >= 7 * target or (2 * tiles >= sms and rows <= 64)):
        return lanes, 1
    tiles, per_trip = m * _cdiv(pieces, widest), _COLS_THREADS // widest
    return widest, max(_cdiv(r, per_trip * _COLS_SERIAL),
                       min(_cdiv(target, tiles), _cdiv(r, per_trip * _COLS_UNROLL)))


def _launch(lib, dev: int, x: torch.Tensor, dim: int, keepdim: bool, kind: int) -> torch.Tensor:
    d = dim % x.dim()
    out = torch.empty(_out_shape(x, d, keepdim), dtype=x.dtype, device=x.device)
    x3, m, r, n = _canonical(x, d)
    if out.numel() == 0:
        return out
    if r == 0:
        return out.fill_(0.0 if kind == 0 else math.nan)
    stream, code = _lib.current_stream(dev), _lib.DTYPE_CODES[x.dtype]
    vec, sms = 16 // x.element_size(), _lib.sm_count(dev)
    stride_o = x3.stride(0) if m > 1 else 0
    if n == 1:
        # rows: L lanes a row; long rows are split in S chunks to fill the GPU (about 8 warps
        # an SM) or to bound a lane's running sum; chunks start at multiples of 16 bytes
        lanes = min(32, _pow2_ceil(_cdiv(r, vec)))
        s = 1
        if lanes == 32:
            trip = 32 * vec * _UNROLL  # elements a warp loads per trip, one vector a running sum
            s = max(_cdiv(r, trip * _MAX_SERIAL), min(_cdiv(sms * 8, m), _cdiv(r, trip)))
        chunk = _cdiv(_cdiv(r, s), vec) * vec
        s = _cdiv(r, chunk)
        partial = torch.empty((s, m), dtype=acc_dtype(x.dtype), device=x.device) if s > 1 else None
        rc = lib.reduce_rows(stream, dev, code, x3.data_ptr(), out.data_ptr(),
                             partial.data_ptr() if partial is not None else 0, stride_o, m, r, s, chunk, lanes, kind)
    else:
        lanes, s = _cols_launch(m, r, n, vec, sms)
        chunk = _cdiv(r, min(s, 65535))
        s = _cdiv(r, chunk)
        partial = torch.empty((s, m * n), dtype=acc_dtype(x.dtype), device=x.device) if s > 1 else None
        rc = lib.reduce_cols(stream, dev, code, x3.data_ptr(), out.data_ptr(),
                             partial.data_ptr() if partial is not None else 0, stride_o,
                             x3.stride(1) if r > 1 else 0, m, r, n, s, chunk, lanes, kind)
    if rc == 0 and partial is not None:
        rc = lib.reduce_finish(stream, dev, code, partial.data_ptr(), out.data_ptr(), m * n, s, r, kind)
    if rc:
        raise lib.error(rc, _NAMES[kind])
    return out


def _launch_bwd(lib, dev: int, dy: torch.Tensor, x: torch.Tensor, dim: int, kind: int) -> torch.Tensor:
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if x.numel() == 0:
        return dx
    x3, m, r, n = _canonical(x, dim % x.dim())
    g = dy.reshape(m, n).contiguous()
    stride_o = x3.stride(0) if m > 1 else 0
    if n == 1:  # dx as (M, 1, R): one dy a row
        dims, stride_r, stride_go, gcol = (m, 1, r), 0, 1, 0
    else:       # dx as (M, R, N): dy follows the inner dimension
        dims, stride_r, stride_go, gcol = (m, r, n), (x3.stride(1) if r > 1 else 0), n, 1
    rc = lib.reduce_bwd(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[x.dtype], g.data_ptr(), x3.data_ptr(),
                        dx.data_ptr(), stride_o, stride_r, stride_go, gcol, *dims, r, kind)
    if rc:
        raise lib.error(rc, _NAMES[kind] + " backward")
    return dx


_NAMES = {kind: name for name, kind in KINDS.items()}


def _check(op: str, x, dim, keepdim) -> None:
    check_tensor(op, "x", x)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise IndexError(f"{op}: dim {dim} is out of range for x with {x.dim()} dimension"
                         f"{'s' if x.dim() > 1 else ''} (expected {-x.dim()} to {x.dim() - 1})")
    if not isinstance(keepdim, bool):
        raise TypeError(f"{op}: keepdim must be True or False, got {keepdim!r}")


def _make(name: str):
    """The torch.library ops, the eager autograd.Function and the public function of one kind."""
    kind = KINDS[name]
    ref_fwd, ref_bwd = _REFERENCE[kind]

    def forward(x: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor:
        lib, dev = native(x)
        if lib is None:
            return ref_fwd(x, dim, keepdim)
        return _launch(lib, dev, x, dim, keepdim, kind)

    def backward(dy: torch.Tensor, x: torch.Tensor, dim: int, keepdim: bool) -> torch.Tensor:
        lib, dev = native(x)
        if lib is None:
            return ref_bwd(dy, x, dim, keepdim)
        return _launch_bwd(lib, dev, dy, x, dim, kind)

    def fake(x, dim, keepdim):
        return x.new_empty(_out_shape(x, dim % x.dim(), keepdim))

    def backward_fake(dy, x, dim, keepdim):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device)

    def save(ctx, inputs, output):
        x, ctx.dim, ctx.keepdim = inputs
        ctx.save_for_backward(x)

    def grad(ctx, bwd, dy):
        (x,) = ctx.saved_tensors
        return bwd(dy, x, ctx.dim, ctx.keepdim), None, None

    op, eager = register(name, forward, fake, backward, backward_fake, save, grad)

    def public(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
        fast = direct(x, None, DTYPES)
        if fast is not None and type(dim) is int and -x.dim() <= dim < x.dim() and type(keepdim) is bool:
            return _launch(fast[0], fast[1], x, dim, keepdim, kind)
        _check(name, x, dim, keepdim)
        if is_compiling():
            return op(x, dim, keepdim)
        if autograd_needed(x, None):
            return eager.apply(x, dim, keepdim)
        return forward(x, dim, keepdim)

    public.__name__ = public.__qualname__ = name
    return public


reduce_sum_squared = _make("reduce_sum_squared")
reduce_sum_squared.__doc__ = """sum(x^2) over dimension `dim`, accumulated in fp32 (fp64 for fp64).

    x: any shape, fp16|bf16|fp32|fp64; dim: int (negative counts from the end); keepdim: bool.
    Returns x's dtype, the shape of torch.sum(x, dim, keepdim).  Gradient: 2 x dy."""

reduce_mean_abs = _make("reduce_mean_abs")
reduce_mean_abs.__doc__ = """mean(|x|) over dimension `dim`, accumulated in fp32 (fp64 for fp64).

    x: any shape, fp16|bf16|fp32|fp64; dim: int (negative counts from the end); keepdim: bool.
    Returns x's dtype, the shape of torch.mean(x, dim, keepdim).  Gradient: sign(x) dy / n."""
