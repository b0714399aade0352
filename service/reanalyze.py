"""Re-run the analysis over archived sessions on a Dask cluster, beside the old results.

Per-frame analysis is stateless (`analyze_frame`), so frames can be analysed in any
order on any machine: each archive is cut into blocks of frames, one Dask task per
block, and every task opens the archive itself and reads only its frames (workers on
other machines need the archives at the same path, e.g. on a shared file system).
What has state across frames (the baseline area for ``relative_area``, the alert
detector's CUSUMs) is then run in frame order on the client, over the small per-frame
rows; it costs microseconds per frame.

The results go into a new group ``reanalysis/<run>/`` of the same archive, with
``cluster``, ``particles`` and ``events`` tables in the live tables' columns
(``latency_s`` is NaN: nothing was live) and the settings used in its attributes. The
frames, the frame table, the live measurement tables and the session metadata are
never written to. `open_archive(path, reanalysis="latest")` reads a run back.

Without a scheduler address a `distributed.LocalCluster` is started for the run and
stopped after it; by default it uses threads in this process (OpenCV and numpy release
the GIL, and a thread starts in milliseconds where a process takes seconds).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from . import __version__
from .alerts import AlertConfig, AlertDetector
from .analysis import AnalysisConfig, analyze_frame
from .archive import CLUSTER_COLUMNS, EVENT_COLUMNS, PARTICLE_COLUMNS, ArchiveReader
from .errors import ArchiveError, ConfigError
from .xr import REANALYSIS_GROUP

__all__ = ["ReanalysisResult", "analyze_block", "reanalyze"]

log = logging.getLogger(__name__)

_CLUSTER_FROM_ANALYSIS = ("area_px", "area_nm2", "particle_count", "needle_contact",
                          "needle_area_px", "needle_tip_row", "needle_tip_col")


@dataclass(frozen=True)
class ReanalysisResult:
    """What one archive's re-analysis wrote."""

    path: Path
    run: str
    """Name of the group under ``reanalysis/``."""
    frames_analysed: int
    events: list[dict[str, Any]]


def analyze_block(path: str, start: int, stop: int, analysis: Mapping[str, Any],
                  pixel_size_nm: float | None) -> list[dict[str, Any]]:
    """Analyse frames ``start`` to ``stop - 1`` of an archive: one Dask task.

    Takes plain values (a path, numbers, a settings dict) so that it pickles to a
    remote worker cheaply; the worker reads the frames itself.
    """
    config = AnalysisConfig.from_dict(dict(analysis))
    reader = ArchiveReader(path)
    table = reader.table("frame_table")
    rows = []
    for position in range(start, stop):
        result = analyze_frame(reader.frame(position), config=config,
                               pixel_size_nm=pixel_size_nm)
        rows.append({
            "frame": int(table["index"][position]),
            "t_s": float(table["t_s"][position]),
            "cluster": {k: result.cluster[k] for k in _CLUSTER_FROM_ANALYSIS
                        if k in result.cluster},
            "particles": result.particles,
        })
    return rows


def _blocks(count: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(start + size, count)


def _column(values: Sequence[Any], dtype: Any) -> np.ndarray:
    if dtype is str:
        return np.asarray([str(v) for v in values], dtype=str)
    return np.asarray(values, dtype=dtype)


def _write_table(group: zarr.Group, name: str, columns: Mapping[str, Any],
                 rows: Mapping[str, np.ndarray]) -> None:
    table = group.create_group(name)
    length = len(next(iter(rows.values()))) if rows else 0
    for column, dtype in columns.items():
        values = rows.get(column)
        if values is None:  # a column this version's analysis does not produce
            fill = "" if dtype is str else (math.nan if np.dtype(dtype).kind == "f" else -1)
            values = _column([fill] * length, dtype)
        data = np.asarray(values) if dtype is str else np.asarray(values, dtype=dtype)
        array = table.create_array(column, shape=data.shape, dtype=dtype if dtype is not str
                                   else str, chunks=(max(len(data), 1),))
        if len(data):
            array[:] = data


def _stateful_pass(rows: list[dict[str, Any]], alerts: AlertConfig
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray],
                              dict[str, np.ndarray]]:
    """Baseline, relative area and alerts in frame order, as the worker computes them."""
    detector = AlertDetector(alerts)
    baseline: float | None = None
    cluster: dict[str, list[Any]] = {name: [] for name in CLUSTER_COLUMNS}
    particle_parts: dict[str, list[np.ndarray]] = {name: [] for name in PARTICLE_COLUMNS}
    events: dict[str, list[Any]] = {name: [] for name in EVENT_COLUMNS}
    for row in rows:
        values = dict(row["cluster"])
        area = float(values.get("area_px", 0))
        if baseline is None and area > 0:
            baseline = area
        values.update(frame=row["frame"], t_s=row["t_s"], latency_s=math.nan,
                      relative_area=area / baseline if baseline else math.nan)
        for name in cluster:
            cluster[name].append(values.get(name))
        particles = row["particles"]
        count = len(next(iter(particles.values()))) if particles else 0
        for name in particle_parts:
            if name == "frame":
                particle_parts[name].append(np.full(count, row["frame"], np.int64))
            elif name == "t_s":
                particle_parts[name].append(np.full(count, row["t_s"], np.float64))
            elif name in particles:
                particle_parts[name].append(np.asarray(particles[name]))
        for alert in detector.update(t_s=row["t_s"], frame=row["frame"], area_px=area,
                                     needle_contact=bool(values.get("needle_contact"))):
            for name, value in (("frame", alert.frame), ("t_s", alert.t_s),
                                ("kind", alert.kind.value), ("magnitude", alert.magnitude),
                                ("confidence", alert.confidence),
                                ("particle_ids", str(list(alert.particle_ids))),
                                ("message", alert.message)):
                events[name].append(value)
    cluster_columns = {name: _column(values, CLUSTER_COLUMNS[name])
                       for name, values in cluster.items()
                       if all(value is not None for value in values)}
    particle_columns = {
        name: np.concatenate(parts) if parts else _column([], PARTICLE_COLUMNS[name])
        for name, parts in particle_parts.items() if len(parts) == len(rows)}
    event_columns = {name: _column(values, EVENT_COLUMNS[name]) for name, values in events.items()}
    return cluster_columns, particle_columns, event_columns


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
    block_frames: int = 16,
    run: str | None = None,
    local_workers: int | None = None,
    local_processes: bool = False,
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
    block_frames : int
        Frames per task.
    run : str, optional
        Name of the new ``reanalysis/`` group (default: UTC time stamp).
    local_workers, local_processes
        Size and kind of the local cluster (threads unless ``local_processes``).

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
    from distributed import Client, LocalCluster

    if not (isinstance(block_frames, int) and block_frames >= 1):
        raise ConfigError(f"Expected block_frames >= 1. Got {block_frames!r} instead.")
    analysis = analysis if analysis is not None else AnalysisConfig()
    alerts = alerts if alerts is not None else AlertConfig()
    readers = [ArchiveReader(path) for path in paths]
    for reader in readers:
        if reader.status == "recording":
            log.warning("%s is still recording (or its writer was killed); re-analysing "
                        "the %d frames it holds.", reader.path, reader.frame_count)
    if run is not None:
        for reader in readers:
            _run_name(reader.group, run)  # a taken or bad name fails before any work
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=local_workers or 1,
                               threads_per_worker=None if local_processes else 2,
                               processes=local_processes, dashboard_address=None)
    try:
        client = Client(cluster if cluster is not None else scheduler, timeout="30s")
    except OSError as exc:
        if cluster is not None:
            cluster.close()
        raise ConfigError(f"Cannot reach the Dask scheduler at {scheduler}: {exc}.") from None
    settings = analysis.to_dict()
    results = []
    try:
        futures = {
            reader.path: [client.submit(analyze_block, str(reader.path.absolute()), start, stop,
                                        settings, reader.pixel_size_nm, pure=False)
                          for start, stop in _blocks(reader.frame_count, block_frames)]
            for reader in readers
        }
        for reader in readers:
            rows = [row for block in client.gather(futures[reader.path]) for row in block]
            results.append(_store(reader, rows, analysis, alerts, run,
                                  scheduler or "local"))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


def _store(reader: ArchiveReader, rows: list[dict[str, Any]], analysis: AnalysisConfig,
           alerts: AlertConfig, run: str | None, scheduler: str) -> ReanalysisResult:
    cluster, particles, events = _stateful_pass(rows, alerts)
    try:
        root = zarr.open_group(zarr.storage.LocalStore(reader.path), mode="r+")
        name = _run_name(root, run)
        parent = root.require_group(REANALYSIS_GROUP)
        group = parent.create_group(name)
        _write_table(group, "cluster", CLUSTER_COLUMNS, cluster)
        _write_table(group, "particles", PARTICLE_COLUMNS, particles)
        _write_table(group, "events", EVENT_COLUMNS, events)
        # Written last: a run with its attributes is complete.
        group.attrs["lithoscope_reanalysis"] = json.loads(json.dumps({
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "software_version": __version__,
            "analysis": analysis.to_dict(),
            "alerts": alerts.to_dict(),
            "frames_analysed": len(rows),
            "scheduler": scheduler,
        }, default=str))
    except OSError as exc:
        raise ArchiveError(f"Cannot write the re-analysis into {reader.path}: "
                           f"{exc.strerror or exc}.") from None
    kinds = events.get("kind", np.zeros(0, dtype=str))
    return ReanalysisResult(
        path=reader.path, run=name, frames_analysed=len(rows),
        events=[{"kind": str(kinds[i]), "frame": int(events["frame"][i]),
                 "t_s": float(events["t_s"][i])} for i in range(len(kinds))])
