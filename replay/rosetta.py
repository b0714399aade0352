"""Every format RosettaSciIO reads, as a frame source: what it reads, we replay.

RosettaSciIO (``rsciio``, HyperSpy's I/O) lists its readers in ``rsciio.IO_PLUGINS``:
Gatan DM3/DM4, EMD (Velox, Berkeley, DE), TIA ``.ser/.emi``, blockfile ``.blo``,
Quantum Detectors ``.mib``, TVIPS, ``.hspy`` / ``.zspy``, NeXus, USID, JEOL, ... This
module registers one source kind with every suffix of that registry except those
another reader owns (TIFF: :mod:`.tiff`, which asks ``rsciio.tiff`` for vendor
calibration; MRC: :mod:`.formats`, with mrcfile; PNG / JPEG / BMP: :mod:`.folder`;
CSV: holder and potentiostat logs, :mod:`lithoscope.service.sources.echem`). A
suffix several plugins claim (``.h5``, ``.img``) is tried with each in turn.

What comes through, per file:

* the frames, read lazily (a dask array over the file) one at a time: one image, a
  stack whose navigation axis is time or image number, or a scan of frames (4D-STEM,
  navigation flattened in C order). Spectra and spectrum images are refused;
* calibration per axis (``info.metadata["axes"]``: name, units, scale, offset, size),
  the pixel size from the x signal axis, the frame rate from a time navigation axis,
  and per-frame times from a non-uniform time axis where the file has one;
* instrument values mapped from HyperSpy's metadata tree into lithoscope names
  (:func:`instrument_metadata`): ``exposure_s`` (also on every frame, so dose from
  counts works on replay), ``beam_energy_kev``, ``magnification``, ``camera``,
  ``microscope``, ``camera_length_mm``, ``beam_current_na``, ``acquired_at``, ``title``;
* the file's ``original_metadata`` as flat dotted keys (:func:`flat_metadata`),
  archived with the session.

RosettaSciIO is GPL-3.0-or-later and optional (the ``[formats]`` extra,
docs/formats.md#licences): its registry is read when this module is imported if it is
installed; a reader module is imported only to read a file. Without it the common
suffixes (:data:`KNOWN_SUFFIXES`) still dispatch here and fail with one line naming
the extra.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from lithoscope.service.errors import MissingExtraError, SourceError, require
from lithoscope.service.sources.imagefile import FrameFile
from lithoscope.service.sources.registry import SourceKind, file_opener, register

from ._common import (
    TIME_UNIT_S,
    decode_unicode_escapes,
    existing_file,
    length_unit_nm,
    one_line,
    parse_optional_positive,
)
from ._stack import StackSource

__all__ = [
    "DM_SUFFIXES",
    "FRAME_KEYS",
    "KNOWN_SUFFIXES",
    "OWNED_ELSEWHERE",
    "MissingExtra",
    "RsciioSource",
    "axis_pixel_size_nm",
    "flat_metadata",
    "instrument_metadata",
    "mapped_metadata",
    "pick_image_signal",
    "plugins_for",
    "read_with",
    "split_axes",
    "suffixes",
]

MissingExtra = MissingExtraError
"""Raised by :func:`read_with` when RosettaSciIO is not installed."""

OWNED_ELSEWHERE: Final = frozenset({
    ".tif", ".tiff",                      # replay.tiff (rsciio.tiff for vendor tags)
    ".mrc", ".ali",                       # replay.formats, mrcfile
    ".png", ".jpg", ".jpeg", ".bmp",      # replay.folder, OpenCV
    ".csv",                               # echem sources: Protochips / potentiostat logs
})
"""Suffixes RosettaSciIO reads that another lithoscope reader owns."""

KNOWN_SUFFIXES: Final = frozenset({
    ".dm3", ".dm4", ".emd", ".ser", ".emi", ".blo", ".mib", ".tvips", ".hspy", ".zspy",
    ".nxs", ".mrcz", ".de5", ".prz", ".npy", ".unf", ".rpl", ".img", ".sur",
})
"""Suffixes dispatched here even without RosettaSciIO (to say which extra reads them)."""

FOLDER_SUFFIXES: Final = frozenset({".zspy"})
"""Formats stored as a folder (HyperSpy's ZSPY in a zarr directory store): such a
folder is this reader's, not a folder of frame files."""

FRAME_KEYS: Final = ("exposure_s",)
"""Instrument values that every frame carries (the rest are the session's)."""

_ENERGY_UNITS: Final = frozenset({"ev", "kev", "mev"})
_ORIGINAL_METADATA_CHARS: Final = 200_000
"""Bound on the archived original metadata: the session_start header is at most 1 MB."""
_SHORT_ARRAY: Final = 16

# HyperSpy metadata paths -> lithoscope names (unit in the name), first found wins.
_INSTRUMENT: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("exposure_s", ("Acquisition_instrument.TEM.Detector.Camera.exposure",
                    "Acquisition_instrument.TEM.Camera.exposure",
                    "Acquisition_instrument.Detector.integration_time",
                    "Acquisition_instrument.SEM.Detector.Camera.exposure")),
    ("beam_energy_kev", ("Acquisition_instrument.TEM.beam_energy",
                         "Acquisition_instrument.SEM.beam_energy")),
    ("magnification", ("Acquisition_instrument.TEM.magnification",
                       "Acquisition_instrument.SEM.magnification")),
    ("camera_length_mm", ("Acquisition_instrument.TEM.camera_length",)),
    ("beam_current_na", ("Acquisition_instrument.TEM.beam_current",
                         "Acquisition_instrument.SEM.beam_current")),
    ("camera", ("Acquisition_instrument.TEM.Detector.Camera.name",
                "Acquisition_instrument.TEM.Detector.Camera.Name",
                "Acquisition_instrument.TEM.Camera.name")),
    ("microscope", ("Acquisition_instrument.TEM.microscope",
                    "Acquisition_instrument.SEM.microscope")),
    ("title", ("General.title",)),
)


def _plugins() -> list[Mapping[str, Any]]:
    try:
        import rsciio
    except ImportError:
        return []
    return list(rsciio.IO_PLUGINS)


def suffixes() -> frozenset[str]:
    """Every suffix this source reads: RosettaSciIO's registry (when installed) and
    :data:`KNOWN_SUFFIXES`, less :data:`OWNED_ELSEWHERE`."""
    found = {f".{extension.casefold()}" for plugin in _plugins()
             for extension in plugin.get("file_extensions", ())}
    return frozenset((found | KNOWN_SUFFIXES) - OWNED_ELSEWHERE)


def plugins_for(suffix: str) -> list[Mapping[str, Any]]:
    """RosettaSciIO's plugins that read files with this suffix, in registry order."""
    wanted = suffix.casefold().lstrip(".")
    return [plugin for plugin in _plugins()
            if wanted in (e.casefold() for e in plugin.get("file_extensions", ()))]


def read_with(path: Path, api: str, *, lazy: bool = True) -> list[dict[str, Any]]:
    """Read ``path`` with one RosettaSciIO reader module (``"rsciio.tiff"``), lazily
    where the reader can (unless ``lazy`` is false: the reader then closes the file).

    Raises
    ------
    MissingExtraError
        RosettaSciIO (or what the reader needs) is not installed.
    SourceError
        The reader refused the file.
    """
    module = require(api, extra="formats", package="rosettasciio",
                     purpose=f"Reading {path.suffix or path.name} files")
    try:
        try:
            signals = module.file_reader(str(path), lazy=lazy)
        except (TypeError, NotImplementedError):
            signals = module.file_reader(str(path), lazy=False)  # no lazy reading there
    except (MissingExtraError, ModuleNotFoundError):
        raise
    except Exception as exc:
        # rsciio raises plain exceptions (ValueError, KeyError, OSError from h5py,
        # struct.error ...) for files that are not what the suffix says.
        raise SourceError(
            f"Cannot read {path}: not a readable {path.suffix[1:].upper()} file "
            f"({one_line(exc)})."
        ) from exc
    return list(signals)


def split_axes(
    axes: Sequence[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Navigation and signal axes. Readers that mark no axis as navigation (EMD, NPY)
    hold images in the last two axes: the others then navigate."""
    if not any(axis.get("navigate") for axis in axes):
        return list(axes[:-2]), list(axes[-2:])
    return ([axis for axis in axes if axis.get("navigate")],
            [axis for axis in axes if not axis.get("navigate")])


def pick_image_signal(path: Path, signals: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The image (or stack / scan of images) among what RosettaSciIO found in the file.

    Velox files hold several signals (images from each detector, spectra); the first
    with exactly two signal axes, neither an energy, is the camera image. Spectra,
    spectrum images and line profiles are not frames.
    """
    for signal in signals:
        axes = list(signal.get("axes", []))
        if len(axes) < 2 or np.ndim(signal["data"]) != len(axes):
            continue
        _, signal_axes = split_axes(axes)
        if len(signal_axes) != 2 or axes[-2:] != signal_axes:
            continue
        if any(str(axis.get("units", "")).strip().casefold() in _ENERGY_UNITS
               for axis in signal_axes):
            continue
        return signal
    found = ", ".join(str(tuple(np.shape(s["data"]))) for s in signals) or "nothing"
    raise SourceError(
        f"Cannot read {path}: no 2-D image or image stack in the file (found {found})."
    )


def axis_pixel_size_nm(axes: Sequence[Mapping[str, Any]]) -> float | None:
    """Pixel width from the last (x) signal axis, when its unit is a length."""
    if not axes:
        return None
    x_axis = axes[-1]
    unit_nm = length_unit_nm(x_axis.get("units"))
    scale = x_axis.get("scale")
    if unit_nm is None or not isinstance(scale, int | float) or not scale > 0:
        return None
    return float(scale) * unit_nm


def _time_unit_s(axis: Mapping[str, Any]) -> float | None:
    unit = axis.get("units")
    if not isinstance(unit, str):
        return None
    return TIME_UNIT_S.get(decode_unicode_escapes(unit).strip().casefold())


def _time_axis(axes: Sequence[Mapping[str, Any]]) -> tuple[float | None, list[float] | None]:
    """Frame rate and per-frame times from a lone time navigation axis.

    A uniform axis (``scale``) gives a rate; a non-uniform one (``axis``: the time of
    each frame) gives the times, from the first frame's.
    """
    navigation, _ = split_axes(axes)
    if len(navigation) != 1:
        return None, None
    axis = navigation[0]
    unit_s = _time_unit_s(axis)
    if unit_s is None:
        return None, None
    values = axis.get("axis")
    if values is not None and "scale" not in axis:
        times = np.asarray(values, dtype=np.float64) * unit_s
        if times.ndim == 1 and np.all(np.isfinite(times)) and np.all(np.diff(times) >= 0):
            return None, [float(t) for t in times - times[0]]
        return None, None
    scale = axis.get("scale")
    if not isinstance(scale, int | float) or not scale > 0:
        return None, None
    rate = 1.0 / (float(scale) * unit_s)
    return (rate if math.isfinite(rate) else None), None


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path; HyperSpy spells a key's spaces as underscores."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        if part in node:
            node = node[part]
            continue
        spelled = [key for key in node if str(key).replace(" ", "_") == part]
        if not spelled:
            return None
        node = node[spelled[0]]
    return node


def mapped_metadata(signal: Mapping[str, Any]) -> dict[str, Any]:
    """The signal's metadata tree with its reader's ``mapping`` applied, as HyperSpy
    applies it when it builds a signal: values copied from ``original_metadata`` (the
    DM tags' voltage, magnification, exposure ...) into HyperSpy's metadata paths."""
    tree: dict[str, Any] = json.loads(json.dumps(signal.get("metadata", {}), default=_plain))
    original = signal.get("original_metadata", {})
    for source, target in (signal.get("mapping") or {}).items():
        value = _get(original, source)
        if value is None:
            continue
        path, convert = target if isinstance(target, tuple | list) else (target, None)
        try:
            value = convert(value) if convert is not None else value
        except Exception:  # a reader's converter refusing a vendor's odd value
            continue
        node = tree
        *parents, leaf = str(path).split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[leaf] = value
    return tree


def _plain(value: Any) -> Any:
    """A metadata value as JSON can carry it, or ``None`` if it cannot (large arrays)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, np.ndarray | list | tuple):
        array = np.asarray(value, dtype=object).ravel()
        if array.size > _SHORT_ARRAY:
            return None
        return [_plain(item) for item in array]
    return str(value)


def instrument_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a HyperSpy metadata tree says about the acquisition, in lithoscope's names.

    ``exposure_s`` (s), ``beam_energy_kev`` (keV), ``magnification``,
    ``camera_length_mm`` (mm), ``beam_current_na`` (nA), ``camera``, ``microscope``,
    ``title``, and ``acquired_at`` (ISO 8601, from ``General.date`` / ``time`` /
    ``time_zone``). Absent values are left out.
    """
    found: dict[str, Any] = {}
    for name, paths in _INSTRUMENT:
        for path in paths:
            value = _plain(_get(metadata, path))
            if value is None or value == "" or isinstance(value, list):
                continue
            if name not in ("camera", "microscope", "title"):
                if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                    continue
                value = float(value)
            else:
                value = str(value)
            found[name] = value
            break
    general = metadata.get("General", {})
    date, clock = general.get("date"), general.get("time")
    if date:
        text = f"{date}T{clock}" if clock else str(date)
        zone = general.get("time_zone")
        found["acquired_at"] = f"{text} {zone}" if zone else text
    return found


def flat_metadata(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A nested metadata tree as ``{"dotted.key": value}``, JSON-safe and bounded.

    Flat, because the wire bounds a header's nesting depth and DM tag trees are deep;
    arrays longer than 16 values are left out; past 200 000 characters of JSON the
    remaining keys are dropped and ``_truncated`` says how many.
    """
    flat: dict[str, Any] = {}
    pending: list[tuple[str, Any]] = [("", tree)]
    while pending:
        prefix, node = pending.pop()
        if isinstance(node, Mapping):
            pending.extend((f"{prefix}{key}.", value) for key, value in
                           reversed(list(node.items())))
            continue
        value = _plain(node)
        if value is not None:
            flat[prefix.rstrip(".")] = value
    size, kept = 0, dict[str, Any]()
    for key, value in flat.items():
        size += len(key) + len(json.dumps(value)) + 4
        if size > _ORIGINAL_METADATA_CHARS:
            kept["_truncated"] = len(flat) - len(kept)
            break
        kept[key] = value
    return kept


def _read_any(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """Read with the first plugin for the suffix that accepts the file."""
    plugins = plugins_for(path.suffix)
    if not plugins:
        require("rsciio", extra="formats", package="rosettasciio",
                purpose=f"Reading {path.suffix} files")
        raise SourceError(f"Cannot read {path}: RosettaSciIO reads no {path.suffix} files.")
    errors = []
    for plugin in plugins:
        try:
            return str(plugin["name"]), read_with(path, str(plugin["api"]))
        except SourceError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    names = ", ".join(str(plugin["name"]) for plugin in plugins)
    raise SourceError(f"Cannot read {path}: not a readable {path.suffix[1:].upper()} file "
                      f"for any of {names}.")


def _kind(plugin: str, suffix: str) -> str:
    if suffix in (".dm3", ".dm4"):
        return "dm"
    if suffix == ".emd":
        return "emd"
    return plugin.casefold()


class RsciioSource(StackSource):
    """Frames of any file RosettaSciIO reads that holds images (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The file (``.dm4``, ``.emd``, ``.ser``, ``.hspy``, ``.blo``, ``.mib`` ...).
    fps, pixel_size_nm : float, optional
        Override the file's calibration (or supply what it lacks).

    Raises
    ------
    SourceError
        Missing, empty or unreadable file, a file holding no image (spectra only), or
        RosettaSciIO not installed (the message names the ``[formats]`` extra).
    ConfigError
        When ``fps`` or ``pixel_size_nm`` is not a positive number.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fps: float | None = None,
        pixel_size_nm: float | None = None,
    ) -> None:
        fps = parse_optional_positive(fps, "fps")
        pixel_size_nm = parse_optional_positive(pixel_size_nm, "pixel_size_nm")
        resolved = Path(path).expanduser().absolute()
        if not (resolved.is_dir() and resolved.suffix.casefold() in FOLDER_SUFFIXES):
            resolved = existing_file(path)
        try:
            plugin, signals = _read_any(resolved)
        except MissingExtraError as exc:
            raise SourceError(f"Cannot read {resolved}: {exc}") from exc
        signal = pick_image_signal(resolved, signals)
        axes = list(signal.get("axes", []))
        file_fps, times_s = _time_axis(axes)
        instrument = instrument_metadata(mapped_metadata(signal))
        metadata: dict[str, Any] = {
            "reader": "rosettasciio",
            "rsciio_plugin": plugin,
            "axes": [{key: _plain(axis.get(key))
                      for key in ("name", "units", "scale", "offset", "size", "navigate")}
                     for axis in axes],
            **instrument,
        }
        original = flat_metadata(signal.get("original_metadata", {}))
        if original:
            metadata["original_metadata"] = original
        _, signal_axes = split_axes(axes)
        self._setup(
            path=resolved,
            kind=_kind(plugin, resolved.suffix.casefold()),
            data=signal["data"],
            fps=fps,
            pixel_size_nm=pixel_size_nm,
            file_fps=file_fps,
            file_pixel_size_nm=axis_pixel_size_nm(signal_axes),
            metadata=metadata,
            times_s=times_s,
            frame_metadata={key: instrument[key] for key in FRAME_KEYS if key in instrument},
        )


def read_rsciio_frame(path: Path) -> FrameFile:
    """The single frame of a DM3/DM4 (or other RosettaSciIO) file, with its calibration:
    how a folder or a watched folder reads a GMS In-Situ frame."""
    with RsciioSource(path) as source:
        info = source.info
        if info.frame_count != 1:
            raise SourceError(
                f"Cannot read {path}: it holds {info.frame_count} frames; a folder source "
                "expects one frame per file (open the file by itself)."
            )
        frame = next(iter(source))
        metadata = {key: info.metadata[key] for key in FRAME_KEYS if key in info.metadata}
        return FrameFile(frame.image, info.pixel_size_nm, metadata)


DM_SUFFIXES: Final = frozenset({".dm3", ".dm4"})
"""Gatan DigitalMicrograph files: also frame files in folders (GMS In-Situ saves them)."""

# Two kinds: DM files are frame files in folders and watched folders; the others are
# not (a stray .h5 or .xml beside the frames is not a frame).
register(SourceKind("dm", "DM3/DM4", file_opener(RsciioSource), suffixes=DM_SUFFIXES,
                    read_frame=read_rsciio_frame))
register(SourceKind("rsciio", "RosettaSciIO file (.emd, .ser, .hspy, ...)",
                    file_opener(RsciioSource), suffixes=suffixes() - DM_SUFFIXES,
                    claims_directory=lambda path: path.suffix.casefold() in FOLDER_SUFFIXES,
                    priority=10))
