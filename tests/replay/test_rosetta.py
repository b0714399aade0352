"""RosettaSciIO's formats, vendor TIFFs and GMS In-Situ folders, on files their own writers made.

RosettaSciIO ships no sample files in its wheel (its tests fetch them with pooch), and
it has no DigitalMicrograph, Velox or TIA writer: those readers are exercised by the
suffix-dispatch and not-a-DM tests here, and by the real DM4 file named in
docs/formats.md, not by a file in this suite.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

import lithoscope.replay  # noqa: F401  (registers the readers)
from lithoscope.replay import rosetta
from lithoscope.replay.folder import FolderSource, gms_times_s
from lithoscope.replay.rosetta import RsciioSource
from lithoscope.replay.tiff import TiffSource
from lithoscope.service.errors import MissingExtraError, SourceError, require
from lithoscope.service.sources import Source, registry
from lithoscope.service.sources.imagefile import read_image_file
from lithoscope.service.sources.watch import WatchFolderSource

from support.media import make_frames
from support.source_conformance import SourceConformance

SHAPE = (8, 10)
FRAMES = make_frames(3, SHAPE, np.uint16, seed=3)
METADATA = {
    "General": {"title": "lithiation", "date": "2026-01-02", "time": "03:04:05"},
    "Signal": {"signal_type": ""},
    "Acquisition_instrument": {"TEM": {
        "beam_energy": 300.0, "magnification": 50000.0, "microscope": "Titan",
        "Detector": {"Camera": {"exposure": 0.05, "name": "OneView"}}}},
}


def _axes(navigation: list[tuple[str, int, float, str]], pixel_nm: float = 0.2
          ) -> list[dict[str, Any]]:
    axes = [{"name": name, "size": size, "scale": scale, "offset": 0.0, "units": units,
             "navigate": True} for name, size, scale, units in navigation]
    return axes + [{"name": name, "size": size, "scale": pixel_nm, "offset": 0.0,
                    "units": "nm", "navigate": False} for name, size in zip("yx", SHAPE,
                                                                             strict=True)]


def _signal(data: np.ndarray, axes: list[dict[str, Any]]) -> dict[str, Any]:
    # The signal dictionary HyperSpy hands to RosettaSciIO's writers.
    return {"data": data, "axes": axes, "metadata": METADATA,
            "original_metadata": {"Camera": {"Gain": 1.5, "Mode": {"Binning": [2, 2]}}},
            "tmp_parameters": {}, "attributes": {"_lazy": False}, "learning_results": {},
            "models": {}, "package_info": {"package": "", "package_version": ""}}


def write_with(module: str, path: Path, data: np.ndarray | None = None,
               axes: list[dict[str, Any]] | None = None) -> Path:
    data = np.stack(FRAMES) if data is None else data
    axes = _axes([("time", len(data), 0.5, "s")]) if axes is None else axes
    importlib.import_module(f"rsciio.{module}").file_writer(str(path), _signal(data, axes))
    return path


class TestHspySource(SourceConformance):
    @pytest.fixture
    def source_factory(self, tmp_path: Path) -> Callable[[], Source]:
        path = write_with("hspy", tmp_path / "stack.hspy")
        return lambda: RsciioSource(path)

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES


@pytest.mark.parametrize(("module", "name", "plugin"), [
    ("hspy", "a.hspy", "HSPY"),
    ("ripple", "a.rpl", "Ripple"),
    ("tvips", "a_000.tvips", "TVIPS"),
    ("numpy", "a.npy", "numpy"),
    ("emd", "a.emd", "EMD"),
])
def test_each_writer_s_file_replays_frame_for_frame(tmp_path: Path, module: str, name: str,
                                                     plugin: str) -> None:
    path = write_with(module, tmp_path / name)
    with registry.open_source(path) as source:
        images = [frame.image for frame in source]
        info = source.info
    assert info.metadata["rsciio_plugin"] == plugin
    assert info.frame_count == 3
    assert all(np.array_equal(a, b) for a, b in zip(images, FRAMES, strict=True))


def test_hspy_metadata_comes_through_for_dose_and_the_record(tmp_path: Path) -> None:
    with registry.open_source(write_with("hspy", tmp_path / "a.hspy")) as source:
        info = source.info
        frames = list(source)
    assert info.pixel_size_nm == pytest.approx(0.2)
    assert info.fps == pytest.approx(2.0)
    assert [frame.t_s for frame in frames] == pytest.approx([0.0, 0.5, 1.0])
    meta = info.metadata
    assert meta["beam_energy_kev"] == 300.0
    assert meta["magnification"] == 50000.0
    assert meta["camera"] == "OneView"
    assert meta["microscope"] == "Titan"
    assert meta["acquired_at"] == "2026-01-02T03:04:05"
    assert meta["original_metadata"] == {"Camera.Gain": 1.5, "Camera.Mode.Binning": [2, 2]}
    assert [axis["units"] for axis in meta["axes"]] == ["s", "nm", "nm"]
    # The exposure rides on every frame: the publisher sends it as Frame.exposure_s.
    assert all(frame.metadata["exposure_s"] == 0.05 for frame in frames)


def test_a_scan_of_frames_comes_out_in_c_order(tmp_path: Path) -> None:
    frames = make_frames(6, SHAPE, np.uint16, seed=5)
    data = np.stack(frames).reshape(2, 3, *SHAPE)
    axes = _axes([("scan_y", 2, 1.0, "nm"), ("scan_x", 3, 1.0, "nm")])
    with RsciioSource(write_with("hspy", tmp_path / "scan.hspy", data, axes)) as source:
        assert source.info.frame_count == 6
        assert source.info.metadata["navigation_shape"] == [2, 3]
        images = [frame.image for frame in source]
    assert all(np.array_equal(a, b) for a, b in zip(images, frames, strict=True))


def test_a_spectrum_file_is_not_a_movie(tmp_path: Path) -> None:
    data = np.zeros((4, 16), np.float32)
    axes = [{"name": "y", "size": 4, "scale": 1.0, "offset": 0.0, "units": "nm",
             "navigate": True},
            {"name": "E", "size": 16, "scale": 1.0, "offset": 0.0, "units": "eV",
             "navigate": False}]
    path = write_with("hspy", tmp_path / "eels.hspy", data, axes)
    with pytest.raises(SourceError, match="no 2-D image or image stack"):
        RsciioSource(path)


def test_every_suffix_rsciio_reads_is_replayed_or_owned_by_another_reader() -> None:
    import rsciio

    kinds = {suffix: kind.name for kind in registry.registered() for suffix in kind.suffixes}
    for plugin in rsciio.IO_PLUGINS:
        for extension in plugin["file_extensions"]:
            suffix = f".{extension.casefold()}"
            if suffix in rosetta.OWNED_ELSEWHERE:
                assert kinds.get(suffix) in (None, "tiff", "mrc"), suffix
            else:
                assert kinds.get(suffix) in ("dm", "rsciio"), (plugin["name"], suffix)


def test_without_rosettasciio_a_dm4_names_the_extra(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "frame.dm4"
    path.write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "rsciio", None)  # import rsciio now fails
    with pytest.raises(SourceError, match=r"needs rosettasciio, which the \[formats\] extra "
                       r"installs: pip install 'lithoscope\[formats\]'\.$") as caught:
        registry.open_source(path)
    assert "\n" not in str(caught.value)


def test_require_names_the_extra_and_keeps_the_import_error() -> None:
    with pytest.raises(MissingExtraError, match=r"^Opening archives as xarray needs "
                       r"no_such_module_x, which the \[scale\] extra installs") as caught:
        require("no_such_module_x", extra="scale", purpose="Opening archives as xarray")
    assert isinstance(caught.value, ImportError)


# ------------------------------------------------------------------ vendor TIFFs


def test_a_tiff_written_by_rsciio_gets_its_calibration_through_rsciio(tmp_path: Path) -> None:
    data = FRAMES[0]
    axes = [{"name": name, "size": size, "scale": 0.125, "offset": 0.0, "units": "µm",
             "navigate": False} for name, size in zip("yx", SHAPE, strict=True)]
    path = tmp_path / "dm_tags.tif"
    importlib.import_module("rsciio.tiff").file_writer(str(path), _signal(data, axes))
    with TiffSource(path) as source:
        assert source.info.pixel_size_nm == pytest.approx(125.0)
        assert source.info.metadata["calibration_reader"] == "rsciio.tiff"
        assert np.array_equal(next(iter(source)).image, data)


FEI_HELIOS = """[User]
Date=01/02/2026
Time=03:04:05 AM
[Beam]
HV=300000
[EScan]
Mag=50000
[Scan]
PixelWidth=2.5e-10
PixelHeight=2.5e-10
Dwelltime=1e-06
"""


def test_an_fei_tiff_gets_its_pixel_size_and_beam_energy(tmp_path: Path) -> None:
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, FRAMES[0], extratags=[(34682, "s", 0, FEI_HELIOS, True)])
    with TiffSource(path) as source:
        info = source.info
    assert info.pixel_size_nm == pytest.approx(0.25)
    assert info.metadata["beam_energy_kev"] == pytest.approx(300.0)
    assert info.metadata["original_metadata"]["fei_metadata.Scan.PixelWidth"] == 2.5e-10


# ------------------------------------------------------------------ GMS In-Situ folders


def _gms_tree(root: Path) -> list[tuple[str, float]]:
    """Frames as GMS In-Situ saves them, each file with its own ImageJ calibration."""
    layout = [("Hour_00/Minute_00/Second_09", 2), ("Hour_00/Minute_00/Second_10", 1),
              ("Hour_00/Minute_01/Second_00", 1)]
    written = []
    index = 0
    for folder, count in layout:
        (root / folder).mkdir(parents=True)
        for k in range(count):
            name = f"{folder}/Hour_00_Frame_{index:05d}.tif"
            size_nm = 0.5 + 0.25 * index
            tifffile.imwrite(root / name, FRAMES[index % 3], imagej=True,
                             resolution=(1 / size_nm, 1 / size_nm),
                             metadata={"unit": "nm"})
            written.append((name, size_nm))
            index += 1
            del k
    (root / "Hour_00" / "notes.txt").write_text("not a frame")
    return written


def test_a_gms_in_situ_tree_replays_in_order_with_each_file_s_calibration(
        tmp_path: Path) -> None:
    written = _gms_tree(tmp_path)
    with registry.open_source(tmp_path) as source:
        info = source.info
        frames = list(source)
    assert info.kind == "folder"
    assert info.metadata["gms_in_situ"] is True
    assert info.pixel_size_nm == pytest.approx(0.5)
    assert [frame.metadata["file_name"] for frame in frames] == [name for name, _ in written]
    assert [frame.metadata["pixel_size_nm"] for frame in frames] == pytest.approx(
        [size for _, size in written])
    # Second 9 holds two frames, then second 10, then a minute later.
    assert [frame.t_s for frame in frames] == pytest.approx([0.0, 0.5, 1.0, 51.0])


def test_gms_times_need_the_whole_tree() -> None:
    assert gms_times_s(["Hour_00/Minute_00/Second_01/a.dm4", "b.dm4"]) is None


def test_a_watched_gms_tree_streams_in_order_with_each_file_s_calibration(
        tmp_path: Path) -> None:
    written = _gms_tree(tmp_path)
    (tmp_path / "lithoscope.stop").write_text("")
    with registry.open_source(f"watch:{tmp_path}") as source:
        frames = list(source)
        info = source.info
    assert [frame.metadata["file_name"] for frame in frames] == [name for name, _ in written]
    assert [frame.metadata["pixel_size_nm"] for frame in frames] == pytest.approx(
        [size for _, size in written])
    assert info.pixel_size_nm == pytest.approx(0.5)


def test_folder_and_watch_refuse_the_same_colour_file(tmp_path: Path) -> None:
    import cv2

    colour = np.stack([FRAMES[0] // 257, FRAMES[1] // 257, FRAMES[2] // 257], axis=2)
    cv2.imwrite(str(tmp_path / "frame_1.png"), colour.astype(np.uint8))
    with pytest.raises(SourceError, match="colour frame"):
        FolderSource(tmp_path)
    with pytest.raises(SourceError, match="colour frame"):
        read_image_file(tmp_path / "frame_1.png")
    watch = WatchFolderSource(tmp_path, unreadable_timeout_s=0.05, poll_s=0.01,
                              idle_timeout_s=5.0, reader=registry.frame_file_reader()[1])
    with watch, pytest.raises(SourceError, match="colour frame"):
        list(watch)


# ------------------------------------------------------------------ through the pipeline


def test_a_replayed_file_s_exposure_gives_dose_from_counts_and_its_metadata_is_archived(
        tmp_path: Path) -> None:
    from lithoscope.service.archive import ArchiveReader
    from lithoscope.service.config import ServiceConfig
    from lithoscope.service.live.session import run_local_session
    from lithoscope.service.operando.context import OperandoConfig

    path = write_with("hspy", tmp_path / "a.hspy")
    config = ServiceConfig().replace(operando=OperandoConfig(counts_per_electron=2.0))
    with RsciioSource(path) as source:
        report = run_local_session(source, config=config, archive_path=tmp_path / "a.zarr")
    assert report.closed is not None
    reader = ArchiveReader(tmp_path / "a.zarr")
    assert list(reader.table("frame_table")["exposure_s"]) == [0.05] * 3
    operando = reader.table("operando")
    assert set(operando["dose_rate_source"]) == {"counts"}
    assert np.all(np.asarray(operando["dose_rate_e_per_a2_s"]) > 0)
    metadata = reader.meta["metadata"]
    assert metadata["beam_energy_kev"] == 300.0
    assert metadata["original_metadata"]["Camera.Gain"] == 1.5


def test_a_pixel_size_given_to_the_publisher_wins_over_each_file_s(tmp_path: Path) -> None:
    from lithoscope.service.archive import ArchiveReader
    from lithoscope.service.live.session import run_local_session

    _gms_tree(tmp_path / "tree")
    with FolderSource(tmp_path / "tree") as source:
        run_local_session(source, archive_path=tmp_path / "own.zarr")
    with FolderSource(tmp_path / "tree") as source:
        run_local_session(source, archive_path=tmp_path / "given.zarr", pixel_size_nm=2.0)
    def sizes(archive: Path) -> list[float]:
        rows = ArchiveReader(archive).table("frame_table")["metadata_json"]
        return [json.loads(str(row))["pixel_size_nm"] for row in rows]

    own, given = sizes(tmp_path / "own.zarr"), sizes(tmp_path / "given.zarr")
    assert list(own) == pytest.approx([0.5, 0.75, 1.0, 1.25])
    assert list(given) == [2.0] * 4
