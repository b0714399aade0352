"""Electrochemistry sources: potentiostat and biasing-holder logs as they are written.

Each source yields :class:`EchemBatch` es (sample times on the instrument's clock as
Unix seconds, bias in V, current in A) until it ends or is closed:

* :class:`CsvEchemSource` tails a CSV log with a header row and a time column;
* :class:`EcLabSource` re-reads a BioLogic EC-Lab file (``.mpr`` binary or ``.mpt``
  text export) with galvani each time it grows, and yields the new rows;
* :class:`ProtochipsSource` does the same for a Protochips Fusion /
  Poseidon holder log (a ``.csv`` with Protochips' header), read with RosettaSciIO;
* :class:`SimulatedEchem` is their twin: the bias of a simulated experiment and the
  current that carries exactly the lithium the simulated particles take up.

A log that is still being written ends with a partial line; tailers only take lines
that end in a newline, and a file that stops growing for ``idle_timeout_s`` (or a
``stop`` event, or :meth:`close`) ends the stream.

Times: a source whose log has relative times (``t_s``, ``time/s``) adds ``t0_unix``:
the instrument's start time when the file records it (EC-Lab), else the value given,
else the moment the tailer opened the file (start ``publish-echem`` with the
experiment, or pass ``--t0-unix``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import ConfigError, SourceError
from ..protocol import MAX_ECHEM_SAMPLES, MAX_ECHEM_SOURCE_CHARS
from .protochips import is_protochips_log, read_protochips
from .sim import SimConfig, SimulatedSource

__all__ = ["CsvEchemSource", "EcLabSource", "EchemBatch", "EchemSourceBase", "ProtochipsSource",
           "SimulatedEchem", "open_echem_source"]

log = logging.getLogger(__name__)

_TIME_COLUMNS = ("t_unix", "time_unix", "timestamp", "t_s", "time_s", "time/s", "time")
_ABSOLUTE_TIME_COLUMNS = frozenset({"t_unix", "time_unix", "timestamp"})
_BIAS_COLUMNS = ("bias_v", "ewe/v", "<ewe>/v", "ecell/v", "voltage_v", "potential_v", "e/v",
                 "bias", "voltage")
_CURRENT_COLUMNS: dict[str, float] = {
    "current_a": 1.0, "i/a": 1.0, "current": 1.0, "current_ma": 1e-3, "i/ma": 1e-3,
    "<i>/ma": 1e-3, "current_na": 1e-9, "i/na": 1e-9, "current_pa": 1e-12, "i/pa": 1e-12,
}
"""Known current columns and their factor to amperes (the unit is in the name)."""


@dataclass(frozen=True, slots=True)
class EchemBatch:
    """Consecutive samples: times (instrument clock, Unix s), bias (V), current (A)."""

    t_unix: np.ndarray
    bias_v: np.ndarray
    current_a: np.ndarray

    def __len__(self) -> int:
        return int(self.t_unix.size)

    def pieces(self, size: int = MAX_ECHEM_SAMPLES) -> Iterator[EchemBatch]:
        """This batch in consecutive pieces of at most ``size`` samples: one echem
        message may carry no more (a whole EC-Lab file is read as one batch)."""
        for start in range(0, len(self), size):
            part = slice(start, start + size)
            yield EchemBatch(self.t_unix[part], self.bias_v[part], self.current_a[part])


class EchemSourceBase:
    """Iterate batches, ``close()``, context manager; ``paced`` sources (the simulator)
    are slowed to real time by the publisher, tailers pace themselves."""

    name: str = "echem"
    paced: bool = False

    def __init__(self, *, stop: threading.Event | None = None) -> None:
        self._stop = stop or threading.Event()

    def __iter__(self) -> Iterator[EchemBatch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()

    def __enter__(self) -> EchemSourceBase:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _source_name(kind: str, path: Path) -> str:
    """``kind:path``, shortened to what an echem message may carry (its ``source`` is
    archived with every sample): a long path keeps its end, where the file name is."""
    name = f"{kind}:{path}"
    if len(name) <= MAX_ECHEM_SOURCE_CHARS:
        return name
    return f"{kind}:...{str(path)[-(MAX_ECHEM_SOURCE_CHARS - len(kind) - 4):]}"


def _pick(names: Sequence[str], wanted: str | None, known: Sequence[str], what: str,
          path: Path) -> int | None:
    lowered = [n.strip().lower() for n in names]
    if wanted is not None:
        if wanted.strip().lower() not in lowered:
            raise ConfigError(f"{path}: no column {wanted!r} for the {what}. "
                              f"Columns: {', '.join(names)}.")
        return lowered.index(wanted.strip().lower())
    for candidate in known:
        if candidate in lowered:
            return lowered.index(candidate)
    return None


def _float(text: str) -> float:
    try:
        return float(text.replace(",", ".")) if text.strip() else math.nan
    except ValueError:
        return math.nan


class CsvEchemSource(EchemSourceBase):
    """Tail a CSV log: header row first, then one sample per line, appended as measured.

    Parameters
    ----------
    path
        The log. It may not exist yet; the tailer waits for it (up to ``idle_timeout_s``).
    time_column, bias_column, current_column
        Column names; by default the first known name (``t_unix``/``timestamp``: Unix
        seconds; ``t_s``/``time/s``/``time``: seconds since ``t0_unix``; ``bias_v``,
        ``Ewe/V``...; ``current_a``, ``I/mA``...: the unit in the name sets the scale).
    t0_unix
        Start of relative times; default: when the tailer opened the file.
    delimiter
        Field separator; default sniffed from the header (``,``, ``;`` or tab).
    """

    def __init__(self, path: str | Path, *, time_column: str | None = None,
                 bias_column: str | None = None, current_column: str | None = None,
                 t0_unix: float | None = None, delimiter: str | None = None,
                 poll_s: float = 0.2, idle_timeout_s: float = 60.0,
                 stop: threading.Event | None = None) -> None:
        super().__init__(stop=stop)
        self.path = Path(path)
        self.name = _source_name("csv", self.path)
        self._columns = (time_column, bias_column, current_column)
        self.t0_unix = t0_unix
        self.delimiter = delimiter
        self.poll_s = poll_s
        self.idle_timeout_s = idle_timeout_s

    def _header(self, line: str) -> tuple[str, int, int | None, int | None, float, bool]:
        delimiter = self.delimiter or max(",;\t", key=line.count)
        names = next(csv.reader([line], delimiter=delimiter))
        time_col, bias_col, current_col = self._columns
        t = _pick(names, time_col, _TIME_COLUMNS, "time", self.path)
        if t is None:
            raise ConfigError(f"{self.path}: no time column (one of {', '.join(_TIME_COLUMNS)}); "
                              f"columns: {', '.join(names)}. Name it with --time-column.")
        b = _pick(names, bias_col, _BIAS_COLUMNS, "bias", self.path)
        i = _pick(names, current_col, tuple(_CURRENT_COLUMNS), "current", self.path)
        if b is None and i is None:
            raise ConfigError(f"{self.path}: neither a bias nor a current column; columns: "
                              f"{', '.join(names)}.")
        scale = _CURRENT_COLUMNS.get(names[i].strip().lower(), 1.0) if i is not None else 1.0
        absolute = names[t].strip().lower() in _ABSOLUTE_TIME_COLUMNS
        return delimiter, t, b, i, scale, absolute

    def __iter__(self) -> Iterator[EchemBatch]:
        opened = time.time()
        last_growth = time.monotonic()
        position = 0
        header: tuple[str, int, int | None, int | None, float, bool] | None = None
        buffer = b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(position)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            except OSError as exc:
                raise SourceError(f"Cannot read {self.path}: {exc.strerror or exc}.") from None
            if chunk:
                position += len(chunk)
                last_growth = time.monotonic()
                buffer += chunk
                complete, _, buffer = buffer.rpartition(b"\n")
                lines = [ln for ln in complete.decode("utf-8", "replace").splitlines()
                         if ln.strip() and not ln.lstrip().startswith("#")]
                if lines and header is None:
                    header = self._header(lines.pop(0))
                if lines and header is not None:
                    yield from self._batch(lines, header, opened).pieces()
            elif time.monotonic() - last_growth > self.idle_timeout_s:
                return
            self._stop.wait(self.poll_s)

    def _batch(self, lines: list[str], header: tuple[str, int, int | None, int | None, float,
                                                      bool], opened: float) -> EchemBatch:
        delimiter, t, b, i, scale, absolute = header
        rows = list(csv.reader(lines, delimiter=delimiter))
        times = np.array([_float(r[t]) if len(r) > t else math.nan for r in rows])
        bias = np.array([_float(r[b]) if b is not None and len(r) > b else math.nan
                         for r in rows])
        current = np.array([_float(r[i]) * scale if i is not None and len(r) > i else math.nan
                            for r in rows])
        if not absolute:
            times = times + (self.t0_unix if self.t0_unix is not None else opened)
        keep = np.isfinite(times)
        return EchemBatch(times[keep], bias[keep], current[keep])


_MPT_START = re.compile(rb"Acquisition started on\s*:\s*([0-9/]+ [0-9:.]+)")
_MPT_HEADER_LINES = re.compile(rb"Nb header lines\s*:\s*(\d+)")

_ECLAB_BIAS = ("Ewe/V", "<Ewe>/V")
_ECLAB_CURRENT_MA = ("I/mA", "<I>/mA")
_ECLAB_CHARGE_STEP_C: dict[str, float] = {"dq/mA.h": 3.6, "dQ/mA.h": 3.6, "dQ/C": 1.0}
"""Charge passed since the previous record, and its factor to coulombs. A galvanostatic
(GCPL) file has no current column: the current is this charge over the time step. Its
setpoint, ``control/V/mA``, is no substitute: V or mA by mode, and it keeps its last
value through a rest."""


def _mpt_start(comments: Sequence[bytes]) -> float | None:
    for line in comments:
        match = _MPT_START.search(line)
        if match:
            text = match.group(1).decode()
            for fmt in ("%m/%d/%Y %H:%M:%S.%f", "%m/%d/%Y %H:%M:%S"):
                try:
                    return _dt.datetime.strptime(text, fmt).timestamp()  # local time
                except ValueError:
                    continue
    return None


def _complete_mpt(data: bytes, path: Path) -> bytes:
    """An ``.mpt`` up to its last complete line: the last line of a file being written
    may end mid-number (``-2.0000E-0`` reads as -2)."""
    data = data[:data.rfind(b"\n") + 1]
    lines = data.split(b"\n", 2)
    header = _MPT_HEADER_LINES.match(lines[1]) if len(lines) > 2 else None
    if len(lines) <= 2 or (header and data.count(b"\n") <= int(header.group(1))):
        raise SourceError(f"EC-Lab file {path} has no complete data row yet.")
    return data


def _eclab_current_a(array: np.ndarray, t: np.ndarray) -> np.ndarray:
    names = array.dtype.names or ()
    for name in _ECLAB_CURRENT_MA:
        if name in names:
            return np.asarray(array[name], dtype=np.float64) * 1e-3
    current = np.full(t.size, math.nan)
    for name, to_c in _ECLAB_CHARGE_STEP_C.items():
        if name in names:
            charge = np.asarray(array[name], dtype=np.float64) * to_c
            with np.errstate(divide="ignore", invalid="ignore"):
                current[1:] = charge[1:] / np.diff(t)
            current[~np.isfinite(current)] = math.nan
            break
    return current


def read_eclab(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """Time (s since start), Ewe (V), I (A) and the start (Unix s, if recorded) of an
    EC-Lab ``.mpr`` or ``.mpt`` file, read with galvani.

    The bias is ``Ewe/V`` (``<Ewe>/V``); the current ``I/mA`` (``<I>/mA``), else the
    charge passed between records (``dq/mA.h``, ``dQ/C``: a galvanostatic file) over
    the time step, NaN for the first record; NaN where the file has neither. The start
    is the acquisition start EC-Lab records (the ``.mpr``'s log module, the ``.mpt``'s
    header), in the instrument PC's local time, read in this machine's time zone.

    Raises
    ------
    SourceError
        If galvani is not installed or cannot parse the file (yet: a file being
        written may be cut mid-record), or the file has a column galvani does not know.
    """
    try:
        from galvani import BioLogic
    except ImportError:
        raise SourceError("Reading EC-Lab files needs galvani: "
                          "pip install 'lithoscope[echem]'.") from None
    path = Path(path)
    start: float | None = None
    try:
        data = path.read_bytes()
        if path.suffix.lower() == ".mpt":
            array, comments = BioLogic.MPTfile(io.BytesIO(_complete_mpt(data, path)),
                                               encoding="latin1")
            start = _mpt_start(comments)
        else:
            mpr = BioLogic.MPRfile(io.BytesIO(data))
            array = mpr.data
            stamp = getattr(mpr, "timestamp", None)
            start = stamp.timestamp() if isinstance(stamp, _dt.datetime) else None
    # galvani's parser says "cut short" and "not understood" with builtins: OSError
    # (end of file), ValueError, AssertionError, NotImplementedError (a column ID it
    # does not know), AttributeError (a header line not as expected).
    except (OSError, ValueError, KeyError, IndexError, AssertionError, StopIteration,
            NotImplementedError, AttributeError) as exc:
        raise SourceError(f"Cannot read EC-Lab file {path}: {exc}.") from None
    array = np.atleast_1d(array)  # galvani's .mpt of one row is a 0-d record
    names = array.dtype.names or ()
    if "time/s" not in names:
        raise SourceError(f"EC-Lab file {path} has no time/s column ({', '.join(names)}).")
    n = array.shape[0]
    t = np.asarray(array["time/s"], dtype=np.float64)
    bias = next((np.asarray(array[name], dtype=np.float64) for name in _ECLAB_BIAS
                 if name in names), np.full(n, math.nan))
    return t, bias, _eclab_current_a(array, t), start


class EcLabSource(EchemSourceBase):
    """A BioLogic EC-Lab ``.mpr`` / ``.mpt`` file, re-read whenever it grows.

    galvani parses whole files, so each growth costs a full read: fine for the
    kilobytes to megabytes of a biasing experiment. A read that fails while the file is
    being written (cut mid-record) is retried at the next poll; only the rows past those
    already yielded are new.

    Times are ``time/s`` plus one base, fixed by the first read with rows: ``t0_unix``,
    else the start the file records, else the moment the tailer opened it. An ``.mpr``
    keeps its start in a log module after the data, which a file read mid-write may
    not have yet; a base that changed when it appeared would move every later sample.
    """

    def __init__(self, path: str | Path, *, t0_unix: float | None = None,
                 poll_s: float = 0.5, idle_timeout_s: float = 60.0,
                 stop: threading.Event | None = None) -> None:
        super().__init__(stop=stop)
        self.path = Path(path)
        self.name = _source_name("eclab", self.path)
        self.t0_unix = t0_unix
        self.poll_s = poll_s
        self.idle_timeout_s = idle_timeout_s

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
        """The whole file: times (s since start), bias (V), current (A), start (Unix s)."""
        return read_eclab(path)

    def __iter__(self) -> Iterator[EchemBatch]:
        opened = time.time()
        sent = 0
        seen: tuple[int, int] | None = None
        tried: tuple[int, int] | None = None
        last_growth = time.monotonic()
        failure: SourceError | None = None
        base: float | None = None
        while not self._stop.is_set():
            try:
                stat = self.path.stat()
                signature: tuple[int, int] | None = (stat.st_size, stat.st_mtime_ns)
            except FileNotFoundError:
                signature = None
            if signature is not None and signature != seen and signature != tried:
                last_growth = time.monotonic()
                tried = signature
                try:
                    t, bias, current, start = self._read(self.path)
                except SourceError as exc:
                    failure = exc  # probably mid-write: retried once the file changes
                else:
                    seen, failure = signature, None
                    if t.size > sent:
                        if base is None:
                            base = (self.t0_unix if self.t0_unix is not None
                                    else start if start is not None else opened)
                        yield from EchemBatch(t[sent:] + base, bias[sent:],
                                              current[sent:]).pieces()
                        sent = int(t.size)
            elif time.monotonic() - last_growth > self.idle_timeout_s:
                if failure is not None:
                    raise failure
                return
            self._stop.wait(self.poll_s)


class ProtochipsSource(EcLabSource):
    """A Protochips holder log, re-read whenever it grows (:mod:`.protochips`).

    Times are the log's plus one base, fixed by the first read with rows:
    ``t0_unix``, else the start the log records, else the moment the tailer opened it.
    """

    def __init__(self, path: str | Path, *, t0_unix: float | None = None,
                 poll_s: float = 0.5, idle_timeout_s: float = 60.0,
                 stop: threading.Event | None = None) -> None:
        super().__init__(path, t0_unix=t0_unix, poll_s=poll_s, idle_timeout_s=idle_timeout_s,
                         stop=stop)
        self.name = _source_name("protochips", self.path)

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
        return read_protochips(path)


class SimulatedEchem(EchemSourceBase):
    """The potentiostat of a simulated experiment: its bias and the lithiation current.

    Samples at ``rate_hz`` over the simulated movie, in batches of ``batch_s``; the
    current is :meth:`SimulatedSource.lithiation_current_a` (all of it lithium entering
    the cluster) plus ``leakage_a`` while the bias is on (a side reaction: charge that
    lithiates nothing in view) and Gaussian ``noise_a``. Times are ``t0_unix`` plus
    the experiment time; the publisher paces batches to ``speed`` x real time.
    """

    paced = True

    def __init__(self, config: SimConfig | None = None, *, scenario: str = "lithiation",
                 rate_hz: float = 10.0, batch_s: float = 0.5, leakage_a: float = 0.0,
                 noise_a: float = 0.0, t0_unix: float | None = None, seed: int = 0,
                 stop: threading.Event | None = None) -> None:
        super().__init__(stop=stop)
        if not (rate_hz > 0 and batch_s > 0):
            raise ConfigError(f"Expected rate_hz and batch_s > 0. Got {rate_hz}, {batch_s}.")
        self.sim = SimulatedSource(config, scenario=scenario)
        self.name = f"sim:{scenario}"
        self.rate_hz = rate_hz
        self.batch_s = batch_s
        self.leakage_a = leakage_a
        self.noise_a = noise_a
        self.t0_unix = t0_unix
        self.seed = seed

    def samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All samples: experiment time (s), bias (V), current (A)."""
        duration = self.sim.config.duration_s
        t = np.arange(0.0, duration, 1.0 / self.rate_hz)
        bias = self.sim.bias_at(t)
        current = self.sim.lithiation_current_a(t)
        current = current - self.leakage_a * (np.abs(bias) > 0)
        if self.noise_a > 0:
            current = current + np.random.default_rng(self.seed).normal(0, self.noise_a, t.size)
        return t, bias, current

    def __iter__(self) -> Iterator[EchemBatch]:
        t, bias, current = self.samples()
        base = self.t0_unix if self.t0_unix is not None else time.time()
        per_batch = max(1, round(self.batch_s * self.rate_hz))
        for start in range(0, t.size, per_batch):
            if self._stop.is_set():
                return
            part = slice(start, start + per_batch)
            yield from EchemBatch(t[part] + base, bias[part], current[part]).pieces()


def open_echem_source(spec: str, *, t0_unix: float | None = None,
                      time_column: str | None = None, bias_column: str | None = None,
                      current_column: str | None = None, idle_timeout_s: float = 60.0,
                      stop: threading.Event | None = None, **sim: Any) -> EchemSourceBase:
    """``sim`` / ``sim:SCENARIO``, a ``.csv``/``.txt`` log, an EC-Lab ``.mpr``/``.mpt``, or a
    Protochips holder log (a ``.csv`` whose header is Protochips', or ``protochips:PATH``)."""
    if spec == "sim" or spec.startswith("sim:"):
        scenario = spec.partition(":")[2] or "lithiation"
        return SimulatedEchem(scenario=scenario, t0_unix=t0_unix, stop=stop, **sim)
    suffix = Path(spec).suffix.lower()
    if suffix in (".mpr", ".mpt"):
        return EcLabSource(spec, t0_unix=t0_unix, idle_timeout_s=idle_timeout_s, stop=stop)
    if spec.startswith("protochips:") or (suffix == ".csv" and is_protochips_log(Path(spec))):
        return ProtochipsSource(spec.removeprefix("protochips:"), t0_unix=t0_unix,
                                idle_timeout_s=idle_timeout_s, stop=stop)
    if suffix in (".csv", ".txt", ".tsv", ".log"):
        return CsvEchemSource(spec, time_column=time_column, bias_column=bias_column,
                              current_column=current_column, t0_unix=t0_unix,
                              idle_timeout_s=idle_timeout_s, stop=stop)
    raise ConfigError(f"Unknown echem source {spec!r}. Expected 'sim', 'sim:SCENARIO', a .csv "
                      "log, a Protochips holder log or an EC-Lab .mpr/.mpt file.")
