"""Throughput at real magnifications: end to end through the real path, and its floor.

    .venv/bin/python bench/throughput.py [--sizes 1024 2048 4096]
                                         [--pixel-sizes 0.2 0.4 0.8] [--frames N]
                                         [--particles N] [--variants inline malloc ...]
                                         [--json bench/results/throughput.json]
                                         [--analysis-only [--draws N]]

A camera's frame grows with its field of view, not around a fixed scene: for each frame
size and each pixel size (uint16, simulated operando frames; the field is
``size * pixel_size_nm`` across and the particles keep their size in nm, as at the
microscope) the bench runs:

* ``end_to_end``: a publisher *process* streams N frames as fast as the worker takes
  them (replay pacing: every frame archived and analysed) to ``lithoscope serve`` in
  its own process, over tcp loopback; frames/s and MB/s from the first frame sent to
  the worker's session_closed acknowledgement (all frames on disk).
  The service as shipped (``thread``: archive writes in a writer thread, overlapping
  analysis) and, with ``--variants``, the same run with ``inline`` archive writes
  (``[archive] inline = true``), with ``malloc`` (glibc told to keep freed memory:
  ``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_`` 1 GiB, in the service's
  environment), or ``workers1``/``workers2`` (``serve --workers N``), one after the
  other on the same frames.
  The worker's CPU time per frame (all threads, from ``/proc``) and its busiest
  thread's are reported beside the wall time per frame.
* ``latency``: the shipped service with frames offered at 25 frames/s as a live camera
  would; acquisition-to-result latency p50/p99 from the published results.
* the **lean reference**: the same job as plain library calls, stage by stage on the
  same frames, one core each: receive over ZeroMQ (``zmq``, PUSH/PULL between two
  processes), compress with blosc-lz4 + bitshuffle and write one file per frame
  (``store``, numcodecs), bin to at most 512² with ``cv2.resize(INTER_AREA)`` on the
  integer frame (``bin``), and blur, Otsu, open, distance transform, marker watershed
  and connected-component statistics on the binned frame (``segment``, OpenCV). Its
  frames/s is what two cores reach when those stages overlap perfectly:
  ``min(cores / sum, 1 / slowest)``. The end-to-end figure is reported as a ratio to
  it (target >= 0.5), and ``analyze_frame`` alone as a ratio to its bin + segment
  (target: within 2x).
* ``--analysis-only``: just ``analyze_frame`` against the lean bin + segment on the same
  frames (with the binning it chose and the particle diameter it read), no service.
  With ``--draws N`` the frames are those of N random draws of the physics (dose,
  particle darkness and count, coating, needle, grid: ``bench/accuracy.py``'s draws),
  and the summary gives the median and the worst draw of each case.
* other references, each on the same frames: ``analysis`` ``analyze_frame`` in a loop;
  ``session`` ``SessionAnalyzer.update`` in a loop (what the worker runs per frame:
  analysis plus tracking, physics and alerts); ``archive`` ``ArchiveWriter`` alone;
  ``skimage`` a straightforward scikit-image version of the analysis at full
  resolution.

The stages the worker chains are transport, session analysis and archive; from their
times per frame the table derives the slowest stage (what perfect overlap would reach),
their sum (a serial pipeline) and the *overlap*: 0 when end to end takes the sum, 1 when
it takes only the slowest stage's time. Peak RSS is read from each process (VmHWM).
Results go to a table and, with ``--json``, to a file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

TARGETS_FPS = {1024: 100.0, 2048: 40.0, 4096: 10.0}
"""End-to-end targets at the reference pixel size ``TARGET_PIXEL_SIZE_NM``."""
TARGET_PIXEL_SIZE_NM = 0.4
TARGETS_P99_MS = {1024: 20.0, 2048: 50.0}
DEFAULT_FRAMES = {1024: 200, 2048: 100, 4096: 40}
LEAN_MAX_SIDE = 512
"""The lean reference analyses every frame binned to at most this many pixels a side."""
DISTINCT_FRAMES = 6
PROFILE_DIR: Path | None = None
"""With ``--profile-service DIR``: run ``lithoscope serve`` under py-spy, stacks to DIR."""
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "thread": ("", {}),
    "inline": ("archive = { inline = true }\n", {}),
    "malloc": ("", {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}),
    "workers1": ("workers = 1\n", {}),
    "workers2": ("workers = 2\n", {}),
}
"""Service settings (TOML) and environment of each end-to-end variant."""
"""Frames rendered per size and cycled: enough that nothing is cached between frames."""


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time (user + system, s) of each thread of process ``pid``, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def peak_rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def render_frames(size: int, pixel_size_nm: float, particles: int) -> np.ndarray:
    """Simulated frames at ``size``², ``pixel_size_nm`` per pixel: the field is
    ``size * pixel_size_nm`` across and the particles keep their size in nm (fewer of
    them than asked if the swollen cluster would not fit)."""
    from lithoscope.service.errors import ConfigError
    from lithoscope.service.sources.sim import SimConfig, SimulatedSource

    while True:  # a small field at a fine pixel size holds fewer particles
        try:
            sim = SimulatedSource(SimConfig(shape=(size, size), pixel_size_nm=pixel_size_nm,
                                            particle_count=particles))
            break
        except ConfigError:
            if particles <= 1:
                raise
            particles -= 1
    # Frames from the swelling part of the experiment: needle in contact, particles busy.
    wanted = np.linspace(100, 300, DISTINCT_FRAMES).astype(int)
    return np.stack([sim.render(int(i)).image for i in wanted])


def render_draw_frames(size: int, pixel_size_nm: float, seed: int) -> np.ndarray:
    """Frames of one random draw of the physics (``bench/accuracy.py --seed N``: dose,
    particle darkness and count, coating, needle, grid, drift drawn from their
    ranges) at ``size``² and ``pixel_size_nm``, from its lithiation while in contact."""
    from accuracy import DRAW_TIMING  # bench/ is the script's own directory

    from lithoscope.service.sources.sim import SimulatedSource
    from lithoscope.service.sources.sim_draws import draw_sim_config

    config = draw_sim_config(seed, shape=(size, size), pixel_size_nm=pixel_size_nm,
                             **DRAW_TIMING)
    sim = SimulatedSource(config, scenario="lithiation")
    wanted = np.linspace(12 * config.fps, 40 * config.fps, DISTINCT_FRAMES).astype(int)
    return np.stack([sim.render(int(i)).image for i in wanted])


# -- end to end ------------------------------------------------------------------------
def _publish(frames_path: str, count: int, fps: float, speed: float | None, live: bool,
             frames_endpoint: str, results_endpoint: str, pixel_size_nm: float,
             out: Any) -> None:
    """Publisher process: cycle the frames, return the report and this process's RSS."""
    from lithoscope.service.publisher import Publisher
    from lithoscope.service.sources.base import SourceBase, SourceFrame, SourceInfo

    frames = np.load(frames_path)

    class Cycle(SourceBase):
        def __init__(self) -> None:
            self._info = SourceInfo(name="bench", kind="bench", shape=frames.shape[1:],
                                    dtype=frames.dtype.name, frame_count=count, fps=fps,
                                    pixel_size_nm=pixel_size_nm, live=live)

        def __iter__(self) -> Iterator[SourceFrame]:
            for i in range(count):
                yield SourceFrame(image=frames[i % len(frames)], t_s=i / fps, index=i)

    with Publisher(frames_endpoint, results_endpoint=results_endpoint,
                   ack_timeout_s=600.0) as publisher:
        report = publisher.publish(Cycle(), speed=speed, live=live)
    closed = report.closed
    out.put({
        "frames_sent": report.frames_sent, "wall_s": report.wall_s,
        "frames_archived": closed.frames_archived if closed else None,
        "frames_analysed": closed.frames_analysed if closed else None,
        "frames_dropped": closed.frames_dropped if closed else None,
        "publisher_peak_rss_mb": peak_rss_mb(),
    })


class Service:
    """``lithoscope serve`` in its own process, on fresh loopback ports."""

    def __init__(self, sessions: Path, *, settings: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.frames_endpoint = free_endpoint()
        self.results_endpoint = free_endpoint()
        config = sessions / "serve.toml"
        config.write_text(settings)
        prefix: list[str] = []
        if PROFILE_DIR is not None:
            PROFILE_DIR.mkdir(parents=True, exist_ok=True)
            out = PROFILE_DIR / f"serve-{time.strftime('%H%M%S')}-{os.getpid()}.txt"
            prefix = ["py-spy", "record", "--format", "raw", "--threads", "--rate", "200",
                      "--output", str(out), "--"]
            print(f"  profiling lithoscope serve into {out}")
        self.profiled = bool(prefix)
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "lithoscope.service", "serve", "--frames",
             self.frames_endpoint, "--results", self.results_endpoint, "--sessions",
             str(sessions), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        self._wait_ready()

    def _wait_ready(self) -> None:
        from lithoscope.clients import Subscriber

        with Subscriber(self.results_endpoint, topics=["heartbeat"]) as sub:
            deadline = time.monotonic() + 60
            while sub.recv(timeout_s=1.0) is None:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"lithoscope serve did not start: "
                                     f"{self.process.stderr.read() if self.process.stderr else ''}")

    def stop(self) -> float:
        pid = self.process.pid
        if self.profiled:  # the service is py-spy's child: stop it so py-spy writes
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        rss = peak_rss_mb(pid)
        if self.profiled:
            os.kill(pid, 15)
        else:
            self.process.terminate()
        self.process.wait(60)
        return rss


def run_session(service: Service, frames_path: Path, *, count: int, fps: float,
                speed: float | None, live: bool, pixel_size_nm: float) -> dict[str, Any]:
    from lithoscope.clients import Subscriber

    latencies: list[float] = []
    stop = threading.Event()

    def collect() -> None:
        with Subscriber(service.results_endpoint, topics=["result"]) as sub:
            while not stop.is_set():
                msg = sub.recv(timeout_s=0.2)
                if msg is not None:
                    latencies.append(msg.latency_s)  # type: ignore[union-attr]

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    time.sleep(0.5)  # let the subscription reach the service (PUB/SUB slow joiner)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_publish, args=(
        str(frames_path), count, fps, speed, live, service.frames_endpoint,
        service.results_endpoint, pixel_size_nm, out))
    proc.start()
    report = out.get(timeout=1800)
    proc.join(60)
    time.sleep(0.5)
    stop.set()
    collector.join(5)
    lat = np.array(latencies) * 1e3
    report["results_received"] = len(latencies)
    report["latency_p50_ms"] = float(np.percentile(lat, 50)) if lat.size else float("nan")
    report["latency_p99_ms"] = float(np.percentile(lat, 99)) if lat.size else float("nan")
    return report


# -- references --------------------------------------------------------------------------
def _zmq_sender(endpoint: str, frames_path: str, count: int) -> None:
    frames = np.load(frames_path)
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as push:
        push.connect(endpoint)
        for i in range(count):
            push.send_multipart([b"frame", b"{}", frames[i % len(frames)]], copy=False)
        push.send_multipart([b"end", b"{}", b""])
        push.setsockopt(zmq.LINGER, 60_000)


def reference_zmq(frames_path: Path, count: int) -> float:
    endpoint = free_endpoint()
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as pull:
        pull.bind(endpoint)
        proc = mp.get_context("spawn").Process(target=_zmq_sender,
                                               args=(endpoint, str(frames_path), count))
        proc.start()
        received = 0
        start = None
        while True:
            parts = pull.recv_multipart(copy=False)
            if start is None:
                start = time.perf_counter()
            if parts[0].bytes == b"end":
                break
            received += 1
        elapsed = time.perf_counter() - start
        proc.join(60)
    # The first frame starts the clock, so count-1 intervals.
    return (received - 1) / elapsed


def reference_analysis(frames: np.ndarray, count: int, pixel_size_nm: float) -> float:
    from lithoscope.service.analysis import analyze_frame

    analyze_frame(frames[0], pixel_size_nm=pixel_size_nm)  # warm-up
    start = time.perf_counter()
    for i in range(count):
        analyze_frame(frames[i % len(frames)], pixel_size_nm=pixel_size_nm)
    return count / (time.perf_counter() - start)


def reference_session(frames: np.ndarray, count: int, pixel_size_nm: float) -> float:
    from lithoscope.service.analysis import SessionAnalyzer

    analyzer = SessionAnalyzer()
    analyzer.update(frames[0], t_s=0.0, index=0, pixel_size_nm=pixel_size_nm)  # warm-up
    start = time.perf_counter()
    for i in range(1, count + 1):
        analyzer.update(frames[i % len(frames)], t_s=0.04 * i, index=i,
                        pixel_size_nm=pixel_size_nm)
    return count / (time.perf_counter() - start)


def reference_archive(frames: np.ndarray, count: int, tmp: Path) -> float:
    from lithoscope.service.archive import ArchiveWriter

    writer = ArchiveWriter(tmp / "reference.zarr", session={"session_id": "bench"})
    start = time.perf_counter()
    for i in range(count):
        writer.append_frame(frames[i % len(frames)], seq=i, index=i, t_s=i * 0.01,
                            acquired_at=time.time())
    writer.close()
    return count / (time.perf_counter() - start)


def skimage_analysis(image: np.ndarray) -> dict[str, np.ndarray]:
    """The textbook scikit-image pipeline for the same job: smooth, Otsu, split touching
    particles by distance-transform watershed, measure. No binning, no OpenCV."""
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, morphology, segmentation

    smooth = filters.gaussian(image.astype(np.float32), sigma=2, preserve_range=True)
    dark = smooth < filters.threshold_otsu(smooth)
    dark = morphology.remove_small_objects(morphology.opening(dark, morphology.disk(2)),
                                           max_size=63)
    distance = ndi.distance_transform_edt(dark)
    peaks = feature.peak_local_max(distance, min_distance=10, labels=measure.label(dark))
    markers = np.zeros(image.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=dark)
    return measure.regionprops_table(labels, intensity_image=image,
                                     properties=("label", "area", "centroid",
                                                 "equivalent_diameter_area", "intensity_mean"))


def reference_skimage(frames: np.ndarray, count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        skimage_analysis(frames[i % len(frames)])
    return count / (time.perf_counter() - start)


# -- the lean reference: the same job as plain library calls --------------------------
def lean_bin(image: np.ndarray) -> np.ndarray:
    """Area-average the integer frame down to at most ``LEAN_MAX_SIDE`` a side."""
    import cv2

    factor = max(1, -(-max(image.shape) // LEAN_MAX_SIDE))
    if factor == 1:
        return image
    rows, cols = image.shape[0] // factor, image.shape[1] // factor
    return cv2.resize(image[:rows * factor, :cols * factor], (cols, rows),
                      interpolation=cv2.INTER_AREA)


def lean_segment(binned: np.ndarray) -> dict[str, np.ndarray]:
    """Blur, Otsu, open, distance transform, marker watershed, component statistics."""
    import cv2

    image8 = cv2.normalize(binned, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)
    smooth = cv2.GaussianBlur(image8, (5, 5), 0)
    _, dark = cv2.threshold(smooth, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, kernel)
    distance = cv2.distanceTransform(dark, cv2.DIST_L2, 5)
    _, cores = cv2.threshold(distance, 0.5 * float(distance.max() or 1.0), 255,
                             cv2.THRESH_BINARY)
    _, markers = cv2.connectedComponents(cores.astype(np.uint8))
    markers = markers + 1
    markers[(dark > 0) & (cores == 0)] = 0
    cv2.watershed(cv2.cvtColor(smooth, cv2.COLOR_GRAY2BGR), markers)
    labels = np.where(markers > 1, markers - 1, 0).astype(np.int32)
    _, _, stats, centroids = cv2.connectedComponentsWithStats((labels > 0).astype(np.uint8))
    return {"area_px": stats[1:, cv2.CC_STAT_AREA], "centroid": centroids[1:]}


def lean_bin_segment(frames: np.ndarray, count: int) -> dict[str, float]:
    """ms per frame of the lean reference's bin and segment stages."""
    start = time.perf_counter()
    binned = [lean_bin(frames[i % len(frames)]) for i in range(count)]
    bin_ms = 1e3 * (time.perf_counter() - start) / count
    start = time.perf_counter()
    for image in binned:
        lean_segment(image)
    segment_ms = 1e3 * (time.perf_counter() - start) / count
    return {"bin_ms": bin_ms, "segment_ms": segment_ms, "bin_segment_ms": bin_ms + segment_ms}


def bench_analysis_only(size: int, pixel_size_nm: float, count: int,
                        particles: int, draw: int | None = None) -> dict[str, Any]:
    """``analyze_frame`` against the lean reference's bin + segment, nothing else, on
    the bench's own scene or (``draw``) a random draw of the physics."""
    from lithoscope.service.analysis import analyze_frame

    frames = (render_frames(size, pixel_size_nm, particles) if draw is None
              else render_draw_frames(size, pixel_size_nm, draw))
    first = analyze_frame(frames[0], pixel_size_nm=pixel_size_nm)
    analysis_ms = 1e3 / reference_analysis(frames, count, pixel_size_nm)
    lean = lean_bin_segment(frames, count)
    return {"size": size, "pixel_size_nm": pixel_size_nm, "frames": count, "draw": draw,
            "binning": first.binning,
            "particle_diameter_px": first.cluster["particle_diameter_px"],
            "lean": {**lean, "analysis_ms": analysis_ms,
                     "analysis_over_lean_bin_segment": analysis_ms / lean["bin_segment_ms"]}}


def print_analysis_summary(rows: Sequence[dict[str, Any]]) -> None:
    print(f"\n{'size':>6} {'nm/px':>6} {'draw':>5} {'diameter px':>12} {'binning':>8} "
          f"{'analysis ms':>12} {'lean bin ms':>12} {'lean seg ms':>12} {'/lean b+s':>10}")
    for row in rows:
        lean = row["lean"]
        draw = "-" if row.get("draw") is None else str(row["draw"])
        print(f"{row['size']:>6} {row['pixel_size_nm']:>6g} {draw:>5} "
              f"{row['particle_diameter_px']:>12.0f} "
              f"{row['binning']:>8} {lean['analysis_ms']:>12.1f} {lean['bin_ms']:>12.1f} "
              f"{lean['segment_ms']:>12.1f} {lean['analysis_over_lean_bin_segment']:>10.2f}")


def print_draws_summary(rows: Sequence[dict[str, Any]]) -> None:
    """Median and worst draw of each frame size and pixel size."""
    print(f"\n{'size':>6} {'nm/px':>6} {'draws':>6} {'analysis ms median':>19} "
          f"{'worst':>8} {'worst draw':>11} {'/lean b+s median':>17} {'worst':>7} "
          f"{'binnings':>10}")
    cases = sorted({(r["size"], r["pixel_size_nm"]) for r in rows})
    for size, pixel_size_nm in cases:
        case = [r for r in rows if (r["size"], r["pixel_size_nm"]) == (size, pixel_size_nm)]
        ms = [r["lean"]["analysis_ms"] for r in case]
        ratios = [r["lean"]["analysis_over_lean_bin_segment"] for r in case]
        worst = case[int(np.argmax(ms))]
        binnings = ",".join(str(b) for b in sorted({r["binning"] for r in case}))
        print(f"{size:>6} {pixel_size_nm:>6g} {len(case):>6} {float(np.median(ms)):>19.1f} "
              f"{max(ms):>8.1f} {worst['draw']:>11} {float(np.median(ratios)):>17.2f} "
              f"{max(ratios):>7.2f} {binnings:>10}")


def reference_lean(frames: np.ndarray, frames_path: Path, count: int,
                   tmp: Path) -> dict[str, float]:
    """ms per frame of each floor stage, and the frames/s two cores reach overlapping them."""
    import numcodecs

    stages: dict[str, float] = {"zmq": 1e3 / reference_zmq(frames_path, count)}
    codec = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    store = tmp / "lean"
    store.mkdir()
    start = time.perf_counter()
    for i in range(count):
        (store / str(i)).write_bytes(codec.encode(frames[i % len(frames)]))
    stages["store"] = 1e3 * (time.perf_counter() - start) / count
    start = time.perf_counter()
    binned = [lean_bin(frames[i % len(frames)]) for i in range(count)]
    stages["bin"] = 1e3 * (time.perf_counter() - start) / count
    start = time.perf_counter()
    for image in binned:
        lean_segment(image)
    stages["segment"] = 1e3 * (time.perf_counter() - start) / count
    cores = min(os.cpu_count() or 1, 2)
    total_ms, slowest_ms = sum(stages.values()), max(stages.values())
    return {**{f"{k}_ms": v for k, v in stages.items()},
            "bin_segment_ms": stages["bin"] + stages["segment"],
            "frames_per_s": min(cores * 1e3 / total_ms, 1e3 / slowest_ms)}


# -- driver ------------------------------------------------------------------------------
def end_to_end(variant: str, frames_path: Path, count: int, pixel_size_nm: float,
               tmp: Path, *, latency: bool) -> dict[str, Any]:
    settings, env = VARIANTS[variant]
    sessions = tmp / variant
    sessions.mkdir()
    service = Service(sessions, settings=settings, env=env)
    try:
        pid = service.process.pid
        if service.profiled:  # py-spy's child
            pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
        before = cpu_seconds(pid)
        e2e = run_session(service, frames_path, count=count, fps=1000.0, speed=None,
                          live=False, pixel_size_nm=pixel_size_nm)
        spent = [t - before.get(tid, 0.0) for tid, t in cpu_seconds(pid).items()]
        # The worker's CPU per frame (all its threads), and its busiest thread's (the
        # analysis, in thread mode): against the wall time per frame, how far the
        # worker is from using its cores, and what one thread keeps waiting for.
        e2e["worker_cpu_ms_per_frame"] = 1e3 * sum(spent) / count
        e2e["busiest_thread_cpu_ms_per_frame"] = 1e3 * max(spent, default=0.0) / count
        if latency:
            live_count = int(min(max(count, 75), 250))
            e2e["latency_at_25fps"] = run_session(
                service, frames_path, count=live_count, fps=25.0, speed=1.0, live=True,
                pixel_size_nm=pixel_size_nm)
    finally:
        e2e["worker_peak_rss_mb"] = service.stop()
    fps = e2e["frames_archived"] / e2e["wall_s"] if e2e["frames_archived"] else 0.0
    return {**e2e, "frames_per_s": fps, "lost": count - (e2e["frames_archived"] or 0)}


def bench_size(size: int, pixel_size_nm: float, count: int, tmp: Path,
               variants: Sequence[str], particles: int) -> dict[str, Any]:
    frames = render_frames(size, pixel_size_nm, particles)
    tmp = tmp / f"{size}_{pixel_size_nm:g}"
    tmp.mkdir()
    frames_path = tmp / "frames.npy"
    np.save(frames_path, frames)
    mb_per_frame = frames[0].nbytes / 1e6
    runs = {variant: end_to_end(variant, frames_path, count, pixel_size_nm, tmp,
                                latency=variant == "thread")
            for variant in ("thread", *(v for v in variants if v != "thread"))}
    e2e = runs["thread"]
    e2e_fps = e2e["frames_per_s"]
    for run in runs.values():
        run["mb_per_s"] = run["frames_per_s"] * mb_per_frame
    row: dict[str, Any] = {
        "size": size, "pixel_size_nm": pixel_size_nm, "field_nm": size * pixel_size_nm,
        "particles": particles, "frames": count, "mb_per_frame": mb_per_frame,
        "end_to_end": e2e, "latency_at_25fps": e2e.pop("latency_at_25fps"),
        "variants": {k: v for k, v in runs.items() if k != "thread"},
    }
    skimage_count = max(2, count // 50)
    refs = {
        "zmq": reference_zmq(frames_path, count),
        "analysis": reference_analysis(frames, max(10, count // 5), pixel_size_nm),
        "session": reference_session(frames, max(10, count // 5), pixel_size_nm),
        "archive": reference_archive(frames, max(10, count // 3), tmp / "ref"),
        "skimage": reference_skimage(frames, skimage_count),
    }
    row["references_frames_per_s"] = refs
    lean = reference_lean(frames, frames_path, max(10, count // 3), tmp)
    analysis_ms = 1e3 / refs["analysis"]
    row["lean"] = {**lean, "end_to_end_over_lean": e2e_fps / lean["frames_per_s"],
                   "analysis_ms": analysis_ms,
                   "analysis_over_lean_bin_segment": analysis_ms / lean["bin_segment_ms"]}
    row["ratio_to_end_to_end"] = {k: v / e2e_fps if e2e_fps else float("nan")
                                  for k, v in refs.items()}
    # The worker's chain: transport, then session analysis, then archive.
    stage_s = [1 / refs[k] for k in ("zmq", "session", "archive")]
    serial_s, slowest_s = sum(stage_s), max(stage_s)
    row["pipeline"] = {
        "slowest_stage_frames_per_s": 1 / slowest_s,
        "serial_frames_per_s": 1 / serial_s,
        **{f"overlap_{name}": (serial_s - 1 / run["frames_per_s"]) / (serial_s - slowest_s)
           if run["frames_per_s"] else float("nan") for name, run in runs.items()},
        **{f"slowest_stage_over_{name}": (1 / slowest_s) / run["frames_per_s"]
           if run["frames_per_s"] else float("nan") for name, run in runs.items()},
    }
    return row


def print_row(row: dict[str, Any]) -> None:
    size, e2e, live = row["size"], row["end_to_end"], row["latency_at_25fps"]
    target = (TARGETS_FPS.get(size) if row["pixel_size_nm"] == TARGET_PIXEL_SIZE_NM
              else None)
    verdict = "" if target is None else (
        f" (target >= {target:g}: {'met' if e2e['frames_per_s'] >= target else 'MISSED'})")
    print(f"\n{size}x{size} uint16 at {row['pixel_size_nm']:g} nm/px "
          f"({row['field_nm']:.0f} nm field, {row['particles']} particles), "
          f"{row['mb_per_frame']:.1f} MB/frame, {row['frames']} frames")
    print(f"  end to end   {e2e['frames_per_s']:8.1f} frames/s {e2e['mb_per_s']:8.1f} MB/s"
          f"{verdict}; lost {e2e['lost']}, analysed {e2e['frames_analysed']}")
    for name, run in row["variants"].items():
        print(f"    {name:<10} {run['frames_per_s']:8.1f} frames/s "
              f"({run['frames_per_s'] / e2e['frames_per_s']:.2f}x); lost {run['lost']}, "
              f"worker peak RSS {run['worker_peak_rss_mb']:.0f} MB")
    p99_target = TARGETS_P99_MS.get(size)
    p99_verdict = "" if p99_target is None else (
        f" (target <= {p99_target:g} ms: "
        f"{'met' if live['latency_p99_ms'] <= p99_target else 'MISSED'})")
    print(f"  at 25 fps    latency p50 {live['latency_p50_ms']:.1f} ms, "
          f"p99 {live['latency_p99_ms']:.1f} ms{p99_verdict}; "
          f"analysed {live['frames_analysed']} of {live['frames_archived']} archived")
    print(f"  worker CPU   {e2e['worker_cpu_ms_per_frame']:.1f} ms/frame over all threads "
          f"(busiest thread {e2e['busiest_thread_cpu_ms_per_frame']:.1f}), against "
          f"{1e3 / e2e['frames_per_s'] if e2e['frames_per_s'] else float('nan'):.1f} ms "
          "of wall time per frame")
    print(f"  peak RSS     worker {e2e['worker_peak_rss_mb']:.0f} MB, publisher "
          f"{e2e['publisher_peak_rss_mb']:.0f} MB")
    print(f"  {'reference':<12}{'frames/s':>10}{'x end-to-end':>14}")
    for name, fps in row["references_frames_per_s"].items():
        print(f"  {name:<12}{fps:>10.1f}{row['ratio_to_end_to_end'][name]:>14.2f}")
    pipe = row["pipeline"]
    print(f"  pipeline     stages zmq -> session -> archive: slowest "
          f"{pipe['slowest_stage_frames_per_s']:.1f} frames/s, serial "
          f"{pipe['serial_frames_per_s']:.1f} frames/s")
    hidden = 1 - pipe["serial_frames_per_s"] / pipe["slowest_stage_frames_per_s"]
    for name in ("thread", *row["variants"]):
        overlap = (f"overlap {pipe[f'overlap_{name}']:.2f} (0 serial, 1 perfect)"
                   if hidden >= 0.15 else
                   f"overlap not measurable: the other stages are {100 * hidden:.0f} % of "
                   "the serial time")
        print(f"    {name:<10} end to end takes {pipe[f'slowest_stage_over_{name}']:.2f}x the "
              f"slowest stage's time per frame (target <= 1.5); {overlap}")
    lean = row["lean"]
    print(f"  lean ref.    zmq {lean['zmq_ms']:.1f} + store {lean['store_ms']:.1f} + bin "
          f"{lean['bin_ms']:.1f} + segment {lean['segment_ms']:.1f} ms/frame: "
          f"{lean['frames_per_s']:.1f} frames/s on two cores")
    print(f"    end to end is {lean['end_to_end_over_lean']:.2f}x the lean reference "
          f"(target >= 0.5); analyze_frame {lean['analysis_ms']:.1f} ms is "
          f"{lean['analysis_over_lean_bin_segment']:.1f}x its bin + segment (target <= 2)")
    print(f"  OpenCV analysis is "
          f"{row['ratio_to_end_to_end']['analysis'] / row['ratio_to_end_to_end']['skimage']:.1f}x"
          f" the scikit-image reference; end to end is "
          f"{1 / row['ratio_to_end_to_end']['skimage']:.1f}x it (target >= 5)")


def print_summary(rows: Sequence[dict[str, Any]]) -> None:
    """One line per run: the figures the frame-rate targets are stated in."""
    print(f"\n{'size':>6} {'nm/px':>6} {'e2e fps':>8} {'lean fps':>9} {'e2e/lean':>9} "
          f"{'analysis ms':>12} {'/lean b+s':>10} {'p99 ms':>7} {'RSS MB':>7}")
    for row in rows:
        e2e, lean = row["end_to_end"], row["lean"]
        print(f"{row['size']:>6} {row['pixel_size_nm']:>6g} {e2e['frames_per_s']:>8.1f} "
              f"{lean['frames_per_s']:>9.1f} {lean['end_to_end_over_lean']:>9.2f} "
              f"{lean['analysis_ms']:>12.1f} {lean['analysis_over_lean_bin_segment']:>10.1f} "
              f"{row['latency_at_25fps']['latency_p99_ms']:>7.0f} "
              f"{e2e['worker_peak_rss_mb']:>7.0f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--pixel-sizes", type=float, nargs="+", default=[0.2, 0.4, 0.8],
                        help="nm per pixel; the field grows with the frame")
    parser.add_argument("--particles", type=int, default=8, help="particles in the cluster")
    parser.add_argument("--frames", type=int, help="frames per size (default by size)")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=["thread"],
                        help="end-to-end variants to run besides the shipped one")
    parser.add_argument("--json", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--analysis-only", action="store_true",
                        help="only analyze_frame against the lean bin + segment (no service)")
    parser.add_argument("--draws", type=int, default=0,
                        help="with --analysis-only: frames of this many random draws of "
                             "the physics (seeds 0..N-1, as bench/accuracy.py) instead of "
                             "the bench's own scene; median and worst draw")
    parser.add_argument("--profile-service", type=Path, metavar="DIR",
                        help="run lithoscope serve under py-spy (must be on PATH); "
                             "collapsed stacks per thread into DIR")
    args = parser.parse_args(argv)
    global PROFILE_DIR
    PROFILE_DIR = args.profile_service
    print(f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M:%S')}")
    rows = []
    if args.draws < 0:
        parser.error(f"--draws must be at least 0, got {args.draws}")
    if args.draws and not args.analysis_only:
        parser.error("--draws needs --analysis-only")
    if args.analysis_only:
        draws: list[int | None] = list(range(args.draws)) if args.draws else [None]
        for size in args.sizes:
            for pixel_size_nm in args.pixel_sizes:
                count = args.frames or max(10, DEFAULT_FRAMES.get(size, 100) // 5)
                for draw in draws:
                    rows.append(bench_analysis_only(size, pixel_size_nm, count,
                                                    args.particles, draw))
                    print_analysis_summary(rows[-1:])
        print_analysis_summary(rows)
        if args.draws:
            print_draws_summary(rows)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="lithoscope-throughput-") as tmp:
        for size in args.sizes:
            for pixel_size_nm in args.pixel_sizes:
                count = args.frames or DEFAULT_FRAMES.get(size, 100)
                row = bench_size(size, pixel_size_nm, count, Path(tmp), args.variants,
                                 args.particles)
                print_row(row)
                rows.append(row)
    print_summary(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2))
    lost = sum(run["lost"] for r in rows for run in [r["end_to_end"], *r["variants"].values()])
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
