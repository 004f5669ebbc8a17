"""The spec table: every kernel variant fusedaot ships, and the rule that selects it.

The build (aot/build.py), the generated C dispatch, manifest.json, the tests and
`python -m fusedaot` all read this table; nothing about a kernel is written twice.
Each op family has one module here, named like its kernel source (aot/specs/rms_norm.py
for kernels/triton/rms_norm.py) and exporting `OPS`; FAMILIES lists them in table order.

The package imports nothing beyond the standard library, so that the tests can
enumerate the table on a machine without Triton.
"""
from __future__ import annotations

import importlib

from .core import *  # noqa: F401,F403  (the vocabulary: Op, Variant, Param, DTYPES, ...)
from .core import ARCHES, Op

FAMILIES = (
    "rms_norm",
    "bias_gelu",
    "add_relu",
    "mul_tanh",
    "gelu_dropout",
    "reduce",
    "fp8",
    "fp8_gemm",
    "gated_mlp",
    "attention_scores",
    "layer_norm",
    "ada_layer_norm",
    "swiglu",
    "rope",
    "rms_norm_rope",
)



def with_needs(families) -> set[str]:
    """`families` and every family they need (a module's NEEDS: the C functions of another
    family its Python op calls), transitively."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown op families {sorted(unknown)}; expected some of {list(FAMILIES)}")
    out, todo = set(), list(families)
    while todo:
        family = todo.pop()
        if family not in out:
            out.add(family)
            todo.extend(getattr(importlib.import_module(f"{__name__}.{family}"), "NEEDS", ()))
    return out


def ops_of(families) -> tuple[Op, ...]:
    """The ops of the given families and of the families they need, in table order."""
    wanted = with_needs(families)
    return tuple(op for family in FAMILIES if family in wanted
                 for op in importlib.import_module(f"{__name__}.{family}").OPS)


OPS: tuple[Op, ...] = ops_of(FAMILIES)


def enumerate_kernels(arches=ARCHES):
    """(op, variant, arch) for every image the build must produce."""
    for op in OPS:
        for v in op.variants:
            for arch in arches:
                if arch in op.arches and arch in v.arches:
                    yield op, v, arch
