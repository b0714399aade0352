"""Does a faster tree give the same analysis? ``measure_frame`` outputs compared, array by array.

    .venv/bin/python bench/same_results.py --trees build/base installed [--keep DIR]

For each tree (a directory holding ``service/``, ``clients/`` and ``replay/``, or
``installed``: the one this venv imports; see ``bench/profile_frame.py``), a fresh
process runs ``measure_frame`` on a fixed set of frames and saves every output: the
particle columns, the cluster values, the label image, the needle/grid regions, the
contact pairs and the drift image. The first tree is the reference; for each other the
arrays that differ are listed (largest difference, how many elements). A change meant
only to be faster must list none.

The frames: ``bench/throughput.py``'s at 512², 1024² and 2048² and 0.2-0.8 nm/px
(three of each), random draws of the disc and crystal looks at 256², 1 nm/px, with
and without a pixel size (``draw_sim_config`` seeds 0-2, three times each), and the
first eight real crops of ``bench/realdata.py``'s set when it is there.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

REALDATA = Path("/work/shared/realdata/upenn_sintering_bftem")
THROUGHPUT_CASES = ((512, 0.8), (1024, 0.2), (1024, 0.4), (1024, 0.8), (2048, 0.4))


def frames() -> Iterator[tuple[str, np.ndarray, float | None]]:
    """(name, frame, pixel size) of every frame compared."""
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import render_frames

    from lithoscope.service.sources.sim import SimulatedSource
    from lithoscope.service.sources.sim_draws import draw_sim_config

    for size, pixel_size_nm in THROUGHPUT_CASES:
        rendered = render_frames(size, pixel_size_nm, 8)
        for k in (0, 3, 5):
            yield f"throughput{size}_{pixel_size_nm}_{k}", rendered[k], pixel_size_nm
    for look in ("disc", "crystal"):
        for seed in (0, 1, 2):
            source = SimulatedSource(draw_sim_config(seed, shape=(256, 256), pixel_size_nm=1.0,
                                                     look=look))
            for index in (0, len(source) // 3, 2 * len(source) // 3):
                image = source.render(index).image
                yield f"{look}{seed}_{index}", image, 1.0
                yield f"{look}{seed}_{index}_no_pixel_size", image, None
    images = sorted((REALDATA / "notebooks" / "dataset").glob("*/images/image_*.png"))
    if images:
        import cv2

        for path in images[:8]:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            yield f"real_{path.parent.parent.name}_{path.stem}", image[..., 0] if image.ndim == 3 \
                else image, None


def dump(out: Path) -> None:
    """Every output of ``measure_frame`` on :func:`frames`, saved to ``out`` (npz)."""
    from lithoscope.service.analysis import measure_frame

    arrays: dict[str, np.ndarray] = {}
    for name, image, pixel_size_nm in frames():
        measured = measure_frame(image, pixel_size_nm=pixel_size_nm)
        arrays.update({f"{name}/particles/{k}": v for k, v in measured.particles.items()})
        arrays.update({f"{name}/cluster/{k}": np.asarray(v) for k, v in measured.cluster.items()})
        for key, value in (("labels", measured.labels), ("regions", measured.regions),
                           ("contacts", measured.contacts), ("drift", measured.drift_image)):
            if value is not None:
                arrays[f"{name}/{key}"] = value
    np.savez_compressed(out, **arrays)


def differences(reference: Path, other: Path) -> list[str]:
    """One line per array that is missing from either file or differs."""
    a, b = np.load(reference), np.load(other)
    lines = []
    for key in sorted(set(a.files) | set(b.files)):
        if key not in a.files or key not in b.files:
            lines.append(f"{key}: only in {'the reference' if key in a.files else 'the other'}")
            continue
        x, y = a[key], b[key]
        if x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            continue
        if x.shape != y.shape:
            lines.append(f"{key}: shape {x.shape} against {y.shape}")
        else:
            gap = np.abs(x.astype(np.float64) - y.astype(np.float64))
            lines.append(f"{key}: {int(np.count_nonzero(gap))} of {x.size} differ, "
                         f"largest by {np.nanmax(gap):g}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", default=["installed"],
                        help="source trees ('installed': this venv's); the first is the reference")
    parser.add_argument("--keep", type=Path, help="keep each tree's outputs in this folder")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        dump(args.child)
        return 0
    sys.path.insert(0, str(Path(__file__).parent))
    from profile_frame import link_tree

    with tempfile.TemporaryDirectory(prefix="lithoscope-same-") as tmp_name:
        tmp = Path(tmp_name)
        folder = args.keep or tmp
        folder.mkdir(parents=True, exist_ok=True)
        outputs = []
        for k, tree in enumerate(args.trees):
            out = folder / f"tree{k}.npz"
            done = subprocess.run([sys.executable, __file__, "--child", str(out)],
                                  env=link_tree(tree, tmp, k), capture_output=True, text=True,
                                  check=False)
            if done.returncode:
                raise SystemExit(f"{tree}: failed ({done.returncode}):\n{done.stderr}")
            outputs.append(out)
        arrays = len(np.load(outputs[0]).files)
        failed = 0
        for tree, out in zip(args.trees[1:], outputs[1:], strict=True):
            lines = differences(outputs[0], out)
            print(f"{tree} against {args.trees[0]}: {len(lines)} of {arrays} arrays differ")
            for line in lines:
                print(f"    {line}")
            failed += bool(lines)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
