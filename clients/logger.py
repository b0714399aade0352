"""Log a running service's measurements and events to CSV (or Parquet) files.

One set of files per session in the output folder, named after the session, so a
spreadsheet or pandas opens them without knowing anything about lithoscope:

    <session>-cluster.csv     one row per analysed frame (cluster values)
    <session>-particles.csv   one row per particle per analysed frame
    <session>-events.csv      one row per alert

Columns are fixed by the first row of each file (whatever the service sends then,
tracking ids and Li content included when present); a value missing later is left
empty. Parquet needs pyarrow, which lithoscope does not require: it is used only if
it is installed.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from lithoscope.service.errors import ConfigError
from lithoscope.service.protocol import Event, Message, Result, SessionClosed

__all__ = ["LogFormat", "MeasurementLogger"]


class LogFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"


_ROW_KEYS = ("session_id", "frame", "t_s")


def _cell(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def _cluster_rows(msg: Result) -> list[dict[str, Any]]:
    return [{"session_id": msg.session_id, "frame": msg.index, "t_s": msg.t_s,
             "latency_s": msg.latency_s, **{k: _cell(v) for k, v in msg.cluster.items()}}]


def _particle_rows(msg: Result) -> list[dict[str, Any]]:
    columns = msg.particles
    n = max((len(v) for v in columns.values()), default=0)
    return [{"session_id": msg.session_id, "frame": msg.index, "t_s": msg.t_s,
             **{k: _cell(v[i]) if i < len(v) else None for k, v in columns.items()}}
            for i in range(n)]


def _event_rows(msg: Event) -> list[dict[str, Any]]:
    return [{"session_id": msg.session_id, "frame": msg.frame, "t_s": msg.t_s,
             "kind": msg.kind, "magnitude": msg.magnitude, "confidence": msg.confidence,
             "particle_ids": json.dumps(msg.particle_ids), "message": msg.message}]


class _CsvTable:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns: list[str] | None = None
        if path.exists() and path.stat().st_size:
            with path.open(newline="") as f:
                self.columns = next(csv.reader(f), None)
        self.file: IO[str] = path.open("a", newline="")
        self.writer: csv.DictWriter[str] | None = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self.writer is None:
            fresh = self.columns is None
            self.columns = self.columns or list(rows[0])
            self.writer = csv.DictWriter(self.file, self.columns, extrasaction="ignore")
            if fresh:
                self.writer.writeheader()
        self.writer.writerows(rows)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _ParquetTable:
    """Row groups appended once a second: a killed logger loses at most that much."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa, self.pq = pa, pq
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.writer: Any = None

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def flush(self) -> None:
        if not self.rows:
            return
        pa = self.pa
        if self.writer is None:
            inferred = pa.Table.from_pylist(self.rows).schema
            # A column that is all null in the first second (an unknown pixel size)
            # would otherwise be typed null and refuse every later value.
            schema = pa.schema([pa.field(f.name, pa.float64()) if pa.types.is_null(f.type)
                                else f for f in inferred])
            self.writer = self.pq.ParquetWriter(self.path, schema)
        schema = self.writer.schema
        table = pa.Table.from_pylist(
            [{k: r.get(k) for k in schema.names} for r in self.rows], schema=schema)
        self.writer.write_table(table)
        self.rows.clear()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()


def _parquet_available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


class MeasurementLogger:
    """Writes results and events into per-session files as they arrive.

    Parameters
    ----------
    out_dir
        Folder for the files (created if needed).
    format
        ``csv`` (always available) or ``parquet`` (only if pyarrow is installed).
    flush_s
        How often files are flushed to disk: at most this much is lost if we are killed.
    """

    def __init__(self, out_dir: str | Path, *, format: LogFormat | str = LogFormat.csv,
                 flush_s: float = 1.0) -> None:
        self.format = LogFormat(format)
        if self.format is LogFormat.parquet and not _parquet_available():
            raise ConfigError("Parquet output needs pyarrow, which is not installed; "
                              "use --format csv or pip install pyarrow.")
        self.out_dir = Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"Cannot create {self.out_dir}: {exc.strerror or exc}.") from None
        self.flush_s = flush_s
        self._tables: dict[tuple[str, str], _CsvTable | _ParquetTable] = {}
        self._last_flush = time.monotonic()
        self.rows_written: dict[str, int] = {"cluster": 0, "particles": 0, "events": 0}

    def _table(self, session_id: str, name: str) -> _CsvTable | _ParquetTable:
        key = (session_id, name)
        if key not in self._tables:
            safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in session_id)
            path = self.out_dir / f"{safe}-{name}.{self.format.value}"
            self._tables[key] = (_CsvTable(path) if self.format is LogFormat.csv
                                 else _ParquetTable(path))
        return self._tables[key]

    @property
    def paths(self) -> list[Path]:
        return [t.path for t in self._tables.values()]

    def write(self, msg: Message) -> None:
        """Log one message (results and events; other kinds are ignored)."""
        batches: Iterable[tuple[str, list[dict[str, Any]]]]
        if isinstance(msg, Result):
            batches = (("cluster", _cluster_rows(msg)), ("particles", _particle_rows(msg)))
        elif isinstance(msg, Event):
            batches = (("events", _event_rows(msg)),)
        else:
            return
        for name, rows in batches:
            if rows:
                self._table(msg.session_id, name).write(rows)
                self.rows_written[name] += len(rows)
        if isinstance(msg, SessionClosed):
            self._close_session(msg.session_id)
        elif isinstance(msg, Event) or time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def _close_session(self, session_id: str) -> None:
        for key in [k for k in self._tables if k[0] == session_id]:
            self._tables.pop(key).close()

    def flush(self) -> None:
        for table in self._tables.values():
            table.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        for table in self._tables.values():
            table.close()
        self._tables.clear()

    def __enter__(self) -> MeasurementLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def summary_line(logger: MeasurementLogger) -> str:
    """What the command says when it stops: how much went where."""
    counts: Mapping[str, int] = logger.rows_written
    return (f"Logged {counts['cluster']} frame rows, {counts['particles']} particle rows and "
            f"{counts['events']} events to {logger.out_dir}.")
