"""SwiGLU / GeGLU forward and backward (Triton).

    out   = act(gate) * up
    dgate = dy * up * act'(gate)
    dup   = dy * act(gate)

act is a constexpr (ACT):
    SILU       silu(g) = g * s(g),                 silu'(g) = s * (1 + g * (1 - s)),  s = sigmoid(g)
    GELU       gelu(g) = g * Phi(g),               gelu'(g) = Phi(g) + g * phi(g)
               Phi(g) = (1 + erf(g / sqrt2)) / 2,  phi(g) = exp(-g^2 / 2) / sqrt(2 pi)
    GELU_TANH  gelu(g) = g * s(2z),                gelu'(g) = s + 2 g s (1 - s) z'
               z = k (g + c g^3),  z' = k (1 + 3 c g^2),  k = sqrt(2 / pi),  c = 0.044715
               (0.5 (1 + tanh(z)) = sigmoid(2z): one exp and one division instead of tanh)
Phi is evaluated as erfc(-g / sqrt2) / 2 with a Chebyshev fit of erfc (_erfc_fit): absolute
error < 2.5e-7 in fp32, relative error small in the negative tail too.

The backward recomputes act(gate) from gate; the forward stores nothing for it.

Layout: gate and up are (M, N) row views, rows `stride_*` elements apart, last dimension
contiguous.  The packed form x = [gate | up] of shape (M, 2N) is the same call with
up = x + N and both strides = x's row stride; the packed backward writes dx the same way
(dup = dgate + N).  `out` is a contiguous (M, N) tensor.  All arithmetic is fp32.

A program owns a [ROWS, BLOCK_N] tile; the 1-D grid runs over (row block, column block)
pairs, column blocks fastest, so neighbouring programs read neighbouring memory and no
grid dimension limits M.  M and N are 64-bit, so are all offsets.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

SILU: tl.constexpr = tl.constexpr(0)
GELU: tl.constexpr = tl.constexpr(1)
GELU_TANH: tl.constexpr = tl.constexpr(2)


# Fast fp32 math: one MUFU instruction each, no range fix-ups.  Memory-bound at H100/H200
# bandwidth leaves ~50-70 instructions per element; libdevice's erff and the IEEE-ish
# exp / division sequences would spend most of them.

@triton.jit
def _exp(x):
    """e^x by ex2.approx.ftz (2 ulp; results below 2^-126 flush to 0, large x gives inf)."""
    return tl.math.exp2(x * 1.4426950408889634)


@triton.jit
def _rcp(x):
    """1 / x by div.approx.ftz (1 ulp); 0 for |x| > 2^126, where 1/x would be subnormal."""
    return libdevice.fast_dividef(1.0, x)


@triton.jit
def _sigmoid(x):
    # 1 / (1 + e^-x): e^-x = inf (x < -88) gives 0, the limit
    return _rcp(1.0 + _exp(-x))


@triton.jit
def _erfc_fit(z):
    """(t, P) with erfc(z) = t * exp(P - z^2) for z >= 0, fractional error < 1.2e-7
    (the Chebyshev fit of Numerical Recipes' erfcc).  Branch-free, ~12 instructions: a
    third of libdevice's erff, and relatively accurate in the tail, where 1 + erf(g) cancels."""
    t = _rcp(1.0 + 0.5 * z)
    p = -0.82215223 + t * 0.17087277
    p = 1.48851587 + t * p
    p = -1.13520398 + t * p
    p = 0.27886807 + t * p
    p = -0.18628806 + t * p
    p = 0.09678418 + t * p
    p = 0.37409196 + t * p
    p = 1.00002368 + t * p
    p = -1.26551223 + t * p
    return t, p


@triton.jit
def _act(g, ACT: tl.constexpr):
    """act(g) in fp32."""
    if ACT == SILU:
        return g * _sigmoid(g)
    elif ACT == GELU:
        # Phi(g) = erfc(-g / sqrt2) / 2: e = Phi(-|g|), Phi(g) = 1 - e for g > 0
        z = tl.abs(g) * 0.7071067811865476
        t, p = _erfc_fit(z)
        e = 0.5 * t * _exp(p - z * z)
        return g * tl.where(g > 0, 1.0 - e, e)
    else:
        # 2z = 2k (g + c g^3) = 2k g (1 + c g^2)
        return g * _sigmoid(1.5957691216057308 * g * (1.0 + 0.044715 * g * g))


@triton.jit
def _act_and_grad(g, ACT: tl.constexpr):
    """(act(g), act'(g)) in fp32, sharing their exp / erfc."""
    if ACT == SILU:
        s = _sigmoid(g)
        return g * s, s * (1.0 + g * (1.0 - s))
    elif ACT == GELU:
        z = tl.abs(g) * 0.7071067811865476
        t, p = _erfc_fit(z)
        ez = _exp(-z * z)                      # exp(-g^2 / 2)
        e = 0.5 * t * ez * _exp(p)
        cdf = tl.where(g > 0, 1.0 - e, e)
        return g * cdf, cdf + g * 0.3989422804014327 * ez
    else:
        g2 = g * g
        s = _sigmoid(1.5957691216057308 * g * (1.0 + 0.044715 * g2))
        # d(2z)/dg = 2k (1 + 3c g^2)
        return g * s, s + 1.5957691216057308 * g * s * (1.0 - s) * (1.0 + 0.134145 * g2)


@triton.jit
def _tile(M, N, BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    """This program's rows (int64, [ROWS, 1]), columns (int64, [1, BLOCK_N]) and mask."""
    pid = tl.program_id(0).to(tl.int64)
    col_blocks = tl.cdiv(N, BLOCK_N)
    row_block = pid // col_blocks
    rows = row_block * ROWS + tl.arange(0, ROWS)
    cols = (pid - row_block * col_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    return rows[:, None], cols[None, :], mask


@triton.jit
def _glu_fwd(
    gate,          # (M, N) act input, rows stride_gate elements apart
    up,            # (M, N) multiplier, rows stride_up elements apart
    out,           # (M, N) output, contiguous
    stride_gate,   # row strides, in elements
    stride_up,
    M,             # rows
    N,             # row width
    BLOCK_N: tl.constexpr,   # columns per program
    ROWS: tl.constexpr,      # rows per program
    ACT: tl.constexpr,       # SILU | GELU | GELU_TANH
):
    rows, cols, mask = _tile(M, N, BLOCK_N, ROWS)
    # no eviction hint: `evict_first` on these loads cost 2.5-3% at 22M-470M elements on an
    # H100 (docs/benchmarks.md, "swiglu without an eviction hint")
    g = tl.load(gate + rows * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up + rows * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out + rows * N + cols, (_act(g, ACT) * u).to(out.dtype.element_ty), mask=mask)


@triton.jit
def _glu_bwd(
    dy,            # (M, N) gradient of out, rows stride_dy apart
    gate,          # (M, N) forward inputs, rows stride_gate / stride_up apart
    up,
    dgate,         # (M, N) outputs, rows stride_dx apart (packed: dup = dgate + N)
    dup,
    stride_dy,     # row strides, in elements
    stride_gate,
    stride_up,
    stride_dx,
    M,             # rows
    N,             # row width
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,
    ACT: tl.constexpr,
):
    rows, cols, mask = _tile(M, N, BLOCK_N, ROWS)
    d = tl.load(dy + rows * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gate + rows * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up + rows * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    # recompute act(g) and act'(g); dgate = dy * up * act'(g), dup = dy * act(g)
    a, da = _act_and_grad(g, ACT)
    tl.store(dgate + rows * stride_dx + cols, (d * u * da).to(dgate.dtype.element_ty), mask=mask)
    tl.store(dup + rows * stride_dx + cols, (d * a).to(dup.dtype.element_ty), mask=mask)
