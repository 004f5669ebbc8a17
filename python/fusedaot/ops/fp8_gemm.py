"""fp8_gemm: out = (a @ b^T) * a_scale * b_scale (+ bias) on FP8 tensor cores, like F.linear
(Triton kernel kernels/triton/fp8_gemm.py; the sm89 and sm90 libraries only).

a: (..., K), b: (N, K), each float8_e4m3fn with its fp32 scale (one per tensor, or one per
row of a / per row of b, i.e. per column of the output), or fp16|bf16|fp32, which is
quantized first with a dynamic scale per row (fusedaot.quantize_fp8(..., "row")).  The
products are summed in fp32 (on sm90 the tensor cores' partial sums are added into the
fp32 accumulator every 128 elements of K, unless use_fast_accum=True: then the tensor
cores accumulate on their own, as torch._scaled_mm's use_fast_accum); scales and bias are
applied once in the epilogue and the output is rounded once.  Forward only.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _lib, reference
from ._common import _TENSORS, _names, is_compiling, native
from .fp8 import FP8, forward_only, quantize_fp8, require_library_op, scale_layout, wants_grad

OP = "fp8_gemm"
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
QUANTIZABLE = (torch.float16, torch.bfloat16, torch.float32)   # quantized per row on the fly
_DEVICE_TYPES = ("cuda", "cpu", "meta")


def _forward(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor, b_scale: torch.Tensor,
             out_dtype: torch.dtype, bias: Optional[torch.Tensor], use_fast_accum: bool = False) -> torch.Tensor:
    lib, dev = native(a)
    if lib is None:   # the fp32 emulation has no tensor-core accumulation to choose: no flag
        return reference.fp8_gemm(a, b, a_scale, b_scale, out_dtype, bias)
    require_library_op(OP, lib, dev)
    return _launch(lib, dev, a, b, a_scale, b_scale, out_dtype, bias, use_fast_accum)


def _launch(lib, dev, a, b, a_scale, b_scale, out_dtype, bias, use_fast_accum):
    """a (M, K), b (N, K) float8_e4m3fn; a_scale (1,) or (M,), b_scale (1,) or (N,) fp32;
    use_fast_accum selects the sm90 variants without promotion (the sm89 library ignores it)."""
    (m, k), n = a.shape, b.shape[0]
    c = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return c
    if a.stride(1) != 1 and k > 1:
        a = a.contiguous()
    if b.stride(1) != 1 and k > 1:
        b = b.contiguous()
    sa, sb = a_scale.reshape(-1).contiguous(), b_scale.reshape(-1).contiguous()
    bias = None if bias is None else bias.to(out_dtype).contiguous()
    scratch = _lib.scratch(OP, lib, dev, a.device)   # (aot/specs/fp8_gemm.py)
    rc = lib.fp8_gemm(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[out_dtype], a.data_ptr(), b.data_ptr(),
                      c.data_ptr(), sa.data_ptr(), sb.data_ptr(), 0 if bias is None else bias.data_ptr(),
                      a.stride(0) if m > 1 else k, b.stride(0) if n > 1 else k, n,
                      0 if sa.numel() == 1 else 1, 0 if sb.numel() == 1 else 1, m, n, k, bias is not None,
                      int(bool(use_fast_accum)), scratch.ptr, scratch.bytes)
    if rc:
        raise lib.error(rc, OP)
    return c


def check_fast_accum(who: str, value) -> None:
    """use_fast_accum must be a bool (fp8_gemm and nn.FP8Linear)."""
    if type(value) is not bool:
        raise TypeError(f"{who}: use_fast_accum must be True or False, got {value!r} ({type(value).__name__})")


def _fake(a, b, a_scale, b_scale, out_dtype, bias, use_fast_accum=False):
    return torch.empty((a.shape[0], b.shape[0]), dtype=out_dtype, device=a.device)


_op = forward_only(OP, _forward, _fake)


def _scale_ok(scale, rows: int, of_b: bool, dev: int) -> bool:
    """The fast path's test of a scale (the full check is scale_layout)."""
    shape = scale.shape
    return (scale.dtype == torch.float32 and scale.is_cuda and scale.get_device() == dev
            and (scale.numel() == 1 or shape == (rows,) or shape == (rows, 1) or (of_b and shape == (1, rows))))


def _check(a, b, a_scale, b_scale, out_dtype, bias) -> None:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != FP8 and t.dtype not in QUANTIZABLE:
            raise TypeError(f"{OP}: {name} must be float8_e4m3fn (with its scale) or "
                            f"{_names(QUANTIZABLE)} (quantized on the fly), got {t.dtype}")
        if t.device.type not in _DEVICE_TYPES:
            raise ValueError(f"{OP}: tensors on {t.device.type!r} are not supported; use CUDA or CPU tensors")
    if a.dim() < 1 or b.dim() != 2:
        raise ValueError(f"{OP}: a must be (..., K) and b (N, K), got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[1]:
        raise ValueError(f"{OP}: a has shape {tuple(a.shape)} and b has shape {tuple(b.shape)}: a's last "
                         f"dimension (K = {a.shape[-1]}) must equal b's second (K = {b.shape[1]})")
    if b.device != a.device:
        raise ValueError(f"{OP}: b is on {b.device} but a is on {a.device}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"{OP}: out_dtype must be {_names(OUT_DTYPES)}, got {out_dtype}")
    for name, t, scale, target in (("a", a, a_scale, "row of a"), ("b", b, b_scale, "row of b")):
        if t.dtype == FP8:
            if scale is None:
                raise ValueError(f"{OP}: {name} is float8_e4m3fn, so {name}_scale is required (fp32, one "
                                 f"element or one per {target})")
            if name == "a":
                scale_layout(OP, scale, t.shape[:-1], "a_scale", target)
            else:  # also (1, N), as torch._scaled_mm takes it
                scale_layout(OP, scale, (t.shape[0],), "b_scale", target, also=((1, t.shape[0]),))
            if scale.device != t.device:
                raise ValueError(f"{OP}: {name}_scale is on {scale.device} but {name} is on {t.device}")
        elif scale is not None:
            raise ValueError(f"{OP}: {name} is {t.dtype} and is quantized here with its own scale; pass "
                             f"{name}_scale only with a float8_e4m3fn {name}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or not bias.is_floating_point() or bias.dtype == FP8:
            raise TypeError(f"{OP}: bias must be a float16, bfloat16 or float32 tensor or None")
        if bias.dim() != 1 or bias.shape[0] != b.shape[0]:
            raise ValueError(f"{OP}: bias has shape {tuple(bias.shape)} but the output has N = {b.shape[0]} "
                             "columns (b's first dimension)")
        if bias.device != a.device:
            raise ValueError(f"{OP}: bias is on {bias.device} but a is on {a.device}")


def fp8_gemm(a: torch.Tensor, b: torch.Tensor, a_scale: Optional[torch.Tensor] = None,
             b_scale: Optional[torch.Tensor] = None, out_dtype: torch.dtype = torch.bfloat16,
             bias: Optional[torch.Tensor] = None, use_fast_accum: bool = False) -> torch.Tensor:
    """(a @ b^T) * a_scale * b_scale (+ bias) in out_dtype, like F.linear(a, b, bias).

    a: (..., K) and b: (N, K), each either float8_e4m3fn with an fp32 scale (one element, or
    one per row: a_scale (..., 1) / (M,), b_scale (N, 1) / (N,) / (1, N)), or fp16|bf16|fp32
    with scale None (quantized per row on the fly).  bias: (N,) or None.  out_dtype: bf16,
    fp16 or fp32.  Returns (..., N), contiguous.  Needs the sm89 or sm90 library on a GPU;
    CPU tensors use an fp32 emulation.  Forward only.

    use_fast_accum (bool, as in torch._scaled_mm): on sm90, let the tensor cores accumulate
    without adding their partial sums into fp32 every 128 elements of K, with a relative
    error of a few 1e-3 against the promoted result at large K (~3e-3 measured).  Faster at
    few rows; with many rows the promoted kernel is nearly as fast (measured on an H100 at
    4096^3, 8192^3 and 16384x8192x7168 with per-tensor scales: 99-1344 us against 102-1420),
    and with per-row scales or a bias such calls take it (the result is then the promoted
    one).  No effect on sm89 (its tensor cores accumulate in fp32) or in the CPU emulation.
    """
    check_fast_accum(OP, use_fast_accum)
    fast = (type(a) in _TENSORS and type(b) in _TENSORS and a.is_cuda and a.dim() == 2 and b.dim() == 2
            and a.dtype == FP8 and b.dtype == FP8 and type(a_scale) in _TENSORS and type(b_scale) in _TENSORS
            and not is_compiling() and not wants_grad(a, b, a_scale, b_scale, bias))
    if not fast:
        _check(a, b, a_scale, b_scale, out_dtype, bias)
        if a.dtype != FP8:
            a, a_scale = quantize_fp8(a, "row")
        if b.dtype != FP8:
            b, b_scale = quantize_fp8(b, "row")
    elif (a.shape[1] != b.shape[1] or out_dtype not in OUT_DTYPES or not b.is_cuda or b.get_device() != a.get_device()
          or not _scale_ok(a_scale, a.shape[0], False, a.get_device())
          or not _scale_ok(b_scale, b.shape[0], True, a.get_device())
          or (bias is not None and (type(bias) not in _TENSORS or bias.shape != (b.shape[0],) or bias.dtype not in OUT_DTYPES
                                   or not bias.is_cuda or bias.get_device() != a.get_device()))):
        _check(a, b, a_scale, b_scale, out_dtype, bias)  # raises the precise error
    lead = a.shape[:-1]
    a2 = a.reshape(lead.numel(), a.shape[-1])
    sa, sb = a_scale.reshape(-1), b_scale.reshape(-1)
    if is_compiling() or wants_grad(a, b, a_scale, b_scale, bias):
        out = _op(a2, b, sa, sb, out_dtype, bias, use_fast_accum)
    else:
        out = _forward(a2, b, sa, sb, out_dtype, bias, use_fast_accum)
    return out.view(*lead, b.shape[0])


__all__ = ["fp8_gemm"]
