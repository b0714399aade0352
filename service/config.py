"""Service configuration: one tree of frozen dataclasses.

Defaults are documented on each field; a TOML file (``lithoscope serve --config``)
overrides them, command-line flags override the file, and ``to_dict()`` is written
into every archive so a session records how it was analysed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import settings
from .alerts import AlertConfig
from .analysis import AnalysisConfig
from .endpoints import (
    DEFAULT_FRAMES_ENDPOINT,
    DEFAULT_RESULTS_ENDPOINT,
    is_loopback,
    parse_endpoint,
)
from .errors import ConfigError
from .operando.context import OperandoConfig
from .protocol import FrameLimits
from .settings import options_to_dict, parse_options

__all__ = [
    "DEFAULT_FRAMES_ENDPOINT",
    "DEFAULT_RESULTS_ENDPOINT",
    "ServiceConfig",
    "defaults_toml",
    "is_loopback",
    "load_config",
    "parse_endpoint",
    "settings_markdown",
]

@dataclass(frozen=True)
class ServiceConfig:
    """Everything ``lithoscope serve`` needs. Field defaults are the shipped defaults."""

    frames_endpoint: str = DEFAULT_FRAMES_ENDPOINT
    """Where the worker receives frames (it binds; publishers connect)."""
    results_endpoint: str = DEFAULT_RESULTS_ENDPOINT
    """Where the worker publishes results, events and heartbeats (PUB; clients connect)."""
    sessions_dir: str = "sessions"
    """Folder that receives one ``<session>.zarr`` archive per session."""
    allow_remote: bool = False
    """Permit binding to non-loopback interfaces (which also requires CURVE keys)."""
    server_key: str | None = None
    """The service's secret key file (``NAME.key_secret`` from ``lithoscope keys``).
    With ``client_keys`` it turns on CURVE: encrypted traffic, known clients only."""
    client_keys: str | None = None
    """Folder of the public keys (``*.key``) of the clients allowed to connect."""
    heartbeat_s: float = 1.0
    """Interval between heartbeats on the results stream."""
    frame_hwm: int = 64
    """ZeroMQ high-water mark of the frames socket, in frames: the buffer that absorbs
    short stalls before a lossless publisher is made to wait."""
    archive_queue_frames: int = 8
    """Frames that may wait for the archive writer thread while the worker analyses the
    next ones. When it is full the worker stops reading frames until the writer catches
    up, so the frames socket fills to ``frame_hwm`` and a lossless publisher waits: no
    frame is dropped. Costs up to this many frames of memory (32 MiB each at 4096²
    uint16) on top of ``frame_hwm``. 0 writes inline, in the worker's thread, without
    overlap."""
    workers: int = 0
    """Measuring processes (``serve --workers N``): frames are segmented and measured in N
    processes and joined up in order in the worker (tracks, alerts, archive tables).
    0 measures in the worker's own thread. Processes on other hosts can join through
    ``measure_jobs_endpoint`` (see ``lithoscope measure``)."""
    measure_jobs_endpoint: str | None = None
    """Where measuring processes fetch frames (the worker binds). Default: an ipc
    socket of this machine. A tcp address lets other hosts' ``lithoscope measure``
    join; off loopback it needs ``allow_remote`` and CURVE keys like the others."""
    measure_results_endpoint: str | None = None
    """Where measuring processes send their measurements back (the worker binds)."""
    measure_timeout_s: float = 30.0
    """A frame out for measuring longer than this is given up (its process died or
    left): counted as an analysis error, the frame stays archived."""
    results_hwm: int = 1000
    """High-water mark of the results socket; a slow subscriber loses updates beyond it."""
    measurement_flush_s: float = 1.0
    """Longest time measurement rows stay in memory before reaching the archive."""
    compression_level: int = 1
    """Blosc-lz4 level for frames (1: fast; higher levels gain little on noisy frames)."""
    stall_timeout_s: float = 10.0
    """A session with no frame for this long raises ``source_stalled``."""
    analysis_backlog_bytes: int = 256 * 2**20
    """Replay frames (``live = false``) that may wait for analysis, in bytes of pixels.
    A frame is archived as it is received and analysed when the worker gets to it, so
    the archive never waits for analysis; past this many bytes waiting the worker stops
    reading frames and ZeroMQ holds the publisher back (256 MiB: 128 frames of
    1024² uint16)."""
    fallback_dir: str | None = None
    """Where a session goes on when its archive fails (disk full, folder gone): a new
    archive ``<name>.zarr`` here, linked both ways to the failed one. Default (None):
    ``lithoscope-fallback`` in the system's temporary folder (usually another disk)."""
    max_sessions: int = 16
    """Sessions open at once. A ``session_start`` beyond it is rejected
    (``rejected_too_many_sessions``): every open session holds an archive and analysis
    state, so the number a sender can make the worker hold is bounded."""
    idle_session_timeout_s: float = 600.0
    """A session with no frame, echem or stop for this long is closed (status
    ``interrupted``, stop reason ``idle``), so abandoned sessions do not pile up."""
    limits: FrameLimits = field(default_factory=FrameLimits)
    """Bounds on received frames, checked before a header is believed (docs/security.md)."""
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    """How frames are segmented and measured (docs/analysis.md)."""
    alerts: AlertConfig = field(default_factory=AlertConfig)
    """When alerts are raised (docs/analysis.md)."""
    operando: OperandoConfig = field(default_factory=OperandoConfig)
    """Electrochemistry alignment, dose and lithium bookkeeping (docs/analysis.md)."""

    def __post_init__(self) -> None:
        parse_endpoint(self.frames_endpoint, what="frames endpoint",
                       allow_remote=self.allow_remote)
        parse_endpoint(self.results_endpoint, what="results endpoint",
                       allow_remote=self.allow_remote)
        measure = [e for e in (self.measure_jobs_endpoint, self.measure_results_endpoint)
                   if e is not None]
        for endpoint in measure:
            parse_endpoint(endpoint, what="measuring endpoint", allow_remote=self.allow_remote)
        if len(measure) == 1:
            raise ConfigError("Expected both measure_jobs_endpoint and "
                              "measure_results_endpoint, or neither.")
        if not (isinstance(self.workers, int) and self.workers >= 0):
            raise ConfigError(f"Expected workers to be an integer >= 0. Got {self.workers!r}.")
        if not self.measure_timeout_s > 0:
            raise ConfigError(
                f"Expected measure_timeout_s > 0. Got {self.measure_timeout_s!r}.")
        if (self.server_key is None) != (self.client_keys is None):
            raise ConfigError("Expected both server_key and client_keys (CURVE needs the "
                              "service's key pair and the accepted client keys), or neither.")
        if self.server_key is None:
            for endpoint in (self.frames_endpoint, self.results_endpoint, *measure):
                if not is_loopback(endpoint):
                    raise ConfigError(
                        f"Listening on {endpoint} needs CURVE authentication: give "
                        "server_key and client_keys (--server-key, --client-keys; make them "
                        "with `lithoscope keys`). See docs/security.md.")
        if not (isinstance(self.analysis_backlog_bytes, int)
                and self.analysis_backlog_bytes > 0):
            raise ConfigError(f"Expected analysis_backlog_bytes to be a positive integer. "
                              f"Got {self.analysis_backlog_bytes!r} instead.")
        if not (isinstance(self.max_sessions, int) and self.max_sessions > 0):
            raise ConfigError(f"Expected max_sessions to be a positive integer. "
                              f"Got {self.max_sessions!r} instead.")
        for name in ("heartbeat_s", "measurement_flush_s", "stall_timeout_s",
                     "idle_session_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Expected {name} > 0. Got {getattr(self, name)!r}.")
        for name in ("frame_hwm", "results_hwm"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ConfigError(f"Expected {name} to be a positive integer. "
                                  f"Got {getattr(self, name)!r}.")
        if not (isinstance(self.archive_queue_frames, int) and self.archive_queue_frames >= 0):
            raise ConfigError("Expected archive_queue_frames to be an integer >= 0. "
                              f"Got {self.archive_queue_frames!r} instead.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "") -> ServiceConfig:
        """Build from plain values (a TOML file's tables); ``where`` (the file) heads
        any error, which names the key, what was expected and what was given."""
        return parse_options(cls, data, where=where)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready values, nested options as tables; inverse of :meth:`from_dict`."""
        return options_to_dict(self)

    def replace(self, **changes: Any) -> ServiceConfig:
        """A copy with ``changes`` applied; ``None`` values (unset CLI flags) are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: str | Path | None) -> ServiceConfig:
    """Read a TOML file into a ServiceConfig (defaults when ``path`` is None)."""
    if path is None:
        return ServiceConfig()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"Cannot read config {path}: {exc.strerror or exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config {path} is not valid TOML: {exc}.") from None
    return ServiceConfig.from_dict(data, where=str(path))


def defaults_toml() -> str:
    """``lithoscope config --defaults``: every setting at its default, each with its
    documentation as a comment; :func:`load_config` reads it back to the defaults."""
    return settings.defaults_toml(
        ServiceConfig, header="lithoscope service settings (lithoscope serve --config FILE). "
        "Every key is optional; a key left out keeps the default shown here.")


def settings_markdown() -> str:
    """The settings reference of docs/configuration.md (generated; a test compares)."""
    return settings.settings_markdown(ServiceConfig)


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(settings_markdown(), end="")
