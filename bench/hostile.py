"""A hostile sender against a real ``lithoscope serve``, with valid sessions in between.

    .venv/bin/python bench/hostile.py [--scale 0.05] [--seed 19] [--max-side 2048]
                                      [--big-mib 40] [--json OUT.json] [--keep DIR]

Reproduces the outside tester's run of issue 19 on tcp loopback: random bytes, broken
headers, JSON bombs, number edge cases, odd session ids, echem abuse, oversized
messages (one part over ``MAXMSGSIZE``; parts each under it but a total over the
limit; extra parts), many sockets, quick connections and an oversized subscription,
in rounds, each round followed by a valid session from its own socket, with its own
session token, which another socket tries to hijack halfway (issue 19 cases 8 and 9: a
frame of another shape, ``seq=-1``, a duplicate, a stop, a start for the same id, echem
naming it or no session; without the token and with a wrong one). At the end it stops
the service and re-reads every valid session's archive.

Reports messages and bytes sent, crashes (the service exited; it is then restarted and
a start that dies too is counted), valid sessions intact (archive ``complete`` and
bit-identical to what was sent), the service's peak resident memory
(``VmHWM`` of ``/proc/PID/status``) and its rejection counters. The exit status is 1 if
anything crashed or any valid session is not intact.

``--scale 1`` is about the tester's run (~14,500 messages; with ``--max-side 16384
--big-mib 500`` ~4 GB); the default is a few minutes on a small machine. The service
runs with ``[limits] max_side = --max-side`` (``max_pixels`` its square), so oversized
messages are sized from the limits and the bench stays within memory.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
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

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.protocol import (
    Frame,
    Heartbeat,
    SessionClosed,
    SessionStart,
    SessionStop,
    decode,
    encode,
)

Parts = list[bytes]
DEADLINE_S = 120.0
_SUBSCRIBER = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.XSUB)
sock.connect(sys.argv[1])
sock.send(b"\\x01" + bytes(int(sys.argv[2])))
time.sleep(1.0)
"""
"""An oversized subscription, from its own process: libzmq 4.3 can crash the sending
side when its peer drops it mid-message."""


class Service:
    """``lithoscope serve`` in a subprocess on OS-picked tcp loopback ports."""

    def __init__(self, workdir: Path, max_side: int) -> None:
        self.sessions = workdir / "sessions"
        self.config = workdir / "serve.toml"
        self.config.write_text(f"heartbeat_s = 0.2\n[limits]\nmax_side = {max_side}\n"
                               f"max_pixels = {max_side * max_side}\n")
        self.stderr = open(workdir / "serve.err", "a")  # noqa: SIM115 - closed in stop()
        self.peak_kb = 0
        self.starts = 0
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lithoscope.service", "serve", "--frames",
             "tcp://127.0.0.1:*", "--results", "tcp://127.0.0.1:*", "--sessions",
             str(self.sessions), "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True,
            env={**os.environ, "COLUMNS": "400"})
        self.starts += 1
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "receiving frames on" in line:
                self.frames, self.results = re.findall(r"tcp://127\.0\.0\.1:\d+", line)
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()
                return
        raise RuntimeError(f"lithoscope serve did not start (exit {self.proc.wait()})")

    def alive(self) -> bool:
        self.sample()
        return self.proc.poll() is None

    def sample(self) -> None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        if found:
            self.peak_kb = max(self.peak_kb, int(found.group(1)))

    def stop(self) -> int:
        self.sample()
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(DEADLINE_S)
        self.stderr.close()
        return code


# -- the hostile messages -------------------------------------------------------------
def frame_header(sid: str = "h", **kw: Any) -> bytes:
    return json.dumps({"version": 1, "type": "frame", "session_id": sid, "index": 0,
                       "t_s": 0.0, "acquired_at": 1764081000.0, "shape": [8, 8],
                       "dtype": "uint16", "seq": 1, **kw}).encode()


def header(kind: str, **kw: Any) -> bytes:
    base: dict[str, Any] = {
        "session_start": {"session_id": "h", "source": "t", "source_kind": "t",
                          "t0_unix": 0.0, "live": False},
        "session_stop": {"session_id": "h", "frames_sent": 1},
        "echem": {"source": "csv:x", "t_unix": [1.0], "bias_v": [0.1], "current_a": [1e-9],
                  "session_id": "h"},
    }[kind]
    return json.dumps({"version": 1, "type": kind, **base, **kw}).encode()


PX = bytes(128)
NUMBERS: list[Any] = [2**63, 2**64, -(2**63) - 1, 10**400, -(10**400), 2**1024, True, "1",
                      None, [1], {"a": 1}]
LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" * 5000, "1" * 400,
            "1e-400", "-0.0"]
ODD_IDS = ["a" * 251, "-" * 300, "a." * 200, "../../etc/passwd", "/abs/path", "..", ".",
           "", " ", "a\nINFO forged", "\x1b[2J", "\ud800", "\u202e", "é" * 300, "con",
           "a/b\\c", "\x00", "x" * 5000]


def random_bytes(rng: np.random.Generator) -> Parts:
    return [rng.bytes(int(rng.integers(0, 256))) for _ in range(int(rng.integers(1, 6)))]


def broken_header(rng: np.random.Generator) -> Parts:
    good = frame_header()
    choices: list[Parts] = [
        [b"frame", good[: int(rng.integers(0, len(good)))], PX],
        [b"frame", good.replace(b'"index": 0', b'"index": "0"'), PX],
        [b"frame", good.replace(b'"version": 1', b'"version": 2'), PX],
        [b"result", good, PX],
        [b"frame", b"[]", PX],
        [b"frame", b"\xff\xfe", PX],
        [b"nonsense", header("session_stop"), b""],
        [b"frame", frame_header(shape=[8, -8]), PX],
        [b"frame", frame_header(dtype="object"), PX],
        [b"frame", frame_header(shape=[2**31, 2**31]), PX],
    ]
    return choices[int(rng.integers(len(choices)))]


def json_bomb(rng: np.random.Generator) -> Parts:
    depth = int(rng.integers(20, 200_000))
    choices: list[Parts] = [
        [b"frame", b"[" * depth + b"]" * depth, b""],
        [b"frame", b'{"a":' * depth + b"1" + b"}" * depth, b""],
        [b"frame", frame_header(metadata=json.loads("[" * 900 + "]" * 900)), PX],
        [b"session_start", header("session_start",
                                  metadata={"a": json.loads("[" * 500 + "]" * 500)}), b""],
        [b"frame", b'{"version": ' + b"1" * 5000 + b"}", b""],
        [b"frame", frame_header(metadata={"wide": list(range(100_000))}), PX],
        [b"frame", b'{"a": "' + b"x" * (2**20 + 10) + b'"}', b""],
    ]
    return choices[int(rng.integers(len(choices)))]


def number_edge(rng: np.random.Generator) -> Parts:
    number = NUMBERS[int(rng.integers(len(NUMBERS)))]
    literal = LITERALS[int(rng.integers(len(LITERALS)))]
    field = ["index", "t_s", "acquired_at", "seq", "pixel_size_nm", "exposure_s"][
        int(rng.integers(6))]
    choices: list[Parts] = [
        [b"frame", frame_header(**{field: number}), PX],
        [b"frame", re.sub(rb'"t_s": 0.0', f'"t_s": {literal}'.encode(), frame_header()), PX],
        [b"session_start", header("session_start", fps=number), b""],
        [b"session_start", header("session_start", pixel_size_nm=number), b""],
        [b"echem", header("echem", t_unix=[number]), b""],
        [b"echem", header("echem", clock_offset_s=number), b""],
        [b"echem", header("echem", bias_v=[number]), b""],
        [b"session_stop", header("session_stop", frames_sent=number), b""],
    ]
    return choices[int(rng.integers(len(choices)))]


def odd_session(rng: np.random.Generator) -> list[Parts]:
    sid = ODD_IDS[int(rng.integers(len(ODD_IDS)))]
    try:
        return [[b"session_start", header("session_start", session_id=sid), b""],
                [b"frame", frame_header(sid), PX],
                [b"session_stop", header("session_stop", session_id=sid), b""]]
    except UnicodeEncodeError:
        return []


def echem_abuse(rng: np.random.Generator) -> Parts:
    n = int(rng.integers(1, 12_000))
    choices: list[Parts] = [
        [b"echem", header("echem", source="s" * 25_000, t_unix=[1.0] * 4000,
                          bias_v=[0.0] * 4000, current_a=[None] * 4000), b""],
        [b"echem", header("echem", session_id=f"never-{rng.integers(1 << 30)}",
                          t_unix=[1.0] * n, bias_v=[0.5] * n, current_a=[None] * n), b""],
        [b"echem", header("echem", source="\ud800"), b""],
        [b"echem", header("echem", t_unix=[1.0, 2.0], bias_v=[0.1]), b""],
        [b"echem", header("echem", session_id=None), b""],
    ]
    return choices[int(rng.integers(len(choices)))]


def oversized(limit_bytes: int, big_bytes: int) -> Iterator[Parts]:
    """One part over MAXMSGSIZE (the peer is dropped); two parts each under it but a
    total over the limit; a frame with extra parts."""
    under = min(big_bytes, limit_bytes - 1)
    yield [b"frame", b"{}", bytes(max(big_bytes, limit_bytes + 1))]
    yield [b"frame", bytes(under), bytes(under)]
    yield [b"frame", frame_header(), PX, PX, PX]


# -- the valid sessions ---------------------------------------------------------------
def hijack(name: str, image: np.ndarray, seq: int) -> list[Parts]:
    """Case 8 and 9 of issue 19, aimed at another sender's open session: a frame of
    another shape, a same-shape frame with ``seq=-1``, a duplicate frame, a stop, a
    start for the same id and echem naming it or no session; each without the
    session's token and again with a wrong one."""
    other = np.zeros((image.shape[0] // 2, image.shape[1] // 2), image.dtype)
    wrong = "not-the-owner-" + "w" * 24
    out: list[Parts] = []
    for token in (None, wrong):
        def frame(img: np.ndarray, seq: int, token: str | None = token) -> Parts:
            return list(encode(Frame(session_id=name, index=0, t_s=0.0, acquired_at=0.0,
                                     shape=list(img.shape), dtype=img.dtype.name, seq=seq,
                                     image=img, session_token=token)))
        out += [
            frame(other, seq + 1), frame(image, -1), frame(image, seq),
            list(encode(SessionStop(session_id=name, frames_sent=1, session_token=token))),
            list(encode(SessionStart(session_id=name, source="hijack", source_kind="sim",
                                     t0_unix=0.0, live=False, session_token=token))),
            [b"echem", header("echem", session_id=None, **(
                {"session_token": token} if token else {})), b""],
            [b"echem", header("echem", session_id=name, **(
                {"session_token": token} if token else {})), b""],
        ]
    return out


def valid_session(push: zmq.Socket[Any], name: str, frames: np.ndarray, seq0: int,
                  attacker: zmq.Socket[Any]) -> tuple[int, int]:
    """A whole session from an honest sender, with its own token; halfway through,
    ``attacker`` sends :func:`hijack` at it. Returns (honest, hostile) messages sent."""
    token = secrets.token_urlsafe(24)
    push.send_multipart(encode(SessionStart(session_id=name, source="bench:hostile",
                                            source_kind="sim", t0_unix=time.time(),
                                            live=False, seq=seq0, session_token=token)))
    hostile = 0
    for i, image in enumerate(frames):
        push.send_multipart(encode(Frame(session_id=name, index=i, t_s=0.1 * i,
                                         acquired_at=time.time(), shape=list(image.shape),
                                         dtype=image.dtype.name, seq=seq0 + 1 + i,
                                         image=image, session_token=token)), copy=False)
        if i == len(frames) // 2:
            for parts in hijack(name, image, seq0 + 1 + i):
                attacker.send_multipart(parts, copy=False)
                hostile += 1
    push.send_multipart(encode(SessionStop(session_id=name, frames_sent=len(frames),
                                           seq=seq0 + 1 + len(frames),
                                           session_token=token)))
    return len(frames) + 2, hostile


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915 - one linear run
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.05,
                        help="1.0: about the outside tester's ~14,500 messages")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--max-side", type=int, default=2048,
                        help="the service's limits.max_side (max_pixels its square)")
    parser.add_argument("--big-mib", type=float, default=40.0,
                        help="size of each part of the oversized messages, MiB")
    parser.add_argument("--frames", type=int, default=20, help="frames per valid session")
    parser.add_argument("--json", type=Path, help="also write the report here (JSON)")
    parser.add_argument("--keep", type=Path, help="keep the sessions folder here")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    rounds = max(1, round(20 * args.scale))
    per_round = max(1, round(14_000 * args.scale / rounds))
    sockets = max(2, round(200 * args.scale))
    quick = max(2, round(1000 * args.scale))
    workdir = Path(tempfile.mkdtemp(prefix="lithoscope-hostile-"))
    service = Service(workdir, args.max_side)
    limit = args.max_side * args.max_side * 8 + (1 << 20) + 4096  # FrameLimits
    ctx = zmq.Context()
    sent = sent_bytes = crashes = failed_starts = 0
    valid: dict[str, np.ndarray] = {}
    closed: dict[str, SessionClosed] = {}
    watch = ctx.socket(zmq.SUB)
    watch.setsockopt(zmq.SUBSCRIBE, b"")
    watch.setsockopt(zmq.RCVHWM, 1_000_000)
    watch.connect(service.results)
    last_beat: Heartbeat | None = None
    t0 = time.monotonic()

    def send(sock: zmq.Socket[Any], parts: Parts) -> None:
        nonlocal sent, sent_bytes
        sock.send_multipart(parts, copy=False)
        sent += 1
        sent_bytes += sum(len(p) for p in parts)

    def check() -> None:
        nonlocal crashes, failed_starts, watch
        if service.alive():
            return
        crashes += 1
        print(f"  the service died (exit {service.proc.returncode}); restarting", flush=True)
        try:
            service.start()
        except RuntimeError:
            failed_starts += 1
            raise
        watch.close(linger=0)
        watch = ctx.socket(zmq.SUB)
        watch.setsockopt(zmq.SUBSCRIBE, b"")
        watch.connect(service.results)

    def read_results(until_s: float = 0.0) -> None:
        nonlocal last_beat
        deadline = time.monotonic() + until_s
        while watch.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            msg = decode(watch.recv_multipart())
            if isinstance(msg, SessionClosed):
                closed[msg.session_id] = msg
            elif isinstance(msg, Heartbeat):
                last_beat = msg

    def settle(beats: int = 10) -> None:
        """Read results until ``beats`` heartbeats in a row show the same counts of frames
        and rejections. A worker busy with a batch sends no heartbeat, so a quiet spell
        alone would not do: only an idle loop sends them back to back."""
        same, previous, seen = 0, -1, None
        deadline = time.monotonic() + 10 * DEADLINE_S
        while same < beats and time.monotonic() < deadline and service.alive():
            read_results(0.25)
            if last_beat is None or last_beat is seen:
                continue
            seen = last_beat
            count = last_beat.counters.get("received", 0) + last_beat.counters.get("rejected", 0)
            same = same + 1 if count == previous else 0
            previous = count

    generators = [random_bytes, broken_header, json_bomb, number_edge, echem_abuse]
    try:
        for r in range(rounds):
            attacker = ctx.socket(zmq.PUSH)
            attacker.setsockopt(zmq.SNDHWM, 100_000)
            attacker.connect(service.frames)
            for _ in range(per_round):
                kind = generators[int(rng.integers(len(generators)))]
                send(attacker, kind(rng))
                if rng.random() < 0.05:
                    for parts in odd_session(rng):
                        send(attacker, parts)
            # ZeroMQ drops what is still in flight when a peer disconnects: keep the
            # socket until the service has worked through the round.
            settle()
            attacker.close(linger=0)
            if r % max(1, rounds // 3) == 0:
                for parts in oversized(limit, int(args.big_mib * 2**20)):
                    big = ctx.socket(zmq.PUSH)  # a peer of its own: ZeroMQ drops it
                    big.connect(service.frames)
                    send(big, parts)
                    big.close(linger=10_000)
                subprocess.run([sys.executable, "-c", _SUBSCRIBER, service.results,
                                str(8 * 2**20)], timeout=DEADLINE_S, check=False,
                               capture_output=True)
                sent += 1
                sent_bytes += 8 * 2**20
            many = [ctx.socket(zmq.PUSH) for _ in range(sockets // rounds + 1)]
            for sock in many:
                sock.connect(service.frames)
                send(sock, random_bytes(rng))
            for _ in range(quick // rounds + 1):
                sock = ctx.socket(zmq.PUSH)
                sock.connect(service.frames)
                send(sock, broken_header(rng))
                sock.close(linger=1000)
            settle()
            for sock in many:
                sock.close(linger=0)
            check()
            name = f"valid-{r}"
            frames = rng.integers(0, 65535, (args.frames, 64, 64), dtype=np.uint16)
            honest = ctx.socket(zmq.PUSH)
            honest.connect(service.frames)
            thief = ctx.socket(zmq.PUSH)
            thief.connect(service.frames)
            valid[name] = frames
            count, stolen = valid_session(honest, name, frames, seq0=1 + 100 * r,
                                          attacker=thief)
            sent += count + stolen
            sent_bytes += frames.nbytes
            honest.close(linger=10_000)
            thief.close(linger=10_000)
            read_results(0.5)
            check()
            print(f"round {r + 1}/{rounds}: {sent} messages, {sent_bytes / 2**20:.0f} MiB, "
                  f"peak RSS {service.peak_kb / 1024:.0f} MB", flush=True)
        deadline = time.monotonic() + DEADLINE_S
        while set(valid) - set(closed) and time.monotonic() < deadline and service.alive():
            read_results(1.0)
        settle()
    finally:
        watch.close(linger=0)
        ctx.term()
        exit_code = service.stop()
    intact = 0
    for name, frames in valid.items():
        msg = closed.get(name)
        if msg is None:
            print(f"  {name}: never closed")
            continue
        reader = ArchiveReader(msg.archive_path)
        ok = (reader.status == "complete" and reader.frame_count == len(frames)
              and np.array_equal(reader.frames[:], frames))
        intact += ok
        if not ok:
            print(f"  {name}: NOT intact ({reader.status}, {reader.frame_count} frames)")
    counters = dict(last_beat.counters) if last_beat is not None else {}
    report = {
        "scale": args.scale, "seed": args.seed, "max_side": args.max_side,
        "big_mib": args.big_mib, "messages_sent": sent,
        "bytes_sent_mib": round(sent_bytes / 2**20, 1),
        "crashes": crashes, "failed_starts": failed_starts,
        "service_exit_code": exit_code,
        "valid_sessions": len(valid), "valid_sessions_intact": intact,
        "peak_rss_mb": round(service.peak_kb / 1024, 1),
        "archives": len(list(service.sessions.glob("*.zarr"))),
        "duration_s": round(time.monotonic() - t0, 1),
        "counters": {k: v for k, v in sorted(counters.items()) if v},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.keep:
        shutil.copytree(service.sessions, args.keep, dirs_exist_ok=True)
    traceback = "Traceback" in (workdir / "serve.err").read_text(errors="replace")
    if traceback:
        print(f"  a traceback in {workdir / 'serve.err'}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return int(crashes > 0 or intact < len(valid) or exit_code != 0 or traceback)


if __name__ == "__main__":
    raise SystemExit(main())
