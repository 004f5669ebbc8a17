"""rms_norm_rope (Triton, kernels/triton/rope.py): RMSNorm then RoPE in one pass, fwd, bwd, dweight."""
from __future__ import annotations

from .core import DTYPES, Op, Param, Variant
from .rope import cuda_heads_a_warp

# ---------------------------------------------------------------------------------
# A program's tile is HEADS heads x BLOCK_D columns (BLOCK_D a power of two, held as two
# [HEADS, BLOCK_D/2] pair tiles).  Forward: one program per token (per_head: per token and
# chunk of HEADS heads); a group that fits one tile (D <= BLOCK_D, and per_head or
# H <= HEADS) is read once, any other in two passes.  Backward: G x C programs (G along the
# tokens, 16 per SM per head and 4 over the row; C along the heads per head when tokens are
# few: python/fusedaot/ops/rms_norm_rope.py), each with its own fp32 row of dweight's partial
# sums.  A tile of whole groups with full rotary (as the forward's fast path) is read once and
# keeps dweight's terms in registers until the program ends; any other group takes two passes
# per token and adds its terms into the partial row in memory.  The two forms are separate
# variants (ONE_PASS): a one-pass tile takes only the calls it holds whole with full rotary, and
# the last row of a head_dim range in "bwd" (the two-pass tile) every other call of the range
# (_bwd_paths), so no image carries code its calls never run (both in one image doubled the
# family's compile time and size; partial rotary over the row ran 1.28-1.51x faster on the
# 16-head two-pass tile, docs/benchmarks.md).  The layout is a constexpr: one C function per
# layout and direction.
#
# RMS_NORM_ROPE_TILES[table][mode]: rows (largest head_dim, largest head count, BLOCK_D, HEADS,
# num_warps, last), None for no bound; last is maxnreg in the forward tables (None: no register
# cap) and STAGES, the software pipelining of the token loop over the row, in "bwd".  head_dim
# falls in ranges (a row's lower bound is the previous row's head_dim bound); within one
# head_dim range, head counts do too.  Tables: "fwd16" the 16-bit forward, "fwd32" the fp32
# forward, "bwd" every backward; the norm mode ("head" or "row") is the per_head argument.
# Wider heads take the last row and its column loop.  Timed through Triton's JIT on an H100 (2026-11-26, bf16):
# - backward (docs/results/rms_norm_rope_bwd_sweep_h100.jsonl, bwd + dweight kernels): per
#   head, 4 heads on 1 warp at 128 (one-pass: 169 us at 16384 x 32 x 128, 81% of copy, against
#   225 us for the two-pass kernel), 8 at 64, 2 at 256; over the row, a tile of all H heads with
#   about 16 pairs a thread: at 16384 tokens x 128, 8 heads on 2 warps 92 us (two-pass 279),
#   16 on 2 warps 118 (302), 32 on 2 warps 193-211 (460), 64 on 4 warps pipelined 386 (809);
#   x 64: 32 heads on 2 warps pipelined 120 (302), 64 on 2 warps 217 (461); x 256: 8 heads on 2
#   warps 116 (271), 16 on 4 warps 223 (458), 32 on 4 warps 419 (830).  Register pressure makes
#   neighbouring tiles and STAGES differ by 10-50% either way; more than 64 heads (two-pass)
#   keep the earlier tiles;
# - forward, 16384 tokens x 32 heads x 64/128/256 and 2048 x 32 x 128, 2-32 heads on 1-8 warps
#   (docs/results/rms_norm_rope_tile_sweep_h100.jsonl): per head, 16 pairs a thread on one warp
#   (16 heads at head_dim 64, 8 at 128: 75.7% and 76.0% of copy, against 71.6% and 69.7% for
#   the backward's tiles; 32 heads a warp was faster still at 128 with 32 heads, 79.3%, but
#   would leave a 8-head k three quarters masked), 16 heads at 256 (73.1%); over the row, 16
#   heads on 1 warp at 64 (72.5%, against under 63% for 32 on 4); at 128, 8 heads on 2 warps
#   (79.9% through the JIT at 32 heads) lost to 16 on 4 as AOT images at 64 heads (279 against
#   249 us: four chunks of heads a token, two passes each) and at 1-128 tokens, so 128 and 256
#   keep the backward's tiles.
# Layouts without 16-byte alignment share one variant.  sm80/sm89 (not measured) use the same
# tables.
# Forward over the row, 16-bit, head_dim 65-128, by head count: 17-32 heads fit one 32-head
# tile on one warp, which reads x once where the 16-head tile read it twice (16384 tokens x 32
# heads: 140.5 -> 122.7 us, docs/benchmarks.md); more heads take two passes over 16-head tiles
# on 2 warps (x 64 heads: 248.2 -> 223.3 us).  fp32 keeps the 16-head tile: its 32-head tile
# on one warp spills 984 bytes a thread (16-bit: 264).
# (Per head, 32-head tiles on one warp for a multiple of 32 heads read 79.3% of copy against
# 75.9% through the JIT, but as AOT images tied at 16384 tokens and lost at 1-2048 tokens, 6.5
# against 5.1 us at one: per head keeps its one tile.)
#
# Per head, 16-bit forward at head_dim <= 128: at most 80 registers a thread.  Uncapped, the
# one-warp tile took 120 and 16 blocks fitted an SM (25% occupancy: ncu,
# docs/results/rms_norm_rope_fwd_ncu_h100.txt); capped, 25 do.  Through the JIT with the norm
# mode a run-time argument, as the AOT images then had it (docs/results/rms_norm_rope_fwd_maxnreg_h100.jsonl):
# 16384 x 32 x 128 71.4 -> 83.1% of copy, x 8 heads 72.5 -> 78.2%, 2048 x 32 x 128 77.9 ->
# 86.1%, 16384 x 32 x 64 70.0 -> 83.8%; 96 gained less, 64 spilled, and head_dim 256 spilled
# at every cap.
RMS_NORM_ROPE_TILES = {
    "fwd16": {"head": ((64, None, 64, 16, 1, 80), (128, None, 128, 8, 1, 80), (None, None, 256, 16, 1, None)),
              "row": ((64, None, 64, 16, 1, None),
                      (128, 16, 128, 16, 4, None), (128, 32, 128, 32, 1, None), (128, None, 128, 16, 2, None),
                      (None, None, 256, 8, 4, None))},
    "fwd32": {"head": ((64, None, 64, 16, 1, None), (128, None, 128, 8, 1, None), (None, None, 256, 16, 1, None)),
              "row": ((64, None, 64, 16, 1, None), (128, None, 128, 16, 4, None), (None, None, 256, 8, 4, None))},
    "bwd": {"head": ((64, None, 64, 8, 1, 1), (128, None, 128, 4, 1, 1), (None, None, 256, 2, 1, 1)),
            "row": ((64, 32, 64, 32, 2, 2), (64, 64, 64, 64, 2, 2), (64, None, 64, 32, 4, 1),
                    (128, 8, 128, 8, 2, 1), (128, 16, 128, 16, 2, 1), (128, 32, 128, 32, 2, 1),
                    (128, 64, 128, 64, 4, 2), (128, None, 128, 16, 4, 1),
                    (None, 8, 256, 8, 2, 1), (None, 16, 256, 16, 4, 1), (None, 32, 256, 32, 4, 1),
                    (None, None, 256, 8, 4, 1))},
}
RMS_NORM_ROPE_UNALIGNED = (128, 32, 8)
# Few tokens (M <= RMS_NORM_ROPE_FEW_TOKENS): each program (a token, per head a token's chunk
# of heads) has an SM to itself, so the kernel takes one program's latency, and tiles with more
# warps, or with all of a row's heads, finish sooner.  RMS_NORM_ROPE_FEW[table]: rows (norm
# mode, head_dim range, head-count range, (BLOCK_D, HEADS, num_warps, last)), ranges (lower,
# upper], None unbounded, last as in RMS_NORM_ROPE_TILES; "fwd16" the 16-bit forward, "bwd"
# the backward's one-pass form (full rotary only).  Timed in CUDA graphs through the JIT,
# bf16, against the tiles above, us at 1 / 128 tokens:
# - forward (docs/results/rms_norm_rope_fwd_few_tokens_h100.jsonl): over the row 32 heads of 64
#   3.73 -> 2.59 / 3.88 -> 2.99, of 128 3.38 -> 2.64 / 3.94 -> 3.20 (512 tokens 5.07 -> 4.30), 64
#   heads of 128 5.74 -> 3.18 / 6.12 -> 3.98, 32 of 256 5.30 -> 2.84 / 5.70 -> 3.87; per head at
#   head_dim 256 4.26 -> 2.38 / 4.73 -> 3.32.  Per head at head_dim 64-128 the best tiles gained
#   3-7% and were slower at some token counts: those keep the tiles above;
# - backward over the row (docs/results/rms_norm_rope_bwd_few_tokens_h100.jsonl, the backward
#   kernel alone): 32 heads of 128 4.52 -> 3.37 / 5.37 -> 4.09, 64 of 128 5.18 -> 4.40 / 6.77 ->
#   5.70, 32 of 64 3.15 -> 2.73 / 3.59 -> 3.19, 32 of 256 4.99 -> 4.43 / 6.21 -> 5.70.
# Head counts not measured here (up to 16 heads, 33-64 heads of 64) keep the tiles above.
RMS_NORM_ROPE_FEW_TOKENS = 128
RMS_NORM_ROPE_FEW = {
    "fwd16": (("row", (0, 64), (16, 32), (64, 32, 1, None)),
              ("row", (64, 128), (16, 32), (128, 32, 2, None)),
              ("row", (64, 128), (32, 64), (128, 64, 4, None)),
              ("row", (128, 256), (16, 32), (256, 32, 4, None)),
              ("head", (128, 256), (0, None), (256, 8, 4, None))),
    "bwd": (("row", (0, 64), (16, 32), (64, 32, 4, 2)),
            ("row", (64, 128), (16, 32), (128, 32, 4, 2)),
            ("row", (64, 128), (32, 64), (128, 64, 8, 2)),
            ("row", (128, 256), (16, 32), (256, 32, 8, 2))),
}
# Per head, 16-bit, half-split layout, head_dim 64, 128 or 256, aligned, more than
# RMS_NORM_ROPE_FEW_TOKENS tokens: the CUDA C++ kernel kernels/cuda/rms_norm_rope.cu, one warp a
# block holding a token's chunk of heads (4 passes of 8 lanes a head at 64, 16 at 128, 32 at 256).
# Against the Triton tiles on an H100 (bf16, outputs allocated per call as the op does,
# docs/benchmarks.md, "rms_norm_rope per head in CUDA C++" and "... over the row in CUDA C++"),
# % of copy: 16384 tokens x 32 heads x 128 92.4% against 83.2%, x 64 heads 94.2% against 84.5%,
# x 32 heads x 256 96.9% against 72.7%, x 32 heads x 64 87.7% against 79.9% (x and y); faster
# or level from 256 tokens down to 1024 x 8 x 256 (7.7 against 10.0 us) and 2048 x 8 x 128 (7.5
# against 8.3); at 1-128 tokens level within 0.06 us but at head_dim 256 (16 x 32 x 256: 5.41
# against 5.25 us), so few tokens keep the Triton tiles.
RMS_NORM_ROPE_CUDA = (64, 128, 256)   # head_dims, per head and over the row
RMS_NORM_ROPE_CUDA_PASSES = 4          # head groups a warp per head (a block's heads: rope.cuda_heads_a_warp)
# Over the row, 16-bit, half-split, aligned, head_dim 64, 128 or 256, more than
# RMS_NORM_ROPE_FEW_TOKENS tokens: the same kernel with one block a token (row_p4: 4 head groups
# a warp, at most 4 warps; row_p8: 8 groups, at most 8 warps; wider rows keep Triton).  Against
# the Triton tiles on an H100 (bf16, docs/benchmarks.md, "rms_norm_rope over the row in CUDA
# C++"), % of copy: 16384 tokens x 32 heads x 128 90.3% against 72.3%, x 64 heads 94.5% against
# 80.0%, x 8 heads 68.3% against 32.5%, 16384 x 32 x 256 92.7% against 76.5%, 16384 x 32 x 64
# 82.4% against 69.8%; level (within 1%) at 1024 x 32 x 128 and 2048 x 32 x 64, slower at 128
# tokens (7.3 against 6.9 us: the few-token tiles stay).
# (passes, warps a block at most): a call takes the first form whose warps hold its heads.
RMS_NORM_ROPE_CUDA_ROW = ((4, 4), (8, 8))


def _cuda_takes(d: int) -> str:
    """The calls the per-head CUDA C++ variant of head_dim d takes."""
    return f"per_head != 0 && N == {d} && H > 0 && M > {RMS_NORM_ROPE_FEW_TOKENS}"


def _cuda_row_forms(d: int) -> list[tuple[int, int, int, str]]:
    """[(passes, heads a warp, warps at most, condition)] of the over-the-row CUDA C++ forms at head_dim d."""
    out, h_lo = [], 0
    for passes, warps in RMS_NORM_ROPE_CUDA_ROW:
        hpw = cuda_heads_a_warp(d, passes)
        out.append((passes, hpw, warps, f"per_head == 0 && N == {d} && M > {RMS_NORM_ROPE_FEW_TOKENS} && "
                                        f"H > {h_lo} && H <= {hpw * warps}"))
        h_lo = hpw * warps
    return out


_CUDA_HEAD = " || ".join(f"({_cuda_takes(d)})" for d in RMS_NORM_ROPE_CUDA)
_CUDA_ROW = " || ".join(f"({cond})" for d in RMS_NORM_ROPE_CUDA for *_, cond in _cuda_row_forms(d))

# dweight's reduction of the (G*C, W) partial rows: (largest W, columns per program, partial
# rows per step, warps).  Per head the rows are D wide and thousands tall, so narrow programs
# give the reduction more SMs; timed in CUDA graphs (docs/results/rms_norm_rope_dw_h100.jsonl):
# 2112 x 128 13.8 -> 3.5 us and 4096 x 128 25.8 -> 5.3 us against the previous 32 columns on 4
# warps, 528 x 4096 5.0 -> 3.2 and 528 x 8192 5.5 -> 4.6 us.
RMS_NORM_ROPE_DW = ((1024, 8, 128, 8), (None, 16, 64, 8))

_FWD_PARAMS = (
    Param("x", "ptr"), Param("w", "ptr"), Param("cos", "ptr"), Param("sin", "ptr"),
    Param("pos", "ptr", "i64"), Param("y", "ptr"),
    Param("stride_xb", "i64"), Param("stride_xs", "i64"), Param("stride_yb", "i64"), Param("stride_ys", "i64"),
    Param("stride_wh", "i64"), Param("stride_cb", "i64"), Param("stride_cs", "i64"), Param("stride_pb", "i64"),
    Param("M", "i32"), Param("S", "i32"), Param("H", "i32"), Param("N", "i32"), Param("pairs", "i32"),
    Param("P", "i32"), Param("eps", "f32"), Param("per_head", "i32"),
    Param("flags", "i32"),   # 1: positions given, 2: half tables (rotary_dim/2 columns)
)
_BWD_PARAMS = (
    Param("dy", "ptr"), Param("x", "ptr"), Param("w", "ptr"), Param("cos", "ptr"), Param("sin", "ptr"),
    Param("pos", "ptr", "i64"), Param("dx", "ptr"), Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"),
    Param("stride_dyb", "i64"), Param("stride_dys", "i64"), Param("stride_xb", "i64"), Param("stride_xs", "i64"),
    Param("stride_dxb", "i64"), Param("stride_dxs", "i64"), Param("stride_wh", "i64"),
    Param("stride_cb", "i64"), Param("stride_cs", "i64"), Param("stride_pb", "i64"),
    Param("M", "i32"), Param("S", "i32"), Param("H", "i32"), Param("N", "i32"), Param("pairs", "i32"),
    Param("P", "i32"), Param("eps", "f32"), Param("per_head", "i32"), Param("flags", "i32"),
    Param("G", "i32"), Param("C", "i32"), Param("W", "i32"),
)
_DW_PARAMS = (Param("dw_partial", "ptr", "fp32"), Param("dw", "ptr"), Param("G", "i32"), Param("W", "i32"))
# Every integer that bounds a column mask is aligned too (N = head_dim and pairs = rotary_dim/2):
# unless the compiler can see that a mask changes only at 16-byte boundaries it accesses one
# element at a time, which left every load and store of these kernels scalar (measured: 2.6x
# slower than the JIT's build of the same tile, which specialises pairs = 64 as a multiple of 16).
_ALIGNED = {
    "fwd": ("x", "w", "cos", "sin", "y", "stride_xb", "stride_xs", "stride_yb", "stride_ys", "stride_wh",
            "stride_cb", "stride_cs", "N", "pairs"),
    "bwd": ("dy", "x", "w", "cos", "sin", "dx", "stride_dyb", "stride_dys", "stride_xb", "stride_xs",
            "stride_dxb", "stride_dxs", "stride_wh", "stride_cb", "stride_cs", "N", "pairs"),
}


def _grid(direction: str, heads: int):
    if direction == "fwd":   # one program per token, and per chunk of heads when per_head
        return ("M", f"fa_max(1, per_head * fa_cdiv(H, {heads}))", "1")
    return ("G", "C", "1")


def _ranges(rows):
    """A table's rows as [(n_lo, n_hi, [(h_lo, h_hi, tile)])], one entry per head_dim range."""
    out, n_lo, h_lo, heads = [], 0, 0, []
    for n_hi, h_hi, *tile in rows:
        heads.append((h_lo, h_hi, tuple(tile)))
        if h_hi:   # the next row takes the same head_dim range's next head counts
            h_lo = h_hi
        else:      # this head_dim range is done
            out.append((n_lo, n_hi, heads))
            n_lo, h_lo, heads = n_hi, 0, []
    return out


def _bwd_paths(mode, n_hi, h_lo, h_hi, block_d, heads):
    """[(condition, one_pass)] of a backward tile: the one-pass form where its calls have whole
    groups in the tile and full rotary, and, on a head_dim range's last row (no head-count
    bound), the two-pass form for every other call of the range."""
    whole = "2 * pairs == N" + (f" && N <= {block_d}" if n_hi is None or n_hi > block_d else "")
    other = "2 * pairs != N" + (f" || N > {block_d}" if n_hi is None or n_hi > block_d else "")
    paths = []
    if mode == "head" or (h_hi and h_hi <= heads):
        paths.append((whole, True))
    elif h_hi:
        raise ValueError(f"rms_norm_rope bwd: a tile of {heads} heads cannot hold {h_hi} heads in one pass")
    if h_hi is None:
        paths.append((f"(H > {h_lo} || {other})" if h_lo else f"({other})", False))
    return paths


def _meets(a_lo, a_hi, b_lo, b_hi) -> bool:
    """Whether the ranges (a_lo, a_hi] and (b_lo, b_hi] share a value (None: unbounded)."""
    return (b_hi is None or a_lo < b_hi) and (a_hi is None or b_lo < a_hi)


def _few_tokens(table: str, mode: str, n_lo=0, n_hi=None, h_lo=0, h_hi=None) -> list:
    """[(condition, (BLOCK_D, HEADS, num_warps, last))] of the table's few-token tiles of this
    norm mode whose ranges meet head_dim (n_lo, n_hi] and head count (h_lo, h_hi]; the
    backward's conditions also ask for full rotary (they are one-pass tiles)."""
    out = []
    for few_mode, (lo, hi), (few_h_lo, few_h_hi), tile in RMS_NORM_ROPE_FEW.get(table, ()):
        if few_mode == mode and _meets(n_lo, n_hi, lo, hi) and _meets(h_lo, h_hi, few_h_lo, few_h_hi):
            cond = (f"M <= {RMS_NORM_ROPE_FEW_TOKENS} && N > {lo} && N <= {hi}"
                    + (f" && H > {few_h_lo}" if few_h_lo else "") + (f" && H <= {few_h_hi}" if few_h_hi else "")
                    + (" && 2 * pairs == N" if table == "bwd" else ""))
            out.append((cond, tile))
    return out


def _configs(direction: str, dtype: str):
    """[(mode, condition, (BLOCK_D, HEADS, num_warps, last), one_pass)]: aligned calls by norm
    mode and the ranges of RMS_NORM_ROPE_TILES (few-token calls by RMS_NORM_ROPE_FEW, mode
    "<mode>_few"), unaligned ones to one tile; one_pass (the backward's ONE_PASS) is None in the
    forward."""
    table = "bwd" if direction == "bwd" else ("fwd32" if dtype == "fp32" else "fwd16")
    configs = []
    for mode, rows in RMS_NORM_ROPE_TILES[table].items():
        test = "per_head != 0" if mode == "head" else "per_head == 0"
        configs += [(f"{mode}_few", f"{test} && {cond}", tile, True if direction == "bwd" else None)
                    for cond, tile in _few_tokens(table, mode)]
        for n_lo, n_hi, tiles in _ranges(rows):
            width = f"{test} && N > {n_lo}" + (f" && N <= {n_hi}" if n_hi else "")
            if direction == "bwd" and len({tile[0] for *_, tile in tiles}) > 1:
                raise ValueError("rms_norm_rope bwd: one BLOCK_D per head_dim range (the two-pass tile's "
                                 "condition reads it)")
            for h_lo, h_hi, tile in tiles:
                if direction == "fwd":
                    cond = width + (f" && H > {h_lo}" if h_lo else "") + (f" && H <= {h_hi}" if h_hi else "")
                    cond += "".join(f" && !({few})" for few, _ in _few_tokens(table, mode, n_lo, n_hi, h_lo, h_hi))
                    configs.append((mode, cond, tile, None))
                    continue
                bounds = (f" && H > {h_lo}" if h_lo and h_hi else "") + (f" && H <= {h_hi}" if h_hi else "")
                for path, one_pass in _bwd_paths(mode, n_hi, h_lo, h_hi, tile[0], tile[1]):
                    if one_pass:   # calls a few-token tile takes
                        path += "".join(f" && !({few})" for few, _ in _few_tokens(table, mode, n_lo, n_hi, h_lo, h_hi))
                    configs.append((mode, f"{width}{bounds} && {path}", tile, one_pass))
    block_d, heads, warps = RMS_NORM_ROPE_UNALIGNED
    if direction == "fwd":
        configs.append(("any", "N > 0", (block_d, heads, warps, None), None))
    else:
        whole = f"2 * pairs == N && N <= {block_d} && (per_head != 0 || H <= {heads})"
        configs.append(("any", f"N > 0 && {whole}", (block_d, heads, warps, 1), True))
        configs.append(("any", f"N > 0 && !({whole})", (block_d, heads, warps, 1), False))
    return configs


def _cuda_variants(dtype: str) -> list[Variant]:
    """The forward in CUDA C++: per head (RMS_NORM_ROPE_CUDA), over the row (RMS_NORM_ROPE_CUDA_ROW)."""
    common = dict(dtype=dtype, aligned=_ALIGNED["fwd"], source="kernels/cuda/rms_norm_rope.cu")
    head = [Variant(
        name=f"rms_norm_rope_fwd_{dtype}_head_cuda_d{d}_a16",
        kernel=f"rms_norm_rope_fwd_head_{dtype}_d{d}",
        when=f"dtype == {DTYPES[dtype]} && {_cuda_takes(d)}",
        grid=(f"(int64_t)M * fa_cdiv(H, {cuda_heads_a_warp(d, RMS_NORM_ROPE_CUDA_PASSES)})", "1", "1"),
        block=("32", "1", "1"),
        **common,
    ) for d in RMS_NORM_ROPE_CUDA]
    row = [Variant(
        name=f"rms_norm_rope_fwd_{dtype}_row_cuda_p{passes}_d{d}_a16",
        kernel=f"rms_norm_rope_fwd_row_p{passes}_{dtype}_d{d}",
        when=f"dtype == {DTYPES[dtype]} && {cond}",
        grid=("M", "1", "1"),
        block=(f"32 * fa_cdiv(H, {hpw})", "1", "1"),
        **common,
    ) for d in RMS_NORM_ROPE_CUDA for passes, hpw, _, cond in _cuda_row_forms(d)]
    return head + row


# The kernels' NORM constexpr: a variant whose calls all have one norm mode compiles only that
# mode's code (the one-pass backward held both loops and took 1.4x as long to compile); 0 reads
# per_head at run time.  Per head in both directions and over the row in the forward; the
# backward over the row keeps the run-time mode, which measured faster for its pipelined token
# loop (H200, bf16 forward + backward, docs/benchmarks.md: the fixed mode ran 0.93-0.98x at
# 16384 tokens x 32 heads x 64/128/256, fp32 0.97x), as do the unaligned variants (both modes).
def _norm_mode(direction: str, mode: str) -> int:
    if mode.startswith("head"):
        return 1
    return 2 if mode.startswith("row") and direction == "fwd" else 0


def _variants(direction: str, interleaved: bool) -> tuple[Variant, ...]:
    op = f"rms_norm_rope_{direction}" + ("_interleaved" if interleaved else "")
    out = []
    for dtype in ("bf16", "fp16", "fp32"):
        cuda = direction == "fwd" and not interleaved and dtype != "fp32"
        if cuda:
            out += _cuda_variants(dtype)
        for mode, width, (block_d, heads, warps, last), one_pass in _configs(direction, dtype):
            aligned = mode != "any"
            if cuda and aligned and mode.startswith("head"):   # what the CUDA C++ variants leave
                width += f" && !({_CUDA_HEAD})"
            elif cuda and aligned and mode.startswith("row"):
                width += f" && !({_CUDA_ROW})"
            maxnreg, stages = (None, last) if direction == "bwd" else (last, None)
            bwd = {"STAGES": stages, "ONE_PASS": one_pass} if direction == "bwd" else {}
            out.append(Variant(
                name=f"{op}_{dtype}_{mode}_d{block_d}_h{heads}_w{warps}{f'_r{maxnreg}' if maxnreg else ''}"
                     f"{f'_s{stages}' if stages and stages > 1 else ''}"
                     f"{'' if one_pass is None else ('_1p' if one_pass else '_2p')}"
                     f"{'_a16' if aligned else '_u'}",
                dtype=dtype,
                kernel=f"_rms_norm_rope_{direction}",
                when=f"dtype == {DTYPES[dtype]} && {width}",
                grid=_grid(direction, heads),
                constexprs=dict(BLOCK_D=block_d, HEADS=heads, INTERLEAVED=interleaved, NORM=_norm_mode(direction, mode),
                                **bwd),
                num_warps=warps,
                maxnreg=maxnreg,
                aligned=_ALIGNED[direction],
                unaligned=not aligned,
            ))
    return tuple(out)


def _dw_variants() -> tuple[Variant, ...]:
    out, w_lo = [], 0
    for w_hi, block_n, block_g, warps in RMS_NORM_ROPE_DW:
        width = f"W > {w_lo}" + (f" && W <= {w_hi}" if w_hi else "")
        out += [Variant(
            name=f"rms_norm_rope_dw_{dtype}_b{block_n}_g{block_g}_w{warps}",
            dtype=dtype,
            kernel="_rms_norm_rope_dw",
            when=f"dtype == {DTYPES[dtype]} && {width}",
            grid=(f"fa_cdiv(W, {block_n})", "1", "1"),
            constexprs=dict(BLOCK_N=block_n, BLOCK_G=block_g),
            num_warps=warps,
        ) for dtype in ("bf16", "fp16", "fp32")]
        w_lo = w_hi
    return tuple(out)


_SRC = "kernels/triton/rope.py"
OPS = (
    Op("rms_norm_rope_fwd", "triton", _SRC, _FWD_PARAMS, _variants("fwd", False),
       doc="y = rope(rms_norm(x) * w), half-split layout; per_head: norm over each head"),
    Op("rms_norm_rope_fwd_interleaved", "triton", _SRC, _FWD_PARAMS, _variants("fwd", True),
       doc="y = rope(rms_norm(x) * w), interleaved layout; per_head: norm over each head"),
    Op("rms_norm_rope_bwd", "triton", _SRC, _BWD_PARAMS, _variants("bwd", False),
       doc="dx, and dw as per-program partial sums (G, W) fp32 (dw itself where G * C == 1); half-split layout"),
    Op("rms_norm_rope_bwd_interleaved", "triton", _SRC, _BWD_PARAMS, _variants("bwd", True),
       doc="dx, and dw as per-program partial sums (G, W) fp32 (dw itself where G * C == 1); interleaved layout"),
    Op("rms_norm_rope_dw", "triton", _SRC, _DW_PARAMS, _dw_variants(),
       doc="dw = sum of the partial rows, in the weight's dtype"),
)
