"""The spec table's vocabulary: ops, variants, parameters, dtype codes, alignment tests.

An `Op` is one exported C function, `fusedaot_<op>(stream, device, dtype, <params>)`.
Each `Variant` is one compiled kernel; the generated dispatch tries the variants of
an op in table order and launches the first whose `when` condition (a C expression
over the op's parameters) holds.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

ARCHES = ("sm80", "sm89", "sm90", "ptx")
# Triton target for each library; the PTX library carries compute_80 PTX that the
# driver JIT-compiles for GPUs newer than sm90.
ARCH_CC = {"sm80": 80, "sm89": 89, "sm90": 90, "ptx": 80}

# dtype codes of the C ABI (the Python layer maps torch dtypes onto them).
DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2, "fp64": 3}
ELEM_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8, "u8": 1}  # u8: FP8 data passed as bytes
CUDA_TYPE = {"fp32": "float", "fp16": "half_t", "bf16": "bf16_t", "fp64": "double"}
FLOAT_DTYPES = ("bf16", "fp16", "fp32")   # what every op takes; fp64 only where an op says so

C_TYPES = {"ptr": "void*", "i32": "int32_t", "i64": "int64_t", "f32": "float"}
TRITON_SCALAR = {"i32": "i32", "i64": "i64", "f32": "fp32"}


@dataclass(frozen=True)
class Param:
    """One argument of an op's C function after (stream, device, dtype).

    ctype: ptr | i32 | i64 | f32.  elem: for pointers, the element type: "T" is the
    variant's dtype, anything else ("fp32") is fixed.  For an integer in `aligned` (a
    stride or width), the type of the elements it counts, which sets its alignment test.
    """

    name: str
    ctype: str
    elem: str = "T"


@dataclass(frozen=True)
class TensorMap:
    """A TMA descriptor the dispatch encodes before a CUDA C++ variant's launch and passes as
    one of its first kernel arguments (a __grid_constant__ CUtensorMap): the 2-D matrix of
    bytes at `ptr` (C expressions over the op's parameters), `rows` x `cols` with rows
    `stride` bytes apart, copied in boxes of box_rows x box_cols with the 128-byte swizzle
    that wgmma reads; out-of-bounds elements read as zeros."""
    ptr: str
    cols: str
    rows: str
    stride: str
    box_cols: int
    box_rows: int


@dataclass(frozen=True)
class Variant:
    name: str                      # unique, names the generated file: rms_norm_fwd_bf16_b4096_w8_a16
    dtype: str                     # fp16 | bf16 | fp32
    kernel: str                    # Triton function name or CUDA C++ symbol
    when: str                      # C condition on the op's params that selects this variant
    grid: tuple[str, str, str]     # C expressions; `dev->sms` is the device's SM count
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4             # Triton only
    num_stages: int = 1            # Triton only
    maxnreg: int | None = None     # Triton only: registers a thread at most (more blocks an SM)
    block: tuple[str, str, str] | None = None   # CUDA C++ only: threads per block
    shared: int = 0                # CUDA C++ only: dynamic shared memory bytes
    aligned: tuple[str, ...] = ()  # params that must be 16-byte aligned (pointers) or
                                   # multiples of 16 bytes (row strides, widths) for this variant
    unaligned: bool = False        # the fallback for calls that fail the `aligned` test: the
                                   # test is negated in `when` and no alignment is assumed
    arches: tuple[str, ...] = ARCHES
    source: str | None = None      # a CUDA C++ source for this variant of a Triton op (None: the op's)
    tensor_maps: tuple[TensorMap, ...] = ()   # CUDA C++ only: descriptors passed before the op's params


@dataclass(frozen=True)
class Op:
    name: str
    lang: str                      # triton | cuda
    source: str                    # path from the repository root
    params: tuple[Param, ...]
    variants: tuple[Variant, ...]
    arches: tuple[str, ...] = ARCHES
    doc: str = ""
    dtypes: tuple[str, ...] = FLOAT_DTYPES  # the dtype codes the C function accepts

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def lang_of(self, v: Variant) -> str:
        """triton | cuda: how variant v is compiled (a variant may bring a CUDA C++ source)."""
        return "cuda" if v.source else self.lang

    def source_of(self, v: Variant) -> str:
        return v.source or self.source


def align_elements(p: Param, v: Variant) -> int:
    """16 bytes in elements of what the integer parameter `p` counts."""
    return 16 // ELEM_BYTES[v.dtype if p.elem == "T" else p.elem]


def alignment_condition(op: Op, v: Variant) -> str:
    """The C test that a call meets `v.aligned`: pointers 16-byte aligned, integers
    (strides, widths in elements) a multiple of 16 bytes' worth of elements.  For an
    `unaligned` variant, the negation."""
    terms = []
    for name in v.aligned:
        p = op.param(name)
        if p.ctype == "ptr":
            terms.append(f"FA_ALIGNED16({name})")
        else:
            terms.append(f"({name} % {align_elements(p, v)} == 0)")
    test = " && ".join(terms) or "1"
    return f"!({test})" if v.unaligned else test


def python_condition(cond: str) -> str:
    """A dispatch condition (C's &&, ||, ! and FA_ALIGNED16) as a Python expression over the same
    names: the tests' check that one variant takes each call, the benchmarks' choice of the
    kernel a call runs."""
    cond = re.sub(r"FA_ALIGNED16\((\w+)\)", r"(\1 % 16 == 0)", cond)
    cond = cond.replace("&&", " and ").replace("||", " or ")
    return re.sub(r"!(?!=)", " not ", cond)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def held_row_forms(lower: int, forms, threads: int) -> list[tuple[str, str, str, int]]:
    """(tag, width test, block, shared bytes) of the forms of kernels/cuda/held_row.cuh on blocks
    of `threads`: forms are (tag, widest N, vectors a thread in shared memory), narrowest first,
    each taking the rows wider than the one before it (the first: wider than `lower`)."""
    out = []
    for tag, upper, in_shared in forms:
        out.append((tag, f"N > {lower} && N <= {upper}", str(threads), in_shared * threads * 16))
        lower = upper
    return out


def launch_value(expr: str, args: dict, sms: int = 1) -> int:
    """A grid or block expression (the generated C's fa_cdiv, fa_min, fa_max, dev->sms and casts)
    evaluated for a call's arguments, on a device of `sms` SMs: what the tests expect a launch to
    be.  Python's integers do not overflow, so the casts drop out."""
    env = dict(args, fa_cdiv=cdiv, fa_min=min, fa_max=max)
    return int(eval(re.sub(r"\(u?int(32|64)_t\)", "", expr.replace("dev->sms", str(sms))), {}, env))


TUNING_DIR = Path(__file__).resolve().parent.parent / "tuning"


def tuning(arch: str) -> dict:
    """The arch's tuning table (aot/tuning/<arch>.json, written by `python -m aot.tune`), or {}."""
    path = TUNING_DIR / f"{arch}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def block_entries(table: dict, blocks, widest: int) -> list[tuple]:
    """The single-block width buckets of a norm's tuning table, narrowest first: (BLOCK_N, ROWS,
    num_warps, num_stages, False, BLOCK_N, None) for each heuristic (BLOCK_N, ROWS, num_warps)
    of `blocks` up to `widest`, the table's "<BLOCK_N>": [ROWS, num_warps(, num_stages)] where
    it has one (the tuple's form: BLOCK_N, ROWS, num_warps, num_stages, looped, widest N,
    unroll)."""
    out = []
    for block, rows, warps in blocks:
        if block <= widest:
            rows, warps, stages = [*table.get(str(block), (rows, warps)), 1][:3]
            out.append((block, rows, warps, stages, False, block, None))
    return out


def loop_entry(entry, chunk: int) -> tuple:
    """(chunk, ROWS, num_warps, num_stages, unroll) of a looped form's tuning entry [ROWS,
    num_warps(, num_stages(, chunk(, unroll)))]: one stage, `chunk` and no unrolling unless it
    says otherwise.  unroll: chunks whose loads a program issues at once (None: one)."""
    rows, warps, stages, chunk, unroll = [*entry, *(None, None, 1, chunk, None)[len(entry):]]
    return chunk, rows, warps, stages, unroll


def merge_arches(variants):
    """One Variant per name, valid on every arch that produced it.  Variants of one name must
    be the same but for their arches (a name stands for one kernel config and condition)."""
    merged = {}
    for v in variants:
        old = merged.get(v.name)
        if old is not None and replace(old, arches=()) != replace(v, arches=()):
            raise ValueError(f"{v.name}: {old.arches[0]} and {v.arches[0]} give this name different variants")
        merged[v.name] = v if old is None else replace(old, arches=old.arches + v.arches)
    return tuple(merged.values())


