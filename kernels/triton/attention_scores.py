"""Attention scores: s = q @ k^T * scale per batch and head (Triton).

    s[b, h, m, n] = scale * sum_d q[b, h, m, d] * k[b, h, n, d]

q: (B, H, M, D) and k: (B, H, N, D) with any batch, head and row strides (a view of a
fused QKV projection, an expanded k for shared heads), D contiguous; fp16 or bf16 with
fp32 sums.  s: (B, H, M, N) contiguous.  The scale is applied to the fp32 sums before the
one rounding into s's dtype.  One program per (batch*head, tile of s), on a 1-D grid
(batch*head may exceed grid.y's 65535).
"""
import triton
import triton.language as tl


@triton.jit
def _tile_of(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid`: GROUP_M row tiles sweep each column tile together,
    so the k tiles they share are read from L2.  (Each GEMM kernel file carries this
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
def _attention_scores(
    q,            # (B, H, M, D) queries, strides stride_qb, stride_qh, stride_qm, 1
    k,            # (B, H, N, D) keys, strides stride_kb, stride_kh, stride_kn, 1
    s,            # (B, H, M, N) contiguous output
    stride_qb, stride_qh, stride_qm,   # q's strides, in elements
    stride_kb, stride_kh, stride_kn,   # k's strides, in elements
    H,            # heads
    M, N, K,      # query rows, key rows, head dim
    scale,        # fp32 factor applied before rounding
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,    # row tiles per group (L2 reuse of k)
):
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    pid = tl.program_id(0)
    z = pid // tiles
    pid_m, pid_n = _tile_of(pid % tiles, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    b = (z // H).to(tl.int64)
    h = (z % H).to(tl.int64)
    q += b * stride_qb + h * stride_qh
    k += b * stride_kb + h * stride_kh
    s += z.to(tl.int64) * M * N

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows past N read row n % N, and rows past M rows of this program's tile of k: in bounds
    # without masks, never stored (as in fp8_gemm.py's _fp8_gemm, which says why).
    rows_q = tl.where(offs_m < M, q + offs_m.to(tl.int64) * stride_qm,
                      k + ((pid_n * BLOCK_N + offs_m % BLOCK_N) % N).to(tl.int64) * stride_kn)
    q_ptrs = rows_q[:, None] + offs_k[None, :]
    k_ptrs = k + (offs_n % N).to(tl.int64)[None, :] * stride_kn + offs_k[:, None]

    # main loop over the head dimension; zeros past D
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for kk in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - kk * BLOCK_K
        qv = tl.load(q_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        kv = tl.load(k_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(qv, kv, acc)
        q_ptrs += BLOCK_K
        k_ptrs += BLOCK_K

    # epilogue: s = acc * scale, one rounding
    s_ptrs = s + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(s_ptrs, (acc * scale).to(s.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])
