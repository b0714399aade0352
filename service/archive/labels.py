"""Label images in a session archive: what the analysis saw, frame by frame, as OME-Zarr
(NGFF 0.5) labels, so ``napari session.zarr`` shows the frames with their outlines.

Layout, beside ``frames`` (see docs/archive.md)::

    labels/                 attributes["ome"]["labels"] = ["particles", "needle", "grid"]
      particles/0           (T, Y/b, X/b) uint32: each particle's pixels hold its track_id
      needle/0              (T, Y/b, X/b) uint8: 1 on the needle (with its coating)
      grid/0                (T, Y/b, X/b) uint8: 1 on opaque grid bars

``T`` is the frames array's length: label ``t`` is frame ``t``'s (its archive
position), so a viewer's time slider moves frames and labels together. A frame that
was not analysed (a live session's skipped frames) has no chunk and reads as 0. ``b``
is the analysis binning: the labels are kept where the particles were measured, and
each label image's ``coordinateTransformations`` (scale ``b`` pixels, translation
``(b - 1) / 2`` pixels, in nm when the pixel size is known) put them over the frames.
Each label image's ``image-label`` metadata gives every track id a colour and its
properties (first and last frame it was seen in, how many frames), and names
``frames`` as its source image.

Label images are mostly zeros and long runs of one value: Zstandard over 1-byte
shuffled chunks stores them at a few percent of the frames' size (measured by
``bench/labels_size.py``).

References
----------
https://ngff.openmicroscopy.org/0.5/#labels-md (labels, image-label).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import zarr
import zarr.codecs
from zarr.core.sync import sync as _zarr_sync

from ..schema import label_colour
from .chunks import ChunkFiles, chunk_files, write_chunks
from .ngff import NGFF_VERSION, frames_ngff_metadata

log = logging.getLogger(__name__)

__all__ = ["LABEL_NAMES", "ArchiveLabels", "LabelImages", "label_colour", "read_labels"]

LABEL_NAMES = ("particles", "needle", "grid")
"""The label images under ``labels/``, in the order viewers list them."""

_GROWTH = 64
"""Frames the label arrays grow by at a time, as the frames array does."""
_BATCH_FRAMES = 16
_BATCH_BYTES = 32 << 20
"""Label images are written in batches of this many frames or bytes, whichever comes
first (one zarr call per batch, not per frame), and whenever the archive flushes its
tables: they reach the disk as the measurement rows do."""
_MAX_POSITIONS = 65_536
"""Most frame index -> archive position entries remembered for frames not analysed
yet: far beyond any analysis backlog (a replay backlog is bounded in bytes)."""
_MASK_COLOURS = {"needle": [230, 140, 40, 110], "grid": [70, 110, 230, 90]}


class LabelImages(Protocol):
    """What one analysed frame gives the archive (``FrameLabels`` of the analysis)."""

    @property
    def particles(self) -> np.ndarray: ...
    @property
    def needle(self) -> np.ndarray: ...
    @property
    def grid(self) -> np.ndarray: ...
    @property
    def binning(self) -> int: ...
    @property
    def track_ids(self) -> np.ndarray | None: ...


def _label_attrs(name: str, session: Mapping[str, Any], binning: int,
                 colours: list[dict[str, Any]], properties: list[dict[str, Any]],
                 image_source: str) -> dict[str, Any]:
    ome = frames_ngff_metadata(session, path="0")
    dataset = ome["multiscales"][0]["datasets"][0]
    _, pixel_y, pixel_x = dataset["coordinateTransformations"][0]["scale"]
    scale = dataset["coordinateTransformations"][0]["scale"]
    scale[1], scale[2] = pixel_y * binning, pixel_x * binning
    if binning > 1:
        offset = (binning - 1) / 2
        dataset["coordinateTransformations"].append(
            {"type": "translation", "translation": [0.0, pixel_y * offset, pixel_x * offset]})
    ome["multiscales"][0]["name"] = name
    ome["image-label"] = {"version": NGFF_VERSION, "colors": colours,
                          "properties": properties, "source": {"image": image_source}}
    return ome


async def _gather(writes: list[tuple[zarr.Array[Any], int, np.ndarray]]) -> None:
    await asyncio.gather(*(array.async_array.setitem(position, value)
                           for array, position, value in writes))


class ArchiveLabels:
    """The ``labels/`` group of one archive, written in batches as frames are analysed.

    Owned by the :class:`ArchiveWriter` (the archive thread): the writer tells it each
    frame's position as the frame is written (:meth:`frame_written`), the worker hands
    it each analysed frame's images (:meth:`append`), and closing writes the colours
    and properties of every track seen. Re-analysis writes a run's labels with the same
    class into ``reanalysis/<run>/labels``; ``image_source`` is then the path from a
    label image up to the archive root, where the frames are.
    """

    def __init__(self, group: zarr.Group, session: Mapping[str, Any], *,
                 image_source: str = "../../") -> None:
        self._group = group
        self._session = dict(session)
        self._image_source = image_source
        self._positions: OrderedDict[int, int] = OrderedDict()
        self._arrays: dict[str, zarr.Array[Any]] = {}
        self._files: dict[str, ChunkFiles | None] = {}
        """Each array's chunks written as files (:mod:`.chunks`), or None: through zarr."""
        self._label_groups: dict[str, zarr.Group] = {}
        self.binning: int | None = None
        self.shape: tuple[int, int] | None = None
        self.frames_labelled = 0
        self.unplaced = 0
        """Analysed frames whose archive position was unknown (not labelled)."""
        self._tracks: dict[int, list[int]] = {}
        """track id -> [first frame, last frame, frames seen]."""
        self._compressor = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
        self._pending: list[tuple[str, int, np.ndarray]] = []
        self._pending_frames = 0
        self._pending_bytes = 0

    def frame_written(self, index: int, position: int) -> None:
        """Remember where frame ``index`` went, until its labels come."""
        self._positions[index] = position
        while len(self._positions) > _MAX_POSITIONS:
            self._positions.popitem(last=False)

    def _create(self, images: LabelImages) -> None:
        rows, cols = images.particles.shape
        self.binning, self.shape = int(images.binning), (rows, cols)
        root = self._group.create_group("labels")
        root.attrs["ome"] = {"version": NGFF_VERSION, "labels": list(LABEL_NAMES)}
        for name in LABEL_NAMES:
            group = root.create_group(name)
            group.attrs["lithoscope"] = {"binning": self.binning}
            self._label_groups[name] = group
            # write_empty_chunks=False: a frame that was not analysed, or has no needle,
            # costs no chunk at all.
            self._arrays[name] = group.create_array(
                "0", shape=(0, rows, cols), chunks=(1, rows, cols),
                dtype=np.uint32 if name == "particles" else np.uint8, fill_value=0,
                compressors=self._compressor, config={"write_empty_chunks": False},
                dimension_names=("t", "y", "x"))
            self._files[name] = chunk_files(self._arrays[name])
        self._write_attrs()

    def _fit(self, image: np.ndarray, binning: int) -> np.ndarray:
        """An image analysed at another binning than the first, brought to the arrays'
        grid (nearest neighbour): the archive keeps one grid per session."""
        assert self.shape is not None
        if image.shape == self.shape:
            return image
        import cv2

        dtype = image.dtype
        work: np.ndarray[Any, np.dtype[np.float32 | np.uint8]] = image.astype(
            np.float32 if dtype == np.uint32 else np.uint8)
        resized = cv2.resize(work, (self.shape[1], self.shape[0]),
                             interpolation=cv2.INTER_NEAREST)
        return resized.astype(dtype)

    def append(self, index: int, images: LabelImages) -> bool:
        """Write frame ``index``'s label images at its archive position; False (and
        counted in :attr:`unplaced`) if the frame's position is not known."""
        position = self._positions.pop(index, None)
        if position is None:
            self.unplaced += 1
            return False
        # Frames are analysed in order: positions of earlier frames are no longer needed.
        while self._positions and next(iter(self._positions.values())) < position:
            self._positions.popitem(last=False)
        if not self._arrays:
            self._create(images)
        assert self.binning is not None
        length = self._arrays["particles"].shape[0]
        if position >= length:
            for array in self._arrays.values():
                array.resize((position + _GROWTH, *array.shape[1:]))
        particles = self._fit(np.asarray(images.particles, np.uint32), images.binning)
        for name, image in (("particles", particles),
                            ("needle", self._fit(np.asarray(images.needle, np.uint8),
                                                 images.binning)),
                            ("grid", self._fit(np.asarray(images.grid, np.uint8),
                                               images.binning))):
            # Each position is written once, and an unwritten chunk reads as 0: an
            # empty image (no needle, no grid bar, no particle) needs no write at all.
            if image.any():
                self._pending.append((name, position, image))
                self._pending_bytes += image.nbytes
        ids = images.track_ids
        if ids is None or particles is not images.particles:  # not given, or refitted
            ids = np.unique(particles)
        for track in ids.tolist():
            if track:
                seen = self._tracks.get(track)
                if seen is None:
                    self._tracks[track] = [index, index, 1]
                else:
                    seen[1], seen[2] = index, seen[2] + 1
        self.frames_labelled += 1
        self._pending_frames += 1
        if (self._pending_frames >= _BATCH_FRAMES
                or self._pending_bytes >= _BATCH_BYTES):
            self.flush()
        return True

    def flush(self) -> None:
        """Write the label images appended since the last flush: as chunk files
        (:mod:`.chunks`: zarr's write path cost more than encoding and writing the
        bytes, 10 ms a frame for three 512² images), or where an array cannot be
        written so, in one zarr call."""
        pending, self._pending = self._pending, []
        self._pending_frames = self._pending_bytes = 0
        as_files: list[tuple[ChunkFiles, tuple[int, ...], np.ndarray]] = []
        through_zarr: list[tuple[zarr.Array[Any], int, np.ndarray]] = []
        for name, position, image in pending:
            files = self._files.get(name)
            if files is not None:
                as_files.append((files, files.coords(position), image))
            else:
                through_zarr.append((self._arrays[name], position, image))
        if as_files:
            write_chunks(as_files)
        if through_zarr:
            _zarr_sync(_gather(through_zarr))

    def _write_attrs(self) -> None:
        assert self.binning is not None
        tracks = sorted(self._tracks.items())
        colours = {
            "particles": [{"label-value": t, "rgba": list(label_colour(t))} for t, _ in tracks],
            **{name: [{"label-value": 1, "rgba": rgba}] for name, rgba in _MASK_COLOURS.items()},
        }
        properties: dict[str, list[dict[str, Any]]] = {
            "particles": [{"label-value": t, "track_id": t, "first_frame": first,
                           "last_frame": last, "frames_seen": seen}
                          for t, (first, last, seen) in tracks],
            "needle": [{"label-value": 1, "class": "needle"}],
            "grid": [{"label-value": 1, "class": "grid"}],
        }
        for name, group in self._label_groups.items():
            group.attrs["ome"] = _label_attrs(name, self._session, self.binning,
                                              colours[name], properties[name],
                                              self._image_source)

    def close(self, frame_count: int) -> None:
        """Write what is pending, trim the arrays to the archive's frames and write
        every track's colour."""
        if not self._arrays:
            return
        self.flush()
        for array in self._arrays.values():
            array.resize((frame_count, *array.shape[1:]))
        self._write_attrs()


def read_labels(group: zarr.Group, position: int, *, shape: tuple[int, int] | None = None,
                ) -> dict[str, np.ndarray] | None:
    """Frame ``position``'s label images from an archive group, or None if the archive
    has none (older than labels, or nothing analysed yet).

    With ``shape`` (the frame's), the images are brought to frame resolution (nearest
    neighbour, pixel ``i`` of binning ``b`` covering frame pixels ``i*b .. i*b+b-1``);
    otherwise they are returned at analysis resolution.

    Returns
    -------
    dict or None
        ``particles`` (uint32 track ids), ``needle`` and ``grid`` (bool).
    """
    labels = group.get("labels")
    if not isinstance(labels, zarr.Group):
        return None
    out: dict[str, np.ndarray] = {}
    for name in LABEL_NAMES:
        array = labels.get(f"{name}/0")
        if not isinstance(array, zarr.Array) or position >= array.shape[0]:
            return None
        image = np.asarray(array[position])
        if shape is not None and image.shape != tuple(shape):
            recorded = labels[name].attrs.get("lithoscope", {})
            b = recorded.get("binning") if isinstance(recorded, dict) else None
            if not isinstance(b, int) or b < 1:
                b = max(1, shape[0] // max(image.shape[0], 1))
            full = np.zeros(shape, image.dtype)
            up = np.repeat(np.repeat(image, b, axis=0), b, axis=1)[: shape[0], : shape[1]]
            full[: up.shape[0], : up.shape[1]] = up
            image = full
        out[name] = image if name == "particles" else image.astype(bool)
    return out
