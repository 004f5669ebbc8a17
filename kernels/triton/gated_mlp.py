"""Fused gated MLP: both projections and the gate in one kernel (Triton).

    y[m, n] = act(sum_k x[m, k] * w_gate[n, k]) * (sum_k x[m, k] * w_up[n, k])
    act: 0 silu g * sigmoid(g) | 1 gelu 0.5 g (1 + erf(g / sqrt 2))
         | 2 gelu_tanh 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))

x: (M, K), w_gate and w_up: (N, K) (nn.Linear weights), rows strided, K contiguous;
fp16 or bf16 with fp32 sums.  Each program loads an x tile once per step of K and
multiplies it with the matching tiles of both weights, so the two (M, N) products live
only in registers: nothing but y reaches memory, rounded once.
"""
import triton
import triton.language as tl
from triton.language.extra import libdevice

SQRT1_2 = tl.constexpr(0.7071067811865476)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.jit
def _tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid`: GROUP_M row tiles sweep each column tile together,
    so the weight tiles they share are read from L2.  (Each GEMM kernel file carries this
    helper: kernel sources never import each other, so a cached image always matches its
    one source file.)"""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def _gated_mlp(
    x,            # (M, K) input, rows stride_xm apart
    wg,           # (N, K) gate weight, rows stride_wg apart
    wu,           # (N, K) up weight, rows stride_wu apart
    y,            # (M, N) output, rows stride_ym apart
    stride_xm,    # row stride of x, in elements
    stride_wg,    # row stride of w_gate, in elements
    stride_wu,    # row stride of w_up, in elements
    stride_ym,    # row stride of y, in elements
    M, N, K,      # problem size: tokens, intermediate size, hidden size
    activation,   # 0 silu, 1 gelu (erf), 2 gelu (tanh)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,    # row tiles per group (L2 reuse of the weights)
):
    pid_m, pid_n = _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past M (N) read row m % M (n % N): in bounds without row masks, never stored.
    x_ptrs = x + (offs_m % M).to(tl.int64)[:, None] * stride_xm + offs_k[None, :]
    rn = (offs_n % N).to(tl.int64)[None, :]
    g_ptrs = wg + rn * stride_wg + offs_k[:, None]
    u_ptrs = wu + rn * stride_wu + offs_k[:, None]

    # main loop: both products share the x tile; zeros past K
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        xv = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        gv = tl.load(g_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        uv = tl.load(u_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc_g = tl.dot(xv, gv, acc_g)
        acc_u = tl.dot(xv, uv, acc_u)
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K

    # epilogue: y = act(g) * u in fp32, one rounding
    if activation == 0:
        h = acc_g / (1.0 + tl.exp(-acc_g))
    elif activation == 1:
        # 0.5 g (1 + erf(g / sqrt 2)) as 0.5 g erfc(-g / sqrt 2): no cancellation for g << 0
        h = 0.5 * acc_g * libdevice.erfc(-acc_g * SQRT1_2)
    else:
        # 0.5 g (1 + tanh(z)) = g * sigmoid(2z): no cancellation for g << 0
        z = SQRT_2_OVER_PI * (acc_g + 0.044715 * acc_g * acc_g * acc_g)
        h = acc_g / (1.0 + tl.exp(-2.0 * z))
    out = h * acc_u
    y_ptrs = y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, out.to(y.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])
