"""The image store: blocks laid out by aot/pack.py, decoded by aot/runtime/fa_lzma.h.

The decoder is compiled here into a small program (with AddressSanitizer and UBSan where the
compiler has them) and checked against Python's lzma: every byte of every stream decodes as
Python's compressor wrote it, for each codec the build uses and other literal/position
contexts, in one run or resumed a few bytes at a time; damaged streams stop with a reason
and never read or write outside their buffers.  The installed libraries are checked end to
end by test_runtime.py (every image unpacked byte for byte).
"""
from __future__ import annotations

import lzma
import random
import subprocess
import sys

import pytest

from conftest import CC, REPO

sys.path.insert(0, str(REPO))
try:
    from aot import pack
finally:
    sys.path.remove(str(REPO))

# Decode each stream given on the command line as "props raw_size step stream expected";
# expected "-" means the stream is damaged: decoding may fail (say why) or not, but stays
# in bounds.  Prints one line per stream: "ok", "differs" or "error: <reason>".
CHECK = r"""
#include <stdio.h>
#include <stdlib.h>
#include "fa_lzma.h"

static unsigned char* slurp(const char* path, size_t* n) {
  FILE* f = fopen(path, "rb");
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char* p = malloc(*n ? *n : 1);
  if (fread(p, 1, *n, f) != *n) exit(2);
  fclose(f);
  return p;
}

int main(int argc, char** argv) {
  for (int a = 1; a + 4 < argc; a += 5) {
    const unsigned props = (unsigned)atoi(argv[a]);
    const size_t size = (size_t)atol(argv[a + 1]), step = (size_t)atol(argv[a + 2]);
    size_t n, m = 0;
    unsigned char* in = slurp(argv[a + 3], &n);
    unsigned char* want = argv[a + 4][0] == '-' ? NULL : slurp(argv[a + 4], &m);
    unsigned char* out = malloc(size);
    fa_lzma_t* d = malloc(sizeof *d);
    int rc = fa_lzma_init(d, props, in, n, out, size);
    for (size_t until = step; !rc && d->out_at < size; until += step) rc = fa_lzma_run(d, until);
    if (rc) printf("error: %s\n", d->error);
    else if (d->out_at != size || (want && (m != size || memcmp(out, want, size)))) printf("differs\n");
    else printf("ok\n");
    free(in), free(want), free(out), free(d);
  }
  return 0;
}
"""


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    """Run the decoder on [(props, raw bytes or None if damaged, stream, step)]; its verdicts."""
    if CC is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("lzma")
    (d / "check.c").write_text(CHECK)
    base = [CC, "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-I", str(REPO / "aot" / "runtime"),
            "-o", str(d / "check"), str(d / "check.c")]
    sanitized = subprocess.run(base[:1] + ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"] + base[1:],
                               capture_output=True)
    if sanitized.returncode:  # no sanitizer runtime here: the plain build still checks every result
        subprocess.run(base, check=True)

    def run(cases):
        args = []
        for i, (props, raw, stream, step) in enumerate(cases):
            (d / f"{i}.lzma").write_bytes(stream)
            if raw is not None:
                (d / f"{i}.raw").write_bytes(raw)
            size = len(raw) if raw is not None else 4096
            args += [str(props), str(size), str(step), str(d / f"{i}.lzma"), str(d / f"{i}.raw") if raw is not None else "-"]
        out = subprocess.run([str(d / "check"), *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]  # a sanitizer report fails the run
        return out.stdout.splitlines()
    return run


def _compress(raw: bytes, lc: int, lp: int, pb: int) -> bytes:
    return lzma.compress(raw, format=lzma.FORMAT_RAW,
                         filters=[{"id": lzma.FILTER_LZMA1, "preset": 6, "lc": lc, "lp": lp, "pb": pb}])


def _samples() -> dict[str, bytes]:
    """Data shaped like the images: 16-byte "instructions" drawn from a small set with varying
    fields (SASS), text with repeated lines (PTX), noise, runs, and the smallest sizes."""
    rng = random.Random(1)
    ops = [rng.randbytes(16) for _ in range(40)]
    sass = b"".join(bytes(b ^ (rng.randrange(4) if j in (2, 3) else 0) for j, b in enumerate(rng.choice(ops)))
                    for _ in range(6000))
    lines = [f"\tld.global.v4.b32 {{%r{i}, %r{i + 1}, %r{i + 2}, %r{i + 3}}}, [%rd{i % 7}+{16 * i}];\n"
             for i in range(64)]
    ptx = "".join(rng.choice(lines) for _ in range(2000)).encode() + b"\0"
    return {"sass": sass, "ptx": ptx, "noise": rng.randbytes(5000), "run": b"\0" * 70000 + b"\1",
            "one": b"x", "two": b"xy"}


def test_streams_decode_as_python_wrote_them(decoder):
    contexts = [tuple(pack.PROPS[k][x] for x in ("lc", "lp", "pb")) for k in sorted(pack.PROPS)]
    contexts += [(3, 0, 2), (0, 4, 4), (4, 0, 0), (2, 2, 3)]  # LZMA's default and the extremes
    cases, names = [], []
    for name, raw in _samples().items():
        for lc, lp, pb in contexts:
            stream = _compress(raw, lc, lp, pb)
            for step in (len(raw), 1, 777):
                cases.append(((pb * 5 + lp) * 9 + lc, raw, stream, step))
                names.append((name, lc, lp, pb, step))
    verdicts = decoder(cases)
    assert [n for n, v in zip(names, verdicts) if v != "ok"] == [], verdicts


def test_blocks_decode_to_their_images(decoder):
    """pack.blocks and pack.compress as the build calls them: every image at its planned offset."""
    rng = random.Random(2)
    sass = _samples()["sass"]
    images = [sass[rng.randrange(40000):][:rng.randrange(1, 60000)] for _ in range(12)] + [sass * 3]
    where = pack.plan([len(i) for i in images])
    raws = pack.blocks(images)
    assert len(raws) >= 3 and all(len(r) <= pack.BLOCK_BYTES for r in raws[:-1])
    for image, (block, offset) in zip(images, where):
        assert offset % pack.ALIGN == 0 and raws[block][offset:offset + len(image)] == image
    props = pack.props_byte(pack.PROPS["cubin"])
    assert decoder([(props, raw, pack.compress(raw, "cubin"), 4096) for raw in raws]) == ["ok"] * len(raws)


def test_plan_keeps_order_alignment_and_bounds():
    assert pack.plan([]) == []
    assert pack.plan([1, 1]) == [(0, 0), (0, 16)]
    assert pack.plan([pack.BLOCK_BYTES - 20, 4, 5]) == [(0, 0), (0, pack.BLOCK_BYTES - 16), (1, 0)]
    big = 3 * pack.BLOCK_BYTES
    assert pack.plan([10, big, 10]) == [(0, 0), (1, 0), (2, 0)]  # an image larger than a block: a block alone
    # the runtime finds a block's images by binary search (fa_images.c): blocks in table order, none skipped
    rng = random.Random(4)
    blocks = [b for b, _ in pack.plan([rng.choice((16, 5000, 70000, 200000)) for _ in range(300)])]
    assert blocks[0] == 0 and all(b - a in (0, 1) for a, b in zip(blocks, blocks[1:]))
    assert pack.props_byte({"lc": 3, "lp": 0, "pb": 2}) == 0x5D  # LZMA's usual properties byte


def test_damaged_streams_stop_in_bounds(decoder):
    """Cut short, bytes flipped, a wrong first byte, impossible properties: the decoder says why
    or produces other bytes, and never touches memory outside its buffers (the sanitizers)."""
    raw = _samples()["sass"][:20000]
    props = pack.props_byte(pack.PROPS["cubin"])
    stream = _compress(raw, 1, 0, 4)
    rng = random.Random(3)
    cases = [(props, None, stream[:cut], 4096) for cut in (0, 1, 5, 6, len(stream) // 2, len(stream) - 40)]
    for _ in range(150):
        bad = bytearray(stream)
        for _ in range(rng.randrange(1, 4)):
            bad[rng.randrange(5, len(bad))] ^= 1 << rng.randrange(8)
        cases.append((props, None, bytes(bad), rng.choice((1, 4096))))
    verdicts = decoder(cases)
    assert all(v in ("ok", "differs") or v.startswith("error: ") for v in verdicts), verdicts
    assert verdicts[:3] == ["error: the stream ends early"] * 3
    assert sum(v.startswith("error: ") for v in verdicts) > 30  # most damage is detected
    wrong = decoder([(props, raw, b"\1" + stream[1:], 4096), (9 * 5 * 5, raw, stream, 4096),
                     ((0 * 5 + 4) * 9 + 1, raw, stream, 4096)])
    assert wrong == ["error: the stream does not start with 0"] + ["error: unsupported stream properties"] * 2
