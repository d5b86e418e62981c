"""Peak memory of reading a large stack slice by slice through open_stack (OME-Zarr, and TIFF for comparison).

    python bench/stack_memory.py [--slices 256] [--size 2048] [--dir /tmp] [--keep]

Writes a ``slices x size x size`` uint16 stack (256 x 2048 x 2048 = 2 GiB by default; smooth structure plus
noise, so it compresses as microscope data does) as an OME-Zarr (NGFF 0.4, chunks of one slice, zarr's default
compressor), an uncompressed ImageJ TIFF and a zlib TIFF, written slice by slice so this process stays small.
Then, for each, a **fresh process** opens it with open_stack and sums every slice; it reports the time, the
checksum (equal for all three) and the process's peak RSS (VmHWM), next to that of a process that only imports
the runtime (its baseline) and the size of one slice.  The files are deleted afterwards unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

READ = """
import re, sys, time
import numpy as np
from spinedet.runtime.stacks import open_stack
def peak_mb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) / 1024
if sys.argv[1].endswith(".zarr"):
    import zarr  # noqa: F401  (its import counts in the baseline, not in the reading)
base = peak_mb()
start = time.perf_counter()
total = 0
if sys.argv[1] != "-":
    with open_stack(sys.argv[1]) as stack:
        shape = stack.shape
        for k in range(len(stack)):
            total += int(stack[k].sum(dtype=np.int64))
print({"import_peak_mb": round(base), "peak_mb": round(peak_mb()), "seconds": round(time.perf_counter() - start, 1),
       "checksum": total})
"""


def slice_image(k: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(k)
    y, x = np.mgrid[0:size, 0:size]
    smooth = 800 + 400 * np.sin(x / 97.0 + k / 11.0) * np.cos(y / 131.0)
    return (smooth + rng.normal(0, 40, (size, size))).clip(0, 65535).astype(np.uint16)


def write_all(folder: Path, slices: int, size: int) -> dict:
    import tifffile
    import zarr

    paths = {"ome-zarr": folder / "big.ome.zarr", "tiff": folder / "big.tif", "tiff-zlib": folder / "big_zlib.tif"}
    group = zarr.open_group(str(paths["ome-zarr"]), mode="w", zarr_format=2)
    array = group.create_array("0", shape=(slices, size, size), chunks=(1, size, size), dtype="uint16")
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.1, 0.1]}]}]}]
    plain = tifffile.memmap(paths["tiff"], shape=(slices, size, size), dtype=np.uint16, imagej=True,
                            metadata={"axes": "ZYX"})
    for k in range(slices):
        image = slice_image(k, size)
        array[k] = image
        plain[k] = image
        if k % 32 == 31:
            plain.flush()
    plain.flush()
    del plain
    tifffile.imwrite(paths["tiff-zlib"], (slice_image(k, size) for k in range(slices)), shape=(slices, size, size),
                     dtype=np.uint16, compression="zlib", photometric="minisblack", metadata={"axes": "ZYX"})
    return paths


def disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=256)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dir", type=Path, default=Path("/tmp"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    folder = args.dir / "spinedet_stack_memory"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        start = time.perf_counter()
        paths = write_all(folder, args.slices, args.size)
        print(f"wrote {args.slices} x {args.size} x {args.size} uint16 "
              f"({args.slices * args.size ** 2 * 2 / 2**30:.2f} GiB) three ways in {time.perf_counter() - start:.0f} s; "
              f"one slice is {args.size ** 2 * 2 / 2**20:.1f} MiB", flush=True)
        baseline = eval(subprocess.run([sys.executable, "-c", READ, "-"], capture_output=True, text=True,
                                       check=True).stdout)
        print(f"import only: peak RSS {baseline['peak_mb']} MB", flush=True)
        results = {}
        for name, path in paths.items():
            subprocess.run(["sync"], check=False)
            done = subprocess.run([sys.executable, "-c", READ, str(path)], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name}: {done.stderr.strip()}")
            result = eval(done.stdout)
            result["on_disk_mb"] = round(disk_mb(path))
            results[name] = result
            print(f"{name}: {json.dumps(result)}", flush=True)
        assert len({r["checksum"] for r in results.values()}) == 1, "the three files read differently"
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
