"""The spec table's dispatch rules, checked without a GPU or Triton.

For every op and every arch, each call in a grid of argument values (dtypes, widths around
every block boundary, aligned and misaligned pointers and strides, with and without the
optional pointers) must select exactly one variant: the conditions are complete and disjoint,
so the generated dispatch never falls through and never depends on the order of its tests.
"""
from __future__ import annotations

import dataclasses
import importlib
import itertools
import re
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))  # aot/ lives at the repository root and is not installed
try:
    from aot import specs
finally:
    sys.path.remove(str(REPO))

WIDTHS = sorted({1, 3, 7, 8, 127, 1000, 3072, 4097, 65536, 131072, 1 << 20}
                | {b + d for b, _, _ in specs.rms_norm.RMS_NORM_BLOCKS for d in (-1, 0, 1)}
                | {row[0] + d for table in specs.rms_norm_rope.RMS_NORM_ROPE_TILES.values()
                   for rows in table.values() for row in rows if row[0] for d in (-1, 0, 1)}
                | {hd // 2 + d for hd in specs.rope.ROPE_CUDA for d in (-1, 0, 1)}   # rope's D = 2N
                | {w + d for _, w, _ in specs.layer_norm.LAYER_NORM_CUDA for d in (-1, 0, 1)}
                | {w + d for w in (specs.layer_norm.LAYER_NORM_CUDA_ABOVE, specs.layer_norm.LAYER_NORM_CUDA_ROW[1])
                   for d in (-1, 0, 1)})
ALIGNED_PTR, MISALIGNED_PTR = 0x7F0000001000, 0x7F0000001002
OPTIONAL_POINTERS = {"w", "dres"}  # may be NULL (rms_norm without weight, a backward without dres)


def _condition(op, v) -> str:
    cond = v.when
    if v.aligned:
        cond = f"({cond}) and ({specs.alignment_condition(op, v)})"
    return specs.python_condition(cond)


def _calls(op, dtypes):
    """Argument dicts covering the cases the conditions distinguish."""
    pointers = [p.name for p in op.params if p.ctype == "ptr"]
    # integer switches some ops' conditions read (AdaLN's and LayerNorm's fp32-parameter flags (1
    # and 4) and AdaLN's rows per scale
    # row R, fp8_gemm's fast accumulation, rms_norm_rope's norm mode and head count and its
    # dweight reduction's width W, the GEMMs' shape classes and layer_norm's bwd_stats by rows
    # M, fp8_gemm's TMA kernel by has_bias, its scales' strides and M, N, K, rms_norm_rope's
    # and rope's CUDA C++ kernels by tokens and heads, reduce's backward by dy's layout gcol): values on each side of every boundary,
    # where the op has them; rms_norm_rope's backward also tells full rotary (2 * pairs == N)
    # from partial
    conditions = " ".join(_condition(op, v) for v in op.variants)
    rotary = (2, 4) if re.search(r"\bpairs\b", conditions) else (None,)
    switches = [(name, values) for name, values in (("flags", (0, 1, 4)), ("R", (1, 64)), ("fast_accum", (0, 1)), ("has_bias", (0, 1)),
                                                    ("stride_sa", (0, 1)), ("stride_sb", (0, 1)),
                                                    ("per_head", (0, 1)), ("gcol", (0, 1)),
                                                    ("H", (1, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257)),
                                                    ("M", (1, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513, 1023, 1024, 1025, 2047, 2048, 4096, 4097)),
                                                    ("W", (1, 1024, 1025)))
                if re.search(rf"\b{name}\b", conditions)]
    for dtype, n, per_pair, misalign, stride_pad, null_w, *picked in itertools.product(
            dtypes, WIDTHS, rotary, (False, True), (0, 1), (False, True), *(values for _, values in switches)):
        args = {"dtype": dtype, "N": n, "D": 2 * n, "pairs": n // per_pair if per_pair else n, "M": 64, "K": n,
                "G": 4, "eps": 1e-6, "approximate": 0}
        args.update({name: value for (name, _), value in zip(switches, picked)})
        for name in pointers:
            args[name] = MISALIGNED_PTR if misalign and name == pointers[0] else ALIGNED_PTR
        if null_w:
            args.update({name: 0 for name in OPTIONAL_POINTERS if name in args})
        for p in op.params:
            if p.name.startswith("stride_") and p.name not in dict(switches):
                args[p.name] = n + stride_pad
        yield args


@pytest.mark.parametrize("op", specs.OPS, ids=lambda op: op.name)
@pytest.mark.parametrize("arch", specs.ARCHES)
def test_exactly_one_variant_matches(op, arch):
    if arch not in op.arches:
        pytest.skip(f"{op.name} is not in the {arch} library (Op.arches): its C function reports that")
    variants = [v for v in op.variants if arch in v.arches]
    assert variants, f"{op.name} has no variant for {arch}"
    compiled = [(v.name, compile(_condition(op, v), v.name, "eval")) for v in variants]
    for args in _calls(op, [specs.DTYPES[d] for d in op.dtypes]):
        hits = [name for name, code in compiled if eval(code, {}, dict(args))]
        assert len(hits) == 1, f"{op.name} on {arch} with {args}: variants {hits or 'none'} match"
    # Other dtypes match nothing: the dispatch returns its "no variant for dtype" error.
    for args in _calls(op, [c for d, c in specs.DTYPES.items() if d not in op.dtypes]):
        hits = [name for name, code in compiled if eval(code, {}, dict(args))]
        assert not hits, f"{op.name} on {arch} with {args}: {hits} match a dtype the op does not take"


@pytest.mark.parametrize("name", ["rms_norm_rope_bwd", "rms_norm_rope_bwd_interleaved"])
def test_rms_norm_rope_one_pass_variants_get_whole_groups_only(name):
    """A ONE_PASS backward reads each token's group once and has no code for anything else:
    every call its condition admits has full rotary, heads no wider than the tile and, over
    the row, every head in the tile."""
    op = next(op for op in specs.OPS if op.name == name)
    compiled = [(v, compile(_condition(op, v), v.name, "eval")) for v in op.variants]
    assert {v.constexprs["ONE_PASS"] for v, _ in compiled} == {True, False}
    for args in _calls(op, [specs.DTYPES[d] for d in op.dtypes]):
        for v, code in compiled:
            if v.constexprs["ONE_PASS"] and eval(code, {}, dict(args)):
                assert 2 * args["pairs"] == args["N"] <= v.constexprs["BLOCK_D"], (v.name, args)
                assert args["per_head"] or args["H"] <= v.constexprs["HEADS"], (v.name, args)


def test_conditions_use_only_op_parameters():
    for op in specs.OPS:
        names = {p.name for p in op.params} | {"dtype"}
        for v in op.variants:
            used = set(re.findall(r"[A-Za-z_]\w*", _condition(op, v))) - {"and", "or", "not"}
            assert used <= names, f"{v.name}: condition uses {used - names}"


def test_variant_names_are_unique_and_say_their_dtype():
    for op in specs.OPS:
        names = [v.name for v in op.variants]
        assert len(names) == len(set(names)), f"{op.name}: duplicate variant names"
        for v in op.variants:
            assert v.name.startswith(op.name + "_" + v.dtype), v.name


def test_tuned_configs_are_well_formed():
    """rms_norm's and layer_norm's width buckets, as the spec reads them from the tuning tables:
    single blocks then looped forms, widths rising and the last unbounded; only a looped
    forward unrolls its chunks (the kernels' UNROLL)."""
    def check(configs, where):
        uppers = [upper for *_, upper, _ in configs]
        assert uppers[-1] is None and None not in uppers[:-1] and uppers[:-1] == sorted(uppers[:-1]), where
        looped = [c[4] for c in configs]
        assert looped == sorted(looped) and looped[-1], where   # single blocks first
        for block, rows, warps, stages, is_looped, upper, unroll in configs:
            assert rows >= 1 and warps in (1, 2, 4, 8, 16, 32) and stages >= 1, (where, block)
            assert block & (block - 1) == 0 and block * rows >= 32 * warps, (where, block)
            assert is_looped or upper == block, (where, block)
            assert unroll is None or (is_looped and where[1] == "fwd" and unroll >= 2), (where, block)

    for arch, direction in itertools.product(specs.ARCHES, ("fwd", "bwd")):
        for dtype, aligned in itertools.product(specs.FLOAT_DTYPES, (True, False)):
            for fused in (False, True):
                check(specs.rms_norm.rms_norm_configs(arch, direction, dtype, fused, aligned),
                      (arch, direction, dtype, aligned, fused))
            check(specs.layer_norm.layer_norm_configs(arch, direction, dtype, aligned), (arch, direction, dtype, aligned))


def test_gemm_tuning_tables_are_well_formed():
    """aot/tune_gemm.py's tables: every op times a known kernel and can choose some candidate."""
    sys.path.insert(0, str(REPO))
    try:
        from aot import tune_gemm
    finally:
        sys.path.remove(str(REPO))
    for op, table in tune_gemm.TABLES.items():
        assert tune_gemm.KERNEL_OF.get(op, op) in tune_gemm.SOURCES, op
        for cls, (shapes, cfgs) in table.items():
            assert shapes and cfgs, (op, cls)
            assert all(len(c) == (7 if op.startswith("fp8_gemm") else 6) for c in cfgs), (op, cls)
            assert any(tune_gemm.ELIGIBLE.get(op, lambda _: True)(c) for c in cfgs), (op, cls)


def test_access_widths_counts_one_element_and_16_byte_accesses():
    sys.path.insert(0, str(REPO))
    try:
        from aot.access_widths import widths
    finally:
        sys.path.remove(str(REPO))
    ptx = """
        @%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
        @%p2 ld.global.b16 { %rs1 }, [ %rd2 + 0 ];
        @%p3 st.global.b16 [ %rd3 + 0 ], { %rs2 };
        st.global.v4.b32 [ %rd4 + 0 ], { %r5, %r6, %r7, %r8 };
        ld.global.b32 %r9, [ %rd5 + 0 ];
        ld.shared.b16 %rs3, [ %r10 ];
    """
    assert widths(ptx, "bf16") == (2, 2)
    assert widths(ptx, "fp32") == (1, 2)


def test_merge_arches_refuses_one_name_for_different_variants():
    v = next(v for op in specs.OPS for v in op.variants if len(v.arches) > 1)
    one, other = dataclasses.replace(v, arches=("sm80",)), dataclasses.replace(v, arches=("sm89",))
    assert specs.merge_arches([one, other])[0].arches == ("sm80", "sm89")
    with pytest.raises(ValueError, match=rf"{re.escape(v.name)}: sm80 and sm89 give this name different variants"):
        specs.merge_arches([one, dataclasses.replace(other, num_warps=v.num_warps * 2)])


def test_bias_gelu_forward_rows_agree_with_the_kernel():
    """The forward grid is sized by aot/specs/bias_gelu.py's BIAS_GELU_FWD_ROWS; the kernel's
    FWD_ROWS must take as many rows a block, or the grid over- or under-covers M (the kernel's
    row loop stays correct, but blocks idle or loop)."""
    source = (REPO / "kernels/cuda/bias_gelu.cu").read_text()
    defined = re.search(r"^#define FWD_ROWS\(TANH\) \(\(TANH\) \? (\d+) : (\d+)\)", source, re.M)
    assert defined, "kernels/cuda/bias_gelu.cu no longer defines FWD_ROWS(TANH) as expected"
    tanh, exact = int(defined.group(1)), int(defined.group(2))
    assert (exact, tanh) == specs.bias_gelu.BIAS_GELU_FWD_ROWS


def test_ada_layer_norm_loop_constants_agree_with_the_kernel():
    """The looped backward's shared-memory column sums are laid out for ADA_LOOP_THREADS threads
    and sized (by the spec's shared bytes) for ADA_BWD_LOOP_SMEM_COLS columns; the kernel's own
    defines must say the same, or a block would index past its shared memory."""
    source = (REPO / "kernels/cuda/ada_layer_norm.cu").read_text()
    threads = re.search(r"^#define ADA_LOOP_THREADS (\d+)$", source, re.M)
    cols = re.search(r"^#define ADA_LOOP_SMEM_COLS (\d+)$", source, re.M)
    assert threads and cols, "kernels/cuda/ada_layer_norm.cu no longer defines the loop constants"
    assert int(threads.group(1)) == specs.ada_layer_norm.ADA_LOOP_THREADS
    assert int(cols.group(1)) == specs.ada_layer_norm.ADA_BWD_LOOP_SMEM_COLS
    assert "sum_loop_c" + cols.group(1) in source


def test_rope_cuda_forms_agree_with_the_kernels():
    """The spec's CUDA C++ forms of rope and rms_norm_rope (head_dims, head groups a warp, warps a
    block at most) are the kernels' entry points: a grid sized for other heads a block would skip
    or repeat heads, and a block wider than the kernel's __launch_bounds__ fails to launch."""
    source = (REPO / "kernels/cuda/rms_norm_rope.cu").read_text()
    fam = specs.rms_norm_rope
    head = {int(d): int(p) for d, p in re.findall(r"^ROPE_FWD_DTYPES\((\d+), head, false, (\d+), \(32\)\)$",
                                                  source, re.M)}
    assert head == {d: fam.RMS_NORM_ROPE_CUDA_PASSES for d in fam.RMS_NORM_ROPE_CUDA}
    assert sorted(int(d) for d in re.findall(r"^ROPE_FWD_ROW\((\d+)\)$", source, re.M)) == list(fam.RMS_NORM_ROPE_CUDA)
    rows = re.findall(r"ROPE_FWD_DTYPES\(D, row_p(\d+), true, (\d+), \((\d+),", source)
    assert [(int(p), int(threads) // 32) for name, p, threads in rows if name == p] == list(fam.RMS_NORM_ROPE_CUDA_ROW)
    source = (REPO / "kernels/cuda/rope.cu").read_text()
    assert re.search(r"^constexpr int ROPE_PASSES = (\d+);$", source, re.M).group(1) == str(specs.rope.ROPE_CUDA_PASSES)
    assert sorted(int(d) for d in re.findall(r"^ROPE_DTYPES\((\d+)\)$", source, re.M)) == sorted(specs.rope.ROPE_CUDA)


def test_held_row_forms_agree_with_the_kernels():
    """Each held-row form of LayerNorm, AdaLN and RMSNorm holds (vectors in registers + in shared
    memory) x threads x 8 columns: the widest row its spec entry gives it, and its shared bytes
    are the slots the kernel indexes (a narrower kernel would leave columns unwritten, less
    shared memory overflow)."""
    for src, threads, threads_define, macro, forms, op_name in (
            ("layer_norm.cu", specs.layer_norm.LAYER_NORM_CUDA_THREADS, "LAYER_NORM_THREADS", "LN_FWD",
             specs.layer_norm.LAYER_NORM_CUDA, "layer_norm_fwd"),
            ("ada_layer_norm.cu", specs.ada_layer_norm.ADA_HELD_THREADS, "ADA_HELD_THREADS", "ADA_HELD",
             specs.ada_layer_norm.ADA_HELD, "ada_layer_norm_fwd"),
            ("rms_norm.cu", specs.rms_norm.RMS_NORM_CUDA_THREADS, "RMS_NORM_THREADS", "RMS_FWD",
             specs.rms_norm.RMS_NORM_CUDA, "rms_norm_fwd")):
        source = (REPO / "kernels/cuda" / src).read_text()
        assert re.search(rf"^#define {threads_define} (\d+)$", source, re.M).group(1) == str(threads)
        kernel = {name: (int(npt), int(snpt)) for name, npt, snpt in
                  re.findall(rf"^  {macro}\(T, (?:P, )?NAME, (\w+), (\d+), (\d+)[,)]", source, re.M)}
        assert {name: ((npt + snpt) * threads * 8, snpt) for name, (npt, snpt) in kernel.items()} == \
            {name: (widest, held) for name, widest, held in forms}, src
        form = lambda v: re.sub(r"_nw$", "", v.kernel).rsplit("_", 1)[1]   # noqa: E731 (rms_norm's _nw: no weight)
        shared = {(form(v), v.shared) for op in specs.OPS if op.name == op_name
                  for v in op.variants if form(v) in kernel}
        assert shared == {(name, held * threads * 16) for name, _, held in forms}, src


def test_layer_norm_row_form_agrees_with_the_kernel():
    """LayerNorm's rows up to LAYER_NORM_CUDA_ROW's width: the kernel's entry points hold the
    spec's vectors a thread in registers and none in shared memory, and the spec's block gives
    every width it takes enough threads (a whole warp, at most the kernel's launch bound)."""
    form, widest, vectors = specs.layer_norm.LAYER_NORM_CUDA_ROW
    source = (REPO / "kernels/cuda/layer_norm.cu").read_text()
    entries = re.findall(r"^  LN_FWD_ROW\(T, P, NAME, (\w+), (\d+), (-?\d+)\)", source, re.M)
    assert entries == [(form, str(vectors), "-1"), (f"{form}_wb", str(vectors), "3")]
    variants = [v for op in specs.OPS if op.name == "layer_norm_fwd" for v in op.variants
                if v.kernel.endswith((f"_{form}", f"_{form}_wb"))]
    assert len(variants) == 8 and all(v.shared == 0 for v in variants)
    block = variants[0].block[0]
    assert all(v.block[0] == block for v in variants)
    for n in (specs.layer_norm.LAYER_NORM_CUDA_ABOVE + 1, 3072, 4097, 6144, 12289, widest):
        threads = specs.launch_value(block, {"N": n})
        assert threads % 32 == 0 and threads <= specs.layer_norm.LAYER_NORM_CUDA_THREADS
        assert threads * vectors * 8 >= n > (threads - 32) * vectors * 8


def test_colsum_constants_agree_with_the_kernel():
    """colsum_loop's block is COLSUM_LANES(VEC) threads across by EW_THREADS / COLSUM_LANES down,
    EW_UNROLL rows a thread a trip: the spec's grid (colsum_cols columns a block) and the Python
    layer's row groups (COLSUM_TRIP rows a trip of a block, for the 16-byte variants) must
    count the same, or the grid would leave columns out or the threads make more trips."""
    source = (REPO / "kernels/cuda/elementwise.cuh").read_text()
    lanes = re.search(r"^#define COLSUM_LANES\(VEC\) \(\(VEC\) > 1 \? (\d+) : (\d+)\)", source, re.M)
    threads = re.search(r"^#define EW_THREADS (\d+)", source, re.M)
    unroll = re.search(r"^#define EW_UNROLL (\d+)", source, re.M)
    assert lanes and threads and unroll, "kernels/cuda/elementwise.cuh no longer defines the colsum constants"
    wide, narrow = int(lanes.group(1)), int(lanes.group(2))
    assert [specs.elementwise.colsum_cols(v) for v in (1, 2, 4, 8)] == [narrow, 2 * wide, 4 * wide, 8 * wide]
    ops = importlib.import_module("fusedaot.ops._common")
    assert ops.COLSUM_TRIP == int(threads.group(1)) // wide * int(unroll.group(1))


def test_fp8_gemm_sm90_cuda_constants_agree_with_the_kernel():
    """The CUDA C++ fp8_gemm kernel's tile, stages and barriers fix its shared memory and the
    TMA boxes it expects; the spec sizes the grid, the dynamic shared memory and the
    descriptors from its own copy of them, which must agree (a box of the wrong size would
    fill the stages with the wrong bytes, too little shared memory would fail the launch)."""
    source = (REPO / "kernels/cuda/fp8_gemm_sm90.cu").read_text()
    tile = re.search(r"^constexpr int BM = (\d+), BN = (\d+), BK = (\d+);", source, re.M)
    stages = re.search(r"^constexpr int STAGES = (\d+);", source, re.M)
    assert tile and stages, "kernels/cuda/fp8_gemm_sm90.cu no longer defines its tile as expected"
    bm, bn, bk = map(int, tile.groups())
    fam = specs.fp8_gemm
    for cfg in fam.FP8_GEMM_SM90_CUDA.values():
        assert cfg[:3] == (bm, bn, bk) and cfg[5] == int(stages.group(1)), cfg
    assert fam.FP8_GEMM_SM90_CUDA_SHARED == int(stages.group(1)) * (bm + bn) * bk + 1024 + 64
    a, b = fam.FP8_GEMM_SM90_CUDA_MAPS
    assert (a.box_cols, a.box_rows, b.box_cols, b.box_rows) == (bk, bm, bk, bn)


def test_reduce_finish_columns_agree_with_the_kernel():
    """reduce_finish's grid has a block for every FINISH_COLS outputs (aot/specs/reduce.py); the
    kernel's own FINISH_COLS must be the same, or outputs would be left unwritten or added twice."""
    source = (REPO / "kernels/cuda/reduce.cu").read_text()
    defined = re.search(r"^#define FINISH_COLS (\d+)$", source, re.M)
    assert defined, "kernels/cuda/reduce.cu no longer defines FINISH_COLS as expected"
    assert int(defined.group(1)) == specs.reduce.FINISH_COLS


def test_reduce_cols_block_agrees_with_the_kernel_and_the_python_layer():
    """reduce_cols' block (aot/specs/reduce.py) is the kernel's RED_COLS_THREADS, which sizes its
    shared row sums and sets its rows a trip; python/fusedaot/ops/reduce.py picks its tiles for
    that block and RED_COLS_UNROLL rows a trip."""
    source = (REPO / "kernels/cuda/reduce.cu").read_text()
    threads = re.search(r"^#define RED_COLS_THREADS (\d+)$", source, re.M)
    unroll = re.search(r"^#define RED_COLS_UNROLL (\d+)$", source, re.M)
    assert threads and unroll, "kernels/cuda/reduce.cu no longer defines RED_COLS_THREADS / RED_COLS_UNROLL"
    python = (REPO / "python/fusedaot/ops/reduce.py").read_text()
    assert int(threads.group(1)) == specs.reduce.COLS_THREADS
    assert re.search(rf"^_COLS_THREADS = {threads.group(1)}\b", python, re.M)
    assert re.search(rf"^_COLS_UNROLL = {unroll.group(1)}\b", python, re.M)
    for variant in next(op for op in specs.OPS if op.name == "reduce_cols").variants:
        assert variant.block == (str(specs.reduce.COLS_THREADS), "1", "1")


def test_reduce_bwd_cols_grid_agrees_with_the_kernel():
    """reduce_bwd_cols' grid (aot/specs/reduce.py) tiles RED_BWD_LANES vectors across by
    EW_THREADS / RED_BWD_LANES rows: a wider tile in the spec would leave columns unwritten, a
    taller one rows; its variants take only calls with dy along the inner dimension and a
    whole tile of columns, and every other call goes to ew_loop's form."""
    lanes = re.search(r"^#define RED_BWD_LANES (\d+)$", (REPO / "kernels/cuda/reduce.cu").read_text(), re.M)
    threads = re.search(r"^#define EW_THREADS (\d+)", (REPO / "kernels/cuda/elementwise.cuh").read_text(), re.M)
    assert lanes and threads and int(lanes.group(1)) == specs.reduce.BWD_LANES
    rows = int(threads.group(1)) // int(lanes.group(1))
    variants = next(op for op in specs.OPS if op.name == "reduce_bwd").variants
    cols = [v for v in variants if v.kernel.startswith("reduce_bwd_cols_")]
    assert len(cols) == len(variants) // 2 == 8
    for v in cols:
        vec = int(v.kernel.rsplit("_v", 1)[1])
        # both variants of a dtype take rows of at least a whole 16-byte tile (>= the variant's own)
        wide = specs.reduce.BWD_LANES * specs.elementwise.vec_of(v.dtype)
        assert v.block == (threads.group(1), "1", "1") and f"N >= {wide}" in v.when and wide >= 32 * vec
        assert v.when.split(" && ")[1] == "gcol != 0"
        for n, r, m in ((256, 9, 1), (4096, 8 * 65535 + 1, 3), (1000, 7, 70000)):
            args = dict(N=n, R=r, M=m)
            grid = [specs.launch_value(e, args) for e in v.grid]
            assert grid[0] * int(lanes.group(1)) * vec >= n > (grid[0] - 1) * int(lanes.group(1)) * vec
            assert grid[1] == min(-(-r // rows), 65535) and grid[2] == min(m, 65535)


def test_layer_norm_backward_split_agrees_with_the_python_layer():
    """python/fusedaot/ops/layer_norm.py sends rows wider than its _SPLIT_ABOVE to the two-kernel
    backward and sizes that grid by _DX_COLUMNS and _DX_ROWS; the spec stops the fused backward's
    single blocks at LAYER_NORM_SPLIT_ABOVE and gives bwd_dx LAYER_NORM_DX's columns and rows.  They
    must be the same numbers, or rows would reach the fused kernel's slow looped form or the
    grid would be sized for another tile."""
    ops = importlib.import_module("fusedaot.ops.layer_norm")
    assert ops._SPLIT_ABOVE == specs.layer_norm.LAYER_NORM_SPLIT_ABOVE
    assert (ops._DX_COLUMNS, ops._DX_ROWS) == specs.layer_norm.LAYER_NORM_DX[:2]
    widest = max(v.constexprs["BLOCK_N"] for op in specs.OPS if op.name == "layer_norm_bwd"
                 for v in op.variants if not v.constexprs["LOOPED"])
    assert widest == specs.layer_norm.LAYER_NORM_SPLIT_ABOVE


def test_layer_norm_only_the_wide_forward_unrolls(monkeypatch):
    """Only the forward's "loop_wide" entry unrolls (the kernel's UNROLL); a LayerNorm table
    entry asking for it elsewhere is an error at build time, not a factor silently dropped."""
    for direction, table in (("fwd", {"loop": [1, 32, 1, 16384, 4]}),
                             ("bwd", {"loop_wide_above": 32768, "loop_wide": [1, 32, 1, 16384, 2]})):
        monkeypatch.setattr(specs.layer_norm, "tuning", lambda arch: {f"layer_norm_{direction}": {"2": table}})
        with pytest.raises(ValueError, match="only the forward's \"loop_wide\" entry may unroll"):
            specs.layer_norm.layer_norm_configs("sm90", direction, "bf16")


def test_layer_norm_dtype_entry_overrides_its_size(monkeypatch):
    """A dtype's own entry ("bf16") adds keys to its element size's ("2"): bf16 gets the wide
    loop, fp16 keeps the shared one, and unaligned rows drop it."""
    monkeypatch.setattr(specs.layer_norm, "tuning", lambda arch: {"layer_norm_fwd": {
        "2": {"loop": [1, 16]}, "bf16": {"loop_wide_above": 32768, "loop_wide": [1, 32, 1, 16384, 2]}}})
    loops = lambda dtype, aligned=True: [c for c in specs.layer_norm.layer_norm_configs("sm90", "fwd", dtype, aligned)
                                         if c[4]]
    assert loops("bf16") == [(specs.layer_norm.LAYER_NORM_LOOP[0], 1, 16, 1, True, 32768, None),
                             (16384, 1, 32, 1, True, None, 2)]
    assert loops("fp16") == [(specs.layer_norm.LAYER_NORM_LOOP[0], 1, 16, 1, True, None, None)]
    assert loops("bf16", aligned=False) == loops("fp16", aligned=False)
    wide = [v for op in specs.OPS if op.name == "layer_norm_fwd" for v in op.variants if v.constexprs.get("UNROLL")]
    assert wide and all(v.dtype == "bf16" and "N > 32768" in v.when and not v.unaligned for v in wide)

def test_a_partial_build_brings_the_families_its_ops_call():
    """A partial library (--families) gets the families its Python ops call into: the column
    sums of the broadcast backwards run reduce_finish, fp8_gemm quantizes with fp8's kernels."""
    names = lambda fams: {op.name for op in specs.ops_of(fams)}   # noqa: E731
    assert specs.with_needs(["bias_gelu"]) == {"bias_gelu", "reduce"}
    assert {"reduce_finish", "bias_gelu_bwd"} <= names(["bias_gelu"])
    assert {"reduce_finish", "add_relu_bwd", "mul_tanh_bwd"} <= names(["add_relu", "mul_tanh"])
    assert {"fp8_gemm", "fp8_quantize_row"} <= names(["fp8_gemm"])
    assert names(["rms_norm"]) == {op.name for op in specs.rms_norm.OPS}
    order = [op.name for op in specs.OPS]
    picked = [op.name for op in specs.ops_of(["mul_tanh", "bias_gelu"])]
    assert picked == sorted(picked, key=order.index), "ops_of keeps the table's order"
    with pytest.raises(ValueError, match=r"unknown op families \['nope'\]"):
        specs.ops_of(["nope"])
