"""Store a library's images in LZMA blocks (decoded by aot/runtime/fa_lzma.h).

Variants of one kernel compile to images that share most of their bytes; the wheel's
deflate sees 32 KiB back and so stores each image whole.  Consecutive images (variants of
one kernel lie together in the table) are grouped into blocks of at most BLOCK_BYTES, each
compressed as one raw LZMA stream: measured on the sm90 library, 28.6 MB of images deflate
to 8.2 MB and pack to 5.0 MB.  The block bounds how much one first call decodes (about
1 ms at 130 MB/s).  Images start at 16-byte offsets in their block, as the driver expects
of a cubin in memory.
"""
from __future__ import annotations

import hashlib
import lzma
import os
from pathlib import Path

BLOCK_BYTES = 128 << 10
ALIGN = 16
PRESET = 6
# Literal and position contexts: SASS is 16-byte instructions (16 position states, literal
# context from the previous byte's top bit only), PTX is text (3 bits of the previous byte).
# Measured on sm90 / PTX images in 128 KiB blocks: 4.95 MB against 5.10 MB with LZMA's
# defaults (lc=3 pb=2), and 4.68 MB against 4.75 MB.
PROPS = {"cubin": {"lc": 1, "lp": 0, "pb": 4}, "ptx": {"lc": 3, "lp": 0, "pb": 0}}


def kind(arch: str) -> str:
    """The PROPS entry of an arch's library: PTX text for `ptx`, else cubins."""
    return "ptx" if arch == "ptx" else "cubin"


def props_byte(props: dict) -> int:
    """The LZMA properties byte the decoder takes: (pb * 5 + lp) * 9 + lc."""
    return (props["pb"] * 5 + props["lp"]) * 9 + props["lc"]


def plan(sizes: list[int]) -> list[tuple[int, int]]:
    """(block, offset) of each image: in order, 16-byte aligned, a new block when the next
    image would take the block past BLOCK_BYTES (an image larger than that is a block alone)."""
    where, block, end = [], 0, 0
    for size in sizes:
        offset = -(-end // ALIGN) * ALIGN
        if end and offset + size > BLOCK_BYTES:
            block, offset = block + 1, 0
        where.append((block, offset))
        end = offset + size
    return where


def blocks(images: list[bytes]) -> list[bytes]:
    """The uncompressed blocks of `images` laid out as plan() says (zeros between images)."""
    out: list[bytearray] = []
    for image, (block, offset) in zip(images, plan([len(i) for i in images])):
        if block == len(out):
            out.append(bytearray())
        out[block] += bytes(offset - len(out[block])) + image
    return [bytes(b) for b in out]


def compress(raw: bytes, kind: str, cache: Path | None = None) -> bytes:
    """`raw` as a raw LZMA1 stream with PROPS[kind], cached by content under `cache`."""
    props = PROPS[kind]
    key = hashlib.sha256(repr((PRESET, sorted(props.items()))).encode() + raw).hexdigest()
    path = cache / "lzma" / key[:2] / key if cache else None
    if path and path.exists():
        return path.read_bytes()
    out = lzma.compress(raw, format=lzma.FORMAT_RAW,
                        filters=[{"id": lzma.FILTER_LZMA1, "preset": PRESET, "dict_size": 1 << 20, **props}])
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(out)
        os.replace(tmp, path)
    return out
