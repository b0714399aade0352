"""Protochips holder logs as echem sources, on a log in the layout Protochips writes.

RosettaSciIO's own sample logs are not in its wheel; this log follows the layout its
reader parses (rsciio.protochips: a column line, ``, name = value`` header lines ending
with ``User``, then samples; times in milliseconds).
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np
import pytest

from lithoscope.service.errors import SourceError
from lithoscope.service.sources.echem import ProtochipsSource, open_echem_source
from lithoscope.service.sources.protochips import is_protochips_log, read_protochips

COLUMNS = "Time, Notes, Channel A Current, Channel A Voltage, Channel A Resistance"
# Every header line has as many fields as the column line (the rest left empty).
HEADER = COLUMNS + "\n" + "".join(f", {name} = {value}, , , \n" for name, value in (
    ("Calibration file path", "C:\\Protochips\\E-chip.cal"),
    ("Time units", "Milliseconds"),
    ("Current units", "Milliamps"),
    ("Voltage units", "Volts"),
    ("Resistance units", "Ohms"),
    ("Date (yyyy.mm.dd)", "2026.01.02"),
    ("Time (hh:mm:ss.ms)", "03:04:05.250"),
    ("User", "operator"),
))
ROWS = [(0, "", 0.0, 0.0, 1e3), (500, "bias on", -0.002, -2.0, 1e3),
        (1000, "", -0.003, -2.0, 1e3), (1500, "", -0.004, -2.0, 1e3)]


def write_log(path: Path, rows: list[tuple[int, str, float, float, float]] = ROWS) -> Path:
    path.write_text(HEADER + "".join(f"{t}, {note}, {i}, {v}, {r}\n"
                                     for t, note, i, v, r in rows), encoding="latin1")
    return path


def test_a_protochips_log_gives_seconds_volts_and_amps(tmp_path: Path) -> None:
    path = write_log(tmp_path / "holder.csv")
    assert is_protochips_log(path)
    t, bias, current, start = read_protochips(path)
    np.testing.assert_allclose(t, [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_allclose(bias, [0.0, -2.0, -2.0, -2.0])
    np.testing.assert_allclose(current, [0.0, -2e-6, -3e-6, -4e-6])  # mA logged, A out
    assert start == pytest.approx(dt.datetime(2026, 1, 2, 3, 4, 5, 250000).timestamp())


def test_a_csv_with_protochips_header_opens_as_a_protochips_source(tmp_path: Path) -> None:
    path = write_log(tmp_path / "holder.csv")
    with open_echem_source(str(path), idle_timeout_s=0.2) as source:
        assert isinstance(source, ProtochipsSource)
        assert source.name == f"protochips:{path}"
    source = ProtochipsSource(path, t0_unix=1000.0, poll_s=0.02, idle_timeout_s=0.2)
    batches = list(source)
    t = np.concatenate([batch.t_unix for batch in batches])
    np.testing.assert_allclose(t, [1000.0, 1000.5, 1001.0, 1001.5])


def test_an_ordinary_csv_is_not_taken_for_a_protochips_log(tmp_path: Path) -> None:
    path = tmp_path / "bias.csv"
    path.write_text("t_s,bias_v,current_a\n0,0,0\n")
    assert not is_protochips_log(path)
    with open_echem_source(str(path), idle_timeout_s=0.2) as source:
        assert not isinstance(source, ProtochipsSource)


def test_without_rosettasciio_the_message_names_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_log(tmp_path / "holder.csv")
    monkeypatch.setitem(sys.modules, "rsciio", None)
    monkeypatch.delitem(sys.modules, "rsciio.protochips", raising=False)
    with pytest.raises(SourceError, match=r"needs rosettasciio, which the \[formats\] extra "
                       r"installs: pip install 'lithoscope\[formats\]'\.$"):
        read_protochips(path)


def test_a_log_that_never_parses_ends_with_its_error(tmp_path: Path) -> None:
    path = tmp_path / "holder.csv"
    path.write_text(COLUMNS + "\n, Time units\n")  # cut mid-header, never completed
    with pytest.raises(SourceError, match="Cannot read Protochips log"):
        list(ProtochipsSource(path, poll_s=0.02, idle_timeout_s=0.2))
