"""Label images in session archives: OME-Zarr labels that napari and ome-zarr-py read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from lithoscope.service.analysis import FrameLabels
from lithoscope.service.archive import ArchiveReader, ArchiveWriter, read_labels
from lithoscope.service.schema import label_colour

from support.archives import SMALL_SIM, record_sim_archive


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_sim_archive(tmp_path_factory.mktemp("labels") / "sim.zarr")


def _labels(track: int, binning: int = 2) -> FrameLabels:
    particles = np.zeros((4, 6), np.uint32)
    particles[1:3, 1:3] = track
    needle = np.zeros((4, 6), bool)
    needle[:, 5] = True
    return FrameLabels(particles=particles, needle=needle, grid=np.zeros((4, 6), bool),
                       binning=binning, shape=(8, 12))


def test_labels_sit_at_their_frames_position_and_scale(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "s.zarr", session={"session_id": "s", "source": "t",
                                                         "pixel_size_nm": 0.5, "fps": 4.0})
    for i in range(4):
        writer.append_frame(np.full((8, 12), i, np.uint16), seq=i + 1, index=10 + i,
                            t_s=i * 0.25, acquired_at=float(i))
    assert writer.append_labels(11, _labels(3))
    assert writer.append_labels(13, _labels(5))
    assert not writer.append_labels(99, _labels(5))  # not a frame of this archive
    writer.close()
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert read_labels(group, 0)["particles"].max() == 0  # frame 10: not analysed
    at_1 = read_labels(group, 1, shape=(8, 12))
    assert at_1 is not None
    assert at_1["particles"].shape == (8, 12)
    assert set(np.unique(at_1["particles"]).tolist()) == {0, 3}
    assert np.count_nonzero(at_1["particles"]) == 16  # 2x2 label pixels at binning 2
    assert at_1["needle"][:, 10:].all()
    assert not at_1["needle"][:, :10].any()
    assert read_labels(group, 3)["particles"].max() == 5
    # NGFF: the label image is in front of the frames at twice their pixel size.
    (image, *nodes) = list(Reader(parse_url(str(tmp_path / "s.zarr")))())
    labels = {node.metadata.get("name"): node for node in nodes}
    assert {"particles", "needle", "grid"} <= set(labels)
    particles = labels["particles"]
    transforms = particles.metadata["coordinateTransformations"][0]
    assert transforms[0] == {"type": "scale", "scale": [0.25, 1.0, 1.0]}
    assert transforms[1] == {"type": "translation", "translation": [0.0, 0.25, 0.25]}
    assert particles.data[0].shape == (4, 4, 6)
    ome = group["labels/particles"].attrs["ome"]
    assert ome["image-label"]["colors"] == [
        {"label-value": 3, "rgba": list(label_colour(3))},
        {"label-value": 5, "rgba": list(label_colour(5))}]
    assert ome["image-label"]["properties"][0] == {
        "label-value": 3, "track_id": 3, "first_frame": 11, "last_frame": 11,
        "frames_seen": 1}


def test_a_recorded_session_has_the_tracks_of_its_particles_table(archive: Path) -> None:
    reader = ArchiveReader(archive)
    particles = reader.table("particles")
    frame_table = reader.table("frame_table")
    cluster = reader.table("cluster")
    positions = {int(index): p for p, index in enumerate(frame_table["index"])}
    assert len(cluster["frame"]) == reader.frame_count  # a replay analyses every frame
    for index in cluster["frame"].tolist():
        labels = read_labels(reader.group, positions[index])
        assert labels is not None
        expected = set(particles["track_id"][particles["frame"] == index].tolist())
        assert set(np.unique(labels["particles"]).tolist()) - {0} == expected
    contact = next(e["frame"] for e in reader.events() if e["kind"] == "contact_made")
    assert read_labels(reader.group, positions[contact])["needle"].any()
    labels_array = reader.group["labels/particles/0"]
    assert labels_array.shape[0] == reader.frame_count
    assert labels_array.shape[1] * 2 >= SMALL_SIM.shape[0] // 2


def test_napari_ome_zarr_reads_frames_and_labels(archive: Path) -> None:
    napari_ome_zarr = pytest.importorskip(
        "napari_ome_zarr", reason="napari-ome-zarr is in the [view] extra")
    reader = napari_ome_zarr.napari_get_reader(str(archive))
    assert reader is not None
    layers = reader(str(archive))
    kinds = [layer[2] if len(layer) > 2 else "image" for layer in layers]
    assert kinds.count("labels") == 3
    assert "image" in kinds


def test_labels_are_written_in_batches_and_empty_images_cost_no_chunk(
        tmp_path: Path) -> None:
    from lithoscope.service.archive import labels as labels_module

    path = tmp_path / "s.zarr"
    writer = ArchiveWriter(path, session={"session_id": "s", "source": "t"})
    count = labels_module._BATCH_FRAMES + 3
    for i in range(count):
        writer.append_frame(np.full((8, 12), i, np.uint16), seq=i + 1, index=i,
                            t_s=i * 0.25, acquired_at=float(i))
    empty = FrameLabels(particles=np.zeros((4, 6), np.uint32), needle=np.zeros((4, 6), bool),
                        grid=np.zeros((4, 6), bool), binning=2, shape=(8, 12))
    for i in range(count):
        assert writer.append_labels(i, _labels(7 + i % 2) if i % 3 else empty)

    def chunks(name: str) -> set[str]:
        folder = path / "labels" / name / "0" / "c"
        return {p.relative_to(folder).parts[0] for p in folder.rglob("*") if p.is_file()}

    # One full batch is on disk; the last three frames wait for the next flush.
    written = {str(i) for i in range(labels_module._BATCH_FRAMES) if i % 3}
    assert chunks("particles") == written
    assert chunks("grid") == set()  # never a grid bar: never a chunk
    writer.flush()
    written |= {str(i) for i in range(labels_module._BATCH_FRAMES, count) if i % 3}
    assert chunks("particles") == written
    assert chunks("needle") == written
    group = zarr.open_group(path, mode="r")
    for i in range(count):
        images = read_labels(group, i)
        assert images is not None
        assert images["particles"].max() == (7 + i % 2 if i % 3 else 0)
        assert images["needle"].any() == bool(i % 3)
    writer.close()
    assert read_labels(zarr.open_group(path, mode="r"), count - 2)["particles"].max() == 8


def test_label_chunks_are_the_files_zarr_itself_writes_and_name_their_tracks(
        tmp_path: Path) -> None:
    from lithoscope.service.analysis import label_track_ids, track_label_image

    rng = np.random.default_rng(5)
    path = tmp_path / "s.zarr"
    writer = ArchiveWriter(path, session={"session_id": "s", "source": "t"})
    segments, lut = [], {1: 40, 2: 41, 3: 40, 4: 0, 5: 77}  # 3 rejoined into 40; 4 no row
    for i in range(5):
        writer.append_frame(np.full((16, 24), i, np.uint16), seq=i + 1, index=i,
                            t_s=i * 0.25, acquired_at=float(i))
        segment = rng.integers(0, 5, (8, 12)).astype(np.int32)  # label 5 never present
        segments.append(segment)
        writer.append_labels(i, FrameLabels(
            particles=track_label_image(segment, lut), needle=segment == 0,
            grid=np.zeros((8, 12), bool), binning=2, shape=(16, 24),
            track_ids=label_track_ids(segment, lut)))
        assert label_track_ids(segment, lut).tolist() == sorted(
            set(np.unique(track_label_image(segment, lut)).tolist()) - {0})
    assert all(files is not None for files in writer.labels._files.values())
    writer.close()
    group = zarr.open_group(path, mode="r+")
    # Frames seen per track, as np.unique over each image would count them.
    properties = group["labels/particles"].attrs["ome"]["image-label"]["properties"]
    assert {p["track_id"]: p["frames_seen"] for p in properties} == {40: 5, 41: 5}
    for name, images in (("particles", [track_label_image(s, lut) for s in segments]),
                         ("needle", [(s == 0).astype(np.uint8) for s in segments])):
        archived = group[f"labels/{name}/0"]
        by_zarr = group.create_array(f"by_zarr_{name}", shape=archived.shape,
                                     chunks=archived.chunks, dtype=archived.dtype,
                                     fill_value=0, compressors=archived.compressors)
        by_zarr[:] = np.stack(images)
        for k in range(len(images)):
            key = archived.metadata.encode_chunk_key((k, 0, 0))
            assert ((path / "labels" / name / "0" / key).read_bytes()
                    == (path / f"by_zarr_{name}" / key).read_bytes())
        np.testing.assert_array_equal(archived[:], np.stack(images))
    assert not list(path.rglob("*.partial"))
