"""RMSNorm forward and backward (Triton), with an optional fused residual add.

    y  = x * rstd * w,                 rstd = 1 / sqrt(mean(x^2) + eps)
    dx = rstd * (w*dy - x_hat * mean(x_hat * w*dy)),   x_hat = x * rstd
    dw = sum over rows of dy * x_hat

With HAS_RES (fused_add_rms_norm) the forward first forms s = x + r, rounded to the storage
dtype as the unfused `x + r` would be, writes s and normalizes it.  The backward then takes s
as its x and adds the gradient that reached s directly (dres) to dx: d(x) = d(r) = dx + dres.

Rows may be strided (`stride_*` elements apart); the last dimension is contiguous.
All arithmetic is fp32 whatever the storage dtype.  Variants are constexpr flags:
ROWS rows per program, BLOCK_N >= N for the single-block form, LOOPED for rows
wider than one block (BLOCK_N is then the chunk width).
"""
import triton
import triton.language as tl


@triton.jit
def _load_row(ptr, cols, mask, EVICT: tl.constexpr):
    if EVICT:
        # keep the row in L2 for the looped form's second pass
        return tl.load(ptr + cols, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)
    return tl.load(ptr + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_weight(w, cols, N, HAS_W: tl.constexpr):
    if HAS_W:
        return tl.load(w + cols, mask=cols < N, other=0.0).to(tl.float32)
    return tl.full(cols.shape, 1.0, tl.float32)


@triton.jit
def _add_residual(x_rows, r_rows, s_rows, cols, mask):
    """s = x + r in the storage dtype (stored), returned as fp32."""
    sv = tl.load(x_rows + cols, mask=mask, other=0.0) + tl.load(r_rows + cols, mask=mask, other=0.0)
    tl.store(s_rows + cols, sv, mask=mask)
    return sv.to(tl.float32)


@triton.jit
def _rms_norm_fwd(
    x,            # (M, N) input, rows stride_x elements apart
    y,            # (M, N) output, rows stride_y elements apart
    w,            # (N,) weight; not read unless HAS_W
    stride_x,     # row stride of x, in elements
    stride_y,     # row stride of y, in elements
    M,            # number of rows
    N,            # row width
    eps,          # added to mean(x^2)
    r,            # (M, N) residual, rows stride_r apart; HAS_RES only
    s,            # (M, N) output x + r, rows stride_s apart; HAS_RES only
    stride_r,
    stride_s,
    BLOCK_N: tl.constexpr,   # columns per block (>= N unless LOOPED)
    ROWS: tl.constexpr,      # rows per program
    HAS_W: tl.constexpr,
    LOOPED: tl.constexpr,
    HAS_RES: tl.constexpr,
    UNROLL: tl.constexpr,    # looped form: chunks unrolled, their loads in flight at once (None: 1)
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < M
    x_rows = x + rows.to(tl.int64)[:, None] * stride_x
    y_rows = y + rows.to(tl.int64)[:, None] * stride_y
    if LOOPED:
        acc = tl.zeros([ROWS, BLOCK_N], tl.float32)
        if HAS_RES:
            # phase 1: s = x + r, stored, and its sum of squares; phase 2 reads s back (from L2)
            r_rows = r + rows.to(tl.int64)[:, None] * stride_r
            s_rows = s + rows.to(tl.int64)[:, None] * stride_s
            for start in tl.range(0, N, BLOCK_N, loop_unroll_factor=UNROLL):
                cols = start + tl.arange(0, BLOCK_N)
                sv = _add_residual(x_rows, r_rows, s_rows, cols[None, :], row_ok[:, None] & (cols[None, :] < N))
                acc += sv * sv
            tl.debug_barrier()  # the program's own stores of s are visible to its loads below
            x_rows = s_rows
        else:
            # phase 1: sum of squares over the row, chunk by chunk
            for start in tl.range(0, N, BLOCK_N, loop_unroll_factor=UNROLL):
                cols = start + tl.arange(0, BLOCK_N)
                xv = _load_row(x_rows, cols[None, :], row_ok[:, None] & (cols[None, :] < N), True)
                acc += xv * xv
        rstd = tl.rsqrt(tl.sum(acc, axis=1) / N + eps)
        # phase 2: re-read (from L2), scale, store
        for start in tl.range(0, N, BLOCK_N, loop_unroll_factor=UNROLL):
            cols = start + tl.arange(0, BLOCK_N)
            mask = row_ok[:, None] & (cols[None, :] < N)
            xv = _load_row(x_rows, cols[None, :], mask, False)
            yv = xv * rstd[:, None] * _load_weight(w, cols, N, HAS_W)[None, :]
            tl.store(y_rows + cols[None, :], yv.to(y.dtype.element_ty), mask=mask)
    else:
        # the whole row is one block held in registers
        cols = tl.arange(0, BLOCK_N)
        mask = row_ok[:, None] & (cols[None, :] < N)
        if HAS_RES:
            r_rows = r + rows.to(tl.int64)[:, None] * stride_r
            s_rows = s + rows.to(tl.int64)[:, None] * stride_s
            xv = _add_residual(x_rows, r_rows, s_rows, cols[None, :], mask)
        else:
            xv = _load_row(x_rows, cols[None, :], mask, False)
        rstd = tl.rsqrt(tl.sum(xv * xv, axis=1) / N + eps)
        yv = xv * rstd[:, None] * _load_weight(w, cols, N, HAS_W)[None, :]
        tl.store(y_rows + cols[None, :], yv.to(y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd(
    dy,           # (M, N) upstream gradient, rows stride_dy apart
    x,            # (M, N) forward input, rows stride_x apart
    w,            # (N,) weight; not read unless HAS_W
    dx,           # (M, N) output gradient, rows stride_dx apart
    dw_partial,   # (G, N) fp32: program g writes the sum of dy * x_hat over its rows
    dw,           # (N,) weight gradient, written directly when G == 1 (no reduction needed)
    stride_dy,    # row strides, in elements
    stride_x,
    stride_dx,
    M,            # number of rows
    N,            # row width
    eps,
    G,            # number of programs; program g takes rows g*ROWS + k*G*ROWS
    dres,         # (M, N) gradient that reached x directly, added to dx; HAS_DRES only
    stride_dres,
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,
    HAS_W: tl.constexpr,
    LOOPED: tl.constexpr,
    HAS_DRES: tl.constexpr,
    LEAN: tl.constexpr,   # single block: every row stride is stride_x's (the dispatch checks)
):
    # LEAN: one 64-bit row offset serves every tensor, and the weight is loaded with each row
    # (from L1/L2) instead of held.  At 16384-wide 16-bit rows (32 columns a thread of x, dy,
    # w and the dw sums) the registers this frees keep ptxas's spills out of the row loop:
    # bf16 1.10-1.14x faster on an H200; either change alone gains nothing.
    if LEAN:
        stride_dy = stride_x
        stride_dx = stride_x
        stride_dres = stride_x
    pid = tl.program_id(0)
    dw_row = dw_partial + pid.to(tl.int64) * N
    if LOOPED:
        # ROWS == 1.  dw for a row this wide does not fit in registers: accumulate it in
        # this program's own row of dw_partial (no other program touches it).
        if HAS_W:
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                tl.store(dw_row + cols, tl.zeros([BLOCK_N], tl.float32), mask=cols < N)
        for row in range(pid, M, G):
            r64 = row.to(tl.int64)
            # phase 1: sum(x^2) and sum(x * w*dy) in one pass
            sq = tl.zeros([BLOCK_N], tl.float32)
            xwdy = tl.zeros([BLOCK_N], tl.float32)
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                xv = _load_row(x + r64 * stride_x, cols, mask, True)
                dyv = _load_row(dy + r64 * stride_dy, cols, mask, True)
                sq += xv * xv
                xwdy += xv * dyv * _load_weight(w, cols, N, HAS_W)
            rstd = tl.rsqrt(tl.sum(sq, axis=0) / N + eps)
            # mean(x_hat * w*dy) = rstd * mean(x * w*dy)
            c = rstd * tl.sum(xwdy, axis=0) / N
            # phase 2: dx and dw
            for start in range(0, N, BLOCK_N):
                cols = start + tl.arange(0, BLOCK_N)
                mask = cols < N
                xv = _load_row(x + r64 * stride_x, cols, mask, False)
                dyv = _load_row(dy + r64 * stride_dy, cols, mask, False)
                x_hat = xv * rstd
                dxv = rstd * (dyv * _load_weight(w, cols, N, HAS_W) - x_hat * c)
                if HAS_DRES:
                    dxv += _load_row(dres + r64 * stride_dres, cols, mask, False)
                tl.store(dx + r64 * stride_dx + cols, dxv.to(dx.dtype.element_ty), mask=mask)
                if HAS_W:
                    acc = tl.load(dw_row + cols, mask=mask, other=0.0)
                    tl.store(dw_row + cols, acc + dyv * x_hat, mask=mask)
        if HAS_W:
            if G == 1:
                tl.debug_barrier()
                for start in range(0, N, BLOCK_N):
                    cols = start + tl.arange(0, BLOCK_N)
                    acc = tl.load(dw_row + cols, mask=cols < N, other=0.0)
                    tl.store(dw + cols, acc.to(dw.dtype.element_ty), mask=cols < N)
    else:
        cols = tl.arange(0, BLOCK_N)
        col_ok = cols < N
        if not LEAN:
            wv = _load_weight(w, cols, N, HAS_W)
        dw_acc = tl.zeros([BLOCK_N], tl.float32)
        for first in range(pid * ROWS, M, G * ROWS):
            rows = first + tl.arange(0, ROWS)
            r64 = rows.to(tl.int64)[:, None]
            mask = (rows < M)[:, None] & col_ok[None, :]
            xv = _load_row(x + r64 * stride_x, cols[None, :], mask, False)
            dyv = _load_row(dy + r64 * stride_dy, cols[None, :], mask, False)
            if LEAN:
                wv = _load_weight(w, cols, N, HAS_W)
            # the two row sums are independent: mean(x_hat * wdy) = rstd * mean(x * wdy)
            wdy = dyv * wv[None, :]
            sum_sq = tl.sum(xv * xv, axis=1)
            sum_xwdy = tl.sum(xv * wdy, axis=1)
            rstd = tl.rsqrt(sum_sq / N + eps)
            c = rstd * sum_xwdy / N
            x_hat = xv * rstd[:, None]
            dxv = rstd[:, None] * (wdy - x_hat * c[:, None])
            if HAS_DRES:
                dxv += _load_row(dres + r64 * stride_dres, cols[None, :], mask, False)
            tl.store(dx + r64 * stride_dx + cols[None, :], dxv.to(dx.dtype.element_ty), mask=mask)
            dw_acc += tl.sum(dyv * x_hat, axis=0)
        if HAS_W:
            if G == 1:  # one program saw every row: its sum is dw itself
                tl.store(dw + cols, dw_acc.to(dw.dtype.element_ty), mask=col_ok)
            else:
                tl.store(dw_row + cols, dw_acc, mask=col_ok)


@triton.jit
def _rms_norm_dw(
    dw_partial,   # (G, N) fp32 partial sums from _rms_norm_bwd
    dw,           # (N,) output, in the weight's dtype
    G,            # number of partial rows
    N,            # row width
    BLOCK_N: tl.constexpr,   # columns per program
    BLOCK_G: tl.constexpr,   # partial rows added per step
):
    # dw[n] = sum over g of dw_partial[g, n], in a fixed order: deterministic.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros([BLOCK_G, BLOCK_N], tl.float32)
    for first in range(0, G, BLOCK_G):
        rows = first + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & col_ok[None, :]
        acc += tl.load(dw_partial + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=mask, other=0.0)
    tl.store(dw + cols, tl.sum(acc, axis=0).to(dw.dtype.element_ty), mask=col_ok)


# --- the backward of rows too wide for one block --------------------------------------------
# A row of 65536 does not fit in registers, and neither does its dw.  Two kernels: partial row
# statistics over (row, chunk) programs, then a (row group x column chunk) grid in which each
# program walks its group's rows over one chunk, writing dx and keeping its chunk of dw in
# registers.  x and dy are read twice; nothing else is, and both grids spread even a single
# row over the whole GPU.

@triton.jit
def _rms_norm_bwd_stats(
    dy,           # (M, N) upstream gradient, rows stride_dy apart
    x,            # (M, N) forward input, rows stride_x apart
    w,            # (N,) weight; not read unless HAS_W
    stats,        # (M, S, 2) fp32 out, S = cdiv(N, BLOCK_N): sum(x^2) and sum(x * w*dy) per chunk
    stride_dy,
    stride_x,
    M,
    N,
    eps,          # unused here (the consumer applies it); keeps the two wide ops' signatures alike
    BLOCK_N: tl.constexpr,   # chunk width: program (row, s) sums columns s*BLOCK_N ...
    HAS_W: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    xv = _load_row(x + row * stride_x, cols, mask, False)
    dyv = _load_row(dy + row * stride_dy, cols, mask, False)
    out = stats + (row * tl.num_programs(1) + chunk) * 2
    tl.store(out, tl.sum(xv * xv, axis=0))
    tl.store(out + 1, tl.sum(xv * dyv * _load_weight(w, cols, N, HAS_W), axis=0))


@triton.jit
def _rms_norm_bwd_wide(
    dy,           # (M, N) upstream gradient, rows stride_dy apart
    x,            # (M, N) forward input, rows stride_x apart
    w,            # (N,) weight; not read unless HAS_W
    dx,           # (M, N) output gradient, rows stride_dx apart
    dw_partial,   # (G, N) fp32: program (g, chunk) writes its chunk of row g
    dw,           # (N,) weight gradient, written directly when G == 1
    dres,         # (M, N) gradient added to dx; HAS_DRES only
    stats,        # (M, S, 2) fp32 partial sums from _rms_norm_bwd_stats
    stride_dy,
    stride_x,
    stride_dx,
    stride_dres,
    M,
    N,
    eps,
    G,            # row groups; group g takes rows g, g + G, ...
    BLOCK_N: tl.constexpr,   # columns per program
    STATS_N: tl.constexpr,   # the stats kernel's chunk width
    HAS_W: tl.constexpr,
    HAS_DRES: tl.constexpr,
):
    g = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = cols < N
    wv = _load_weight(w, cols, N, HAS_W)
    dw_acc = tl.zeros([BLOCK_N], tl.float32)
    S = tl.cdiv(N, STATS_N)
    for row in range(g, M, G):
        r64 = row.to(tl.int64)
        # rstd = rsqrt(mean(x^2) + eps);  c = mean(x_hat * w*dy) = rstd * mean(x * w*dy)
        row_stats = stats + r64 * (2 * S)
        sq = tl.load(row_stats)
        xwdy = tl.load(row_stats + 1)
        for k in range(1, S):
            sq += tl.load(row_stats + 2 * k)
            xwdy += tl.load(row_stats + 2 * k + 1)
        rstd = tl.rsqrt(sq / N + eps)
        c = rstd * xwdy / N
        xv = _load_row(x + r64 * stride_x, cols, mask, False)
        dyv = _load_row(dy + r64 * stride_dy, cols, mask, False)
        x_hat = xv * rstd
        dxv = rstd * (dyv * wv - x_hat * c)
        if HAS_DRES:
            dxv += _load_row(dres + r64 * stride_dres, cols, mask, False)
        tl.store(dx + r64 * stride_dx + cols, dxv.to(dx.dtype.element_ty), mask=mask)
        dw_acc += dyv * x_hat
    if HAS_W:
        if G == 1:
            tl.store(dw + cols, dw_acc.to(dw.dtype.element_ty), mask=mask)
        else:
            tl.store(dw_partial + g.to(tl.int64) * N + cols, dw_acc, mask=mask)
