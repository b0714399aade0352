"""What people expect of a command-line tool: --version, --json summaries, help that names
every source, and one line naming the extra to install when an optional package is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lithoscope.service
from lithoscope.service.archive import ArchiveReader
from lithoscope.service.cli import app
from lithoscope.service.cli._common import SOURCE_HELP
from lithoscope.service.errors import MissingExtraError, SourceError

from support.archives import record_sim_archive
from support.arrays import noisy_frames
from support.media import write_tiff_stack

LITHOSCOPE = [sys.executable, "-m", "lithoscope.service"]
runner = CliRunner()

# Each kind of source open_source knows, and the words of the help that name it: a kind
# added to the registry without a word in the help fails here.
HELP_NAMES = {
    "tiff": "TIFF stack", "video": "AVI/MP4 movie", "folder": "GMS In-Situ",
    "archive": "lithoscope archive", "dm": "DM3/DM4", "mrc": "MRC file",
    "rsciio": "RosettaSciIO reads", "watch": "'watch:DIR'",
    "imagezmq": "'imagezmq://ENDPOINT'", "sim": "'sim'",
}


def run(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LITHOSCOPE, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_sim_archive(tmp_path_factory.mktemp("conventions") / "sim.zarr")


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"lithoscope {lithoscope.service.__version__}"


def test_help_names_every_kind_of_source() -> None:
    import lithoscope.replay  # noqa: F401  (registers the file readers)
    from lithoscope.service.sources import registry

    assert {kind.name for kind in registry.registered()} == set(HELP_NAMES)
    for name in HELP_NAMES.values():
        assert name in SOURCE_HELP, name
    for command in ("replay", "publish"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        text = " ".join(result.output.split())
        assert "RosettaSciIO" in text
        assert "GMS In-Situ" in text


def test_replay_json_is_the_only_thing_on_stdout(tmp_path: Path) -> None:
    frames = noisy_frames(6, shape=(32, 40))
    stack = write_tiff_stack(tmp_path / "movie.tif", frames)
    done = run("replay", str(stack), "--archive", "out.zarr", "--fps", "4", "--json",
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["frames_sent"] == summary["frames_archived"] == 6
    assert summary["interrupted"] is False
    assert Path(summary["archive"]).name == "out.zarr"
    assert summary["source"] == f"tiff:{stack}"


def test_export_json_lists_what_was_written(archive: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(archive), "--to", "ome-tiff", "--output",
                                 str(tmp_path / "f.ome.tif"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["to"] == "ome-tiff"
    assert summary["written"] == [str(tmp_path / "f.ome.tif")]
    assert (tmp_path / "f.ome.tif").stat().st_size > 0


def test_reanalyze_json(archive: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["reanalyze", str(archive), "--run", "json", "--json"])
    assert result.exit_code == 0, result.output
    (summary,) = json.loads(result.stdout)
    assert summary["run"] == "json"
    assert summary["frames_analysed"] == ArchiveReader(archive).frame_count
    assert isinstance(summary["events"], list)


def test_reanalyze_shows_each_archive_s_frames_on_a_terminal(
        archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, a bar per archive counts its frames (through the Dask cluster's
    events) while stdout keeps only the summary."""
    import io
    import shutil

    from rich.console import Console

    from lithoscope.service.cli import _common

    second = Path(shutil.copytree(archive, tmp_path / "second.zarr"))
    screen = io.StringIO()
    monkeypatch.setattr(_common, "err_console", Console(
        file=screen, force_terminal=True, width=120, color_system=None))
    result = runner.invoke(app, ["reanalyze", str(archive), str(second), "--run", "bars",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 2
    frames = ArchiveReader(archive).frame_count
    shown = screen.getvalue()
    for name in (archive.name, second.name):
        assert f"reanalyze {name}" in shown
    # Both archives' bars counted frames up to the end (the counts in between are
    # tested on reanalyze's frame_progress: a redraw here is every 0.1 s).
    assert shown.count(f"{frames}/{frames}") >= 2


# ------------------------------------------------------------------ missing extras


def _without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        for loaded in [name for name in sys.modules if name == module
                       or name.startswith(f"{module}.")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, module, None)  # the import now fails


EXTRA_LINE = r"which the \[{extra}\] extra installs: pip install 'lithoscope\[{extra}\]'\.$"


@pytest.mark.parametrize(("module", "extra", "action"), [
    ("xarray", "scale", "open_archive"),
    ("pandas", "scale", "csv"),
    ("pyarrow", "scale", "parquet"),
    ("rsciio", "formats", "hspy"),
    ("rsciio", "formats", "zspy"),
    ("distributed", "scale", "reanalyze"),
])
def test_archive_tools_name_the_missing_extra(archive: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, module: str,
                                              extra: str, action: str) -> None:
    from lithoscope.service.offline.export import export_archive
    from lithoscope.service.offline.reanalyze import reanalyze
    from lithoscope.service.offline.xr import open_archive

    calls = {"open_archive": lambda: open_archive(archive),
             "reanalyze": lambda: reanalyze([archive])}
    call = calls.get(action, lambda: export_archive(archive, action, tmp_path / "out"))
    _without(monkeypatch, module)
    with pytest.raises(MissingExtraError, match=EXTRA_LINE.format(extra=extra)) as caught:
        call()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("module", "name", "extra"), [
    ("mrcfile", "frame.mrc", "formats"),
    ("rsciio", "frame.dm4", "formats"),
    ("rsciio", "movie.ser", "formats"),
])
def test_file_readers_name_the_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             module: str, name: str, extra: str) -> None:
    import lithoscope.replay  # noqa: F401
    from lithoscope.service.sources.registry import open_source

    path = tmp_path / name
    path.write_bytes(b"\0" * 256)
    _without(monkeypatch, module)
    with pytest.raises(SourceError, match=EXTRA_LINE.format(extra=extra)):
        open_source(path)


def test_eclab_names_the_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lithoscope.service.sources.echem import read_eclab

    path = tmp_path / "run.mpr"
    path.write_bytes(b"\0" * 64)
    _without(monkeypatch, "galvani")
    with pytest.raises(SourceError, match=r"pip install 'lithoscope\[echem\]'"):
        read_eclab(path)


def test_the_cli_prints_the_missing_extra_as_one_line(archive: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "pandas")
    result = runner.invoke(app, ["export", str(archive), "--to", "csv", "--output",
                                 str(tmp_path / "t")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "[scale] extra" in lines[0]
    assert not np.any([line.startswith("Traceback") for line in lines])
