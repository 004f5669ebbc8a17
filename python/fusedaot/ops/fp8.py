"""quantize_fp8 / dequantize_fp8: float8_e4m3fn with dynamic scales (Triton kernels,
kernels/triton/fp8.py).

    scale = amax / 448 (fp32; at least 2^-126, and 1 where amax == 0: never 0 or inf)
    x_fp8 = e4m3(clamp(x / scale, -448, 448))     x / scale correctly rounded, then
                                                  rounded to nearest even, saturating
    x     ~ x_fp8 * scale                         (dequantize_fp8)

amax is taken over the whole tensor (scaling="tensor": scale is a 0-d tensor) or over each
row (scaling="row": scale has x.shape[:-1] + (1,), so x_fp8.float() * scale broadcasts).
These ops run on every library: sm89 and sm90 convert with the FP8 hardware instructions,
sm80 and the PTX library (compute_80 has no FP8 instructions) with an exact integer
emulation that produces the same bits.  They are forward-only: a gradient through them
raises an error.
"""
from __future__ import annotations

import torch

from .. import _lib, reference
from ._common import FLOAT_DTYPES, _TENSORS, check_input, is_compiling, launch_rows, native

OP_Q = "quantize_fp8"
OP_DQ = "dequantize_fp8"
FP8 = torch.float8_e4m3fn
SCALINGS = ("tensor", "row")


# --- shared by the FP8 ops ----------------------------------------------------------------

def forward_only(name: str, impl, fake):
    """Register `fusedaot::<name>` (schema from impl's annotations) with a fake, and an
    autograd formula that refuses: these ops have no gradient."""
    op = torch.library.custom_op(f"fusedaot::{name}", impl, mutates_args=())
    op.register_fake(fake)

    def refuse(ctx, *grads):
        raise RuntimeError(f"fusedaot.{name} is forward-only (inference): it has no gradient. "
                           "Call it under torch.no_grad() / torch.inference_mode(), or detach its inputs")

    op.register_autograd(refuse, setup_context=lambda ctx, inputs, output: None)
    return op


def wants_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def check_fp8_dtype(op: str, dtype) -> None:
    if dtype is not FP8:
        raise TypeError(f"{op}: dtype must be torch.float8_e4m3fn (the only FP8 format fusedaot "
                        f"supports), got {dtype}")


FP8_LIBRARIES = ("sm89", "sm90")   # the libraries with FP8 tensor-core kernels (aot/specs/fp8_gemm.py)


def require_library_op(op: str, lib, dev: int) -> None:
    """Raise a clear error where the device's library lacks the FP8 op `op` (sm80, ptx)."""
    if lib.arch in _lib.ops_manifest()["ops"].get(op, {}).get("arches", ()):
        return
    name = torch.cuda.get_device_name(dev)
    major, minor = torch.cuda.get_device_capability(dev)
    why = {"ptx": ": the PTX library is compute_80 PTX, which has no FP8 instructions",
           "sm80": f": compute capability {major}.{minor} has no FP8 tensor cores"}.get(lib.arch, "")
    forced = " (chosen by FUSEDAOT_ARCH)" if _lib._env_choice() else ""
    built = "" if lib.arch not in FP8_LIBRARIES else " (this installation was built without it)"
    raise _lib.FusedAOTError(
        f"fusedaot.{op}: not available on {name} (compute capability {major}.{minor}), which uses fusedaot's "
        f"{lib.arch} library{forced}{built}; FP8 tensor cores need the sm89 or sm90 library, i.e. a GPU of "
        f"compute capability 8.9 (Ada) or 9.0 (Hopper){why}")


# --- quantize_fp8 --------------------------------------------------------------------------

def _scale_shape(x: torch.Tensor, scaling: str):
    return x.shape[:-1] + (1,) if scaling == "row" else ()


def _quantize(x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    lib, dev = native(x)
    if lib is None:
        return reference.quantize_fp8(x, scaling)
    return _launch_quantize(lib, dev, x, scaling)


def _launch_quantize(lib, dev: int, x: torch.Tensor, scaling: str):
    q = torch.empty(x.shape, dtype=FP8, device=x.device)
    scale = torch.empty(_scale_shape(x, scaling), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return q, scale.fill_(1.0)   # amax 0 everywhere: scale 1
    x2, m, n, stride = launch_rows(x)
    stream, code = _lib.current_stream(dev), _lib.DTYPE_CODES[x.dtype]
    if scaling == "row":
        rc = lib.fp8_quantize_row(stream, dev, code, x2.data_ptr(), q.data_ptr(), scale.data_ptr(),
                                  stride, n, m, n)
    else:
        amax = torch.zeros(1, dtype=torch.int32, device=x.device)
        rc = lib.fp8_amax(stream, dev, code, x2.data_ptr(), amax.data_ptr(), stride, m, n)
        if rc == 0:
            rc = lib.fp8_quantize_tensor(stream, dev, code, x2.data_ptr(), q.data_ptr(), scale.data_ptr(),
                                         amax.data_ptr(), stride, n, m, n)
    if rc:
        raise lib.error(rc, OP_Q)
    return q, scale


def _quantize_op(x: torch.Tensor, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize(x, scaling)


def _quantize_fake(x, scaling):
    return (torch.empty(x.shape, dtype=FP8, device=x.device),
            torch.empty(_scale_shape(x, scaling), dtype=torch.float32, device=x.device))


_quantize_custom = forward_only(OP_Q, _quantize_op, _quantize_fake)


def quantize_fp8(x: torch.Tensor, scaling: str = "tensor", dtype: torch.dtype = FP8):
    """(x_fp8, scale): x quantized to float8_e4m3fn with a dynamic scale.

    x: (..., K) fp16|bf16|fp32 (rows may be strided; a strided last dimension is copied).
    scaling: "tensor" (one scale, a 0-d fp32 tensor) or "row" (one per row: shape
    x.shape[:-1] + (1,)).  x_fp8 is contiguous, of x's shape; x ~ x_fp8.float() * scale.
    """
    if (type(x) in _TENSORS and x.is_cuda and x.dtype in FLOAT_DTYPES and x.dim() and dtype is FP8
            and (scaling == "row" or scaling == "tensor") and not wants_grad(x) and not is_compiling()):
        lib = _lib.device_library(x.get_device())
        if lib is not None:
            return _launch_quantize(lib, x.get_device(), x, scaling)
    check_input(OP_Q, x)
    if scaling not in SCALINGS:
        raise ValueError(f"{OP_Q}: scaling must be 'tensor' or 'row', got {scaling!r}")
    check_fp8_dtype(OP_Q, dtype)
    if is_compiling() or wants_grad(x):
        return _quantize_custom(x, scaling)
    return _quantize(x, scaling)


# --- dequantize_fp8 ------------------------------------------------------------------------

def scale_layout(op: str, scale, rows_shape, name: str, target: str, also=()) -> int:
    """0 for one scale per tensor, 1 for one per row; a clear error for anything else.
    rows_shape: the shape of the rows' index (x.shape[:-1]); also: more per-row shapes."""
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(scale).__name__}")
    if scale.dtype != torch.float32:
        raise TypeError(f"{op}: {name} must be float32, got {scale.dtype}")
    if scale.numel() == 1:
        return 0
    rows = tuple(rows_shape)
    m = 1
    for d in rows:
        m *= d
    if tuple(scale.shape) in (rows, rows + (1,), (m,), (m, 1)) + tuple(also):
        return 1
    raise ValueError(f"{op}: {name} has shape {tuple(scale.shape)}, which is neither one scale per tensor "
                     f"(1 element) nor one per {target} ({rows + (1,)} or {(m,)})")


def _dequantize(x: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    lib, dev = native(x)
    if lib is None:
        return reference.dequantize_fp8(x, scale, out_dtype)
    return _launch_dequantize(lib, dev, x, scale, out_dtype)


def _launch_dequantize(lib, dev, x, scale, out_dtype):
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if x.numel() == 0:
        return y
    x2, m, n, stride = launch_rows(x)
    s = scale.reshape(-1).contiguous()
    rc = lib.fp8_dequantize(_lib.current_stream(dev), dev, _lib.DTYPE_CODES[out_dtype], x2.data_ptr(),
                            s.data_ptr(), y.data_ptr(), stride, n, 0 if s.numel() == 1 else 1, m, n)
    if rc:
        raise lib.error(rc, OP_DQ)
    return y


def _dequantize_op(x: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    return _dequantize(x, scale, out_dtype)


def _dequantize_fake(x, scale, out_dtype):
    return torch.empty(x.shape, dtype=out_dtype, device=x.device)


_dequantize_custom = forward_only(OP_DQ, _dequantize_op, _dequantize_fake)


def dequantize_fp8(x_fp8: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16):
    """x_fp8 * scale, computed in fp32 and rounded once into out_dtype (fp16|bf16|fp32).

    x_fp8: (..., K) float8_e4m3fn; scale: fp32, one element (per tensor) or one per row
    (x_fp8.shape[:-1] + (1,), x_fp8.shape[:-1], or (rows,)), as quantize_fp8 returns it.
    """
    if not isinstance(x_fp8, torch.Tensor):
        raise TypeError(f"{OP_DQ}: x_fp8 must be a torch.Tensor, got {type(x_fp8).__name__}")
    if x_fp8.dtype != FP8:
        raise TypeError(f"{OP_DQ}: x_fp8 must be torch.float8_e4m3fn, got {x_fp8.dtype}")
    check_input(OP_DQ, x_fp8, (FP8,))
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"{OP_DQ}: out_dtype must be float16, bfloat16 or float32, got {out_dtype}")
    scale_layout(OP_DQ, scale, x_fp8.shape[:-1], "scale", "row of x_fp8")
    if scale.device != x_fp8.device:
        raise ValueError(f"{OP_DQ}: scale is on {scale.device} but x_fp8 is on {x_fp8.device}")
    if is_compiling() or wants_grad(x_fp8, scale):
        return _dequantize_custom(x_fp8, scale, out_dtype)
    return _dequantize(x_fp8, scale, out_dtype)


__all__ = ["dequantize_fp8", "quantize_fp8"]
