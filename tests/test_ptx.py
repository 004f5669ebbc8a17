"""aot/ptx.py: the pass that waits for a wgmma chain before its accumulators are read (no GPU,
no Triton needed).  tests/test_fp8_gemm_build.py checks what it makes of the shipped kernels."""
from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aot.ptx import wait_for_wgmma_results  # noqa: E402

FENCE = "wgmma.fence.sync.aligned;"
COMMIT = "wgmma.commit_group.sync.aligned;"
WAIT0 = "wgmma.wait_group.sync.aligned 0;"


def wgmma(regs, scale_d="1"):
    return f"wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {{{','.join(regs)}}}, %rd1, %rd2, {scale_d}, 1, 1;"


def statements(ptx: str) -> list[str]:
    return [line.strip() for line in ptx.splitlines() if line.strip()]


def run(lines: list[str]) -> list[str]:
    return statements(wait_for_wgmma_results("\n".join("\t" + s for s in lines) + "\n"))


def test_a_promoted_chain_is_waited_for_before_its_additions():
    """Triton's promotion: two chains into fresh accumulators, each folded in by fp32 additions
    with no wait between; the pass commits and waits before each chain's first addition and
    fences the next chain."""
    src = [FENCE,
           wgmma(["%r1", "%r2"], "0"), wgmma(["%r1", "%r2"], "%p9"),
           "add.f32 %r10, %r10, %r1;", "add.f32 %r11, %r11, %r2;",
           "add.s64 %rd3, %rd4, 512;",
           wgmma(["%r3", "%r4"], "0"), wgmma(["%r3", "%r4"], "%p9"),
           "// a comment naming %r3 is not a read",
           "add.f32 %r12, %r12, %r3;", "add.f32 %r13, %r13, %r4;",
           COMMIT, WAIT0]
    assert run(src) == (src[:3] + [COMMIT, WAIT0] + src[3:6] + [FENCE] + src[6:9] + [COMMIT, WAIT0] + src[9:])


def test_a_chain_already_waited_for_is_unchanged():
    src = [FENCE, wgmma(["%r1", "%r2"], "0"), wgmma(["%r1", "%r2"]), COMMIT, WAIT0,
           "cvt.rn.bf16x2.f32 %r20, %r2, %r1;"]
    assert run(src) == src


def test_a_pipelined_wait_releases_only_the_older_groups():
    """wgmma.wait_group 1 leaves the newest group in flight: a read of the older group's
    registers needs nothing, a read of the newest one's needs the wait."""
    src = [wgmma(["%r1"]), COMMIT, wgmma(["%r5"]), COMMIT, "wgmma.wait_group.sync.aligned 1;",
           "add.f32 %r9, %r9, %r1;", "add.f32 %r9, %r9, %r5;"]
    assert run(src) == src[:6] + [COMMIT, WAIT0] + src[6:]


def test_writing_an_accumulator_in_flight_also_waits():
    src = [wgmma(["%r1"]), "mov.b32 %r1, 0;"]
    assert run(src) == [src[0], COMMIT, WAIT0, src[1]]


def test_a_branch_or_its_target_ends_the_tracking():
    """A wait inserted after a branch target could be reached by part of a warp group only:
    the pass leaves those reads to ptxas."""
    for boundary in ("$L__BB0_2:", "@%p1 bra $L__BB0_2;", "bra.uni $L__BB0_3;"):
        src = [wgmma(["%r1"]), boundary, "add.f32 %r9, %r9, %r1;"]
        assert run(src) == src
    debug_label = [wgmma(["%r1"]), "$L__tmp7:", "add.f32 %r9, %r9, %r1;"]
    assert run(debug_label) == debug_label[:2] + [COMMIT, WAIT0] + debug_label[2:]


def test_ptx_without_wgmma_comes_back_unchanged():
    ptx = "//\n.version 8.7\n.target sm_90a\n\tadd.f32 %r1, %r2, %r3;\n\tret;\n"
    assert wait_for_wgmma_results(ptx) == ptx
    assert wait_for_wgmma_results(ptx.rstrip("\n")) == ptx.rstrip("\n")
