"""The AOT step: compile every spec for every arch, generate C, write the manifest.

    python -m aot.build --out DIR [--arch sm80,sm89,sm90,ptx] [--jobs N] [--cache DIR]
                              [--families rms_norm,...]

Writes DIR/<arch>/{images/*.bin, blocks/*.lzma, images_<arch>.S, dispatch_<arch>.c},
DIR/include/fusedaot.h,
DIR/manifest.json (everything built), DIR/ops.json (the same without the kernel list: what the
package reads at run time) and DIR/sources.cmake (the file lists CMake builds from).
Needs Triton and NVRTC (PyPI wheels), no GPU and no driver.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from . import codegen, compile as cc, pack, specs

# Oldest driver for each PTX ISA version (CUDA toolkit release notes).
PTX_ISA_DRIVER = {"8.0": 525, "8.1": 530, "8.2": 535, "8.3": 545, "8.4": 550, "8.5": 555,
                  "8.6": 560, "8.7": 570, "8.8": 575, "9.0": 580}
CUBIN_MIN_DRIVER = 525  # CUDA 12.x cubins run on any r525+ driver (minor-version compatibility)

VERSION = (Path(__file__).resolve().parent.parent / "python" / "fusedaot" / "VERSION").read_text().strip()


def _job(kind: str, name: str, arch: str, cache: str):
    """Worker: compile one Triton variant (kind=op name) or one CUDA source (kind='cuda')."""
    t0 = time.perf_counter()
    if kind == "cuda":
        image, meta, hit = cc.compile_cuda(name, arch, Path(cache))
    else:
        op = next(o for o in specs.OPS if o.name == kind)
        v = next(x for x in op.variants if x.name == name)
        image, meta, hit = cc.compile_triton(op, v, arch, Path(cache))
    return image, meta, hit, time.perf_counter() - t0


def compile_all(arches, jobs: int, cache: Path):
    """{(kind, name, arch): (image, meta)} for every Triton variant and CUDA source."""
    todo = []
    for op in specs.OPS:
        for arch in arches:
            if arch not in op.arches:
                continue
            todo += [("cuda", op.source_of(v), arch) if op.lang_of(v) == "cuda" else (op.name, v.name, arch)
                     for v in op.variants if arch in v.arches]
    todo = list(dict.fromkeys(todo))  # a CUDA source serves several ops: compile it once
    # Images made from another image's compile come after every compile they start from, so
    # that no base compile runs twice at once: sm89 and ptx from sm80 for Triton (through
    # Triton's cache, compile.RETARGET), a CUDA C++ source's cubins from its PTX (compile_cuda).
    # Within each half the CUDA C++ sources first: they are the longest jobs.
    def derived(job):
        kind, _, arch = job
        return arch != "ptx" if kind == "cuda" else arch in cc.RETARGET or arch == "ptx"

    todo.sort(key=lambda job: (derived(job), job[0] != "cuda"))
    results, hits, t0 = {}, 0, time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("fork")) as pool:
        futures = {pool.submit(_job, *t, str(cache)): t for t in todo}
        for n, fut in enumerate(as_completed(futures), 1):
            kind, name, arch = futures[fut]
            try:
                image, meta, hit, dt = fut.result()
            except cc.CompileError as e:
                pool.shutdown(cancel_futures=True)
                sys.exit(f"aot: error: {e}")
            hits += hit
            results[(kind, name, arch)] = (image, meta)
            print(f"[{n:4d}/{len(todo)}] {arch:4s} {name:48s} {len(image) / 1024:7.1f} KiB "
                  f"{'cached' if hit else f'{dt:5.2f} s'}", flush=True)
    print(f"aot: {len(todo)} images ({hits} from cache) in {time.perf_counter() - t0:.1f} s", flush=True)
    return results


def _collect(arch: str, results, out: Path, manifest: dict) -> tuple[list[bytes], list[dict]]:
    """The arch's distinct images in table order and its kernel table; adds the kernels (and
    the arch's driver floor) to the manifest and writes each image to DIR/<arch>/images/ for
    inspection (cuobjdump)."""
    img_dir = out / arch / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, names, image_index, kernels, ptx_versions = [], [], {}, [], set()
    by_content = {}   # variants whose configs differ only in their dispatch conditions compile
                      # to the same bytes: the library embeds such an image once
    for op, v, a in specs.enumerate_kernels((arch,)):
        cuda = op.lang_of(v) == "cuda"
        key = ("cuda", op.source_of(v), arch) if cuda else (op.name, v.name, arch)
        image, meta = results[key]
        if key not in image_index and image in by_content:
            image_index[key] = by_content[image]
        elif key not in image_index:
            by_content[image] = image_index[key] = len(images)
            stem = Path(op.source_of(v)).stem if cuda else v.name
            (img_dir / f"{stem}_{arch}.bin").write_bytes(image)
            images.append(image)
            names.append(f"{stem}_{arch}")
            if meta.get("ptx_version"):
                ptx_versions.add(meta["ptx_version"])
        if cuda:
            meta = dict(meta, symbol=v.kernel, num_warps=0, shared=v.shared,
                        args=[f"tensor_map{i}" for i in range(len(v.tensor_maps))] + [p.name for p in op.params])
            if v.kernel.encode() not in image:
                sys.exit(f"aot: error: {v.name}: symbol {v.kernel} not found in the {arch} image of {op.source_of(v)}")
        image = images[image_index[key]]
        kernels.append({"op": op, "variant": v, "image": image_index[key], "meta": meta,
                        "shared": meta["shared"]})
        manifest["kernels"].append({"op": op.name, "variant": v.name, "arch": arch, "dtype": v.dtype,
                                    "image": names[image_index[key]], "image_bytes": len(image),
                                    "image_sha256": hashlib.sha256(image).hexdigest()[:16],
                                    "compiler": meta["compiler"],
                                    "symbol": meta["symbol"], "args": meta["args"], "num_warps": meta["num_warps"],
                                    "maxnreg": v.maxnreg, "shared": meta["shared"],
                                    "global_scratch": meta.get("global_scratch", 0)})
        for tool in meta["compiler"].split(" + "):   # "nvrtc 12.8 + ptxas 12.8.93": each tool's version
            name, version = tool.split()
            manifest["compilers"][name] = version
    manifest["min_driver"][arch] = (max(PTX_ISA_DRIVER[p] for p in ptx_versions)
                                    if arch == "ptx" else CUBIN_MIN_DRIVER)
    return images, kernels


def _pack(libraries: dict, jobs: int, cache: Path) -> dict:
    """{arch: [(block, compressed block)]}: every arch's blocks compressed in one pool."""
    todo = [(arch, raw) for arch, (images, _) in libraries.items() for raw in pack.blocks(images)]
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("fork")) as pool:
        stored = pool.map(pack.compress, [raw for _, raw in todo], [pack.kind(arch) for arch, _ in todo],
                          [cache] * len(todo))
        packed = {arch: [] for arch in libraries}
        for (arch, raw), data in zip(todo, stored):
            packed[arch].append((raw, data))
    return packed


def _write_library(out: Path, arch: str, images: list[bytes], kernels: list[dict], blocks: list, manifest: dict):
    """The arch's embedded blocks and dispatch; returns the sources CMake builds it from."""
    block_dir = out / arch / "blocks"
    block_dir.mkdir(parents=True, exist_ok=True)
    props = pack.props_byte(pack.PROPS[pack.kind(arch)])
    embedded, table = [], []
    for i, (raw, data) in enumerate(blocks):
        path = block_dir / f"block{i}_{arch}.lzma"
        path.write_bytes(data)
        embedded.append((f"fa_block{i}_{arch}", path))
        table.append((f"fa_block{i}_{arch}", len(data), len(raw), props))
    where = [(b, o, len(im)) for im, (b, o) in zip(images, pack.plan([len(im) for im in images]))]
    image_bytes, stored = sum(len(im) for im in images), sum(len(data) for _, data in blocks)
    manifest["image_blocks"][arch] = {"blocks": len(blocks), "codec": f"lzma {pack.PROPS[pack.kind(arch)]}",
                                      "image_bytes": image_bytes, "stored_bytes": stored}
    embed, dispatch = out / arch / f"images_{arch}.S", out / arch / f"dispatch_{arch}.c"
    codegen.write_images(embed, embedded, f"the {len(images)} images of {arch} in {len(blocks)} blocks")
    codegen.write_dispatch(dispatch, arch, table, where, kernels)
    print(f"aot: {arch}: {len(images)} images, {image_bytes / 1e6:.1f} MB, in {len(blocks)} blocks "
          f"of {stored / 1e6:.1f} MB", flush=True)
    return [embed, dispatch]


def _ops_json(manifest: dict) -> dict:
    """The manifest without its kernel list, with each op's largest scratch need per arch: what
    the Python package reads at run time (parsing the 2.9 MB manifest took 17-19 ms, on a first
    call whose target is 5 ms)."""
    scratch = {}
    for k in manifest["kernels"]:
        per_arch = scratch.setdefault(k["op"], {})
        per_arch[k["arch"]] = max(per_arch.get(k["arch"], 0), k["global_scratch"])
    ops = {name: dict(info, global_scratch=scratch.get(name, {})) for name, info in manifest["ops"].items()}
    return dict({k: v for k, v in manifest.items() if k != "kernels"}, ops=ops)


def generate(out: Path, arches, results, jobs: int = 1, cache: Path | None = None) -> dict:
    manifest = {"version": VERSION, "arches": list(arches),
                "libraries": {a: f"libfusedaot_{a}.so" for a in arches},
                "dtypes": specs.DTYPES, "min_driver": {}, "compilers": {}, "image_blocks": {},
                "ops": {op.name: {"lang": op.lang, "doc": op.doc, "arches": [a for a in op.arches if a in arches],
                                  "params": [[p.name, p.ctype] for p in op.params],
                                  "packed": codegen.packed_format(op)} for op in specs.OPS},
                "kernels": []}
    (out / "include").mkdir(parents=True, exist_ok=True)
    (out / "include" / "fusedaot.h").write_text(codegen.public_header())
    libraries = {arch: _collect(arch, results, out, manifest) for arch in arches}
    t0 = time.perf_counter()
    packed = _pack(libraries, jobs, cache or out / "cache")
    print(f"aot: packed the images in {time.perf_counter() - t0:.1f} s", flush=True)
    cmake = []
    for arch, (images, kernels) in libraries.items():
        sources = _write_library(out, arch, images, kernels, packed[arch], manifest)
        cmake.append(f"set(FUSEDAOT_SOURCES_{arch}\n" + "".join(f"  {s}\n" for s in sources) + ")\n")
    (out / "sources.cmake").write_text(f"# Generated by {codegen.GENERATOR} from aot/specs/ (CMake source lists).\n"
                                       + "".join(cmake))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (out / "ops.json").write_text(json.dumps(_ops_json(manifest)))
    return manifest


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m aot.build", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--arch", default=",".join(specs.ARCHES), help="comma-separated subset of " + ",".join(specs.ARCHES))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    default_cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fusedaot-aot"
    ap.add_argument("--cache", type=Path, default=default_cache)
    ap.add_argument("--families", default="",
                    help="build only these op families (a partial library, for kernel development)")
    args = ap.parse_args(argv)
    if args.families:
        try:
            specs.OPS = specs.ops_of(args.families.split(","))  # read by every step below
        except ValueError as e:
            ap.error(str(e))
    arches = [a for a in args.arch.split(",") if a]
    bad = [a for a in arches if a not in specs.ARCHES]
    if bad:
        ap.error(f"unknown arch {bad}; expected a subset of {list(specs.ARCHES)}")
    os.environ.setdefault("TRITON_CACHE_DIR", str(args.cache / "triton"))
    # Line tables would triple the images; the shipped cubins carry none.
    os.environ["TRITON_DISABLE_LINE_INFO"] = "1"
    results = compile_all(arches, max(1, args.jobs), args.cache)
    manifest = generate(args.out, arches, results, max(1, args.jobs), args.cache)
    print(f"aot: wrote {len(manifest['kernels'])} kernels for {', '.join(arches)} to {args.out}")


if __name__ == "__main__":
    main()
