"""Archives: written incrementally, readable after a clean close and after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.storage

from lithoscope.service.archive import (
    CLUSTER_COLUMNS,
    ArchiveReader,
    ArchiveWriter,
)
from lithoscope.service.archive.thread import ArchiveThread, SessionArchive
from lithoscope.service.errors import ArchiveError

SESSION = {"session_id": "s1", "source": "test", "source_kind": "sim", "pixel_size_nm": 0.5,
           "fps": 4.0, "live": False, "t0_unix": 0.0}


def cluster_row(i: int) -> dict[str, object]:
    return {"frame": i, "t_s": i / 4, "area_px": 1000 + i, "area_nm2": (1000 + i) * 0.25,
            "particle_count": 3, "relative_area": 1 + i / 1000, "needle_contact": i % 2 == 0,
            "needle_area_px": 50, "needle_tip_row": np.nan, "needle_tip_col": 3.0,
            "latency_s": 0.01}


def test_round_trip_after_clean_close(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 65535, size=(70, 32, 48), dtype=np.uint16)  # crosses a growth step
    writer = ArchiveWriter(tmp_path / "a.zarr", session=SESSION, config={"x": 1},
                           software_version="9.9")
    for i, image in enumerate(frames):
        writer.append_frame(image, seq=i + 2, index=i, t_s=i / 4, acquired_at=100.0 + i,
                            metadata={"bias_v": -2.0, "truth": {"cluster_area_px": i}})
        writer.append_rows("cluster", cluster_row(i))
        writer.append_rows("particles", {
            "frame": [i, i], "t_s": [i / 4] * 2, "label": [1, 2], "area_px": [10, 20],
            "area_nm2": [2.5, 5.0], "centroid_row": [1.0, 2.0], "centroid_col": [3.0, 4.0],
            "equivalent_diameter_nm": [1.0, 2.0], "mean_intensity": [5.0, 6.0],
            "touches_needle": [True, False]})
    writer.append_rows("events", {"frame": 5, "t_s": 1.25, "kind": "contact_made",
                                  "magnitude": 0.0, "confidence": 0.9, "particle_ids": "[1]",
                                  "message": "Needle touches the cluster."})
    writer.close()

    reader = ArchiveReader(tmp_path / "a.zarr")
    assert reader.status == "complete"
    assert reader.frame_count == 70
    assert reader.frames.shape == (70, 32, 48)  # trimmed to the exact length
    np.testing.assert_array_equal(reader.frames[:], frames)
    table = reader.table("frame_table")
    np.testing.assert_array_equal(table["seq"], np.arange(2, 72))
    np.testing.assert_allclose(table["t_s"], np.arange(70) / 4)
    assert '"bias_v": -2.0' in str(table["metadata_json"][3])
    cluster = reader.table("cluster")
    assert set(cluster) == set(CLUSTER_COLUMNS)
    np.testing.assert_array_equal(cluster["area_px"], 1000 + np.arange(70))
    assert cluster["needle_contact"].dtype == bool
    particles = reader.table("particles")
    assert len(particles["frame"]) == 140
    (event,) = reader.events()
    assert event["kind"] == "contact_made"
    assert event["particle_ids"] == [1]
    summary = reader.summary()
    assert summary["frames"] == 70
    assert summary["duration_s"] == pytest.approx(69 / 4)
    assert summary["pixel_size_nm"] == 0.5
    assert summary["software_version"] == "9.9"
    assert summary["cluster"][1] == {"frame": 1, "t_s": 0.25, "area_px": 1001,
                                     "relative_area": pytest.approx(1.001),
                                     "needle_contact": False, "particle_diameter_px": None}


def test_refuses_to_overwrite_and_to_mix_frame_shapes(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "a.zarr", session=SESSION)
    writer.append_frame(np.zeros((4, 4), np.uint8), seq=1, index=0, t_s=0.0, acquired_at=0.0)
    with pytest.raises(ArchiveError, match="holds"):
        writer.append_frame(np.zeros((4, 5), np.uint8), seq=2, index=1, t_s=0.1,
                            acquired_at=0.0)
    writer.close()
    with pytest.raises(ArchiveError, match="already exists"):
        ArchiveWriter(tmp_path / "a.zarr", session=SESSION)
    assert ArchiveReader(tmp_path / "a.zarr").frame_count == 1


def test_reader_rejects_what_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a lithoscope archive"):
        ArchiveReader(tmp_path)
    with pytest.raises(OSError, match="not a lithoscope archive"):  # also an OSError
        ArchiveReader(tmp_path / "missing.zarr")


WRITER_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from lithoscope.service.archive import ArchiveWriter
    w = ArchiveWriter(sys.argv[1], session={"session_id": "k", "source": "t"},
                      flush_interval_s=0.05)
    i = 0
    while True:
        w.append_frame(np.full((64, 64), i, np.uint16), seq=i + 1, index=i, t_s=i * 0.1,
                       acquired_at=float(i))
        w.append_rows("cluster", {"frame": i, "t_s": i * 0.1, "area_px": i,
            "area_nm2": 0.0, "particle_count": 1, "relative_area": 1.0,
            "needle_contact": False, "needle_area_px": 0, "needle_tip_row": 0.0,
            "needle_tip_col": 0.0, "latency_s": 0.0})
        print(i, flush=True)
        i += 1
""")


def test_sigkill_mid_session_leaves_a_readable_consistent_archive(tmp_path: Path) -> None:
    path = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    confirmed = -1
    deadline = time.monotonic() + 60
    while confirmed < 150 and time.monotonic() < deadline:  # past two growth steps
        line = proc.stdout.readline()
        if not line:
            break
        confirmed = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()
    assert confirmed >= 150, "the writer did not get going"

    reader = ArchiveReader(path)
    assert reader.status == "recording"  # never closed: says so
    # Every frame the writer had confirmed is there, and nothing half-written is counted.
    assert reader.frame_count >= confirmed + 1
    frames = reader.frames[: reader.frame_count]
    np.testing.assert_array_equal(frames[:, 0, 0], np.arange(reader.frame_count))
    seq = reader.table("frame_table")["seq"]
    np.testing.assert_array_equal(seq, np.arange(1, reader.frame_count + 1))
    cluster = reader.table("cluster")
    # Measurements may lag the frames by one flush interval, but never refer past them.
    assert 0 < len(cluster["frame"]) <= reader.frame_count
    np.testing.assert_array_equal(cluster["area_px"], cluster["frame"])


def test_frame_rows_between_batches_are_kept_by_the_journal(tmp_path: Path) -> None:
    """Frame rows reach zarr in batches; a writer that dies between batches (here: never
    closed, flush interval an hour) loses none of them, and a torn last line is ignored."""
    path = tmp_path / "cut.zarr"
    frames = np.arange(7 * 6 * 5, dtype=np.uint16).reshape(7, 6, 5)
    writer = ArchiveWriter(path, session=SESSION, flush_interval_s=3600.0)
    for i in range(4):
        writer.append_frame(frames[i], seq=10 + i, index=i, t_s=0.25 * i, acquired_at=1.0,
                            metadata={"bias_v": -i})
    writer.flush()  # rows 0-3 in zarr, 4-6 only in the journal
    for i in range(4, 7):
        writer.append_frame(frames[i], seq=10 + i, index=i, t_s=0.25 * i, acquired_at=1.0)
    with (path / "frame_log.jsonl").open("a") as log:
        log.write('{"position": 7, "seq": 1')  # the kill came mid-line

    reader = ArchiveReader(path)
    assert reader.frame_count == 7
    table = reader.table("frame_table")
    np.testing.assert_array_equal(table["seq"], np.arange(10, 17))
    np.testing.assert_allclose(table["t_s"], 0.25 * np.arange(7))
    assert np.isnan(table["exposure_s"]).all()
    assert table["metadata_json"][3] == '{"bias_v": -3}'
    np.testing.assert_array_equal(reader.frames[:7], frames)


def test_a_clean_close_leaves_no_journal(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "a.zarr", session=SESSION, flush_interval_s=3600.0)
    writer.append_frame(np.ones((4, 4), np.uint8), seq=0, index=0, t_s=0.0, acquired_at=0.0)
    assert (tmp_path / "a.zarr" / "frame_log.jsonl").is_file()
    writer.close()
    assert not (tmp_path / "a.zarr" / "frame_log.jsonl").exists()
    assert ArchiveReader(tmp_path / "a.zarr").table("frame_table")["seq"].tolist() == [0]


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_batches_of_frames_round_trip_with_every_codec(tmp_path: Path, compression: str
                                                       ) -> None:
    """Frames written several per call, past the array's growth step, come back equal
    and in order, with their rows and journal lines, whatever the codec."""
    rng = np.random.default_rng(1)
    frames = rng.poisson(100, size=(70, 16, 12)).astype(np.uint16)
    path = tmp_path / f"{compression}.zarr"
    writer = ArchiveWriter(path, session=SESSION, flush_interval_s=3600.0,
                           compression=compression, compression_level=1)
    positions = [writer.append_frames([(frames[i], {"seq": i, "index": i, "t_s": i / 4,
                                                    "acquired_at": 1.0})
                                       for i in range(start, min(start + 8, len(frames)))])
                 for start in range(0, len(frames), 8)]
    assert positions == list(range(0, len(frames), 8))
    journal = (path / "frame_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["position"] for line in journal] == list(range(len(frames)))
    reader = ArchiveReader(path)  # cut short: rows from the journal
    assert reader.frame_count == len(frames)
    np.testing.assert_array_equal(reader.frames[: len(frames)], frames)
    writer.close()
    reader = ArchiveReader(path)
    np.testing.assert_array_equal(reader.frames[:], frames)
    np.testing.assert_array_equal(reader.table("frame_table")["seq"], np.arange(len(frames)))
    codecs = json.loads((path / "frames" / "zarr.json").read_text())["codecs"]
    names = [codec["name"] for codec in codecs]
    assert ("blosc" in names) == (compression != "none")
    if compression != "none":
        blosc = next(codec for codec in codecs if codec["name"] == "blosc")
        assert blosc["configuration"]["cname"] == compression


def test_a_failed_batch_counts_none_of_its_frames(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "a.zarr", session=SESSION)
    image = np.zeros((4, 4), np.uint8)
    batch = [(image, {"seq": 0, "index": 0, "t_s": 0.0, "acquired_at": 0.0}),
             (np.zeros((5, 4), np.uint8), {"seq": 1, "index": 1, "t_s": 0.0,
                                           "acquired_at": 0.0})]
    with pytest.raises(ArchiveError, match=r"Frame 1 is \(5, 4\)"):
        writer.append_frames(batch)
    assert writer.frame_count == 0
    assert writer.append_frames(batch[:1]) == 0
    assert writer.frame_count == 1


def test_the_archive_thread_writes_what_queued_up_in_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames queued while the disk is busy go together (at most batch_frames a call);
    a frame queued while the thread is idle is written alone, without waiting."""
    busy = threading.Event()
    release = threading.Event()
    calls: list[int] = []
    append_frames = ArchiveWriter.append_frames

    def slow_disk(self: ArchiveWriter, frames: list[Any]) -> int:
        calls.append(len(frames))
        busy.set()
        assert release.wait(30.0)
        return append_frames(self, frames)

    monkeypatch.setattr(ArchiveWriter, "append_frames", slow_disk)
    thread = ArchiveThread(batch_frames=8)
    archive = SessionArchive(session_id="s1", path=tmp_path / "a.zarr")
    thread.open(archive, lambda: ArchiveWriter(archive.path, session=SESSION))
    frames = np.arange(21 * 3 * 2, dtype=np.uint16).reshape(21, 3, 2)

    def row(i: int) -> dict[str, Any]:
        return {"seq": i, "index": i, "t_s": float(i), "acquired_at": 0.0}

    thread.write_frame(archive, frames[0], row(0))
    assert busy.wait(30.0)  # the first frame is being written, alone
    for i in range(1, len(frames)):
        thread.write_frame(archive, frames[i], row(i))
        # Rows queued among the frames (as the analysis hands them over) wait for the
        # batch rather than splitting it.
        thread.write(archive, lambda writer, i=i: writer.append_rows(
            "cluster", {**cluster_row(i), "frame": i}))
    release.set()
    assert thread.drain(30.0)
    thread.close(archive, lambda writer: {})
    assert thread.stop(30.0)
    assert calls == [1, 8, 8, 4]
    written = [value for kind, _, value in thread.outcomes if kind == "frames"]
    assert written == calls
    reader = ArchiveReader(archive.path)
    assert reader.status == "complete"
    np.testing.assert_array_equal(reader.frames[:], frames)
    np.testing.assert_array_equal(reader.table("frame_table")["seq"], np.arange(len(frames)))
    np.testing.assert_array_equal(reader.table("cluster")["frame"], np.arange(1, len(frames)))


def test_a_refused_batch_keeps_the_frames_before_the_refused_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As without batches: the frames before the one the disk refused are in the
    archive, that one and the later ones are counted lost (no fallback here)."""
    append_frames = ArchiveWriter.append_frames
    busy, release = threading.Event(), threading.Event()

    def refuses_frame_5(self: ArchiveWriter, frames: list[Any]) -> int:
        if frames[0][1]["index"] == 0:  # hold the first write so the rest queue up
            busy.set()
            assert release.wait(30.0)
        if any(row["index"] == 5 for _, row in frames):
            raise ArchiveError("No space left on device.")
        return append_frames(self, frames)

    monkeypatch.setattr(ArchiveWriter, "append_frames", refuses_frame_5)
    thread = ArchiveThread(batch_frames=8)
    archive = SessionArchive(session_id="s1", path=tmp_path / "a.zarr")
    thread.open(archive, lambda: ArchiveWriter(archive.path, session=SESSION))
    frames = np.arange(10 * 3 * 2, dtype=np.uint16).reshape(10, 3, 2)
    for i in range(len(frames)):
        thread.write_frame(archive, frames[i], {"seq": i, "index": i, "t_s": 0.0,
                                                "acquired_at": 0.0})
        if i == 0:
            assert busy.wait(30.0)
    release.set()
    thread.close(archive, lambda writer: {"status": "interrupted"})
    assert thread.stop(30.0)
    outcomes = [(kind, value) for kind, _, value in thread.outcomes
                if kind in ("frames", "lost", "error")]
    written = sum(v for k, v in outcomes if k == "frames")
    lost = sum(v for k, v in outcomes if k == "lost")
    assert (written, lost) == (5, 5)
    assert [k for k, _ in outcomes].count("error") == 1
    reader = ArchiveReader(archive.path)
    np.testing.assert_array_equal(reader.frames[: reader.frame_count], frames[:5])
    assert reader.frame_count == 5


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_frames_are_the_chunk_files_zarr_itself_writes(tmp_path: Path,
                                                       compression: str) -> None:
    from lithoscope.service.archive.chunks import chunk_files

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 4000, (11, 24, 40)).astype(np.uint16)
    writer = ArchiveWriter(tmp_path / "a.zarr", session={"session_id": "a", "source": "t"},
                           compression=compression)
    writer.append_frames([(image, {"seq": k + 1, "index": k, "t_s": k / 4,
                                   "acquired_at": float(k)}) for k, image in enumerate(frames)])
    assert writer._chunks is not None  # written as chunk files, not through zarr
    writer.close()
    # The same frames through zarr's own setitem, into an array with the same codecs.
    group = zarr.open_group(tmp_path / "a.zarr", mode="r+")
    archived = group["frames"]
    by_zarr = group.create_array("by_zarr", shape=frames.shape, chunks=(1, 24, 40),
                                 dtype=np.uint16, fill_value=0,
                                 compressors=archived.compressors,
                                 config={"write_empty_chunks": True})
    by_zarr[:] = frames
    for k in range(len(frames)):
        key = archived.metadata.encode_chunk_key((k, 0, 0))
        assert ((tmp_path / "a.zarr" / "frames" / key).read_bytes()
                == (tmp_path / "a.zarr" / "by_zarr" / key).read_bytes())
    np.testing.assert_array_equal(ArchiveReader(tmp_path / "a.zarr").frames[:], frames)
    assert not list((tmp_path / "a.zarr" / "frames").rglob("*.partial"))
    # An array in another store is written through zarr.
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    assert chunk_files(memory.create_array("f", shape=(0, 4, 4), chunks=(1, 4, 4),
                                           dtype=np.uint16)) is None


def test_table_columns_are_the_chunk_files_zarr_itself_writes(tmp_path: Path) -> None:
    from lithoscope.service.archive.chunks import chunk_files

    rng = np.random.default_rng(2)
    writer = ArchiveWriter(tmp_path / "a.zarr", session={"session_id": "a", "source": "t"})
    table = writer.tables["frame_table"]
    chunk = table.chunk_rows
    count = 2 * chunk + 37  # three chunks, the last one partial
    t_s = np.cumsum(rng.random(count))
    done = 0
    for stop in (1, 5, chunk - 1, chunk + 1, 2 * chunk, count):  # flushes across chunks
        writer.append_frames([(np.zeros((4, 6), np.uint16),
                               {"seq": k + 1, "index": 3 * k, "t_s": float(t_s[k]),
                                "acquired_at": float(k), "metadata": {"k": k}})
                              for k in range(done, stop)])
        writer.flush()
        done = stop
    numeric = [c for c, files in table._files.items() if files is not None]
    assert {"seq", "index", "t_s"} <= set(numeric)  # the string column goes through zarr
    assert table._files["metadata_json"] is None
    writer.close()
    group = zarr.open_group(tmp_path / "a.zarr", mode="r+")
    for column in numeric:
        archived = group[f"frame_table/{column}"]
        by_zarr = group.create_array(f"by_zarr_{column}", shape=archived.shape,
                                     chunks=archived.chunks, dtype=archived.dtype,
                                     fill_value=archived.fill_value,
                                     compressors=archived.compressors,
                                     config={"write_empty_chunks": True})
        by_zarr[:] = archived[:]
        for k in range(-(-count // chunk)):
            key = archived.metadata.encode_chunk_key((k,))
            assert ((tmp_path / "a.zarr" / "frame_table" / column / key).read_bytes()
                    == (tmp_path / "a.zarr" / f"by_zarr_{column}" / key).read_bytes())
    reader = ArchiveReader(tmp_path / "a.zarr")
    rows = reader.table("frame_table")
    np.testing.assert_array_equal(rows["seq"], np.arange(1, count + 1))
    np.testing.assert_array_equal(rows["index"], 3 * np.arange(count))
    np.testing.assert_array_equal(rows["t_s"], t_s)
    assert reader.frame_count == count
    assert chunk_files(group["frame_table/metadata_json"]) is None
    assert not list((tmp_path / "a.zarr").rglob("*.partial"))
