"""The ready clients: CSV/Parquet logger, alert forwarder, live plot."""

from __future__ import annotations

import csv
import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest

from lithoscope.clients.forward import Forwarder, parse_kinds
from lithoscope.clients.logger import MeasurementLogger
from lithoscope.clients.plots import LivePlot
from lithoscope.service.errors import ConfigError
from lithoscope.service.protocol import Event, Result, SessionClosed, SessionStart

SESSION = "s-1"


def result(i: int, *, track_ids: bool = False) -> Result:
    particles: dict[str, list[Any]] = {
        "label": [1, 2], "area_px": [100 + i, 200 + 2 * i], "area_nm2": [25.0 + i, 50.0],
        "centroid_row": [10.0, 40.0], "centroid_col": [10.0, 40.0],
        "touches_needle": [i > 2, False]}
    if track_ids:
        particles["track_id"] = [5, 6]
        particles["lithium_x"] = [0.1 * i, None]
    return Result(session_id=SESSION, index=i, t_s=0.5 * i, latency_s=0.01,
                  cluster={"area_px": 300 + 3 * i, "area_nm2": 75.0 + i, "needle_contact": i > 2,
                           "relative_area": None},
                  particles=particles, seq=i)


def event(kind: str = "contact_made", frame: int = 3) -> Event:
    return Event(session_id=SESSION, kind=kind, t_s=1.5, frame=frame, magnitude=0.1,
                 particle_ids=[5], message="Needle touched the cluster; it's \"on\".")


def closed() -> SessionClosed:
    return SessionClosed(session_id=SESSION, archive_path="x.zarr", frames_archived=6,
                         frames_analysed=6, frames_dropped=0, reason="end_of_source")


# -- logger ----------------------------------------------------------------------------

def test_csv_logger_writes_one_file_per_table_per_session(tmp_path: Path) -> None:
    with MeasurementLogger(tmp_path) as logger:
        for i in range(6):
            logger.write(result(i, track_ids=True))
        logger.write(event())
        logger.write(closed())
    with (tmp_path / f"{SESSION}-cluster.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert rows[0]["frame"] == "0"
    assert rows[5]["area_px"] == "315"
    assert rows[0]["relative_area"] == ""
    with (tmp_path / f"{SESSION}-particles.csv").open() as f:
        particles = list(csv.DictReader(f))
    assert len(particles) == 12
    assert {"track_id", "lithium_x", "touches_needle"} <= set(particles[0])
    with (tmp_path / f"{SESSION}-events.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["kind"] == "contact_made"
    assert row["message"] == "Needle touched the cluster; it's \"on\"."
    assert json.loads(row["particle_ids"]) == [5]
    assert logger.rows_written == {"cluster": 6, "particles": 12, "events": 1}


def test_csv_logger_appends_to_a_session_it_already_logged(tmp_path: Path) -> None:
    for i in range(2):
        with MeasurementLogger(tmp_path) as logger:
            logger.write(result(i))
    lines = (tmp_path / f"{SESSION}-cluster.csv").read_text().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("session_id,frame,t_s")


def test_parquet_logger_when_pyarrow_is_there(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    with MeasurementLogger(tmp_path, format="parquet", flush_s=0.0) as logger:
        for i in range(4):
            logger.write(result(i))
        logger.write(event())
    table = pq.read_table(tmp_path / f"{SESSION}-cluster.parquet")
    assert table.num_rows == 4
    assert table.column("relative_area").null_count == 4
    assert pq.read_table(tmp_path / f"{SESSION}-particles.parquet").num_rows == 8


def test_parquet_without_pyarrow_is_one_clear_error(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match="needs pyarrow"):
        MeasurementLogger(tmp_path, format="parquet")


# -- forwarder ---------------------------------------------------------------------------

HOOK = """
import json, os, sys
event = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"env": os.environ["LITHOSCOPE_EVENT_KIND"],
                        "frame": os.environ["LITHOSCOPE_EVENT_FRAME"],
                        "message": os.environ["LITHOSCOPE_EVENT_MESSAGE"],
                        "stdin": event}) + "\\n")
"""


def test_forwarder_runs_the_command_for_chosen_kinds_only(tmp_path: Path) -> None:
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    out = tmp_path / "calls.jsonl"
    forwarder = Forwarder(["contact_made"], command=f"{sys.executable} {hook} {out}")
    (outcome,) = forwarder.handle(event())
    assert outcome.ok, outcome
    assert forwarder.handle(event("frames_dropped")) == []
    (call,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert call["env"] == "contact_made"
    assert call["frame"] == "3"
    assert call["message"] == "Needle touched the cluster; it's \"on\"."  # never a shell
    assert call["stdin"]["type"] == "event"
    assert call["stdin"]["particle_ids"] == [5]


def test_forwarder_reports_failing_and_hanging_commands(tmp_path: Path) -> None:
    failing = Forwarder(["all"], command=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    (outcome,) = failing.handle(event())
    assert not outcome.ok
    assert "exit status 3" in outcome.detail
    missing = Forwarder(["all"], command="/nonexistent/notify")
    assert missing.handle(event())[0].detail == "command not found"
    hanging = Forwarder(["all"], command=f"{sys.executable} -c 'import time; time.sleep(30)'",
                        timeout_s=0.5)
    assert "killed" in hanging.handle(event())[0].detail


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_hook() -> Iterator[str]:
    _Hook.received = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_forwarder_posts_json_to_a_url(http_hook: str) -> None:
    forwarder = Forwarder(parse_kinds("contact_made,contact_lost"), url=http_hook)
    (outcome,) = forwarder.handle(event())
    assert outcome.ok, outcome
    assert outcome.detail == "HTTP 204"
    assert _Hook.received[0]["kind"] == "contact_made"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kinds": ["contact_made"]}, "--run COMMAND or --url"),
    ({"kinds": ["touchdown"], "command": "true"}, "Expected event kinds"),
    ({"kinds": ["contact_made"], "url": "ftp://x"}, "http:// or https://"),
    ({"kinds": ["contact_made"], "command": "  "}, "empty"),
])
def test_forwarder_refuses_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Forwarder(**kwargs)


# -- live plot ---------------------------------------------------------------------------

def test_live_plot_keeps_a_png_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "areas.png"
    plot = LivePlot(path, every_s=0.0)
    plot.update(SessionStart(session_id=SESSION, source="sim", source_kind="sim", t0_unix=0.0,
                             live=True))
    for i in range(5):
        assert plot.update(result(i, track_ids=True))
    plot.update(event())
    image = cv2.imread(str(path))
    assert image is not None
    assert image.shape[0] > 400
    assert plot.unit == "nm²"
    assert sorted(plot.tracks) == [5, 6]
    assert not list(tmp_path.glob(".*tmp"))  # written atomically


def test_live_plot_links_particles_itself_without_tracking_ids(tmp_path: Path) -> None:
    plot = LivePlot(tmp_path / "areas.png", every_s=3600.0)
    for i in range(4):
        plot.update(result(i))
    assert sorted(len(ts) for ts, _ in plot.tracks.values()) == [4, 4]
    assert not plot.tracked_by_service
