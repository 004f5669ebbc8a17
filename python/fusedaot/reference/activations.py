"""Reference activations and elementwise ops: bias_gelu, swiglu/geglu, add_relu, mul_tanh,
gelu_dropout (with the kernels' Philox mask) and the reductions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._common import _compute_dtype, _gelu_grad, _sum_rows


def bias_gelu(x: torch.Tensor, bias: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    dt = _compute_dtype(x.dtype)
    return F.gelu(x.to(dt) + bias.to(dt), approximate=approximate).to(x.dtype).contiguous()




def bias_gelu_backward(dy, x, bias, approximate):
    """dx = dy * gelu'(x + bias),  dbias = sum over rows of dx (before rounding)."""
    dt = _compute_dtype(x.dtype)
    dx = dy.to(dt) * _gelu_grad(x.to(dt) + bias.to(dt), approximate)
    return dx.to(x.dtype).contiguous(), _sum_rows(dx).to(bias.dtype)


def _glu_act(g: torch.Tensor, activation: str) -> torch.Tensor:
    """activation: "silu", or gelu's approximate ("none" | "tanh")."""
    return F.silu(g) if activation == "silu" else F.gelu(g, approximate=activation)


def _glu_act_grad(g: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "silu":  # silu' = s (1 + g (1 - s))
        s = torch.sigmoid(g)
        return s * (1 + g * (1 - s))
    return _gelu_grad(g, activation)


def _halves(x: torch.Tensor):
    n = x.shape[-1] // 2
    return x[..., :n], x[..., n:]


def _glu(gate, up, activation):
    dt = _compute_dtype(gate.dtype)
    return (_glu_act(gate.to(dt), activation) * up.to(dt)).to(gate.dtype).contiguous()


def _glu_backward(dy, gate, up, activation):
    """dgate = dy * up * act'(gate),  dup = dy * act(gate)."""
    dt = _compute_dtype(gate.dtype)
    g, u, d = gate.to(dt), up.to(dt), dy.to(dt)
    dgate = d * u * _glu_act_grad(g, activation)
    dup = d * _glu_act(g, activation)
    return dgate.to(gate.dtype).contiguous(), dup.to(up.dtype).contiguous()


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _glu(gate, up, "silu")


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return _glu(gate, up, approximate)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return _glu(*_halves(x), "silu")


def gelu_and_mul(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return _glu(*_halves(x), approximate)


def swiglu_backward(dy, gate, up):
    return _glu_backward(dy, gate, up, "silu")


def geglu_backward(dy, gate, up, approximate):
    return _glu_backward(dy, gate, up, approximate)


def silu_and_mul_backward(dy, x):
    """dx = [dgate | dup], x's shape."""
    return torch.cat(_glu_backward(dy, *_halves(x), "silu"), dim=-1)


def gelu_and_mul_backward(dy, x, approximate):
    return torch.cat(_glu_backward(dy, *_halves(x), approximate), dim=-1)


def _rows_sum(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t summed to `like`'s shape: over the rows for a broadcast (N,) operand, else t."""
    return t if like.shape == t.shape else t.reshape(-1, t.shape[-1]).sum(0)


def add_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dt = _compute_dtype(a.dtype)
    return torch.relu(a.to(dt) + b.to(dt)).to(a.dtype).contiguous()


def add_relu_backward(dy, y, broadcast: bool):
    """da = dy where y > 0, else 0 (torch's threshold_backward); db = da (returned empty) or,
    for a broadcast b, da summed over the rows."""
    dt = _compute_dtype(y.dtype)
    da = torch.where(y.to(dt) <= 0, 0, dy.to(dt))
    db = da.reshape(-1, da.shape[-1]).sum(0).to(y.dtype) if broadcast else y.new_empty(0)
    return da.to(y.dtype).contiguous(), db


def mul_tanh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dt = _compute_dtype(a.dtype)
    return torch.tanh(a.to(dt) * b.to(dt)).to(a.dtype).contiguous()


def mul_tanh_backward(dy, a, b):
    """da = dy (1 - t^2) b,  db = dy (1 - t^2) a (summed over the rows for a broadcast b)."""
    dt = _compute_dtype(a.dtype)
    af, bf = a.to(dt), b.to(dt)
    t = torch.tanh(af * bf)
    g = dy.to(dt) * (1 - t * t)
    return (g * bf).to(a.dtype).contiguous(), _rows_sum(g * af, b).to(b.dtype).contiguous()


_PHILOX_M = (0xD2511F53, 0xCD9E8D57)


_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


_U32 = 0xFFFFFFFF


def _mulhilo32(a: int, b: torch.Tensor):
    """(high, low) 32-bit halves of a * b for uint32 values held in int64: the product is
    assembled from 16-bit halves so that no intermediate leaves int64's range."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    mid = a_hi * b_lo + a_lo * b_hi                      # < 2^33
    low = a_lo * b_lo + ((mid & 0xFFFF) << 16)           # < 2^33
    high = a_hi * b_hi + (mid >> 16) + (low >> 32)
    return high & _U32, low & _U32


def philox4x32_10(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 (Salmon et al., SC 2011) on uint32 values held in int64 tensors (or ints):
    the four output words for counters (c0, c1, c2, c3) and key (k0, k1)."""
    c = [torch.as_tensor(v, dtype=torch.int64) for v in (c0, c1, c2, c3)]
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_PHILOX_M[0], c[0])
        hi1, lo1 = _mulhilo32(_PHILOX_M[1], c[2])
        c = [hi1 ^ c[1] ^ k0, lo1, hi0 ^ c[3] ^ k1, lo0]
        k0, k1 = (k0 + _PHILOX_W[0]) & _U32, (k1 + _PHILOX_W[1]) & _U32
    return c


def dropout_threshold(p: float) -> int:
    """An element is kept when its 16-bit random number is >= round(p * 2^16) (at most 2^16 - 1:
    every p < 1 keeps a chance)."""
    return min(round(p * 65536.0), 65535)


def dropout_keep(n: int, p: float, seed: int, counter: int, device=None, start: int = 0) -> torch.Tensor:
    """The keep mask (bool) of gelu_dropout's elements start .. start + n - 1: element e is kept
    when half e % 2 (0: the low 16 bits) of word (e % 8) // 2 of Philox4x32-10(counter=(lo(counter),
    hi(counter), lo(e // 8), hi(e // 8)), key=(lo(seed), hi(seed))) is >= dropout_threshold(p).
    seed and counter are 64-bit (any sign)."""
    q = torch.arange(start // 8, (start + n + 7) // 8, dtype=torch.int64, device=device)
    words = torch.stack(philox4x32_10(counter & _U32, (counter >> 32) & _U32, q & _U32, (q >> 32) & _U32,
                                      seed & _U32, (seed >> 32) & _U32), dim=1)
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=2).reshape(-1)
    return halves[start % 8:start % 8 + n] >= dropout_threshold(p)


def _seed_counter(seed: int, counter: int, rng):
    return (int(rng[0]), int(rng[1])) if rng is not None else (seed, counter)


def _gelu_erfc(u: torch.Tensor) -> torch.Tensor:
    """gelu(u) = u Phi(u) = u erfc(-u / sqrt 2) / 2: the erf form without 1 + erf(u / sqrt 2)'s
    cancellation for u < 0 (which leaves 0 below u = -8.3 even in float64)."""
    return 0.5 * u * torch.erfc(-u * (1 / math.sqrt(2.0)))


def _gelu_erfc_grad(u: torch.Tensor) -> torch.Tensor:
    """gelu'(u) = Phi(u) + u phi(u)."""
    return 0.5 * torch.erfc(-u * (1 / math.sqrt(2.0))) + u * torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)


def gelu_dropout(x: torch.Tensor, p: float, seed: int = 0, counter: int = 0, rng=None) -> torch.Tensor:
    """gelu(x) (erf form) times keep / (1 - p); p = 0 is plain GELU.  (seed, counter) pick the
    mask (see dropout_keep), or rng = a tensor holding them."""
    dt = _compute_dtype(x.dtype)
    y = _gelu_erfc(x.to(dt))
    if p > 0:
        keep = dropout_keep(x.numel(), p, *_seed_counter(seed, counter, rng), device=x.device)
        y = y * keep.view(x.shape).to(dt) * (1.0 / (1.0 - p))
    return y.to(x.dtype).contiguous()


def gelu_dropout_backward(dy, x, p: float, seed: int = 0, counter: int = 0, rng=None):
    """dx = dy * gelu'(x) * keep / (1 - p), the same mask as the forward."""
    dt = _compute_dtype(x.dtype)
    dx = dy.to(dt) * _gelu_erfc_grad(x.to(dt))
    if p > 0:
        keep = dropout_keep(x.numel(), p, *_seed_counter(seed, counter, rng), device=x.device)
        dx = dx * keep.view(x.shape).to(dt) * (1.0 / (1.0 - p))
    return dx.to(x.dtype).contiguous()


def reduce_sum_squared(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    return x.to(_compute_dtype(x.dtype)).square().sum(dim, keepdim=keepdim).to(x.dtype)


def reduce_mean_abs(x: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    return x.to(_compute_dtype(x.dtype)).abs().mean(dim, keepdim=keepdim).to(x.dtype)


def _expand_grad(dy, x, dim, keepdim, dt):
    return dy.to(dt) if keepdim else dy.to(dt).unsqueeze(dim % x.dim())


def reduce_sum_squared_backward(dy, x, dim: int = -1, keepdim: bool = False):
    """dx = 2 x dy."""
    dt = _compute_dtype(x.dtype)
    return (2 * x.to(dt) * _expand_grad(dy, x, dim, keepdim, dt)).to(x.dtype).contiguous()


def reduce_mean_abs_backward(dy, x, dim: int = -1, keepdim: bool = False):
    """dx = sign(x) dy / n, n the reduced dimension's size."""
    dt = _compute_dtype(x.dtype)
    g = _expand_grad(dy, x, dim, keepdim, dt) / max(x.shape[dim], 1)
    return (torch.sign(x.to(dt)) * g).to(x.dtype).contiguous()
