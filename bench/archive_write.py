"""Where the archive's time per frame goes: zarr against the bytes it writes (issue 8).

    .venv/bin/python bench/archive_write.py [--sizes 1024 2048] [--frames N] [--rounds R]

On simulated uint16 frames, each frame one chunk compressed with blosc-lz4 + bitshuffle
as ``ArchiveWriter`` stores it, times in ms per frame:

* ``ArchiveWriter``: ``append_frame`` as the worker's writer thread calls it (pixels,
  journal line, frame_table row);
* ``zarr setitem``: ``array[i] = frame``, the pixel write alone;
* ``zarr setitem x8``: eight frames per call (what a writer that batches queued frames
  would do);
* ``encode + file``: the same blosc encoding and one ``write`` of its bytes, no zarr:
  the floor for this codec on this disk;
* ``encode``: the blosc encoding alone.

Each round runs every variant once, in an order reversed every other round, so a
shared machine's noise hits all alike; the median over rounds is printed with its ratio
to ``encode + file``. Frames go to a temporary folder on the current disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc

from lithoscope.service.archive import ArchiveWriter
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

FIELD_NM = 256.0


def _frames(size: int) -> list[np.ndarray]:
    sim = SimulatedSource(SimConfig(shape=(size, size), pixel_size_nm=FIELD_NM / size))
    return [sim.render(i).image for i in (0, 200, 400)]


def _time(write: Callable[[int], object], count: int, step: int = 1) -> float:
    start = time.perf_counter()
    for i in range(0, count, step):
        write(i)
    return 1000 * (time.perf_counter() - start) / count


def _round(frames: list[np.ndarray], count: int, folder: Path,
           order: Sequence[str]) -> dict[str, float]:
    size = frames[0].shape[0]
    blosc = Blosc(cname="lz4", clevel=1, shuffle=Blosc.BITSHUFFLE)
    codec = zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")
    stack = np.stack([frames[i % len(frames)] for i in range(8)])

    def array(name: str) -> zarr.Array:  # type: ignore[type-arg]
        return zarr.create_array(zarr.storage.LocalStore(folder / name),
                                 shape=(count, size, size), chunks=(1, size, size),
                                 dtype="uint16", compressors=codec, fill_value=0,
                                 config={"write_empty_chunks": True})

    def writer(_: None = None) -> float:
        w = ArchiveWriter(folder / "writer.zarr", session={"session_id": "bench"})
        ms = _time(lambda i: w.append_frame(frames[i % 3], seq=i, index=i, t_s=i * 0.01,
                                            acquired_at=time.time()), count)
        w.close()
        return ms

    def setitem() -> float:
        a = array("setitem.zarr")
        return _time(lambda i: a.__setitem__(i, frames[i % 3]), count)

    def batched() -> float:
        a = array("batched.zarr")
        return _time(lambda i: a.__setitem__(slice(i, i + 8), stack[: min(8, count - i)]),
                     count, step=8)

    def encode_file() -> float:
        def write(i: int) -> None:
            with open(folder / f"raw{i}", "wb") as handle:
                handle.write(blosc.encode(frames[i % 3]))
        return _time(write, count)

    def encode() -> float:
        return _time(lambda i: blosc.encode(frames[i % 3]), count)

    variants: dict[str, Callable[[], float]] = {
        "ArchiveWriter": writer, "zarr setitem": setitem, "zarr setitem x8": batched,
        "encode + file": encode_file, "encode": encode}
    return {name: variants[name]() for name in order}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--frames", type=int, default=48, help="frames per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    names = ["ArchiveWriter", "zarr setitem", "zarr setitem x8", "encode + file", "encode"]
    for size in args.sizes:
        frames = _frames(size)
        ratio = frames[0].nbytes / len(Blosc(cname="lz4", clevel=1,
                                             shuffle=Blosc.BITSHUFFLE).encode(frames[0]))
        runs: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            with tempfile.TemporaryDirectory(prefix="lithoscope-archive-", dir=".") as tmp:
                for name, ms in _round(frames, args.frames, Path(tmp), order).items():
                    runs[name].append(ms)
        floor = statistics.median(runs["encode + file"])
        print(f"{size}x{size} uint16, {frames[0].nbytes / 1e6:.1f} MB/frame, "
              f"compression ratio {ratio:.2f}, {args.rounds} rounds x {args.frames} frames")
        for name in names:
            ms = statistics.median(runs[name])
            print(f"  {name:18s} {ms:7.2f} ms/frame  {1000 / ms:7.1f} frames/s  "
                  f"{ms / floor:5.2f}x encode + file")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
