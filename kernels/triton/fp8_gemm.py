"""FP8 (e4m3fn) GEMM with scales, like F.linear (Triton; sm89 and sm90 only).

    c[m, n] = (sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] (+ bias[n])

a: (M, K) and b: (N, K) e4m3fn, rows `stride_am` / `stride_bn` bytes apart, K contiguous
(K-major operands: what FP8 tensor cores read).  a_scale / b_scale: fp32, one per tensor
(stride 0) or one per row of a / of b (stride 1).  The products are summed in fp32; on
sm90 the wgmma partial sums are added into the fp32 accumulator every ACC_PROMOTE
elements of K (Hopper's FP8 tensor cores accumulate with fewer bits than fp32 within one
chain of wgmmas).  Scales and bias are applied once, in the epilogue, and c is rounded
once into its dtype.
"""
import triton
import triton.language as tl


@triton.jit
def _tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid`: GROUP_M row tiles sweep each column tile together,
    so the b tiles they share are read from L2.  (Each GEMM kernel file carries this
    helper: kernel sources never import each other, so a cached image always matches
    its one source file.)"""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m
    return pid_m, pid_n


@triton.jit
def _fp8_gemm(
    a,            # (M, K) e4m3fn, rows stride_am apart
    b,            # (N, K) e4m3fn, rows stride_bn apart
    c,            # (M, N) output, rows stride_cm apart
    a_scale,      # fp32: a_scale[m * stride_sa]
    b_scale,      # fp32: b_scale[n * stride_sb]
    bias,         # (N,) in c's dtype; read only if has_bias
    stride_am,    # row stride of a, in elements
    stride_bn,    # row stride of b, in elements
    stride_cm,    # row stride of c, in elements
    stride_sa,    # 0: one scale for a, 1: one per row of a
    stride_sb,    # 0: one scale for b, 1: one per row of b (column of c)
    M, N, K,      # problem size
    has_bias,     # nonzero: add bias[n]
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,      # row tiles per group (L2 reuse of b)
    ACC_PROMOTE: tl.constexpr,  # sm90: K elements per wgmma chain before adding into fp32
):
    pid_m, pid_n = _tile_of(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past M (N) read row m % M (n % N): in bounds, so the loads need no row masks;
    # their results are never stored.
    a_ptrs = a + (offs_m % M).to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b + (offs_n % N).to(tl.int64)[None, :] * stride_bn + offs_k[:, None]

    # main loop: acc += a[m, k:k+BK] @ b[n, k:k+BK]^T, zeros past K
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        av = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        bv = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(av, bv, acc, max_num_imprecise_acc=ACC_PROMOTE)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    # epilogue: c = acc * a_scale[m] * b_scale[n] (+ bias[n]), one rounding
    m_ok = offs_m < M
    n_ok = offs_n < N
    sa = tl.load(a_scale + offs_m * stride_sa, mask=m_ok, other=0.0)
    sb = tl.load(b_scale + offs_n * stride_sb, mask=n_ok, other=0.0)
    out = acc * sa[:, None] * sb[None, :]
    if has_bias != 0:
        out += tl.load(bias + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    c_ptrs = c + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, out.to(c.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])
