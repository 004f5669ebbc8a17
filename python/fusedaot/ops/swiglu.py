"""swiglu / geglu: act(gate) * up  (Triton kernel, kernels/triton/swiglu.py).

Separate inputs:  swiglu(gate, up) = silu(gate) * up;  geglu(gate, up, approximate) = gelu(gate) * up.
    gate, up: (..., F) fp16|bf16|fp32, same shape, dtype and device; rows may be strided.
Packed input (the layout of a merged gate/up projection, as inference servers use it):
    silu_and_mul(x), gelu_and_mul(x, approximate): x (..., 2F) = [gate | up] -> (..., F).
The halves are read in place (pointer + offset, x's row stride): no split, no copy.

The backward recomputes act(gate) from the saved inputs (nothing else is stored):
    dgate = dy * up * act'(gate),  dup = dy * act(gate);  packed: dx = [dgate | dup].
"""
from __future__ import annotations

import torch

from .. import _lib, reference
from ._common import (_DEVICE_TYPES, _TENSORS, FLOAT_DTYPES, _names, autograd_needed, check_input, direct,
                      is_compiling, launch_rows, native, register, row_stride, rows)

# Activation codes: the kernel's ACT constexpr; geglu's C `approximate` is code - 1.
SILU, GELU, GELU_TANH = 0, 1, 2
_APPROXIMATE = {"none": GELU, "tanh": GELU_TANH}
_REF_ACT = {SILU: "silu", GELU: "none", GELU_TANH: "tanh"}   # fusedaot.reference's activation names


# --- argument checks (the checked path; the direct path has already failed) -------------------

def _check_tensor(op: str, t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be {_names(FLOAT_DTYPES)}, got {t.dtype}")
    if t.device.type not in _DEVICE_TYPES:
        raise ValueError(f"{op}: tensors on {t.device.type!r} are not supported; use CUDA or CPU tensors")
    if t.dim() == 0:
        raise ValueError(f"{op}: {name} must have at least one dimension, got a scalar")


def _check_pair(op: str, gate, up) -> None:
    _check_tensor(op, gate, "gate")
    _check_tensor(op, up, "up")
    if up.dtype != gate.dtype:
        raise TypeError(f"{op}: up dtype {up.dtype} does not match gate dtype {gate.dtype}")
    if up.shape != gate.shape:
        raise ValueError(f"{op}: gate has shape {tuple(gate.shape)} but up has shape {tuple(up.shape)}; "
                         "they must be the same (no broadcasting)")
    if up.device != gate.device:
        raise ValueError(f"{op}: up is on {up.device} but gate is on {gate.device}")


def _check_packed(op: str, x) -> None:
    check_input(op, x)
    if x.shape[-1] % 2:
        raise ValueError(f"{op}: x's last dimension must be even ([gate | up], two halves of F), "
                         f"got {x.shape[-1]}")


def _approximate(op: str, approximate) -> int:
    if type(approximate) is str and approximate in _APPROXIMATE:
        return _APPROXIMATE[approximate]
    raise ValueError(f"{op}: approximate must be 'none' or 'tanh', got {approximate!r}")


def _check_grad(op: str, dy, shape, dtype) -> None:
    """The backward ops may be called directly: dy must be out's shape and dtype."""
    if not isinstance(dy, torch.Tensor) or dy.dtype != dtype or dy.shape != shape:
        got = f"{tuple(dy.shape)} {dy.dtype}" if isinstance(dy, torch.Tensor) else type(dy).__name__
        raise ValueError(f"{op} backward: dy must be {tuple(shape)} {dtype} (the output's), got {got}")


def _direct_pair(gate, up):
    """(Library, device) when swiglu/geglu may launch at once (see _common.direct), else None."""
    fast = direct(gate, None)
    if (fast is None or type(up) not in _TENSORS or up.dtype != gate.dtype or up.shape != gate.shape
            or up.get_device() != fast[1] or (up.requires_grad and torch.is_grad_enabled())):
        return None
    return fast


def _direct_packed(x):
    fast = direct(x, None)
    return None if fast is None or x.shape[-1] % 2 else fast


# --- launchers: Python allocates, C launches ---------------------------------------------------

def _call_fwd(lib, dev, act, dtype, gate, up, out, stride_gate, stride_up, m, n) -> None:
    stream = _lib.current_stream(dev)
    code = _lib.DTYPE_CODES[dtype]
    if act == SILU:
        rc = lib.swiglu_fwd(stream, dev, code, gate, up, out, stride_gate, stride_up, m, n)
    else:
        rc = lib.geglu_fwd(stream, dev, code, gate, up, out, stride_gate, stride_up, m, n, act - 1)
    if rc:
        raise lib.error(rc, "swiglu" if act == SILU else "geglu")


def _call_bwd(lib, dev, act, dtype, dy, gate, up, dgate, dup, stride_dy, stride_gate, stride_up, stride_dx,
              m, n) -> None:
    stream = _lib.current_stream(dev)
    code = _lib.DTYPE_CODES[dtype]
    args = (dy, gate, up, dgate, dup, stride_dy, stride_gate, stride_up, stride_dx, m, n)
    rc = lib.swiglu_bwd(stream, dev, code, *args) if act == SILU else lib.geglu_bwd(stream, dev, code, *args, act - 1)
    if rc:
        raise lib.error(rc, ("swiglu" if act == SILU else "geglu") + " backward")


def _launch_pair(lib, dev: int, act: int, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(gate, memory_format=torch.contiguous_format)
    if gate.is_contiguous() and up.is_contiguous():  # the common case, with the least host work
        n = gate.shape[-1]
        m = gate.numel() // n if n else 0
        if m:
            _call_fwd(lib, dev, act, gate.dtype, gate.data_ptr(), up.data_ptr(), out.data_ptr(), n, n, m, n)
        return out
    g2, m, n, stride_gate = launch_rows(gate)
    u2, _, _, stride_up = launch_rows(up)
    if m and n:
        _call_fwd(lib, dev, act, gate.dtype, g2.data_ptr(), u2.data_ptr(), out.data_ptr(), stride_gate, stride_up,
                  m, n)
    return out


def _launch_packed(lib, dev: int, act: int, x: torch.Tensor) -> torch.Tensor:
    x2, m, n2, stride = launch_rows(x)
    n = n2 >> 1
    out = x.new_empty(x.shape[:-1] + (n,))
    if m and n:
        gate = x2.data_ptr()
        _call_fwd(lib, dev, act, x.dtype, gate, gate + n * x.element_size(), out.data_ptr(), stride, stride, m, n)
    return out


# --- the implementations behind the torch.library ops (reference on CPU / old GPUs) ---------

def _forward_pair(act: int, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    lib, dev = native(gate)
    if lib is None:
        return reference._glu(gate, up, _REF_ACT[act])
    return _launch_pair(lib, dev, act, gate, up)


def _forward_packed(act: int, x: torch.Tensor) -> torch.Tensor:
    lib, dev = native(x)
    if lib is None:
        return reference._glu(*reference._halves(x), _REF_ACT[act])
    return _launch_packed(lib, dev, act, x)


def _backward_pair(act: int, dy, gate, up) -> tuple[torch.Tensor, torch.Tensor]:
    _check_grad("swiglu" if act == SILU else "geglu", dy, gate.shape, gate.dtype)
    lib, dev = native(gate)
    if lib is None:
        return reference._glu_backward(dy, gate, up, _REF_ACT[act])
    g2, u2, dy2 = rows(gate), rows(up), rows(dy)
    m, n = g2.shape
    dgate = torch.empty((m, n), dtype=gate.dtype, device=gate.device)
    dup = torch.empty((m, n), dtype=gate.dtype, device=gate.device)
    if m and n:
        _call_bwd(lib, dev, act, gate.dtype, dy2.data_ptr(), g2.data_ptr(), u2.data_ptr(), dgate.data_ptr(),
                  dup.data_ptr(), row_stride(dy2), row_stride(g2), row_stride(u2), n, m, n)
    return dgate.view(gate.shape), dup.view(up.shape)


def _backward_packed(act: int, dy, x) -> torch.Tensor:
    _check_grad("silu_and_mul" if act == SILU else "gelu_and_mul", dy, x.shape[:-1] + (x.shape[-1] // 2,),
                x.dtype)
    lib, dev = native(x)
    if lib is None:
        return torch.cat(reference._glu_backward(dy, *reference._halves(x), _REF_ACT[act]), dim=-1)
    x2, dy2 = rows(x), rows(dy)
    m, n2 = x2.shape
    n = n2 >> 1
    dx = torch.empty((m, n2), dtype=x.dtype, device=x.device)
    if m and n:
        es = x.element_size()
        stride = row_stride(x2)
        _call_bwd(lib, dev, act, x.dtype, dy2.data_ptr(), x2.data_ptr(), x2.data_ptr() + n * es, dx.data_ptr(),
                  dx.data_ptr() + n * es, row_stride(dy2), stride, stride, n2, m, n)
    return dx.view(x.shape)


# --- torch.library ops: forward and backward of each public function --------------------------
# The annotated wrappers give the schemas; the fakes, save and grad are shared.

def _fake_pair(gate, up, *_):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


def _fake_pair_backward(dy, gate, up, *_):
    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            torch.empty_like(up, memory_format=torch.contiguous_format))


def _fake_packed(x, *_):
    return x.new_empty(x.shape[:-1] + (x.shape[-1] // 2,))


def _fake_packed_backward(dy, x, *_):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _save(ctx, inputs, output):
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    ctx.save_for_backward(*tensors)
    ctx.rest = inputs[len(tensors):]   # approximate, for geglu / gelu_and_mul


def _grad(ctx, backward, dy):
    grads = backward(dy, *ctx.saved_tensors, *ctx.rest)
    return (*(grads if isinstance(grads, tuple) else (grads,)), *(None for _ in ctx.rest))


def _swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _forward_pair(SILU, gate, up)


def _swiglu_backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward_pair(SILU, dy, gate, up)


def _geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str) -> torch.Tensor:
    return _forward_pair(_APPROXIMATE[approximate], gate, up)


def _geglu_backward(dy: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                    approximate: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _backward_pair(_APPROXIMATE[approximate], dy, gate, up)


def _silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _forward_packed(SILU, x)


def _silu_and_mul_backward(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _backward_packed(SILU, dy, x)


def _gelu_and_mul(x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _forward_packed(_APPROXIMATE[approximate], x)


def _gelu_and_mul_backward(dy: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
    return _backward_packed(_APPROXIMATE[approximate], dy, x)


_swiglu_op, _SwigluEager = register("swiglu", _swiglu, _fake_pair, _swiglu_backward, _fake_pair_backward,
                                    _save, _grad)
_geglu_op, _GegluEager = register("geglu", _geglu, _fake_pair, _geglu_backward, _fake_pair_backward, _save, _grad)
_silu_and_mul_op, _SiluAndMulEager = register("silu_and_mul", _silu_and_mul, _fake_packed,
                                              _silu_and_mul_backward, _fake_packed_backward, _save, _grad)
_gelu_and_mul_op, _GeluAndMulEager = register("gelu_and_mul", _gelu_and_mul, _fake_packed,
                                              _gelu_and_mul_backward, _fake_packed_backward, _save, _grad)


# --- public functions: the direct path first ---------------------------------------------------

def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, elementwise.

    gate, up: (..., F) fp16|bf16|fp32, same shape, dtype and device (rows may be strided).
    Returns a contiguous tensor of gate's shape and dtype; arithmetic is fp32.
    """
    fast = _direct_pair(gate, up)
    if fast is not None:
        return _launch_pair(fast[0], fast[1], SILU, gate, up)
    _check_pair("swiglu", gate, up)
    if is_compiling():
        return _swiglu_op(gate, up)
    if autograd_needed(gate, up):
        return _SwigluEager.apply(gate, up)
    return _swiglu(gate, up)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(gate, approximate) * up, elementwise; approximate: "none" (erf) | "tanh".

    gate, up: (..., F) fp16|bf16|fp32, same shape, dtype and device (rows may be strided).
    Returns a contiguous tensor of gate's shape and dtype; arithmetic is fp32.
    """
    if approximate == "none" or approximate == "tanh":
        fast = _direct_pair(gate, up)
        if fast is not None:
            return _launch_pair(fast[0], fast[1], _APPROXIMATE[approximate], gate, up)
    _check_pair("geglu", gate, up)
    _approximate("geglu", approximate)
    if is_compiling():
        return _geglu_op(gate, up, approximate)
    if autograd_needed(gate, up):
        return _GegluEager.apply(gate, up, approximate)
    return _geglu(gate, up, approximate)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(x[..., :F]) * x[..., F:] for x (..., 2F) fp16|bf16|fp32 (a merged gate/up projection's
    output).  Returns a contiguous (..., F) tensor of x's dtype; the halves are read in place."""
    fast = _direct_packed(x)
    if fast is not None:
        return _launch_packed(fast[0], fast[1], SILU, x)
    _check_packed("silu_and_mul", x)
    if is_compiling():
        return _silu_and_mul_op(x)
    if autograd_needed(x, None):
        return _SiluAndMulEager.apply(x)
    return _silu_and_mul(x)


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(x[..., :F], approximate) * x[..., F:] for x (..., 2F) fp16|bf16|fp32;
    approximate: "none" (erf) | "tanh".  Returns a contiguous (..., F) tensor of x's dtype."""
    if approximate == "none" or approximate == "tanh":
        fast = _direct_packed(x)
        if fast is not None:
            return _launch_packed(fast[0], fast[1], _APPROXIMATE[approximate], x)
    _check_packed("gelu_and_mul", x)
    _approximate("gelu_and_mul", approximate)
    if is_compiling():
        return _gelu_and_mul_op(x, approximate)
    if autograd_needed(x, None):
        return _GeluAndMulEager.apply(x, approximate)
    return _gelu_and_mul(x, approximate)


__all__ = ["gelu_and_mul", "geglu", "silu_and_mul", "swiglu"]
