"""Fused gated MLP: both projections and the gate in one kernel (Triton).

    y[m, n] = act(sum_k x[m, k] * w_gate[n, k]) * (sum_k x[m, k] * w_up[n, k])
    act: 0 silu g * sigmoid(g) | 1 gelu 0.5 g (1 + erf(g / sqrt 2))
         | 2 gelu_tanh 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))

x: (M, K), w_gate and w_up: (N, K) (nn.Linear weights), rows strided, K contiguous;
fp16 or bf16 with fp32 sums.  Each program loads an x tile once per step of K and
multiplies it with the matching tiles of both weights, so the two (M, N) products live
only in registers: nothing but y reaches memory, rounded once.

_gated_mlp_tma (sm90) is the same product through the Tensor Memory Accelerator: each
tile of x, w_gate and w_up arrives by one TMA copy (descriptors built on the device, in
the global scratch memory Triton asks for: 128 bytes a descriptor a program), and a
persistent grid of one program per SM walks the output tiles.  TMA needs 16-byte aligned
rows, so it serves only aligned calls.  Rows and columns past the edges load as zeros and
are never stored.
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
def _act_mul(acc_g, acc_u, activation):
    """act(g) * u in fp32."""
    if activation == 0:
        h = acc_g / (1.0 + tl.exp(-acc_g))
    elif activation == 1:
        # 0.5 g (1 + erf(g / sqrt 2)) as 0.5 g erfc(-g / sqrt 2): no cancellation for g << 0
        h = 0.5 * acc_g * libdevice.erfc(-acc_g * SQRT1_2)
    else:
        # 0.5 g (1 + tanh(z)) = g * sigmoid(2z): no cancellation for g << 0
        z = SQRT_2_OVER_PI * (acc_g + 0.044715 * acc_g * acc_g * acc_g)
        h = acc_g / (1.0 + tl.exp(-2.0 * z))
    return h * acc_u


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
    # Rows past N read row n % N, and rows past M rows of this program's tile of w_gate: in
    # bounds without masks, never stored (as in _fp8_gemm, which says why).
    rows_x = tl.where(offs_m < M, x + offs_m.to(tl.int64) * stride_xm,
                      wg + ((pid_n * BLOCK_N + offs_m % BLOCK_N) % N).to(tl.int64) * stride_wg)
    x_ptrs = rows_x[:, None] + offs_k[None, :]
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
    out = _act_mul(acc_g, acc_u, activation)
    y_ptrs = y + offs_m.to(tl.int64)[:, None] * stride_ym + offs_n[None, :]
    tl.store(y_ptrs, out.to(y.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _gated_mlp_tma(
    x, wg, wu, y,                                       # as _gated_mlp's, 16-byte aligned
    stride_xm, stride_wg, stride_wu, stride_ym,         # multiples of 16 bytes
    M, N, K,      # problem size: tokens, intermediate size, hidden size
    activation,   # 0 silu, 1 gelu (erf), 2 gelu (tanh)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,    # row tiles per group (L2 reuse of the weights)
):
    xd = tl.make_tensor_descriptor(x, [M, K], [stride_xm, 1], [BLOCK_M, BLOCK_K])
    gd = tl.make_tensor_descriptor(wg, [N, K], [stride_wg, 1], [BLOCK_N, BLOCK_K])
    ud = tl.make_tensor_descriptor(wu, [N, K], [stride_wu, 1], [BLOCK_N, BLOCK_K])
    yd = tl.make_tensor_descriptor(y, [M, N], [stride_ym, 1], [BLOCK_M, BLOCK_N])
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    # Persistent: program p takes tiles p, p + programs, ...  (Flattening the two loops into
    # one pipeline ran at 0.8x on an H100: two accumulators leave it too few registers.)
    for tile in range(tl.program_id(0), tiles, tl.num_programs(0)):
        pid_m, pid_n = _tile_of(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        # main loop: both products share the x tile; TMA fills zeros past M, N and K
        acc_g = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            xv = xd.load([m0, k * BLOCK_K])
            acc_g = tl.dot(xv, gd.load([n0, k * BLOCK_K]).T, acc_g)
            acc_u = tl.dot(xv, ud.load([n0, k * BLOCK_K]).T, acc_u)
        # epilogue: y = act(g) * u in fp32, one rounding; the copy stops at M and N
        yd.store([m0, n0], _act_mul(acc_g, acc_u, activation).to(y.dtype.element_ty))
