"""Echem sources on real files: a CSV tailed while it is written; EC-Lab files written
by EC-Lab (tests/data/eclab) and a text export, read through galvani."""

from __future__ import annotations

import datetime as dt
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lithoscope.service.errors import ConfigError, SourceError
from lithoscope.service.sources import echem as echem_sources
from lithoscope.service.sources.echem import (
    CsvEchemSource,
    EcLabSource,
    open_echem_source,
    read_eclab,
)

from support.eclab import GCPL, MB, OCV, keep_records, modules


def test_csv_is_tailed_as_it_is_written(tmp_path: Path) -> None:
    path = tmp_path / "bias.csv"
    path.write_text("t_s,bias_v,I/mA\n0.0,0.0,0.0\n0.5,-2.0,-0.001\n1.0,-2.0,-0.0")
    done = threading.Event()

    def writer() -> None:
        with open(path, "a") as f:
            f.write("02\n")  # completes the partial line: 1.0,-2.0,-0.002
            f.flush()
            f.write("1.5,-2.0,-0.003\n")
        done.set()

    batches = []
    source = CsvEchemSource(path, t0_unix=1000.0, poll_s=0.02, idle_timeout_s=0.5)
    for batch in source:
        batches.append(batch)
        if not done.is_set():
            threading.Thread(target=writer).start()
    t = np.concatenate([b.t_unix for b in batches])
    current = np.concatenate([b.current_a for b in batches])
    np.testing.assert_allclose(t, [1000.0, 1000.5, 1001.0, 1001.5])
    np.testing.assert_allclose(current, [0.0, -1e-6, -2e-6, -3e-6])  # mA named, A out
    assert len(batches) >= 2


def test_csv_without_a_time_column_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "bias.csv"
    path.write_text("volts;amps\n1;2\n")
    with pytest.raises(ConfigError, match="no time column"):
        list(CsvEchemSource(path, poll_s=0.01, idle_timeout_s=0.1))


# EC-Lab's text export as EC-Lab 11 writes it (CRLF, latin-1, tab-separated, a header
# block counted on line 2). No .mpt written by EC-Lab is to be had here (galvani's own
# test files are Git LFS objects, navani ships .mpr only): this one is written here in
# that format and read by galvani's parser, not by ours.
MPT = (
    "EC-Lab ASCII FILE\r\n"
    "Nb header lines : 5\r\n"
    "Chronoamperometry / Chronocoulometry\r\n"
    "Acquisition started on : 11/27/2026 09:00:00.000\r\n"
    "mode\tox/red\terror\ttime/s\tEwe/V\t<I>/mA\tcycle number\r\n"
    "2\t0\t0\t0.0000\t0.0000\t0.0000\t0\r\n"
    "2\t0\t0\t0.5000\t-2,0000\t-1.0000E-006\t0\r\n"
    "2\t0\t0\t1.0000\t-2.0000\t-2.0000E-006\t0\r\n"
)


def test_eclab_text_export_through_galvani(tmp_path: Path) -> None:
    pytest.importorskip("galvani")
    path = tmp_path / "run_C01.mpt"
    path.write_bytes(MPT.encode("latin1"))
    t, bias, current, start = read_eclab(path)
    np.testing.assert_allclose(t, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(bias, [0.0, -2.0, -2.0])  # decimal comma too
    np.testing.assert_allclose(current, [0.0, -1e-9, -2e-9])
    assert start is not None
    stop = threading.Event()
    source = EcLabSource(path, poll_s=0.02, idle_timeout_s=0.3, stop=stop)
    (batch,) = list(source)
    np.testing.assert_allclose(batch.t_unix - start, t)


def test_open_echem_source_dispatches_on_the_name(tmp_path: Path) -> None:
    assert type(open_echem_source("sim")).__name__ == "SimulatedEchem"
    assert type(open_echem_source(str(tmp_path / "a.mpr"))).__name__ == "EcLabSource"
    with pytest.raises(ConfigError, match="Unknown echem source"):
        open_echem_source("log.xyz")



def test_an_mpt_being_written_gives_complete_rows_or_waits(tmp_path: Path) -> None:
    # Every moment of the export being written: a row cut mid-number (-2.0000E-0
    # reads as -2) is never taken, and a header with no row yet is a SourceError (the
    # tailer's "try again"), not galvani's AttributeError, IndexError or UserWarning.
    pytest.importorskip("galvani")
    data = MPT.encode("latin1")
    path = tmp_path / "run_C01.mpt"
    path.write_bytes(data)
    t_all, bias_all, current_all, _ = read_eclab(path)
    counts = set()
    for end in range(len(data) + 1):
        path.write_bytes(data[:end])
        try:
            t, bias, current, _ = read_eclab(path)
        except SourceError:
            continue
        counts.add(t.size)
        np.testing.assert_array_equal(t, t_all[:t.size])
        np.testing.assert_array_equal(bias, bias_all[:t.size])
        np.testing.assert_array_equal(current, current_all[:t.size])
    assert counts == {1, 2, 3}


# 00_test_02_MB_C01.mpr's records as EC-Lab 11.50 wrote them, from its column IDs: one
# byte of flags, then Ns, I Range, time/s, control/V, Ewe/V, I/mA, dq/mA.h, (Q-Qo)/mA.h,
# |Energy|/W.h, Q charge/discharge/mA.h, half cycle. Decoded here with numpy alone, as
# the truth galvani's reading is checked against.
MB_RECORD = np.dtype([("flags", "u1"), ("Ns", "<u2"), ("I Range", "<u2"), ("time/s", "<f8"),
                      ("control/V", "<f4"), ("Ewe/V", "<f4"), ("I/mA", "<f4"),
                      ("dq/mA.h", "<f8"), ("(Q-Qo)/mA.h", "<f8"), ("|Energy|/W.h", "<f8"),
                      ("Q charge/discharge/mA.h", "<f8"), ("half cycle", "<u4")])


def _records(data: bytes, record: np.dtype) -> np.ndarray:
    (block,) = (m for m in modules(data) if m.name == b"VMP data  ")
    (count,) = struct.unpack_from("<I", data, block.body)
    end = block.body + block.length
    return np.frombuffer(data, record, count=count, offset=end - count * record.itemsize)


def test_a_real_potentiostatic_mpr_reads_as_its_records_say() -> None:
    pytest.importorskip("galvani")
    records = _records(MB.read_bytes(), MB_RECORD)
    t, bias, current, start = read_eclab(MB)
    np.testing.assert_array_equal(t, records["time/s"])
    np.testing.assert_array_equal(bias, records["Ewe/V"])
    np.testing.assert_array_equal(current, records["I/mA"].astype(np.float64) * 1e-3)
    # A hold at control/V -1.65 V: Ewe follows it, about -57 uA flows (cathodic).
    np.testing.assert_allclose(records["control/V"], -1.65, atol=1e-4)
    np.testing.assert_allclose(bias, -1.6501, atol=1e-4)
    assert t[0] == pytest.approx(6.166, abs=1e-3)
    assert t[-1] == pytest.approx(16.166, abs=1e-3)
    assert current[0] == pytest.approx(-56.72e-6, abs=0.01e-6)
    # The start in the file's log module; EC-Lab writes the PC's local time.
    assert start == pytest.approx(dt.datetime(2023, 12, 8, 9, 49, 52, 346000).timestamp(),
                                  abs=1e-3)


def test_a_real_open_circuit_mpr_has_a_bias_and_no_current() -> None:
    pytest.importorskip("galvani")
    t, bias, current, start = read_eclab(OCV)
    np.testing.assert_allclose(t, [0.0, 5.5932], atol=1e-4)
    np.testing.assert_allclose(bias, [-0.37381, -0.37328], atol=1e-5)
    assert np.isnan(current).all()
    assert start == pytest.approx(dt.datetime(2023, 12, 7, 14, 22, 24, 183000).timestamp(),
                                  abs=1e-3)


def test_a_real_galvanostatic_mpr_gives_the_current_of_its_charge_steps() -> None:
    # GCPL records no current column: the current is the charge passed between records
    # (dq/mA.h) over the time step. It must agree with what the cycler was told to
    # drive (control/V/mA while galvanostatic, mode 1) and be zero at rest (mode 3).
    biologic = pytest.importorskip("galvani.BioLogic")
    with open(GCPL, "rb") as f:
        mpr = biologic.MPRfile(f)
    t, bias, current, start = read_eclab(GCPL)
    np.testing.assert_array_equal(t, mpr.data["time/s"])
    np.testing.assert_array_equal(bias, mpr.data["Ewe/V"])
    assert np.isnan(current[0])
    mode = mpr.get_flag("mode")
    assert set(mode) == {1, 3}
    np.testing.assert_array_equal(current[mode == 3][1:], 0.0)
    # Steps wholly under constant current (the first one began at rest).
    steady = np.flatnonzero((mode[1:] == 1) & (mode[:-1] == 1)) + 1
    assert steady.size == 238
    applied_a = mpr.data["control/V/mA"][steady] * 1e-3
    np.testing.assert_allclose(applied_a, -88.796e-6, rtol=1e-5)  # C/24 discharge
    np.testing.assert_allclose(current[steady], applied_a, rtol=1e-3)
    assert start == pytest.approx(dt.datetime(2020, 10, 26, 12, 49, 58).timestamp(), abs=1e-3)


def test_a_column_galvani_does_not_know_is_a_source_error(tmp_path: Path) -> None:
    # Newer EC-Lab versions add column IDs; galvani raises NotImplementedError for
    # one it does not know, which must reach the CLI as one line, not a traceback.
    pytest.importorskip("galvani")
    data = bytearray(OCV.read_bytes())
    (block,) = (m for m in modules(bytes(data)) if m.name == b"VMP data  ")
    assert list(data[block.body + 4:block.body + 13]) == [4, 0, 1, 0, 3, 0, 4, 0, 6]
    data[block.body + 12] = 255  # Ewe/V's ID (6) -> an ID no EC-Lab column has had
    path = tmp_path / "new_C01.mpr"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="Column ID 255 after column time/s is unknown"):
        read_eclab(path)


def test_a_real_mpr_is_tailed_while_it_is_written(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The file as a tailer may find it: 4 of its 11 records and no log module yet (so
    # no recorded start), then cut mid-record, then whole. The rows arrive once each,
    # the cut read is retried, and the times keep one base when the start appears.
    pytest.importorskip("galvani")
    full = MB.read_bytes()
    t_all, bias_all, current_all, _ = read_eclab(MB)
    path = tmp_path / "run_C01.mpr"
    path.write_bytes(keep_records(full, 4, log=False))
    failed = threading.Event()

    def read(p: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
        try:
            return read_eclab(p)
        except SourceError:
            failed.set()
            raise

    monkeypatch.setattr(echem_sources, "read_eclab", read)
    (log,) = (m for m in modules(full) if m.name == b"VMP LOG   ")

    def writer() -> None:
        path.write_bytes(full[:log.start - 30])
        if failed.wait(30):
            path.write_bytes(full)

    before = time.time()
    batches = []
    for batch in EcLabSource(path, poll_s=0.02, idle_timeout_s=2.0):
        batches.append(batch)
        if len(batches) == 1:
            threading.Thread(target=writer).start()
    after = time.time()
    assert failed.is_set()
    assert [len(b) for b in batches] == [4, 7]
    t_unix = np.concatenate([b.t_unix for b in batches])
    np.testing.assert_array_equal(np.concatenate([b.bias_v for b in batches]), bias_all)
    np.testing.assert_array_equal(np.concatenate([b.current_a for b in batches]), current_all)
    base = t_unix - t_all
    assert np.ptp(base) < 1e-6  # one base for all rows
    assert before <= base[0] <= after  # the tailer's start: the file had none yet
