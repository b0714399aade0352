"""Re-run the analysis over archived sessions on a Dask cluster, beside the old results.

Each archive is one Dask task: the worker that runs it opens the archive itself (so
workers on other machines need the archives at the same path, e.g. on a shared file
system), feeds its echem samples and then every frame in order through
`SessionPipeline`, the very code the live worker runs, and returns the rows of every
table. A session is analysed in frame order
because the analysis carries state across frames (drift, particle tracks, references at
contact, alert detectors); the cluster's parallelism is across sessions, so a day of
sessions takes about as long as its longest one on enough workers.

The results go into a new group ``reanalysis/<run>/`` of the same archive, with the
``cluster``, ``particles``, ``events``, ``echem``, ``operando``, ``particle_dose`` and
``region_dose`` tables in the live tables' columns (``latency_s`` is NaN: nothing was
live; the events are the analysis's, not the worker's operational ones such as
``frames_dropped``), the label images under ``labels/`` (``particles``, ``needle``,
``grid``, written by the live archive's own `ArchiveLabels`; the task writes them
itself, as they are too big to send back) and the settings used in its attributes.
Re-analysed with the settings it was recorded with, a replayed session (every frame
analysed, echem received before the frames) gets exactly its live tables and labels. The
frames, the frame table, the live measurement tables and the session metadata are
never written to. ``open_archive(path, reanalysis="latest")`` reads a run back.

Without a scheduler address a `distributed.LocalCluster` is started for the run and
stopped after it; by default its workers are threads in this process (OpenCV and numpy
release the GIL, and a thread starts in milliseconds where a process takes seconds).

Progress within an archive travels through Dask itself, so it works the same on a
remote cluster: the task logs an event on a topic of this run (``Worker.log_event``)
every 1 % of the archive's frames (every frame below 100), the client subscribes to the
topic (``Client.subscribe_topic``) and hands ``(archive, frames done, frames)`` to the
caller's ``frame_progress``. Dask's own task progress (its dashboard, or
``distributed.progress``) would only say 0 or 1 of one task per archive.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .. import __version__
from ..alerts import AlertConfig
from ..analysis import AnalysisConfig
from ..archive import (
    CLUSTER_COLUMNS,
    ECHEM_COLUMNS,
    EVENT_COLUMNS,
    OPERANDO_COLUMNS,
    PARTICLE_COLUMNS,
    PARTICLE_DOSE_COLUMNS,
    REGION_DOSE_COLUMNS,
    ROW_DIMENSION,
    ArchiveLabels,
    ArchiveReader,
)
from ..errors import ArchiveError, ConfigError, require
from ..operando.context import OperandoConfig
from ..pipeline import SessionPipeline
from ..protocol import SessionStart
from .xr import REANALYSIS_GROUP

__all__ = ["ReanalysisResult", "analyze_archive", "reanalyze"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReanalysisResult:
    """What one archive's re-analysis wrote."""

    path: Path
    run: str
    """Name of the group under ``reanalysis/``."""
    frames_analysed: int
    events: list[dict[str, Any]]


def _concatenate(parts: list[Mapping[str, Any]], columns: Mapping[str, Any]
                 ) -> dict[str, np.ndarray]:
    """Rows given as column dicts (scalars or 1-D) to one array per archive column."""
    out: dict[str, np.ndarray] = {}
    for name, dtype in columns.items():
        values = [np.atleast_1d(np.asarray(part[name], dtype=object if dtype is str else dtype))
                  for part in parts if name in part]
        if len(values) != len(parts):
            continue  # a column this version's analysis does not produce: fill on write
        if dtype is str:
            out[name] = (np.concatenate(values).astype(str) if values
                         else np.zeros(0, dtype=str))
        else:
            out[name] = np.concatenate(values) if values else np.zeros(0, dtype=dtype)
    return out


TABLES: dict[str, Mapping[str, Any]] = {
    "cluster": CLUSTER_COLUMNS, "particles": PARTICLE_COLUMNS, "events": EVENT_COLUMNS,
    "echem": ECHEM_COLUMNS, "operando": OPERANDO_COLUMNS,
    "particle_dose": PARTICLE_DOSE_COLUMNS, "region_dose": REGION_DOSE_COLUMNS,
}
"""The tables a re-analysis writes, with their archive columns."""


def _session_start(reader: ArchiveReader) -> SessionStart:
    """The session as the worker had it: what pixel size, frame rate and t0 apply."""
    meta = reader.meta
    fps = meta.get("fps")
    return SessionStart(session_id=str(meta.get("session_id", "")),
                        source=str(meta.get("source", "")),
                        source_kind=str(meta.get("source_kind", "")),
                        t0_unix=float(meta.get("t0_unix") or 0.0), live=False,
                        pixel_size_nm=reader.pixel_size_nm,
                        fps=float(fps) if isinstance(fps, (int, float)) else None)


def _open_labels(reader: ArchiveReader, group_path: str) -> ArchiveLabels:
    """The label images of a run, written by the archive's own class into
    ``<group_path>/labels`` (created here: a run's labels are too big to travel back
    from a remote worker, so the task writes them where the archive is)."""
    try:
        root = zarr.open_group(zarr.storage.LocalStore(reader.path), mode="r+")
        group = root.require_group(group_path)
    except OSError as exc:
        raise ArchiveError(f"Cannot write the re-analysis labels into {reader.path}: "
                           f"{exc.strerror or exc}.") from None
    depth = len([part for part in group_path.split("/") if part])
    return ArchiveLabels(group, reader.meta, image_source="../" * (depth + 2))


class _FrameEvents:
    """Tells the client how far a task is: an event on ``topic`` every ``step`` frames
    and at the last one, from the Dask worker running the task (nothing when there is
    no topic, or the function runs outside a worker)."""

    def __init__(self, topic: str | None, path: str, total: int) -> None:
        self.path, self.total = path, total
        self.step = max(1, total // 100)
        self._worker: Any = None
        if topic is not None:
            from distributed import get_worker

            try:
                self._worker = get_worker()
            except ValueError:  # called directly, not as a task
                self._worker = None
        self.topic = topic

    def __call__(self, done: int) -> None:
        if self._worker is not None and (done % self.step == 0 or done == self.total):
            self._worker.log_event(self.topic, {"archive": self.path, "done": done,
                                                "total": self.total})


def analyze_archive(path: str, analysis: Mapping[str, Any], alerts: Mapping[str, Any],
                    operando: Mapping[str, Any] | None = None, *,
                    labels_group: str | None = None, progress_topic: str | None = None,
                    ) -> dict[str, dict[str, np.ndarray]]:
    """Analyse every frame of an archive in order, as the live worker does: one Dask task.

    Takes plain values (a path, settings dicts) so that it pickles to a remote worker
    cheaply; the worker reads the frames itself. ``operando`` defaults to the settings
    the archive was recorded with. Returns every table of :data:`TABLES` as column
    dicts. With ``labels_group`` (a group path inside the archive, e.g.
    ``reanalysis/<run>``), each analysed frame's label images are written to its
    ``labels/`` as a live session writes the archive's own (:class:`ArchiveLabels`).
    With ``progress_topic``, the task logs its progress on that Dask topic (see the
    module docstring).
    """
    reader = ArchiveReader(path)
    frame_events = _FrameEvents(progress_topic, path, reader.frame_count)
    labels = None if labels_group is None else _open_labels(reader, labels_group)
    if operando is None:
        recorded = reader.meta.get("config", {}).get("operando")
        operando = recorded if isinstance(recorded, dict) else {}
    pipeline = SessionPipeline(_session_start(reader),
                               analysis=AnalysisConfig.from_dict(dict(analysis)),
                               alerts=AlertConfig.from_dict(dict(alerts)),
                               operando=OperandoConfig.from_dict(dict(operando)))
    rows: dict[str, list[Mapping[str, Any]]] = {name: [] for name in TABLES}
    echem = reader.table("echem")
    if echem and len(echem["t_unix"]):
        filed = pipeline.add_echem(echem["t_unix"], echem["bias_v"], echem["current_a"],
                                   clock_offset_s=echem["clock_offset_s"],
                                   source=echem["source"])
        if filed is not None:
            rows["echem"].append(filed.rows)
    table = reader.table("frame_table")
    for position in range(reader.frame_count):
        metadata = json.loads(str(table["metadata_json"][position]) or "{}")
        exposure = float(table["exposure_s"][position])
        pixel_size = metadata.get("pixel_size_nm")
        index = int(table["index"][position])
        output = pipeline.analyse(
            reader.frame(position), index=index,
            t_s=float(table["t_s"][position]),
            pixel_size_nm=float(pixel_size) if isinstance(pixel_size, (int, float)) else None,
            exposure_s=exposure if math.isfinite(exposure) else None,
            metadata=metadata, acquired_at=float(table["acquired_at"][position]))
        for name, part in output.rows:
            rows[name].append(part)
        if labels is not None and output.labels is not None:
            labels.frame_written(index, position)
            _append_labels(labels, index, output.labels, reader.path)
        frame_events(position + 1)
    if labels is not None:
        labels.close(reader.frame_count)
    return {name: _concatenate(parts, TABLES[name]) for name, parts in rows.items()}


def _append_labels(labels: ArchiveLabels, index: int, images: Any, path: Path) -> None:
    try:
        labels.append(index, images)
    except OSError as exc:
        raise ArchiveError(f"Cannot write the re-analysis labels of frame {index} into "
                           f"{path}: {exc.strerror or exc}.") from None


def _write_table(group: zarr.Group, name: str, columns: Mapping[str, Any],
                 rows: Mapping[str, np.ndarray]) -> None:
    table = group.create_group(name)
    length = len(next(iter(rows.values()))) if rows else 0
    for column, dtype in columns.items():
        values = rows.get(column)
        if values is None:  # a column this version's analysis does not produce
            kind = "U" if dtype is str else np.dtype(dtype).kind
            fill = "" if kind == "U" else math.nan if kind == "f" else False if kind == "b" \
                else -1
            values = np.full(length, fill, dtype=str if dtype is str else dtype)
        array = table.create_array(column, shape=values.shape, dtype=dtype,
                                   chunks=(max(len(values), 1),),
                                   dimension_names=(ROW_DIMENSION,))
        if len(values):
            array[:] = values


def _run_name(group: zarr.Group, name: str | None) -> str:
    existing = group.get(REANALYSIS_GROUP)
    taken = {n for n, _ in existing.groups()} if isinstance(existing, zarr.Group) else set()
    if name is not None:
        if name in taken:
            raise ConfigError(f"Re-analysis run {name!r} already exists; choose another name.")
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"Expected a run name without '/'. Got {name!r} instead.")
        return name
    base = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate, number = base, 1
    while candidate in taken:
        number += 1
        candidate = f"{base}-{number}"
    return candidate


def reanalyze(
    paths: Sequence[str | Path],
    *,
    analysis: AnalysisConfig | None = None,
    alerts: AlertConfig | None = None,
    scheduler: str | None = None,
    run: str | None = None,
    local_workers: int | None = None,
    local_processes: bool = False,
    connect_timeout_s: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
    frame_progress: Callable[[Path, int, int], None] | None = None,
) -> list[ReanalysisResult]:
    """Re-run the analysis over archives on a Dask cluster; results beside the old ones.

    Parameters
    ----------
    paths : sequence of str or Path
        Session archives. All are checked before any work starts.
    analysis, alerts : optional
        The new settings (default: this version's defaults).
    scheduler : str, optional
        A running Dask scheduler (``tcp://host:8786``); default: a local cluster for
        this call.
    run : str, optional
        Name of the new ``reanalysis/`` group (default: UTC time stamp).
    local_workers, local_processes
        Size and kind of the local cluster (threads unless ``local_processes``).
    connect_timeout_s : float
        How long to try reaching ``scheduler``.
    progress : callable, optional
        Called as ``progress(done, total)`` each time an archive's run is stored.
    frame_progress : callable, optional
        Called as ``frame_progress(archive, frames_done, frames)`` as the cluster
        analyses each archive (every 1 % of its frames, and at its end; never going
        back), from the Dask client's thread.

    Returns
    -------
    list of ReanalysisResult
        One per archive, in the order given.

    Raises
    ------
    ArchiveError
        A path that is not an archive, or an archive that cannot be written.
    ConfigError
        Bad settings or run name.
    """
    distributed = require("distributed", extra="scale",
                          purpose="Re-analysing archives on a Dask cluster")

    analysis = analysis if analysis is not None else AnalysisConfig()
    alerts = alerts if alerts is not None else AlertConfig()
    readers = [ArchiveReader(path) for path in paths]
    seen: set[Path] = set()
    for reader in readers:
        where = reader.path.resolve()
        if where in seen:
            raise ConfigError(f"{reader.path} is given twice; re-analyse an archive once "
                              "per call.")
        seen.add(where)
    for reader in readers:
        if reader.status == "recording":
            log.warning("%s is still recording (or its writer was killed); re-analysing "
                        "the %d frames it holds.", reader.path, reader.frame_count)
    # Named before any work (a taken or bad name fails first): the tasks write each
    # run's labels into its group.
    names = [_run_name(reader.group, run) for reader in readers]
    cluster = None
    if scheduler is None:
        # Loopback only, OS-picked ports: the scheduler's HTTP server (metrics, and the
        # dashboard if bokeh is installed) otherwise takes 0.0.0.0:8787, which a second
        # run, or anything else on the machine, may already hold.
        network = {"host": "127.0.0.1", "scheduler_port": 0} if local_processes else {}
        cluster = distributed.LocalCluster(n_workers=local_workers or 1,
                               threads_per_worker=None if local_processes else 2,
                               processes=local_processes, dashboard_address="127.0.0.1:0",
                               **network)
    try:
        client = distributed.Client(cluster if cluster is not None else scheduler,
                        timeout=f"{connect_timeout_s}s")
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"Cannot reach the Dask scheduler at {scheduler}: {exc}.") from None
    settings, alert_settings = analysis.to_dict(), alerts.to_dict()
    results = []
    frames = _FrameProgress(readers, frame_progress)
    topic = f"lithoscope-reanalyze-{uuid.uuid4().hex}" if frame_progress else None
    try:
        if topic is not None:
            client.subscribe_topic(topic, frames.on_event)
        futures = [client.submit(analyze_archive, str(reader.path.absolute()), settings,
                                 alert_settings, pure=False,
                                 labels_group=f"{REANALYSIS_GROUP}/{name}",
                                 progress_topic=topic)
                   for reader, name in zip(readers, names, strict=True)]
        for reader, name, future in zip(readers, names, futures, strict=True):
            tables = future.result()
            results.append(_store(reader, tables, analysis, alerts, name,
                                  scheduler or "local"))
            frames.finished(reader)
            if progress is not None:
                progress(len(results), len(readers))
    finally:
        if topic is not None:
            client.unsubscribe_topic(topic)
        client.close()
        if cluster is not None:
            cluster.close()
    return results


_LAST_EVENT_WAIT_S = 5.0
"""How long a finished archive waits for its last progress event (it travels worker
-> scheduler -> client, and may come after the task's result)."""


class _FrameProgress:
    """The client's side of the frame events: per archive, the furthest frame count
    seen, handed on only when it grows."""

    def __init__(self, readers: Sequence[ArchiveReader],
                 callback: Callable[[Path, int, int], None] | None) -> None:
        self.callback = callback
        self.paths = {str(reader.path.absolute()): reader.path for reader in readers}
        self.done = dict.fromkeys(self.paths, 0)
        self.complete = {key: threading.Event() for key in self.paths}
        self._lock = threading.Lock()

    def on_event(self, event: tuple[float, Mapping[str, Any]]) -> None:
        _, msg = event
        self._note(str(msg["archive"]), int(msg["done"]), int(msg["total"]))

    def _note(self, key: str, done: int, total: int) -> None:
        if self.callback is None or key not in self.paths:
            return
        with self._lock:  # the client's thread and the caller's: one at a time, in order
            if done <= self.done[key]:
                return
            self.done[key] = done
            self.callback(self.paths[key], done, total)
        if done >= total:
            self.complete[key].set()

    def finished(self, reader: ArchiveReader) -> None:
        """The archive's task returned: its last event, or (past a short wait) the
        final count from its result."""
        key = str(reader.path.absolute())
        if self.callback is None:
            return
        total = reader.frame_count
        if not self.complete[key].wait(_LAST_EVENT_WAIT_S if total else 0):
            self._note(key, total, total)


def _store(reader: ArchiveReader, tables: Mapping[str, Mapping[str, np.ndarray]],
           analysis: AnalysisConfig, alerts: AlertConfig, name: str,
           scheduler: str) -> ReanalysisResult:
    cluster, events = tables["cluster"], tables["events"]
    frames_analysed = len(cluster.get("frame", ()))
    try:
        root = zarr.open_group(zarr.storage.LocalStore(reader.path), mode="r+")
        group = root.require_group(REANALYSIS_GROUP).require_group(name)  # labels: there
        for table, columns in TABLES.items():
            _write_table(group, table, columns, tables.get(table, {}))
        # Written last: a run with its attributes is complete.
        group.attrs["lithoscope_reanalysis"] = json.loads(json.dumps({
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "software_version": __version__,
            "analysis": analysis.to_dict(),
            "alerts": alerts.to_dict(),
            "frames_analysed": frames_analysed,
            "scheduler": scheduler,
        }, default=str))
    except OSError as exc:
        raise ArchiveError(f"Cannot write the re-analysis into {reader.path}: "
                           f"{exc.strerror or exc}.") from None
    kinds = events.get("kind", np.zeros(0, dtype=str))
    return ReanalysisResult(
        path=reader.path, run=name, frames_analysed=frames_analysed,
        events=[{"kind": str(kinds[i]), "frame": int(events["frame"][i]),
                 "t_s": float(events["t_s"][i])} for i in range(len(kinds))])
