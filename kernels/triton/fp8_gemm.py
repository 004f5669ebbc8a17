"""FP8 (e4m3fn) GEMM with scales, like F.linear (Triton; sm89 and sm90 only).

    c[m, n] = (sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] (+ bias[n])

a: (M, K) and b: (N, K) e4m3fn, rows `stride_am` / `stride_bn` bytes apart, K contiguous
(K-major operands: what FP8 tensor cores read).  a_scale / b_scale: fp32, one per tensor
(stride 0) or one per row of a / of b (stride 1).  The products are summed in fp32; on
sm90 the wgmma partial sums are added into the fp32 accumulator every ACC_PROMOTE
elements of K (Hopper's FP8 tensor cores accumulate with fewer bits than fp32 within one
chain of wgmmas).  Scales and bias are applied once, in the epilogue, and c is rounded
once into its dtype.  (sm90's promoted calls with many rows take the CUDA C++ kernel
kernels/cuda/fp8_gemm_sm90.cu instead; aot/specs/fp8_gemm.py says which.)
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
    # Rows past N read row n % N, and rows past M rows of this program's tile of b: in bounds
    # (b has K columns too) without masks, and never stored.  (Row m % M put every load of a
    # one-row call on the same bytes: a decode GEMM ran 3x slower; row masks cost the pointer
    # kernels 6-13%.)
    rows_b = b + (offs_n % N).to(tl.int64) * stride_bn
    rows_a = tl.where(offs_m < M, a + offs_m.to(tl.int64) * stride_am,
                      b + ((pid_n * BLOCK_N + offs_m % BLOCK_N) % N).to(tl.int64) * stride_bn)
    a_ptrs = rows_a[:, None] + offs_k[None, :]
    b_ptrs = rows_b[None, :] + offs_k[:, None]

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




@triton.jit
def _fp8_gemm_tma(
    a, b, c,      # as _fp8_gemm's, each 16-byte aligned
    a_scale,      # fp32: one scale for a
    b_scale,      # fp32: one scale for b
    stride_am, stride_bn, stride_cm,     # multiples of 16 bytes
    M, N, K,      # problem size
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,      # row tiles per group (L2 reuse of b)
    ACC_PROMOTE: tl.constexpr,  # K elements per wgmma chain before adding into fp32 (None: never)
):
    """_fp8_gemm on sm90 for one scale per operand and no bias, through the Tensor Memory
    Accelerator and warp-specialised: one warp group issues the TMA copies of a and b
    (descriptors built on the device, in the global scratch memory Triton asks for) while two
    consumer warp groups, BLOCK_M / 2 rows of the tile each, run the wgmmas; one program per
    SM walks the tiles.  The consumers wait on the copies through barriers of their own
    instead of the whole block's, so one group's promotion (its wait for its wgmmas and the
    fp32 additions) can run while the other's wgmmas do.

    Written as it is on purpose: Triton 3.6's warp specialisation computed wrong results on
    an H100 (zeros in part of the tiles) for the epilogues measured that load per-row scales
    or a bias inside the tile loop, so those calls take the CUDA C++ kernel
    (kernels/cuda/fp8_gemm_sm90.cu); the two scales here are loaded once, before it
    (docs/benchmarks.md).  With promotion the CUDA C++ kernel takes every call of these rows."""
    ad = tl.make_tensor_descriptor(a, [M, K], [stride_am, 1], [BLOCK_M, BLOCK_K])
    bd = tl.make_tensor_descriptor(b, [N, K], [stride_bn, 1], [BLOCK_N, BLOCK_K])
    cd = tl.make_tensor_descriptor(c, [M, N], [stride_cm, 1], [BLOCK_M, BLOCK_N])
    scale = tl.load(a_scale) * tl.load(b_scale)
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles, tl.num_programs(0), warp_specialize=True):
        pid_m, pid_n = _tile_of(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        _tma_tile(ad, bd, cd, scale, pid_m * BLOCK_M, pid_n * BLOCK_N, tl.cdiv(K, BLOCK_K),
                  BLOCK_M, BLOCK_N, BLOCK_K, ACC_PROMOTE)


@triton.jit
def _tma_tile(ad, bd, cd, scale, m0, n0, k_tiles,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ACC_PROMOTE: tl.constexpr):
    """One tile of _fp8_gemm_tma: c[m0:, n0:] = (a[m0:] @ b[n0:]^T) * scale, the products
    through TMA copies (zeros past M, N, K); its store stops at M and N."""
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k in range(k_tiles):
        acc = tl.dot(ad.load([m0, k * BLOCK_K]), bd.load([n0, k * BLOCK_K]).T, acc,
                     max_num_imprecise_acc=ACC_PROMOTE)
    cd.store([m0, n0], (acc * scale).to(cd.dtype))
