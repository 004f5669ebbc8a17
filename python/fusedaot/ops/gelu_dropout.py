"""gelu_dropout: y = dropout(gelu(x), p)  (CUDA C++ kernel, kernels/cuda/gelu_dropout.cu).

x: any shape, fp16|bf16|fp32|fp64 (strided x is copied once); gelu is the erf form.  Each
element is kept with probability 1 - p and scaled by 1 / (1 - p).  The mask is never stored: a
counter-based RNG (Philox4x32-10) gives element e its bit from (seed, counter, e), and the
backward regenerates the same bits.  fusedaot.reference.dropout_keep computes the same mask.

Where (seed, counter) come from, and what advances torch's generator:
- eager CUDA call: seed = the generator's seed, counter = its offset / 4, and the offset is
  advanced by 4, as torch's own CUDA RNG ops advance it; torch.manual_seed reproduces a run,
  consecutive calls differ;
- CUDA graph capture, torch.compile and CPU tensors: one torch.randint draws the pair into a
  2-element int64 tensor from the same generator, which the kernel reads from device memory;
  a captured graph draws a fresh pair on every replay (torch's RNG is graph-safe), so each
  replay has a new mask, and the backward of each replay the forward's mask.
training=False or p = 0 is plain GELU and draws nothing.
"""
from __future__ import annotations

import functools
import struct
from typing import Optional

import torch

from .. import _lib, reference
from ._binary import DTYPES, check_tensor
from ._common import _TENSORS, autograd_needed, is_compiling, native, register

OP = "gelu_dropout"
_I64_MAX = (1 << 63) - 1


def _launch(lib, dev: int, x: torch.Tensor, p: float, seed: int, counter: int, rng, dy=None) -> torch.Tensor:
    """y (dy None) or dx (dy given) for x of any shape; contiguous, x's shape."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return out
    xc = x if x.is_contiguous() else x.contiguous()
    stream, code = _lib.current_stream(dev), _lib.DTYPE_CODES[x.dtype]
    rng_ptr = rng.data_ptr() if rng is not None else 0
    threshold, scale_bits, dropout = _mask_args(p)
    if dy is None:
        rc = lib.gelu_dropout_fwd(stream, dev, code, xc.data_ptr(), out.data_ptr(), rng_ptr, n, seed, counter,
                                  threshold, scale_bits, dropout)
    else:
        dyc = dy if dy.is_contiguous() else dy.contiguous()
        rc = lib.gelu_dropout_bwd(stream, dev, code, dyc.data_ptr(), xc.data_ptr(), out.data_ptr(), rng_ptr, n,
                                  seed, counter, threshold, scale_bits, dropout)
    if rc:
        raise lib.error(rc, OP if dy is None else OP + " backward")
    return out


@functools.lru_cache(maxsize=64)
def _mask_args(p: float):
    """(threshold, the bits of 1 / (1 - p) as a double, dropout flag) for the kernels."""
    if p == 0.0:
        return 0, 0, 0
    return reference.dropout_threshold(p), struct.unpack("<q", struct.pack("<d", 1.0 / (1.0 - p)))[0], 1


def _forward(x: torch.Tensor, p: float, seed: int, counter: int, rng: Optional[torch.Tensor]) -> torch.Tensor:
    if x.is_meta:
        return _fake(x, p, seed, counter, rng)
    lib, dev = native(x)
    if lib is None:
        return reference.gelu_dropout(x, p, seed, counter, rng)
    return _launch(lib, dev, x, p, seed, counter, _rng_on(rng, x))


def _backward(dy: torch.Tensor, x: torch.Tensor, p: float, seed: int, counter: int,
              rng: Optional[torch.Tensor]) -> torch.Tensor:
    if x.is_meta:
        return _backward_fake(dy, x, p, seed, counter, rng)
    lib, dev = native(x)
    if lib is None:
        return reference.gelu_dropout_backward(dy, x, p, seed, counter, rng)
    return _launch(lib, dev, x, p, seed, counter, _rng_on(rng, x), dy=dy)


def _rng_on(rng, x):
    """The kernel reads rng from device memory: an int64 pair on x's device."""
    if rng is None:
        return None
    if rng.device != x.device or rng.dtype != torch.int64 or not rng.is_contiguous() or rng.numel() != 2:
        rng = rng.to(device=x.device, dtype=torch.int64).contiguous().reshape(2)
    return rng


def _fake(x, p, seed, counter, rng):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _backward_fake(dy, x, p, seed, counter, rng):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _save(ctx, inputs, output):
    x, p, seed, counter, rng = inputs
    ctx.save_for_backward(x, rng)
    ctx.p, ctx.seed, ctx.counter = p, seed, counter


def _grad(ctx, backward, dy):
    x, rng = ctx.saved_tensors
    return backward(dy, x, ctx.p, ctx.seed, ctx.counter, rng), None, None, None, None


_op, _EagerAutograd = register(OP, _forward, _fake, _backward, _backward_fake, _save, _grad)


# --- where the mask's (seed, counter) come from ----------------------------------------------------

def _signed64(v: int) -> int:
    return v - (1 << 64) if v > _I64_MAX else v


def _advance(gen: torch.Generator) -> tuple[int, int]:
    """(seed, counter) from a CUDA generator, advancing its offset by 4: one Philox counter per
    element group, as torch's own kernels consume it."""
    offset = gen.get_offset()
    gen.set_offset(offset + 4)
    return _signed64(gen.initial_seed()), offset // 4


def _draw(x: torch.Tensor, generator) -> torch.Tensor:
    """(seed, counter) drawn into a tensor on x's device: traceable and replayed by CUDA graphs."""
    return torch.randint(0, _I64_MAX, (2,), dtype=torch.int64, device=x.device, generator=generator)


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:  # NaN fails too
        raise ValueError(f"{OP}: p must be a number in [0, 1), got {p!r}")
    return float(p)


def _check_generator(x: torch.Tensor, generator) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{OP}: generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != x.device.type or (x.is_cuda and generator.device.index not in (None, x.get_device())):
        raise ValueError(f"{OP}: generator is on {generator.device} but x is on {x.device}")


def gelu_dropout(x: torch.Tensor, p: float, training: bool = True, generator: Optional[torch.Generator] = None):
    """dropout(gelu(x), p): gelu in its erf form; kept elements scaled by 1 / (1 - p).

    x: any shape, fp16|bf16|fp32|fp64; p in [0, 1); training=False or p = 0: plain GELU.
    generator: the torch.Generator to draw the mask from (default: x's device's default).
    Returns a contiguous tensor of x's shape and dtype.  Arithmetic is fp32 (fp64 for fp64).
    """
    if type(p) is not float or not 0.0 <= p < 1.0:
        p = _check_p(p)
    if not training:
        p = 0.0
    if (type(x) in _TENSORS and x.is_cuda and x.dtype in DTYPES and x.dim() and generator is None and not is_compiling()
            and not (x.requires_grad and torch.is_grad_enabled())):
        lib = _lib.device_library(x.get_device())
        if lib is not None:  # the direct path
            dev = x.get_device()
            if p == 0.0:
                return _launch(lib, dev, x, 0.0, 0, 0, None)
            if not torch.cuda.is_current_stream_capturing():
                return _launch(lib, dev, x, p, *_advance(torch.cuda.default_generators[dev]), None)
    check_tensor(OP, "x", x)
    _check_generator(x, generator)
    seed = counter = 0
    rng = None
    if p > 0.0:
        if is_compiling() or not x.is_cuda or torch.cuda.is_current_stream_capturing():
            rng = _draw(x, generator)
        else:
            seed, counter = _advance(generator if generator is not None
                                     else torch.cuda.default_generators[x.get_device()])
    if is_compiling():
        return _op(x, p, seed, counter, rng)
    if autograd_needed(x, None):
        return _EagerAutograd.apply(x, p, seed, counter, rng)
    return _forward(x, p, seed, counter, rng)

