"""Scale-out: measure frames in N processes (here or on other hosts), join them up in order.

The session's analysis has a stateless half (:func:`measure_frame`: segmentation and
measurement, nearly all of the cost) and a stateful half
(:meth:`SessionAnalyzer.update_measured`: drift, tracks, physics, alerts, which must
see frames in order). :class:`AnalysisPool` lives in the worker: it PUSHes frames to
any number of measuring processes and PULLs their :class:`FrameMeasurement` back;
:meth:`AnalysisPool.ready` hands them over in the order they were submitted, so the
stateful half, the archive's tables and the published results stay in sequence
order whatever process finished first.

Channel (internal, between one worker and its measuring processes; see
docs/protocol.md, "Scale-out channel"): the worker binds a PUSH ``jobs`` socket and a
PULL ``measurements`` socket; measuring processes connect to both (``lithoscope
measure --jobs ... --measurements ...``), so processes on other hosts can join or leave
at any time. A job is ``[b"job", header, pixels]``; a measurement ``[b"measurement",
header, *buffers]``. Headers are JSON; arrays travel as raw buffers, never pickled.
A job whose measurement has not come back within ``job_timeout_s`` (its process died
or left) is given up and counted; the frame stays archived.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from ..analysis import PARTICLE_COLUMNS, AnalysisConfig, FrameMeasurement, measure_frame
from ..errors import LithoscopeError
from ..protocol import FrameLimits
from ..security import ClientCurve, ServerCurve
from ..sockets import harden_socket

__all__ = ["AnalysisPool", "Outcome", "decode_job", "decode_measurement", "encode_job",
           "encode_measurement", "run_measurer"]

log = logging.getLogger(__name__)

_JOB = b"job"
_MEASUREMENT = b"measurement"
_STOP = b"stop"


# -- the channel's two messages, as pure functions ----------------------------------------
def encode_job(key: int, image: np.ndarray, *, pixel_size_nm: float | None,
               config: dict[str, Any]) -> list[Any]:
    """One frame to measure. ``config`` is ``AnalysisConfig.to_dict()``: a process that
    joins mid-session needs no other setup."""
    image = np.ascontiguousarray(image)
    header = {"key": key, "shape": list(image.shape), "dtype": image.dtype.str,
              "pixel_size_nm": pixel_size_nm, "config": config}
    return [_JOB, json.dumps(header).encode(), image]


def decode_job(parts: Sequence[Any]) -> tuple[int, np.ndarray, float | None, dict[str, Any]]:
    """Inverse of :func:`encode_job`; ValueError names what is wrong."""
    if len(parts) != 3 or bytes(parts[0]) != _JOB:
        raise ValueError("not a job message")
    header = json.loads(bytes(parts[1]))
    dtype = np.dtype(header["dtype"])
    shape = tuple(int(n) for n in header["shape"])
    buffer = memoryview(parts[2])
    if len(shape) != 2 or min(shape) < 1 or buffer.nbytes != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"pixels do not match shape {shape} and dtype {dtype}")
    image = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    return int(header["key"]), image, header["pixel_size_nm"], header["config"]


def encode_measurement(key: int, measurement: FrameMeasurement | None, *,
                       error: str | None = None, elapsed_s: float = 0.0,
                       measurer: str = "") -> list[Any]:
    """A measurement, or the reason there is none (``error``)."""
    header: dict[str, Any] = {"key": key, "elapsed_s": elapsed_s, "measurer": measurer}
    if measurement is None:
        header["error"] = error or "unknown error"
        return [_MEASUREMENT, json.dumps(header).encode()]
    arrays = [np.ascontiguousarray(measurement.particles[name]) for name in PARTICLE_COLUMNS]
    contacts = np.ascontiguousarray(measurement.contacts, dtype=np.int32)
    drift = np.ascontiguousarray(measurement.drift_image, dtype=np.float32)
    header.update(
        cluster=measurement.cluster, rows=int(arrays[0].shape[0]),
        contacts=int(contacts.shape[0]), drift_shape=list(drift.shape),
        drift_scale=measurement.drift_scale)
    images: list[np.ndarray] = []
    if measurement.labels is not None and measurement.regions is not None:
        # The label image for the archive's labels/ and the outlines: uint16 when the
        # labels fit (they nearly always do), half the bytes of int32.
        labels = measurement.labels
        dtype = np.uint16 if int(labels.max(initial=0)) < 2**16 else np.uint32
        images = [np.ascontiguousarray(labels, dtype=dtype),
                  np.ascontiguousarray(measurement.regions, dtype=np.uint8)]
        header.update(labels_shape=list(labels.shape), labels_dtype=np.dtype(dtype).name,
                      binning=measurement.binning)
    return [_MEASUREMENT, json.dumps(header).encode(), *arrays, contacts, drift, *images]


def decode_measurement(parts: Sequence[Any]) -> tuple[int, FrameMeasurement | None, dict[str, Any]]:
    """Inverse of :func:`encode_measurement`: (key, measurement or None, header)."""
    if len(parts) < 2 or bytes(parts[0]) != _MEASUREMENT:
        raise ValueError("not a measurement message")
    header = json.loads(bytes(parts[1]))
    key = int(header["key"])
    if "error" in header:
        return key, None, header
    buffers = parts[2:]
    labels = regions = None
    if "labels_shape" in header:
        shape = tuple(int(n) for n in header["labels_shape"])
        if len(buffers) != len(PARTICLE_COLUMNS) + 4 or len(shape) != 2:
            raise ValueError(f"expected {len(PARTICLE_COLUMNS) + 4} buffers and a 2-D "
                             f"labels shape, got {len(buffers)} and {shape}")
        label_dtype = {"uint16": np.uint16, "uint32": np.uint32}[str(header["labels_dtype"])]
        labels = np.frombuffer(memoryview(buffers[-2]), dtype=label_dtype).reshape(shape)
        regions = np.frombuffer(memoryview(buffers[-1]), dtype=np.uint8).reshape(shape)
        buffers = buffers[:-2]
    if len(buffers) != len(PARTICLE_COLUMNS) + 2:
        raise ValueError(f"expected {len(PARTICLE_COLUMNS) + 2} buffers, got {len(buffers)}")
    rows = int(header["rows"])
    particles = {}
    for (name, dtype), buffer in zip(PARTICLE_COLUMNS.items(), buffers, strict=False):
        column = np.frombuffer(memoryview(buffer), dtype=dtype)
        if column.shape != (rows,):
            raise ValueError(f"column {name} has {column.shape[0]} rows, expected {rows}")
        particles[name] = column
    contacts = np.frombuffer(memoryview(buffers[-2]), dtype=np.int32).reshape(
        int(header["contacts"]), 2)
    drift = np.frombuffer(memoryview(buffers[-1]), dtype=np.float32).reshape(
        tuple(header["drift_shape"]))
    measurement = FrameMeasurement(particles=particles, cluster=header["cluster"],
                                   contacts=contacts, drift_image=drift,
                                   drift_scale=float(header["drift_scale"]),
                                   labels=labels, regions=regions,
                                   binning=int(header.get("binning", 1)))
    return key, measurement, header


# -- the worker's side --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one submitted job, handed back in submission order."""

    key: int
    tag: Any
    """Whatever the submitter attached (the worker: session and frame)."""
    measurement: FrameMeasurement | None
    error: str | None = None


class AnalysisPool:
    """Measuring processes behind a PUSH/PULL pair; results back in submission order.

    Parameters
    ----------
    context : zmq.Context
        The worker's context.
    jobs_endpoint, measurements_endpoint : str
        Where to bind. ``ipc://`` or loopback tcp for processes on this machine; a
        routable tcp address (with ``curve``) lets other hosts join.
    processes : int
        Measuring processes to start here (0: only remote ones will measure).
    max_in_flight : int
        Jobs out at once; :meth:`has_room` is False beyond it, which is the worker's
        cue to stop taking frames (replay: backpressure) or to skip (live).
    job_timeout_s : float
        A job unanswered this long is given up (its process died or left).
    curve : ServerCurve, optional
        Encrypt and authenticate the channel (required off loopback, like the
        service's other sockets).
    """

    def __init__(self, context: zmq.Context[Any], *, jobs_endpoint: str,
                 measurements_endpoint: str, processes: int, max_in_flight: int | None = None,
                 job_timeout_s: float = 30.0, curve: ServerCurve | None = None,
                 measurer_args: Sequence[str] = ()) -> None:
        self.processes = int(processes)
        self.max_in_flight = max_in_flight or max(2, 2 * self.processes)
        self.job_timeout_s = float(job_timeout_s)
        self._jobs: zmq.Socket[Any] = context.socket(zmq.PUSH)
        self._measurements: zmq.Socket[Any] = context.socket(zmq.PULL)
        for sock in (self._jobs, self._measurements):
            harden_socket(sock, max_part_bytes=FrameLimits().max_message_bytes)
            if curve is not None:
                curve.apply(sock)
        try:
            self._jobs.bind(jobs_endpoint)
            self._measurements.bind(measurements_endpoint)
        except zmq.ZMQError as exc:
            self._jobs.close()
            self._measurements.close()
            raise LithoscopeError(f"Cannot listen for measuring processes on {jobs_endpoint} "
                                  f"/ {measurements_endpoint}: {exc}.") from None
        self.jobs_endpoint = self._jobs.getsockopt_string(zmq.LAST_ENDPOINT)
        self.measurements_endpoint = self._measurements.getsockopt_string(zmq.LAST_ENDPOINT)
        self._next_key = 0
        self._order: collections.deque[list[Any]] = collections.deque()
        """[key, tag, monotonic time sent (inf while in the backlog)] per job out."""
        self._backlog: collections.deque[tuple[list[Any], list[Any]]] = collections.deque()
        self._done: dict[int, tuple[FrameMeasurement | None, str | None]] = {}
        self.counters = {"submitted": 0, "measured": 0, "failed": 0, "timed_out": 0,
                         "late": 0}
        self.measurers: collections.Counter[str] = collections.Counter()
        """Measurements received per measuring process (host:pid): who does the work."""
        self._children = [self._spawn(measurer_args) for _ in range(self.processes)]

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The measurements socket, for the worker's poller."""
        return self._measurements

    def _spawn(self, extra: Sequence[str]) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "lithoscope.service.live.fanout",
                   "--jobs", self.jobs_endpoint, "--measurements", self.measurements_endpoint,
                   "--parent", str(os.getpid()), *extra]
        return subprocess.Popen(command, stdin=subprocess.DEVNULL)

    @property
    def in_flight(self) -> int:
        return len(self._order)

    def has_room(self) -> bool:
        """Whether another job may go out (at most ``max_in_flight``)."""
        return len(self._order) < self.max_in_flight

    def has_idle(self) -> bool:
        """Whether a local measuring process is free (with only remote ones,
        :meth:`has_room`): a live frame sent now is measured at once, not queued behind
        another, so it is still the newest when its measuring starts."""
        return len(self._order) < self.processes if self.processes else self.has_room()

    def submit(self, tag: Any, image: np.ndarray, *, pixel_size_nm: float | None,
               config: AnalysisConfig) -> int:
        """Send one frame out to be measured; its outcome comes back from :meth:`ready`.

        Never blocks: with no measuring process connected yet (or all busy), the job
        waits here and goes out on a later call; its timeout runs from then.
        """
        key = self._next_key
        self._next_key += 1
        entry = [key, tag, math.inf]
        self._order.append(entry)
        self._backlog.append((entry, encode_job(key, image, pixel_size_nm=pixel_size_nm,
                                                config=config.to_dict())))
        self.counters["submitted"] += 1
        self._send_backlog()
        return key

    def _send_backlog(self) -> None:
        while self._backlog:
            entry, parts = self._backlog[0]
            try:
                self._jobs.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            entry[2] = time.monotonic()
            self._backlog.popleft()

    def receive(self) -> None:
        """Send what waits, take every measurement that has arrived (non-blocking)."""
        self._send_backlog()
        while True:
            try:
                parts = self._measurements.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                key, measurement, header = decode_measurement(parts)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("Bad message from a measuring process dropped: %s", exc)
                continue
            if not self._order or key < self._order[0][0] or key in self._done:
                self.counters["late"] += 1  # given up on already
                continue
            self.measurers[str(header.get("measurer", "?"))] += 1
            self._done[key] = (measurement, header.get("error"))

    def ready(self, *, now: float | None = None) -> list[Outcome]:
        """Outcomes in submission order, as far as they are complete."""
        now = time.monotonic() if now is None else now
        out: list[Outcome] = []
        while self._order:
            key, tag, sent = self._order[0]
            if key in self._done:
                measurement, error = self._done.pop(key)
                self.counters["measured" if measurement is not None else "failed"] += 1
            elif now - sent > self.job_timeout_s:
                measurement, error = None, (f"no measurement within {self.job_timeout_s:g} s "
                                            "(measuring process gone?)")
                self.counters["timed_out"] += 1
            else:
                break
            self._order.popleft()
            out.append(Outcome(key=key, tag=tag, measurement=measurement, error=error))
        return out

    def wait(self, timeout_s: float) -> list[Outcome]:
        """Block until at least one outcome is complete (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.receive()
            done = self.ready()
            remaining = deadline - time.monotonic()
            if done or not self._order or remaining <= 0:
                return done
            self._measurements.poll(max(1, int(1000 * min(remaining, 0.1))))

    def abandon(self) -> list[Any]:
        """Give up every job still out; returns their tags."""
        tags = [tag for _, tag, _ in self._order]
        self.counters["timed_out"] += len(tags)
        self._order.clear()
        self._backlog.clear()
        self._done.clear()
        return tags

    def close(self) -> None:
        """Stop the local measuring processes and close the sockets."""
        for child in self._children:
            if child.poll() is None:
                child.terminate()
        for child in self._children:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children = []
        self._jobs.close(linger=0)
        self._measurements.close(linger=0)


# -- the measuring process ----------------------------------------------------------------
def run_measurer(jobs_endpoint: str, measurements_endpoint: str, *,
                 stop: threading.Event | None = None, parent_pid: int | None = None,
                 curve: ClientCurve | None = None, max_jobs: int | None = None) -> int:
    """Measure jobs until ``stop`` (or the parent process is gone); returns jobs done.

    A job that fails is answered with its error, so the worker never waits on it.
    """
    stop = stop or threading.Event()
    context: zmq.Context[Any] = zmq.Context()
    jobs = context.socket(zmq.PULL)
    measurements = context.socket(zmq.PUSH)
    jobs.setsockopt(zmq.RCVHWM, 2)  # take little: a slow process should not hoard frames
    for sock in (jobs, measurements):
        sock.setsockopt(zmq.LINGER, 2000)
        if curve is not None:
            curve.apply(sock)
    jobs.connect(jobs_endpoint)
    measurements.connect(measurements_endpoint)
    me = f"{socket.gethostname()}:{os.getpid()}"
    configs: dict[str, AnalysisConfig] = {}
    done = 0
    try:
        while not stop.is_set() and (max_jobs is None or done < max_jobs):
            if not jobs.poll(200):
                if parent_pid is not None and os.getppid() != parent_pid:
                    break  # the worker was killed: do not linger as an orphan
                continue
            parts = jobs.recv_multipart(copy=False)
            started = time.perf_counter()
            try:
                key, image, pixel_size_nm, config_dict = decode_job(parts)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("Bad job dropped: %s", exc)
                continue
            text = json.dumps(config_dict, sort_keys=True)
            try:
                config = configs.get(text) or configs.setdefault(
                    text, AnalysisConfig.from_dict(config_dict))
                measurement = measure_frame(image, config=config, pixel_size_nm=pixel_size_nm)
                reply = encode_measurement(key, measurement,
                                           elapsed_s=time.perf_counter() - started, measurer=me)
            except Exception as exc:  # a bad frame must not take the process down
                log.exception("Measuring job %d failed.", key)
                reply = encode_measurement(key, None, error=f"{type(exc).__name__}: {exc}",
                                           measurer=me)
            measurements.send_multipart(reply, copy=False)
            done += 1
    finally:
        jobs.close(linger=0)
        measurements.close()
        context.term()
    return done


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m lithoscope.service.live.fanout``: what AnalysisPool starts locally."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--measurements", required=True)
    parser.add_argument("--parent", type=int)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C on `lithoscope serve` reaches the whole process group: the worker, not
    # this process, decides when measuring stops (it waits for frames still out).
    signal.signal(signal.SIGINT, signal.SIG_IGN if args.parent else lambda *_: stop.set())
    logging.basicConfig(level=logging.WARNING)
    run_measurer(args.jobs, args.measurements, stop=stop, parent_pid=args.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
