"""What writing one analysed frame's label images costs the archive thread.

    .venv/bin/python bench/labels_write.py [--sizes 512 1024] [--frames 200]
                                           [--particles 40]

For each label-image size (the analysis grid: 512² for a 1024² frame at 0.4 nm/px, 1024²
for a 2048² one), :class:`ArchiveLabels` takes ``--frames`` frames of a particle label
image (``--particles`` discs), a needle mask and an empty grid mask, and writes them
to a zarr archive on disk in its batches. Three ways, in the same run, in ms per frame:

* ``files``: as shipped: chunk files (``service/archive/chunks.py``), the frame's track
  ids given by the analysis (``FrameLabels.track_ids``);
* ``files, ids from image``: the same, the track ids read off each image (``np.unique``,
  what happens when the analysis does not give them);
* ``zarr``: every chunk through zarr's own write path (``setitem``), ids from the image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr


@dataclass(frozen=True)
class _Images:
    particles: np.ndarray
    needle: np.ndarray
    grid: np.ndarray
    binning: int
    track_ids: np.ndarray | None


def images(size: int, particles: int) -> _Images:
    rng = np.random.default_rng(0)
    labels = np.zeros((size, size), np.uint32)
    yy, xx = np.ogrid[:size, :size]
    radius = size / 40
    for track in range(1, particles + 1):
        r, c = rng.uniform(size / 4, 3 * size / 4, 2)
        labels[(yy - r) ** 2 + (xx - c) ** 2 < radius ** 2] = track
    needle = np.zeros((size, size), bool)
    needle[: size // 3, : size // 8] = True
    ids = np.unique(labels)
    return _Images(labels, needle, np.zeros((size, size), bool), 2, ids[ids > 0])


def run(size: int, frames: int, particles: int, way: str) -> float:
    from lithoscope.service.archive.labels import ArchiveLabels

    given = images(size, particles)
    if way != "files":
        given = _Images(given.particles, given.needle, given.grid, given.binning, None)
    with tempfile.TemporaryDirectory(prefix="lithoscope-labels-") as tmp:
        labels = ArchiveLabels(zarr.open_group(Path(tmp) / "a.zarr", mode="w"),
                               {"session_id": "bench"})
        for i in range(frames):
            labels.frame_written(i, i)
        labels.append(0, given)  # creates the arrays
        if way == "zarr":
            labels._files = dict.fromkeys(labels._files)  # type: ignore[assignment]
        start = time.perf_counter()
        for i in range(1, frames):
            labels.append(i, given)
        labels.close(frames)
        return 1e3 * (time.perf_counter() - start) / (frames - 1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--particles", type=int, default=40)
    args = parser.parse_args(argv)
    print(f"{'labels':>8}  {'files':>8}  {'files, ids from image':>22}  {'zarr':>8}  ms/frame")
    for size in args.sizes:
        cells = [run(size, args.frames, args.particles, way)
                 for way in ("files", "unique", "zarr")]
        print(f"{size:>7}²  {cells[0]:8.2f}  {cells[1]:22.2f}  {cells[2]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
