"""Shared plumbing of the binary elementwise ops add_relu and mul_tanh: argument checks, the
(M, N) layout the kernels take, and the launches.

a: (..., N) fp16|bf16|fp32|fp64.  b: a's shape, or (N,) broadcast over a's rows.  The kernels
see a as (M, N) rows with one row stride, and b the same or with row stride 0.  When a and b
are both contiguous and of one shape they are one flat row (M = 1), the fastest form.
"""
from __future__ import annotations

import torch

from .. import _lib
from ._common import _TENSORS, is_compiling, rows

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DEVICE_TYPES = ("cuda", "cpu", "meta")
_CODES = _lib.DTYPE_CODES


def _names(dtypes) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_tensor(op: str, name: str, t) -> None:
    """t: a tensor of a supported dtype and device type, with at least one dimension."""
    if isinstance(t, torch.Tensor) and t.dtype in DTYPES and t.device.type in _DEVICE_TYPES and t.dim():
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in DTYPES:
        raise TypeError(f"{op}: {name} must be {_names(DTYPES)}, got {t.dtype}")
    if t.device.type not in _DEVICE_TYPES:
        raise ValueError(f"{op}: tensors on {t.device.type!r} are not supported; use CUDA or CPU tensors")
    raise ValueError(f"{op}: {name} must have at least one dimension, got a scalar")


def check_pair(op: str, a, b) -> None:
    """a and b as the binary ops take them; raises the error that says what is wrong."""
    check_tensor(op, "a", a)
    if not isinstance(b, torch.Tensor):
        raise TypeError(f"{op}: b must be a torch.Tensor, got {type(b).__name__}")
    if b.shape != a.shape and tuple(b.shape) != (a.shape[-1],):
        raise ValueError(f"{op}: b has shape {tuple(b.shape)} but must be a's shape {tuple(a.shape)} or "
                         f"({a.shape[-1]},), a's last dimension, broadcast over a's rows")
    if b.dtype != a.dtype:
        raise TypeError(f"{op}: b dtype {b.dtype} does not match a dtype {a.dtype}")
    if b.device != a.device:
        raise ValueError(f"{op}: b is on {b.device} but a is on {a.device}")


def direct(a, b):
    """(Library, device index) when an eager call may launch at once (CUDA tensors of one
    supported dtype on one device, b of a's shape or (N,), no autograd to record, no
    torch.compile tracing); None otherwise, and the caller takes the checked path."""
    if (type(a) not in _TENSORS or type(b) not in _TENSORS or not a.is_cuda or a.dtype not in DTYPES
            or b.dtype != a.dtype or not a.dim()):
        return None
    index = a.get_device()
    if b.get_device() != index or (b.shape != a.shape and (b.dim() != 1 or b.shape[0] != a.shape[-1])):
        return None
    if (a.requires_grad or b.requires_grad) and torch.is_grad_enabled():
        return None
    if is_compiling():
        return None
    lib = _lib.device_library(index)
    return None if lib is None else (lib, index)


def is_broadcast(a: torch.Tensor, b: torch.Tensor) -> bool:
    return b.shape != a.shape


def row_stride_or_0(t2: torch.Tensor) -> int:
    # A single row's stride is never used; 0 keeps it from failing the alignment test.
    return t2.stride(0) if t2.shape[0] > 1 else 0


def layout(a: torch.Tensor, *others: torch.Tensor):
    """(M, N, [(tensor, row stride) for a and each other]) for tensors of a's shape: one flat
    row when all are contiguous, else (M, N) rows (a copy where a layout has no row stride)."""
    if a.is_contiguous() and all(t.is_contiguous() for t in others):
        return 1, a.numel(), [(a, 0)] + [(t, 0) for t in others]
    ts = [rows(t) for t in (a,) + others]
    m, n = ts[0].shape
    return m, n, [(t, row_stride_or_0(t)) for t in ts]


def vector_layout(a: torch.Tensor, *others: torch.Tensor):
    """(M, N, [(tensor, row stride)]) for a's rows and a broadcast (N,) vector last in others:
    the vector gets row stride 0 (made contiguous if it is strided)."""
    *full, v = others
    ts = [rows(t) for t in (a,) + tuple(full)]
    m, n = ts[0].shape
    return m, n, [(t, row_stride_or_0(t)) for t in ts] + [(v.contiguous(), 0)]


def dtype_code(t: torch.Tensor) -> int:
    return _CODES[t.dtype]


def launch_forward(lib, fn, op: str, dev: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y = f(a, b) through the C function `fn` (add_relu_fwd, mul_tanh_fwd: the same arguments),
    b of a's shape or broadcast as (N,)."""
    y = torch.empty(a.shape, dtype=a.dtype, device=a.device)
    if a.numel() == 0:
        return y
    m, n, ((a2, sa), (b2, sb)) = vector_layout(a, b) if is_broadcast(a, b) else layout(a, b)
    rc = fn(_lib.current_stream(dev), dev, dtype_code(a), a2.data_ptr(), b2.data_ptr(), y.data_ptr(), sa, sb, m, n)
    if rc:
        raise lib.error(rc, op)
    return y
