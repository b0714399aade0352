"""Frame compression for the archive: MB/s and ratio of each codec at camera sizes.

    .venv/bin/python bench/archive_compression.py [--sizes 1024 2048 4096] [--frames N]
        [--rounds R] [--pixel-size 0.4]

Writes simulated uint16 frames (the simulator at ``--pixel-size`` nm/px, so particles
keep their size in nm as the frame grows, with its shot noise and camera gain) through
:class:`~lithoscope.service.archive.ArchiveWriter`, as the archive thread does: frames
in batches of ``--batch`` per call, one chunk per frame, each codec of ``[archive]
compression`` (blosc-lz4 and blosc-zstd with bitshuffle at level 1, and none) with
blosc's own threads off (1: zarr already encodes a batch's chunks in parallel
threads) and on (2: one chunk split over blosc's threads).

Printed per size and codec: MB/s of raw pixels written (frames, journal and
frame_table rows; median over rounds), the compression ratio (raw bytes / bytes of
the ``frames`` array on disk) and the ms per frame. Each round runs every variant once
in an order reversed every other round, so a shared machine's noise hits all alike.
Frames go to a temporary folder on the current disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numcodecs import blosc

from lithoscope.service.archive import ArchiveWriter, directory_size
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

CODECS = ("lz4", "zstd", "none")


def frames_at(size: int, pixel_size_nm: float, count: int) -> list[np.ndarray]:
    """``count`` distinct simulated frames (a few rendered, the rest their noisy shifts:
    rendering a 4096² frame takes longer than writing it)."""
    sim = SimulatedSource(SimConfig(shape=(size, size), pixel_size_nm=pixel_size_nm))
    rendered = [sim.render(i).image for i in (0, 240)]
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        base = rendered[i % len(rendered)]
        shifted = np.roll(base, (int(rng.integers(0, 8)), int(rng.integers(0, 8))), (0, 1))
        frames.append(shifted)
    return frames


def write_once(root: Path, frames: list[np.ndarray], *, compression: str,
               threads: int, batch: int) -> tuple[float, float]:
    """Seconds to write ``frames`` and the ratio raw / on-disk bytes of the pixels."""
    blosc.use_threads = threads > 1
    blosc.set_nthreads(max(threads, 1))
    path = Path(tempfile.mkdtemp(dir=root)) / "a.zarr"
    writer = ArchiveWriter(path, session={"session_id": "bench"}, compression=compression,
                           compression_level=1)
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        writer.append_frames([
            (frame, {"seq": i + k, "index": i + k, "t_s": 0.02 * (i + k),
                     "acquired_at": 0.0})
            for k, frame in enumerate(frames[i:i + batch])])
    seconds = time.perf_counter() - start
    writer.close()
    raw = sum(f.nbytes for f in frames)
    return seconds, raw / max(directory_size(path / "frames"), 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--frames", type=int, default=16, help="frames per write round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="frames per archive call")
    parser.add_argument("--pixel-size", type=float, default=0.4, help="nm per pixel")
    args = parser.parse_args(argv)
    variants = [(codec, threads) for codec in CODECS for threads in (1, 2)]
    print(f"cpus {os.cpu_count()}, {args.frames} frames x {args.rounds} rounds, "
          f"batches of {args.batch}, {args.pixel_size} nm/px")
    print(f"{'size':>6} {'codec':>6} {'blosc threads':>14} {'MB/s':>8} {'ms/frame':>9} "
          f"{'ratio':>6}")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for size in args.sizes:
            frames = frames_at(size, args.pixel_size, args.frames)
            raw_mb = sum(f.nbytes for f in frames) / 1e6
            times: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
            ratios: dict[tuple[str, int], float] = {}
            for r in range(args.rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for codec, threads in order:
                    seconds, ratio = write_once(Path(tmp), frames, compression=codec,
                                                threads=threads, batch=args.batch)
                    times[codec, threads].append(seconds)
                    ratios[codec, threads] = ratio
            for codec, threads in variants:
                seconds = statistics.median(times[codec, threads])
                print(f"{size:>6} {codec:>6} {threads:>14} {raw_mb / seconds:>8.0f} "
                      f"{1000 * seconds / len(frames):>9.1f} {ratios[codec, threads]:>6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
