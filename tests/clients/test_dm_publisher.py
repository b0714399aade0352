"""The DigitalMicrograph publisher script, run as GMS would run it, with a stand-in camera."""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.config import ServiceConfig
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.protocol import Frame, SessionStart, SessionStop, decode

from support.media import make_frames

SCRIPT = Path(__file__).parents[2] / "clients" / "dm_publisher.py"
FRAMES = make_frames(5, (32, 40), np.uint16, seed=4)


class FakePyImage:
    """What DigitalMicrograph's AcquireImage returns: a Py_Image with a calibration."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._pixels = pixels

    def GetNumArray(self) -> np.ndarray:  # noqa: N802 - DM's API names
        return self._pixels

    def GetDimensionScale(self, axis: int) -> float:  # noqa: N802
        return 0.25

    def GetDimensionUnitString(self, axis: int) -> str:  # noqa: N802
        return "nm"


class FakeCamera:
    """Stand-in for DM.GetActiveCamera(): hands out FRAMES in order, records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.prepared = False

    def PrepareForAcquire(self) -> None:  # noqa: N802
        self.prepared = True

    def AcquireImage(self, *args: Any) -> FakePyImage:  # noqa: N802
        self.calls.append(args)
        return FakePyImage(FRAMES[(len(self.calls) - 1) % len(FRAMES)].copy())


def load_script(monkeypatch: pytest.MonkeyPatch, camera: FakeCamera) -> types.ModuleType:
    """Import the file by path, with only what GMS has: numpy, pyzmq, DigitalMicrograph."""
    dm = types.ModuleType("DigitalMicrograph")
    dm.GetActiveCamera = lambda: camera  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "DigitalMicrograph", dm)
    spec = importlib.util.spec_from_file_location("dm_publisher_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    config = ServiceConfig(frames_endpoint="tcp://127.0.0.1:*",
                           results_endpoint="tcp://127.0.0.1:*",
                           sessions_dir=str(tmp_path / "sessions"))
    with Worker(config) as service, WorkerThread(service):
        yield service


def test_the_script_is_self_contained() -> None:
    imports = [line for line in SCRIPT.read_text().splitlines()
               if line.lstrip().startswith(("import ", "from "))]
    assert not [line for line in imports if "lithoscope" in line], imports


def test_frames_from_the_camera_reach_the_archive(monkeypatch: pytest.MonkeyPatch,
                                                  worker: Worker, tmp_path: Path) -> None:
    camera = FakeCamera()
    script = load_script(monkeypatch, camera)
    monkeypatch.setattr(script, "ENDPOINT", worker.frames_endpoint)
    monkeypatch.setattr(script, "FRAME_COUNT", len(FRAMES))
    monkeypatch.setattr(script, "ARCHIVE_NAME", "dm-live")
    script.main()  # what DigitalMicrograph runs
    assert camera.prepared
    assert camera.calls == [(script.EXPOSURE_S, 1, 1, 3)] * len(FRAMES)
    deadline = time.monotonic() + 60
    while not worker.closed_sessions and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the worker's close, not timing anything
    (closed,) = worker.closed_sessions.values()
    assert closed.frames_archived == len(FRAMES)
    reader = ArchiveReader(tmp_path / "sessions" / "dm-live.zarr")
    np.testing.assert_array_equal(reader.frames[:], np.stack(FRAMES))
    assert reader.pixel_size_nm == 0.25
    assert reader.meta["source_kind"] == "camera"
    assert reader.meta["live"] is True
    assert np.all(np.isclose(reader.table("frame_table")["exposure_s"], script.EXPOSURE_S))


def test_messages_decode_strictly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every message the script builds passes lithoscope's strict decoder."""
    script = load_script(monkeypatch, FakeCamera())
    sent: list[list[Any]] = []

    class Socket:
        def setsockopt(self, *args: Any) -> None: ...
        def connect(self, endpoint: str) -> None: ...
        def close(self, linger: int = 0) -> None: ...
        def send_multipart(self, parts: list[Any], copy: bool = True) -> None:
            sent.append([bytes(part) for part in parts])

    class Context:
        def socket(self, kind: int) -> Socket:
            return Socket()

    frames = iter(FRAMES[:2])
    script.publish(lambda: (next(frames), 0.5), context=Context(), frame_count=2)
    messages = [decode(parts) for parts in sent]
    assert [type(m) for m in messages] == [SessionStart, Frame, Frame, SessionStop]
    assert [m.seq for m in messages] == [1, 2, 3, 4]
    assert np.array_equal(messages[2].image, FRAMES[1])
    assert messages[3].frames_sent == 2
