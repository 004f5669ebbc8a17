"""Argument checks and layout helpers shared by every op.

The checks run on every eager call, so each starts with a cheap test of the common case
(CUDA tensors of a supported dtype on one device) and only builds an error message when
that fails.
"""
from __future__ import annotations

import math

import torch

from .. import _lib

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_DEVICE_TYPES = ("cuda", "cpu", "meta")
_CODES = _lib.DTYPE_CODES
_TENSORS = (torch.Tensor, torch.nn.Parameter)  # exact types the direct path accepts
is_compiling = torch.compiler.is_compiling


def _names(dtypes) -> str:
    names = [str(d).replace("torch.", "") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1]


def check_input(op: str, x: torch.Tensor, dtypes=FLOAT_DTYPES) -> None:
    if isinstance(x, torch.Tensor) and x.is_cuda and x.dtype in dtypes and x.dim():
        return
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{op}: x must be {_names(dtypes)}, got {x.dtype}")
    if x.device.type not in _DEVICE_TYPES:
        raise ValueError(f"{op}: tensors on {x.device.type!r} are not supported; use CUDA or CPU tensors")
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension, got a scalar")


def check_vector(op: str, x: torch.Tensor, v: torch.Tensor, name: str) -> None:
    """v must be (N,) with N = x.shape[-1], x's dtype, on x's device (any stride)."""
    if (isinstance(v, torch.Tensor) and v.is_cuda and x.is_cuda and v.dtype == x.dtype and v.dim() == 1
            and v.shape[0] == x.shape[-1] and v.get_device() == x.get_device()):
        return
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 1 or v.shape[0] != x.shape[-1]:
        shape = f"{v.numel()} elements" if v.dim() == 1 else f"shape {tuple(v.shape)}"
        raise ValueError(f"{op}: {name} has {shape} but x's last dimension is {x.shape[-1]}")
    if v.dtype != x.dtype:
        raise TypeError(f"{op}: {name} dtype {v.dtype} does not match x dtype {x.dtype}")
    if v.device != x.device:
        raise ValueError(f"{op}: {name} is on {v.device} but x is on {x.device}")


def check_eps(op: str, eps) -> float:
    """The eps to use.  None means fp32's machine epsilon, as torch.nn.functional.rms_norm
    uses for fp16, bf16 and fp32 inputs (the eps of its fp32 compute type)."""
    if type(eps) is float and 0.0 < eps < math.inf:
        return eps
    if eps is None:
        return torch.finfo(torch.float32).eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"{op}: eps must be a positive finite number, got {eps}")
    return float(eps)


def rows(x: torch.Tensor) -> torch.Tensor:
    """x (..., N) as an (M, N) view with a row stride and a unit column stride.

    Strided rows are kept as they are.  A non-unit last-dimension stride, or leading
    dimensions that cannot be merged into one stride, cost one copy.
    """
    n = x.shape[-1]
    if x.stride(-1) != 1 and n > 1:
        x = x.contiguous()
    if x.dim() == 2:
        return x
    try:
        return x.view(-1, n)
    except RuntimeError:
        return x.reshape(-1, n)


def row_stride(x2d: torch.Tensor) -> int:
    # A single row's stride is arbitrary (even 0): the kernels only multiply it by 0.
    return x2d.stride(0) if x2d.shape[0] > 1 else x2d.shape[1]


def autograd_needed(x: torch.Tensor, v) -> bool:
    return (x.requires_grad or (v is not None and v.requires_grad)) and torch.is_grad_enabled()


def native(x: torch.Tensor):
    """(Library, device index) for a CUDA tensor on a supported GPU, else (None, None)."""
    if not x.is_cuda:
        return None, None
    index = x.get_device()
    return _lib.device_library(index), index


def direct(x, v, dtypes=FLOAT_DTYPES):
    """(Library, device index) when an eager call may launch at once: x a CUDA tensor of a
    dtype in `dtypes`, v None or an (N,) vector of x's dtype on x's device, no autograd to
    record and no torch.compile tracing.  None otherwise: the caller then takes the checked
    path, which raises the precise error or goes through the torch.library op.

    This and launch_rows() are the whole per-call cost of the eager path besides the
    allocation and the launch: each attribute is read once and nothing is called that
    can be avoided."""
    if type(x) not in _TENSORS or not x.is_cuda or x.dtype not in dtypes or not x.dim():
        return None
    index = x.get_device()
    if v is not None and (type(v) not in _TENSORS or v.dtype != x.dtype or v.dim() != 1
                          or v.shape[0] != x.shape[-1] or v.get_device() != index):
        return None
    if (x.requires_grad or (v is not None and v.requires_grad)) and torch.is_grad_enabled():
        return None
    if is_compiling():
        return None
    lib = _lib.device_library(index)
    return None if lib is None else (lib, index)


def launch_rows(x: torch.Tensor):
    """(x as (M, N) rows, M, N, row stride) for a kernel launch; see rows()."""
    strides = x.stride()  # one call: x.stride(i) parses its argument each time
    if len(strides) == 2 and strides[1] == 1:
        m, n = x.shape
        return x, m, n, (strides[0] if m > 1 else n)
    x2 = rows(x)
    m, n = x2.shape
    return x2, m, n, row_stride(x2)


def dtype_code(x: torch.Tensor) -> int:
    return _CODES[x.dtype]


# colsum_loop (kernels/cuda/elementwise.cuh) takes COLSUM_TRIP rows a trip of a block: 32 threads
# down (the 16-byte variants), 4 rows' loads in flight each.
COLSUM_TRIP = 128


def row_groups(m: int, n: int, dev: int) -> int:
    """Row groups of colsum_loop: a group for every COLSUM_TRIP rows, so each thread makes one
    trip (measured fastest on an H100 against 2-64x fewer groups, and against 4x more), at most
    65535 (grid.y), and at most 16K columns' worth an SM, which keeps the (G, N) fp32 partial
    sums under ~8 MB.  One group where a trip covers the rows: the sums need no second launch."""
    return max(1, min(-(-m // COLSUM_TRIP), 65535, _lib.sm_count(dev) * 16384 // max(n, 1)))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type of the column-sum kernels' partial sums: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def column_sums(lib, dev: int, op: str, m: int, n: int, dtype: torch.dtype, launch) -> torch.Tensor:
    """(N,) in `dtype`: the column sums of an (M, N) gradient (a broadcast operand's, a bias's)
    that a colsum_loop kernel adds up while it writes the elementwise outputs.
    launch(out_ptr, partial_ptr, g) runs the kernel over g row groups: with one it writes the
    sums into out itself; with more it writes each group's into a (g, N) fp32 (fp64 for fp64)
    partial, whose rows `reduce_finish` adds in a fixed order and rounds once (deterministic)."""
    g, device = row_groups(m, n, dev), torch.device("cuda", dev)
    out = torch.empty(n, dtype=dtype, device=device)
    if g == 1:
        launch(out.data_ptr(), 0, 1)
        return out
    partial = torch.empty((g, n), dtype=acc_dtype(dtype), device=device)
    launch(0, partial.data_ptr(), g)
    rc = lib.reduce_finish(_lib.current_stream(dev), dev, _CODES[dtype], partial.data_ptr(), out.data_ptr(),
                           n, g, 1, 0)
    if rc:
        raise lib.error(rc, op)
    return out


def register(name: str, forward, fake, backward, backward_fake, save, grad):
    """Register `fusedaot::<name>` and `fusedaot::<name>_backward` as torch.library ops and
    return (the forward op, an autograd.Function for eager training).

    forward(*inputs) / backward(*args): the eager implementations; their annotations give the
    schemas.  fake / backward_fake: the fake implementations (shapes only).
    save(ctx, inputs, output): stores what the gradient needs on ctx.
    grad(ctx, backward, *grad_outputs) -> one gradient (or None) per input, calling `backward`,
    which is the traceable torch.ops backward op under torch.compile and the plain Python
    function in the eager autograd.Function.  The eager Function runs the same formula
    without the dispatcher's per-call cost; torch.compile traces the torch.library op.
    """
    op = torch.library.custom_op(f"fusedaot::{name}", forward, mutates_args=())
    op.register_fake(fake)
    backward_op = torch.library.custom_op(f"fusedaot::{name}_backward", backward, mutates_args=())
    backward_op.register_fake(backward_fake)
    traced = getattr(torch.ops.fusedaot, f"{name}_backward")
    op.register_autograd(lambda ctx, *grads: grad(ctx, traced, *grads), setup_context=save)

    class Eager(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            output = forward(*inputs)
            save(ctx, inputs, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return grad(ctx, backward, *grads)

    Eager.__name__ = Eager.__qualname__ = f"{name}_eager_autograd"
    return op, Eager
