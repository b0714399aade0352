"""The service's source registry: live sources built in, file readers register themselves."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lithoscope.service.errors import ConfigError, SourceError
from lithoscope.service.sources import SourceBase, SourceFrame, SourceInfo, registry
from lithoscope.service.sources.registry import SourceKind, open_source


class _Fake(SourceBase):
    def __init__(self, target: Any, **kwargs: Any) -> None:
        self.target, self.kwargs = target, kwargs
        self._info = SourceInfo(name=f"fake:{target}", kind="fake")

    def __iter__(self) -> Iterator[SourceFrame]:
        yield SourceFrame(image=np.zeros((2, 2), np.uint8), index=0, t_s=0.0)


@pytest.fixture
def fake_kind() -> Iterator[SourceKind]:
    def open_fake(target: Any, *, fps: float | None, pixel_size_nm: float | None,
                  stop: threading.Event | None, options: Mapping[str, Any]) -> _Fake:
        return _Fake(target, fps=fps, pixel_size_nm=pixel_size_nm, options=dict(options))

    kind = SourceKind("fake", "fake file", open_fake, suffixes=frozenset({".fake"}))
    registry.register(kind)
    live = SourceKind("fakelive", "'fake://HOST'", open_fake, prefix="fake://")
    registry.register(live)
    yield kind
    with registry._LOCK:
        del registry._KINDS["fake"], registry._KINDS["fakelive"]


def test_a_registered_reader_opens_its_files_and_a_live_kind_its_specs(
        tmp_path: Path, fake_kind: SourceKind) -> None:
    path = tmp_path / "A.FAKE"
    path.write_text("x")
    source = open_source(path, fps=5)
    assert isinstance(source, _Fake)
    assert source.target == path
    assert source.kwargs == {"fps": 5.0, "pixel_size_nm": None, "options": {}}
    live = open_source("fake://host:1", pixel_size_nm=0.5)
    assert isinstance(live, _Fake)
    assert live.target == "host:1"
    assert "fake file" in registry.describe_kinds()


def test_a_second_reader_for_the_same_suffix_is_refused(fake_kind: SourceKind) -> None:
    with pytest.raises(ValueError, match="collides with 'fake'"):
        registry.register(SourceKind("other", "other", fake_kind.open,
                                     suffixes=frozenset({".fake"})))


def test_options_only_for_kinds_that_take_them(tmp_path: Path, fake_kind: SourceKind) -> None:
    path = tmp_path / "a.fake"
    path.write_text("x")
    with pytest.raises(ConfigError, match="simulator options only with a 'sim' source"):
        open_source(path, duration_s=3.0)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "25", True])
def test_fps_is_checked_at_the_edge_for_every_kind(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^Expected fps to be a positive"):
        open_source("watch:/nonexistent", fps=bad)  # type: ignore[arg-type]


def test_watch_needs_a_folder() -> None:
    with pytest.raises(SourceError, match=r"Expected a folder after 'watch:'"):
        open_source("watch:")


def test_the_service_alone_knows_only_its_live_sources_and_never_imports_replay(
        tmp_path: Path) -> None:
    """The registry is the service's; replay adds its readers when it is imported."""
    (tmp_path / "a.tif").write_bytes(b"II*\x00")
    code = f"""
import sys
from lithoscope.service.sources import registry
before = sorted(k.name for k in registry.registered())
assert "lithoscope.replay" not in sys.modules, "the service imported replay"
try:
    registry.open_source({str(tmp_path / "a.tif")!r})
except Exception as exc:
    print(type(exc).__name__, "Unknown source type" in str(exc))
import lithoscope.replay
after = sorted(k.name for k in registry.registered())
suffixes, _ = registry.frame_file_reader()
print(before, after, sorted(suffixes))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout.splitlines()
    assert out[0] == "SourceError True"
    assert out[1] == ("['imagezmq', 'sim', 'watch'] ['archive', 'dm', 'folder', "
                      "'imagezmq', 'mrc', 'rsciio', 'sim', 'tiff', 'video', 'watch'] "
                      "['.ali', '.dm3', '.dm4', '.mrc', '.mrcs', '.st', '.tif', '.tiff']")
