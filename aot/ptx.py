"""A pass over Triton's PTX before ptxas assembles it: wait for a wgmma chain's results before
the first instruction that touches them.

Why: for a promoted FP8 dot (`tl.dot(..., max_num_imprecise_acc=128)`) Triton 3.6 emits each
chain of wgmmas into a fresh accumulator and then the fp32 additions that fold it into the
running one, with no `wgmma.wait_group` between them.  Reading a wgmma's accumulator before
waiting is not allowed, so ptxas injects the wait itself (info C7517) and, because a non-wgmma
instruction reads an accumulator inside the pipeline stage, serialises every wgmma of the
kernel (C7514): a wait after each instruction instead of one per chain.  fp8_gemm's promoted
sm90 kernels lost 15-20% of their throughput to that (docs/benchmarks.md).  Committing the
chain and waiting for it just before that first access is what ptxas needs to keep the chain
asynchronous; a `wgmma.fence` then goes before the next wgmma, as the PTX ISA asks of
registers that other instructions touched.

The pass works on straight-line code only: a branch or a branch target ends what it tracks (a
wait inserted there could be reached by part of a warp group), and leaves ptxas to do as
before.  PTX without wgmma comes back unchanged.
"""
from __future__ import annotations

import re

_REGISTER = re.compile(r"%[a-z]+[0-9]+")
_COMMIT_AND_WAIT = ("\twgmma.commit_group.sync.aligned;", "\twgmma.wait_group.sync.aligned 0;")
_FENCE = "\twgmma.fence.sync.aligned;"


def _is_block_boundary(stmt: str) -> bool:
    """A branch target (`$L__BB0_3:`; `$L__tmp` labels are debug-line markers) or a branch."""
    if stmt.endswith(":"):
        return not stmt.startswith("$L__tmp")
    op = stmt.split()[1] if stmt.startswith("@") and len(stmt.split()) > 1 else stmt.split()[0]
    return op.split(".")[0] in ("bra", "brx", "ret", "exit", "call")


def wait_for_wgmma_results(ptx: str) -> str:
    """`ptx` with `wgmma.commit_group; wgmma.wait_group 0` before the first non-wgmma instruction
    that names a register an unfinished wgmma writes, and a `wgmma.fence` before the wgmma that
    follows such a wait."""
    out = []
    open_group: set[str] = set()        # accumulators of wgmmas not yet committed
    groups: list[set[str]] = []         # committed, not yet waited for; oldest first
    fence_needed = False
    for line in ptx.splitlines():
        stmt = line.strip()
        if not stmt or stmt.startswith("//"):
            pass
        elif stmt.startswith("wgmma.mma_async"):
            if fence_needed:
                out.append(_FENCE)
                fence_needed = False
            open_group |= set(_REGISTER.findall(stmt[stmt.index("{"):stmt.index("}")]))
        elif stmt.startswith("wgmma.fence"):
            fence_needed = False
        elif stmt.startswith("wgmma.commit_group"):
            if open_group:
                groups.append(open_group)
            open_group = set()
        elif stmt.startswith("wgmma.wait_group"):
            keep = int(stmt.split()[-1].rstrip(";"))
            groups = groups[-keep:] if keep else []
        elif _is_block_boundary(stmt):
            open_group, groups, fence_needed = set(), [], False
        elif open_group or groups:
            named = set(_REGISTER.findall(stmt))
            if any(named & g for g in (open_group, *groups)):
                out.extend(_COMMIT_AND_WAIT)
                open_group, groups, fence_needed = set(), [], True
        out.append(line)
    return "\n".join(out) + ("\n" if ptx.endswith("\n") else "")
