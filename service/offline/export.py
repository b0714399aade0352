"""Export a session archive for other tools: tables as CSV / Parquet, frames as TIFF or
as a movie with the analysis burned in.

* ``csv`` / ``parquet``: one file per table of :data:`lithoscope.service.schema.TABLES`
  (``frame_table``, ``cluster``, ``particles``, ``events``, ``echem``, ``operando``,
  ``particle_dose``, ``region_dose``; empty with its header when the session wrote
  none) and ``trajectories`` (the particles as trackpy's ``frame, particle, y, x``
  table) in an output folder; pandas (and for Parquet pyarrow) is the ``[scale]`` extra.
* ``ome-tiff`` / ``hspy`` / ``zspy``: the frames for Fiji and HyperSpy users,
  calibrated (:mod:`.interchange`).
* ``tiff``: the frames as an ImageJ hyperstack in the archive's dtype, with the pixel
  size (``unit=nm``) and frame interval, so ImageJ/Fiji and lithoscope's own TIFF
  reader open it at scale (BigTIFF without ImageJ metadata above 4 GiB, which ImageJ
  TIFFs cannot exceed; the pixel size is then in the resolution tags).
* ``mp4`` / ``avi``: a movie for talks: each frame contrast-stretched to 8 bits (one
  stretch for the whole session, so brightness changes stay visible), each particle's
  outline in its track's colour with its id, the needle tinted orange and the grid
  blue, a clock and relative area in the corner, a scale bar when the pixel size is
  known, and each alert as a banner for ``banner_s`` seconds of experiment time after
  it fired. Outlines and masks are the archive's own label images (``labels/``, what
  the live analysis saw; a frame it did not analyse has none): nothing is segmented
  again. MP4 is H.264 in yuv420p (plays in browsers and slide software), written by
  FFmpeg through imageio-ffmpeg (the ``[movie]`` extra); AVI is Motion JPEG through
  OpenCV.

Frames are read one at a time: a session larger than memory exports as well.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..analysis import draw_labels, put_text
from ..archive import ArchiveReader, read_labels
from ..errors import ArchiveError, ConfigError, require
from ..schema import TABLES
from .interchange import export_hspy, export_ome_tiff, export_zspy

__all__ = ["ExportFormat", "export_archive"]

_TABLES = (*TABLES, "trajectories")
_IMAGEJ_LIMIT_BYTES = 4 * 2**30 - 2**20  # ImageJ TIFFs are classic TIFF: 32-bit offsets


class ExportFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"
    tiff = "tiff"
    mp4 = "mp4"
    avi = "avi"
    ome_tiff = "ome-tiff"
    hspy = "hspy"
    zspy = "zspy"


def _tables(path: Path, reanalysis: str | None) -> dict[str, Any]:
    from .xr import open_archive

    session = open_archive(path, reanalysis=reanalysis)
    return {**{name: session.table(name) for name in TABLES},
            "trajectories": session.trajectories()}


def _frame_interval_s(reader: ArchiveReader) -> float | None:
    fps = reader.meta.get("fps")
    if isinstance(fps, int | float) and fps > 0:
        return 1.0 / float(fps)
    t_s = reader.table("frame_table").get("t_s", np.zeros(0))[: reader.frame_count]
    steps = np.diff(t_s)
    steps = steps[np.isfinite(steps) & (steps > 0)]
    return float(np.median(steps)) if steps.size else None


def export_archive(
    archive: str | Path,
    to: ExportFormat | str,
    output: str | Path | None = None,
    *,
    reanalysis: str | None = None,
    fps: float | None = None,
    banner_s: float = 3.0,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write an archive's tables or frames in another format.

    Parameters
    ----------
    archive : str or Path
        A session archive.
    to : ExportFormat or str
        ``csv``, ``parquet``, ``tiff``, ``ome-tiff``, ``hspy``, ``zspy``, ``mp4`` or
        ``avi``.
    output : str or Path, optional
        A folder for tables, a file for frames. Default: beside the archive, named after
        it (``run3.zarr`` -> ``run3-csv/``, ``run3.tif``, ``run3.ome.tif``, ``run3.hspy``,
        ``run3.zspy``, ``run3.mp4``).
    reanalysis : str, optional
        Export the tables (and the movie's alerts) of this re-analysis run, or
        ``"latest"``, instead of the live analysis.
    fps : float, optional
        Movie frame rate (default: the session's, else 10).
    banner_s : float
        How long an alert stays on screen in a movie, in experiment seconds.
    progress : callable, optional
        Called with the number of frames (or tables) written since its last call,
        for a progress bar.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    ArchiveError
        Not an archive, no frames for a frame export, or an output that exists.
    ConfigError
        Unknown format.
    MissingExtraError
        A package the format needs is not installed (the message names the extra).
    """
    try:
        kind = ExportFormat(str(to).lower())
    except ValueError:
        raise ConfigError(f"Expected --to to be one of {', '.join(f.value for f in ExportFormat)}."
                          f" Got {to!r} instead.") from None
    source = Path(archive)
    reader = ArchiveReader(source)
    stem = source.name.removesuffix(".zarr")
    if kind in (ExportFormat.csv, ExportFormat.parquet):
        folder = Path(output) if output is not None else source.with_name(f"{stem}-{kind}")
        return _export_tables(source, folder, kind, reanalysis, progress)
    suffix = {ExportFormat.tiff: ".tif", ExportFormat.ome_tiff: ".ome.tif"}.get(kind, f".{kind}")
    target = Path(output) if output is not None else source.with_name(stem + suffix)
    if target.exists():
        raise ArchiveError(f"{target} already exists; choose another output.")
    if reader.frame_count == 0:
        raise ArchiveError(f"{source} holds no frames to export.")
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind is ExportFormat.tiff:
        _export_tiff(reader, target, progress)
    elif kind is ExportFormat.ome_tiff:
        export_ome_tiff(reader, target, progress=progress)
    elif kind is ExportFormat.hspy:
        export_hspy(reader, target, progress=progress)
    elif kind is ExportFormat.zspy:
        export_zspy(reader, target, progress=progress)
    else:
        _export_movie(reader, target, kind, reanalysis=reanalysis, fps=fps, banner_s=banner_s,
                      progress=progress)
    return [target]


def _export_tables(source: Path, folder: Path, kind: ExportFormat,
                   reanalysis: str | None, progress: Callable[[int], None] | None
                   ) -> list[Path]:
    require("pandas", extra="scale", purpose=f"Exporting tables to {kind}")
    if kind is ExportFormat.parquet:
        require("pyarrow", extra="scale", purpose="Exporting tables to Parquet")
    tables = _tables(source, reanalysis)
    if folder.exists() and any(folder.iterdir()):
        raise ArchiveError(f"{folder} already exists and is not empty; choose another output.")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in _TABLES:
        path = folder / f"{name}.{kind}"
        frame = tables[name]
        if kind is ExportFormat.csv:
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        written.append(path)
        if progress is not None:
            progress(1)
    return written


def _frames(reader: ArchiveReader, progress: Callable[[int], None] | None = None
            ) -> Iterator[np.ndarray]:
    for position in range(reader.frame_count):
        yield reader.frame(position)
        if progress is not None:
            progress(1)


def _export_tiff(reader: ArchiveReader, target: Path,
                 progress: Callable[[int], None] | None = None) -> None:
    import tifffile

    shape = (reader.frame_count, *reader.frames.shape[1:])
    dtype = reader.frames.dtype
    pixel_size_nm = reader.pixel_size_nm
    interval = _frame_interval_s(reader)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    imagej = nbytes < _IMAGEJ_LIMIT_BYTES and np.dtype(dtype).name in (
        "uint8", "uint16", "float32")
    options: dict[str, Any] = {"shape": shape, "dtype": dtype, "photometric": "minisblack"}
    if imagej:
        metadata: dict[str, Any] = {"axes": "TYX"}
        if pixel_size_nm is not None:
            metadata["unit"] = "nm"
            options["resolution"] = (1.0 / pixel_size_nm, 1.0 / pixel_size_nm)
        if interval is not None:
            metadata["finterval"] = interval
        options.update(imagej=True, metadata=metadata)
    else:
        options.update(bigtiff=True, metadata={"axes": "TYX"})
        if pixel_size_nm is not None:
            per_cm = 1e7 / pixel_size_nm
            options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
    tifffile.imwrite(target, _frames(reader, progress), **options)


# --------------------------------------------------------------------------- movie


def _stretch(reader: ArchiveReader) -> tuple[float, float]:
    """One contrast stretch for the whole movie: 0.5 / 99.5 percentiles of sampled frames."""
    count = reader.frame_count
    picks = sorted({0, count // 2, count - 1, *range(0, count, max(1, count // 16))})
    sample = np.concatenate([reader.frame(p)[::4, ::4].ravel() for p in picks])
    low, high = np.percentile(sample.astype(np.float64), [0.5, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _scale_bar_nm(width_px: int, pixel_size_nm: float) -> float:
    """A round length (1, 2 or 5 x 10^n nm) near a fifth of the frame width."""
    target = width_px * pixel_size_nm / 5
    power = 10 ** math.floor(math.log10(target))
    return float(max((m * power for m in (1, 2, 5) if m * power <= target), default=power))


class _H264Writer:
    """H.264 (yuv420p) MP4 through FFmpeg (imageio-ffmpeg ships it): the codec every
    browser and presentation program plays, which OpenCV's wheels cannot write."""

    def __init__(self, target: Path, width: int, height: int, rate: float) -> None:
        try:
            import imageio_ffmpeg
        except ImportError:
            raise ConfigError("MP4 export needs imageio-ffmpeg: pip install "
                              "'lithoscope[movie]' (or export --to avi).") from None
        # yuv420p halves the chroma resolution: both sides must be even.
        self.width, self.height = width + width % 2, height + height % 2
        self._gen = imageio_ffmpeg.write_frames(
            str(target), (self.width, self.height), fps=rate, codec="libx264",
            pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=7, macro_block_size=2,
            ffmpeg_log_level="error", output_params=["-movflags", "+faststart"])
        self._gen.send(None)

    def write(self, canvas: np.ndarray) -> None:
        rgb = cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)
        if rgb.shape[:2] != (self.height, self.width):
            rgb = cv2.copyMakeBorder(rgb, 0, self.height - rgb.shape[0], 0,
                                     self.width - rgb.shape[1], cv2.BORDER_REPLICATE)
        self._gen.send(np.ascontiguousarray(rgb))

    def release(self) -> None:
        self._gen.close()


class _OpenCVWriter:
    def __init__(self, target: Path, width: int, height: int, rate: float) -> None:
        self._writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*"MJPG"), rate,
                                       (width, height), isColor=True)
        if not self._writer.isOpened():
            raise ArchiveError(f"OpenCV cannot write AVI (MJPG) to {target}.")

    def write(self, canvas: np.ndarray) -> None:
        self._writer.write(canvas)

    def release(self) -> None:
        self._writer.release()


def _export_movie(reader: ArchiveReader, target: Path, kind: ExportFormat, *,
                  reanalysis: str | None, fps: float | None, banner_s: float,
                  progress: Callable[[int], None] | None = None) -> None:
    tables = _tables(reader.path, reanalysis)
    events = tables["events"]
    cluster = tables["cluster"]
    relative = dict(zip(cluster["frame"].tolist(), cluster["relative_area"].tolist(),
                        strict=True)) if len(cluster) else {}
    pixel_size_nm = reader.pixel_size_nm
    frame_table = reader.table("frame_table")
    times = frame_table["t_s"][: reader.frame_count]
    indices = frame_table["index"][: reader.frame_count]
    low, high = _stretch(reader)
    height, width = (int(size) for size in reader.frames.shape[1:])
    interval = _frame_interval_s(reader)
    rate = fps or (1.0 / interval if interval else 10.0)
    writer = (_H264Writer if kind is ExportFormat.mp4 else _OpenCVWriter)(
        target, width, height, rate)
    text_scale = max(0.45, width / 800)
    line = round(28 * text_scale) + 4
    try:
        for position in range(reader.frame_count):
            image = reader.frame(position)
            t_s, index = float(times[position]), int(indices[position])
            gray = np.clip((image.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255)
            canvas = cv2.cvtColor(gray.astype(np.uint8), cv2.COLOR_GRAY2BGR)
            labels = read_labels(reader.group, position, shape=(height, width)) \
                if index in relative else None
            if labels is not None:
                draw_labels(canvas, labels, text_scale=text_scale)
            label = f"t = {t_s:7.2f} s  frame {index}"
            area = relative.get(index)
            if area is not None and math.isfinite(area):
                label += f"  area x{area:.3f}"
            put_text(canvas, label, (6, line - 6), text_scale, (255, 255, 255))
            active = events[(events["t_s"] <= t_s) & (events["t_s"] > t_s - banner_s)] \
                if len(events) else events
            for row_number, kind_name in enumerate(active.get("kind", [])):
                put_text(canvas, str(kind_name).replace("_", " ").upper(),
                         (6, line * (row_number + 2) - 6), text_scale, (0, 255, 255))
            if pixel_size_nm is not None:
                bar_nm = _scale_bar_nm(width, pixel_size_nm)
                bar_px = round(bar_nm / pixel_size_nm)
                y = height - 10
                cv2.line(canvas, (width - 10 - bar_px, y), (width - 10, y), (255, 255, 255), 3)
                put_text(canvas, f"{bar_nm:g} nm", (width - 10 - bar_px, y - 8),
                         text_scale * 0.8, (255, 255, 255))
            writer.write(canvas)
            if progress is not None:
                progress(1)
    finally:
        writer.release()
