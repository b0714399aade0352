"""OME-Zarr (NGFF 0.5) metadata on session archives, checked with the NGFF libraries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image

from lithoscope.service.archive import ArchiveWriter
from lithoscope.service.archive.ngff import frames_ngff_metadata


def write_archive(path: Path, **session: object) -> Path:
    writer = ArchiveWriter(path, session={"session_id": "s1", "source": "t", **session})
    for i in range(3):
        writer.append_frame(np.full((8, 12), i, np.uint16), seq=i + 1, index=i, t_s=i * 0.5,
                            acquired_at=float(i))
    writer.close()
    return path


def test_archive_is_an_ngff_image_at_physical_scale(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "s.zarr", pixel_size_nm=0.42, fps=2.0)
    # ome-zarr-models validates against the 0.5 specification (pydantic models).
    image = Image.from_zarr(zarr.open_group(path, mode="r"))
    (dataset,) = image.attributes.ome.multiscales[0].datasets
    assert dataset.path == "frames"
    # ome-zarr-py is what napari-ome-zarr reads with.
    (node, *_) = list(Reader(parse_url(str(path)))())
    assert [(a["name"], a["type"], a.get("unit")) for a in node.metadata["axes"]] == [
        ("t", "time", "second"), ("y", "space", "nanometer"), ("x", "space", "nanometer")]
    assert node.metadata["coordinateTransformations"] == [
        [{"type": "scale", "scale": [0.5, 0.42, 0.42]}]]
    assert node.data[0].shape == (3, 8, 12)
    assert np.array_equal(np.asarray(node.data[0][2]), np.full((8, 12), 2, np.uint16))


def test_unknown_scales_are_pixels_and_frames_without_units() -> None:
    ome = frames_ngff_metadata({"pixel_size_nm": None})
    (multiscale,) = ome["multiscales"]
    assert all("unit" not in axis for axis in multiscale["axes"])
    assert multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), True, "0.5"])
def test_nonsense_pixel_sizes_are_not_units(bad: object) -> None:
    (multiscale,) = frames_ngff_metadata({"pixel_size_nm": bad, "fps": bad})["multiscales"]
    assert all("unit" not in axis for axis in multiscale["axes"])
