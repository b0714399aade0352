"""How well are real particles segmented? Real bright-field TEM with human masks, scored.

    .venv/bin/python bench/realdata.py [--data /work/shared/realdata/upenn_sintering_bftem]
                                       [--json bench/results/realdata.json]

Scores ``analyze_frame`` with its defaults and no pixel size (what a new user gets on a
first real movie) and, in the same run on the same images, the ten-line scikit-image
script (Gaussian, Otsu, distance transform, ``peak_local_max``, watershed) told only
the set's median particle diameter, which it is given by ``--diameter-px`` (default:
measured from the masks; the analysis is told nothing).

The data set (``upenn_sintering_bftem``) is 40 crops, 512², from an in-situ heating
BF-TEM movie of sintering nanoparticles, with hand-drawn binary masks; instances are
the masks' 8-connected components. CC-BY-4.0: Duan, Duan, ... Stach, "Deep Learning
Applications in Microscopy: Segmentation and Tracking", Elemental Microscopy (2024),
DOI 10.69761/HDTA8338 (https://github.com/msa-em/microscopy-seg-track).

Scores, per image and over the set:

* precision, recall, F1 of instances matched one-to-one at IoU >= 0.5 (greedy, best
  IoU first; above 0.5 a match is unique anyway);
* pixel IoU of the union of all particles (set: summed intersections over summed
  unions);
* count ratio (found / true) and the median relative area error of matched pairs;
* splits (true particles holding the larger part of two or more found ones) and
  merges (found particles holding the larger part of two or more true ones);
* the worst image by F1.

Masked specks under ``--min-true-area-px`` (30) are not counted as particles, and a
found particle lying mostly on one is not counted against precision.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lithoscope.service.analysis import analyze_frame

DEFAULT_DATA = Path("/work/shared/realdata/upenn_sintering_bftem")
MIN_TRUE_AREA_PX = 30
TARGETS = {"f1": 0.93, "worst_f1": 0.75, "pixel_iou": 0.92}
"""Issue 15's targets for the shared set, defaults, no pixel size."""


def load_pairs(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, grey image uint8, binary mask) for every image of the set, sorted."""
    pairs = []
    for split in ("train", "test"):
        images = root / "notebooks" / "dataset" / split / "images"
        labels = root / "notebooks" / "dataset" / split / "labels"
        if not images.is_dir():
            continue
        for path in sorted(images.glob("image_*.png"), key=lambda p: int(p.stem[6:])):
            index = path.stem[6:]
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(labels / f"label_{index}.png"), cv2.IMREAD_UNCHANGED)
            if image is None or mask is None:
                raise SystemExit(f"cannot read {path} or its label")
            image = image[..., 0] if image.ndim == 3 else image
            mask = mask[..., 0] if mask.ndim == 3 else mask
            pairs.append((f"{split}_{index}", image, mask > 0))
    if not pairs:
        raise SystemExit(f"no images under {root}/notebooks/dataset/{{train,test}}/images")
    return pairs


def instances(mask: np.ndarray) -> np.ndarray:
    """int32 labels of a binary mask's 8-connected components."""
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[1].astype(np.int32)


def score_image(found: np.ndarray, truth: np.ndarray, *,
                min_true_area_px: int = MIN_TRUE_AREA_PX) -> dict[str, Any]:
    """Scores of one label image ``found`` against true labels ``truth`` (0: background)."""
    n_found, n_true = int(found.max()), int(truth.max())
    true_area = np.bincount(truth.ravel(), minlength=n_true + 1)
    found_area = np.bincount(found.ravel(), minlength=n_found + 1)
    pair = found.astype(np.int64) * (n_true + 1) + truth
    overlap = np.bincount(pair.ravel(), minlength=(n_found + 1) * (n_true + 1)).reshape(
        n_found + 1, n_true + 1)
    real = true_area >= min_true_area_px
    real[0] = False
    speck = ~real
    speck[0] = False
    # A found particle lying mostly on a speck (or on nothing labelled) is judged by IoU;
    # one mostly on a speck is left out of the count altogether.
    counted = np.ones(n_found + 1, np.bool_)
    counted[0] = False
    if n_found and speck.any():
        counted[1:] &= overlap[1:, speck].sum(axis=1) * 2 <= found_area[1:]
    union = found_area[:, None] + true_area[None, :] - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    candidates = [(iou[i, j], i, j) for i, j in zip(*np.nonzero(iou >= 0.5), strict=True)
                  if i > 0 and j > 0 and real[j] and counted[i]]
    candidates.sort(reverse=True)
    used_f, used_t = set(), set()
    area_errors = []
    for _, i, j in candidates:
        if i in used_f or j in used_t:
            continue
        used_f.add(i)
        used_t.add(j)
        area_errors.append(abs(found_area[i] - true_area[j]) / true_area[j])
    tp = len(used_f)
    n_f, n_t = int(counted.sum()), int(real.sum())
    precision = tp / n_f if n_f else 1.0
    recall = tp / n_t if n_t else 1.0
    f1 = 2 * tp / (n_f + n_t) if n_f + n_t else 1.0
    # Splits: a true particle holding most of two found ones; merges: the converse.
    major_true = overlap[1:, :].argmax(axis=1) if n_found else np.zeros(0, np.int64)
    holds = overlap[1:, :][np.arange(n_found), major_true] * 2 > found_area[1:]
    by_true = np.bincount(major_true[holds & counted[1:]], minlength=n_true + 1)
    by_true[0] = 0
    major_found = overlap[:, 1:].argmax(axis=0) if n_true else np.zeros(0, np.int64)
    held = overlap[:, 1:][major_found, np.arange(n_true)] * 2 > true_area[1:]
    by_found = np.bincount(major_found[held & real[1:]], minlength=n_found + 1)
    by_found[0] = 0
    fg_found, fg_true = found > 0, truth > 0
    return {
        "true": n_t, "found": n_f, "matched": tp,
        "precision": precision, "recall": recall, "f1": f1,
        "intersection_px": int(np.count_nonzero(fg_found & fg_true)),
        "union_px": int(np.count_nonzero(fg_found | fg_true)),
        "area_errors": area_errors,
        "splits": int((by_true >= 2).sum()), "merges": int((by_found >= 2).sum()),
    }


def summarize(per_image: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Set-wide figures from per-image scores."""
    tp = sum(s["matched"] for s in per_image.values())
    n_f = sum(s["found"] for s in per_image.values())
    n_t = sum(s["true"] for s in per_image.values())
    errors = [e for s in per_image.values() for e in s["area_errors"]]
    worst = min(per_image, key=lambda name: per_image[name]["f1"])
    return {
        "precision": tp / n_f if n_f else 1.0,
        "recall": tp / n_t if n_t else 1.0,
        "f1": 2 * tp / (n_f + n_t) if n_f + n_t else 1.0,
        "pixel_iou": sum(s["intersection_px"] for s in per_image.values())
        / max(1, sum(s["union_px"] for s in per_image.values())),
        "count_ratio": n_f / n_t if n_t else math.nan,
        "median_area_error": float(np.median(errors)) if errors else math.nan,
        "splits": sum(s["splits"] for s in per_image.values()),
        "merges": sum(s["merges"] for s in per_image.values()),
        "worst_image": worst,
        "worst_f1": per_image[worst]["f1"],
    }


def ours(image: np.ndarray) -> np.ndarray:
    """``analyze_frame`` with its defaults and no pixel size."""
    return np.asarray(analyze_frame(image).labels)


def skimage_script(diameter_px: float) -> Callable[[np.ndarray], np.ndarray]:
    """The ten-line scikit-image baseline, told only the particle diameter."""
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.segmentation import watershed

    def segment(image: np.ndarray) -> np.ndarray:
        smooth = gaussian(image.astype(np.float64), sigma=2)
        mask = smooth < threshold_otsu(smooth)  # particles are dark in bright field
        components = ndi.label(mask)[0]  # specks under a disc of half the diameter out
        sizes = np.bincount(components.ravel())
        mask &= sizes[components] >= math.pi * (diameter_px / 4) ** 2
        distance = ndi.distance_transform_edt(mask)
        components = ndi.label(mask)[0]
        peaks = peak_local_max(distance, min_distance=max(1, int(diameter_px / 2)),
                               labels=components, exclude_border=False)
        markers = np.zeros(mask.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return np.asarray(watershed(-distance, markers, mask=mask), np.int32)

    return segment


def median_diameter_px(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> float:
    """Median equivalent diameter of the true particles (what the script is told)."""
    areas = []
    for _, _, mask in pairs:
        truth = instances(mask)
        counts = np.bincount(truth.ravel())[1:]
        areas.extend(int(a) for a in counts if a >= MIN_TRUE_AREA_PX)
    return float(2 * math.sqrt(float(np.median(areas)) / math.pi))


def run(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
        methods: dict[str, Callable[[np.ndarray], np.ndarray]]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for method, segment in methods.items():
        per_image = {}
        start = time.perf_counter()
        for name, image, mask in pairs:
            per_image[name] = score_image(segment(image), instances(mask))
        elapsed = time.perf_counter() - start
        summary = summarize(per_image)
        summary["ms_per_image"] = 1e3 * elapsed / len(pairs)
        results[method] = {"summary": summary, "per_image": {
            name: {k: v for k, v in s.items() if k != "area_errors"}
            for name, s in per_image.items()}}
    return results


def outlines(image: np.ndarray, found: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """The frame in grey, the true outline green, the found particles' boundaries red."""
    out = cv2.cvtColor(cv2.normalize(image.astype(np.float32), None, 0, 255, cv2.NORM_MINMAX)
                       .astype(np.uint8), cv2.COLOR_GRAY2BGR)
    if truth is not None:
        edge = cv2.morphologyEx((truth > 0).astype(np.uint8), cv2.MORPH_GRADIENT,
                                np.ones((3, 3), np.uint8)) > 0
        out[edge] = (0, 200, 0)
    boundary = np.zeros(found.shape, np.bool_)
    boundary[:, 1:] |= found[:, 1:] != found[:, :-1]
    boundary[1:, :] |= found[1:, :] != found[:-1, :]
    out[boundary] = (0, 0, 255)
    return out


def draw_pictures(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], folder: Path) -> None:
    """The pictures of docs/analysis.md (JPEG: noise does not compress): the worst
    and a typical real image, and frames of the simulator's particle field at 8, 60
    and 150 px, each segmented with the defaults and no pixel size."""
    from lithoscope.service.sources.particles import ParticleFieldConfig, render_particle_field

    folder.mkdir(parents=True, exist_ok=True)
    by_name = {name: (image, mask) for name, image, mask in pairs}
    for name in ("train_4", "test_0"):
        if name in by_name:
            image, mask = by_name[name]
            picture = np.hstack([cv2.cvtColor(image, cv2.COLOR_GRAY2BGR),
                                 outlines(image, ours(image), mask)])
            picture = cv2.resize(picture, (768, 384), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(folder / f"realdata_{name}.jpg"), picture,
                        [cv2.IMWRITE_JPEG_QUALITY, 85])
    tiles = []
    for diameter, shape, count in ((8.0, (192, 192), 40), (60.0, (384, 384), 8),
                                   (150.0, (640, 640), 5)):
        config = ParticleFieldConfig(shape=shape, diameter_px=diameter, count=count, seed=2)
        image, truth = render_particle_field(config, 7)
        tile = outlines(image, ours(image), truth)
        tiles.append(cv2.resize(tile, (320, 320), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(folder / "particle_field.jpg"), np.hstack(tiles),
                [cv2.IMWRITE_JPEG_QUALITY, 85])


COLUMNS = ("f1", "precision", "recall", "pixel_iou", "count_ratio", "median_area_error",
           "splits", "merges", "worst_f1", "worst_image", "ms_per_image")


def print_table(results: dict[str, Any]) -> None:
    print("| method | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    for method, result in results.items():
        s = result["summary"]
        cells = [f"{s[c]:.3f}" if isinstance(s[c], float) else str(s[c]) for c in COLUMNS]
        print(f"| {method} | " + " | ".join(cells) + " |")
    print("targets (ours):", ", ".join(f"{k} >= {v}" for k, v in TARGETS.items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--diameter-px", type=float,
                        help="particle diameter told to the scikit-image script "
                             "(default: the median of the masks)")
    parser.add_argument("--per-image", action="store_true", help="print per-image F1")
    parser.add_argument("--ours-only", action="store_true", help="skip the script")
    parser.add_argument("--json", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--images", type=Path,
                        help="also draw the docs' pictures into this folder (JPEG)")
    args = parser.parse_args(argv)
    pairs = load_pairs(args.data)
    diameter = args.diameter_px or median_diameter_px(pairs)
    print(f"{len(pairs)} images from {args.data}; script told diameter {diameter:.1f} px")
    methods = {"lithoscope defaults": ours}
    if not args.ours_only:
        methods["scikit-image script"] = skimage_script(diameter)
    results = run(pairs, methods)
    print_table(results)
    if args.per_image:
        names = [name for name, _, _ in pairs]
        print("image " + " ".join(f"{m[:10]:>11}" for m in results))
        for name in names:
            print(f"{name:9}" + " ".join(f"{results[m]['per_image'][name]['f1']:11.3f}"
                                          for m in results))
    if args.images:
        draw_pictures(pairs, args.images)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"diameter_px": diameter, "results": results},
                                        indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
