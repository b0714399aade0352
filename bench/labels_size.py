"""How much the label images add to an archive (issue 16): the demo session, recorded.

    .venv/bin/python bench/labels_size.py [--scenario lithiation] [--out DIR]

Records the simulator's session as ``lithoscope demo`` streams it (the same source and
scenario), analysing every frame (a replay's policy: the most label images a session
can have; a live session skips frames when analysis falls behind, and a skipped frame
has no label chunk), then counts the bytes on disk: the whole archive, its ``frames``,
its ``labels/`` group (each label image), and the archive without ``labels/`` (what
the same session weighed before labels were archived). Sizes only: no timing, so a
shared machine's load does not change the figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lithoscope.service.archive import ArchiveReader, directory_size
from lithoscope.service.live.session import run_local_session
from lithoscope.service.sources.sim import SimulatedSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="lithiation")
    parser.add_argument("--out", type=Path, default=None,
                        help="keep the archive in this folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"demo-{args.scenario}.zarr"
        with SimulatedSource(scenario=args.scenario) as source:
            info = source.info
            report = run_local_session(source, archive_path=path, speed=None, live=False,
                                       ack_timeout_s=3600.0)
        assert report.closed is not None, "the worker did not close the archive"
        reader = ArchiveReader(path)
        total = directory_size(path)
        frames = directory_size(path / "frames")
        labels = directory_size(path / "labels")
        analysed = len(reader.table("cluster")["frame"])
        print(f"session: {args.scenario}, {reader.frame_count} frames of {info.shape} "
              f"{info.dtype}, {analysed} analysed")
        print(f"{'archive':<28}{total / 2**20:10.2f} MiB")
        print(f"{'  frames':<28}{frames / 2**20:10.2f} MiB")
        for name in ("particles", "needle", "grid"):
            size = directory_size(path / "labels" / name)
            print(f"{'  labels/' + name:<28}{size / 2**20:10.3f} MiB")
        print(f"{'  labels/ in all':<28}{labels / 2**20:10.3f} MiB")
        print(f"{'archive without labels/':<28}{(total - labels) / 2**20:10.2f} MiB")
        print(f"growth from labels: {100 * labels / (total - labels):.2f} % "
              f"({labels / max(analysed, 1) / 1024:.1f} kiB per analysed frame)")


if __name__ == "__main__":
    main()
