"""The client library over real sockets: typed messages, topics, timeouts, reconnection."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from lithoscope.clients import ConnectionState, Subscriber
from lithoscope.replay.readers import open_source
from lithoscope.service.config import ServiceConfig
from lithoscope.service.errors import ConfigError
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.protocol import Event, Heartbeat, Message, Result, encode
from lithoscope.service.publisher import Publisher

from support.arrays import noisy_frames
from support.media import write_tiff_stack


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(session_id="s", counters={"received": seq}, fps_in=1.0, fps_analysed=1.0,
                     latency_p50_s=None, latency_p99_s=None, seq=seq)


def event(seq: int, kind: str = "contact_made") -> Event:
    return Event(session_id="s", kind=kind, t_s=float(seq), frame=seq, message="m", seq=seq)


def result(seq: int) -> Result:
    return Result(session_id="s", index=seq, t_s=float(seq), latency_s=0.01,
                  cluster={"area_px": 100 + seq}, particles={"label": [1]}, seq=seq)


class Pub:
    """A stand-in service: a PUB socket bound on an OS-picked loopback port."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str = "tcp://127.0.0.1:*") -> None:
        self.socket = ctx.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        deadline = time.monotonic() + 20
        while True:  # a restarted service: the old listener is closed asynchronously
            try:
                self.socket.bind(endpoint)
                break
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def send(self, msg: Message) -> None:
        self.socket.send_multipart(encode(msg), copy=False)

    def until_received(self, sub: Subscriber, first_seq: int = 1) -> int:
        """Send heartbeats until one arrives: the subscription is then in place (no sleeps)."""
        seq = first_seq
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.send(heartbeat(seq))
            if sub.recv(timeout_s=0.05) is not None:
                while sub.recv(timeout_s=0.05) is not None:
                    pass
                return seq
            seq += 1
        pytest.fail("the subscription never reached the publisher")

    def close(self) -> None:
        self.socket.close(linger=0)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.term()


@pytest.fixture
def pub(ctx: zmq.Context[Any]) -> Iterator[Pub]:
    p = Pub(ctx)
    yield p
    p.close()


def test_iterates_typed_messages_in_order(pub: Pub) -> None:
    with Subscriber(pub.endpoint) as sub:
        seq = pub.until_received(sub)
        pub.send(result(seq + 1))
        pub.send(event(seq + 2))
        pub.send(heartbeat(seq + 3))
        got = list(sub.iter(timeout_s=0.5))
        assert [type(m) for m in got] == [Result, Event, Heartbeat]
        first = got[0]
        assert isinstance(first, Result)
        assert first.cluster["area_px"] == 100 + seq + 1
        assert sub.missed == 0
        assert sub.restarts == 0


def test_messages_of_one_kind_are_typed_and_filtered(pub: Pub) -> None:
    with Subscriber(pub.endpoint) as sub:
        seq = pub.until_received(sub)
        for i, kind in enumerate(["contact_made", "expansion_onset"], start=1):
            pub.send(result(seq + 2 * i - 1))
            pub.send(event(seq + 2 * i, kind))
        kinds = [e.kind for e in sub.messages(Event, timeout_s=0.5)]
        assert kinds == ["contact_made", "expansion_onset"]


def test_topic_filter_is_applied_by_zeromq(pub: Pub) -> None:
    with Subscriber(pub.endpoint, topics=["event"]) as sub:
        deadline = time.monotonic() + 20
        seq = 0
        while time.monotonic() < deadline:  # wait until the event subscription is in place
            seq += 1
            pub.send(event(seq))
            if sub.recv(timeout_s=0.05) is not None:
                break
        pub.send(heartbeat(seq + 1))
        pub.send(result(seq + 2))
        pub.send(event(seq + 3, "contact_lost"))
        got = list(sub.iter(timeout_s=0.5))
        assert [m.TYPE for m in got if m.seq > seq] == ["event"]
        assert got[-1].kind == "contact_lost"  # type: ignore[union-attr]


@pytest.mark.parametrize("topics", [["frame"], ["nonsense"], []])
def test_bad_topics_are_one_clear_error(topics: list[str]) -> None:
    with pytest.raises(ConfigError, match="(?i)topic"):
        Subscriber("tcp://127.0.0.1:1", topics=topics)


def test_timeout_returns_none_and_ends_iteration(pub: Pub) -> None:
    with Subscriber(pub.endpoint) as sub:
        assert sub.recv(timeout_s=0.05) is None
        assert list(sub.iter(timeout_s=0.05)) == []


def test_waits_for_a_service_that_is_not_up_yet(ctx: zmq.Context[Any]) -> None:
    # A free port nobody listens on. A plain socket, not a ZeroMQ one: ZeroMQ closes its
    # listener asynchronously, and a subscriber could still handshake with it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    with Subscriber(endpoint, context=ctx) as sub:
        assert sub.state is ConnectionState.WAITING
        assert not sub.wait_connected(0.2)
        late = Pub(ctx, endpoint)
        try:
            assert sub.wait_connected(20)
            late.until_received(sub)
        finally:
            late.close()


def test_reconnects_after_a_service_restart_and_counts_it(ctx: zmq.Context[Any]) -> None:
    first = Pub(ctx)
    endpoint = first.endpoint
    with Subscriber(endpoint, context=ctx) as sub:
        assert sub.wait_connected(20)
        first.until_received(sub, first_seq=100)
        first.close()
        deadline = time.monotonic() + 20
        while sub.state is not ConnectionState.DISCONNECTED and time.monotonic() < deadline:
            sub.recv(timeout_s=0.05)
        assert sub.state is ConnectionState.DISCONNECTED
        second = Pub(ctx, endpoint)  # the restarted service numbers its stream from 1 again
        try:
            second.until_received(sub, first_seq=1)
            assert sub.state is ConnectionState.CONNECTED
            assert sub.restarts == 1
        finally:
            second.close()


def test_sequence_gaps_count_as_missed_updates(pub: Pub) -> None:
    with Subscriber(pub.endpoint) as sub:
        seq = pub.until_received(sub)
        pub.send(result(seq + 5))
        assert sub.recv(timeout_s=5) is not None
        assert sub.missed == 4


def test_a_paused_subscriber_never_slows_the_worker(tmp_path: Path) -> None:
    """A monitor that never reads (a suspended terminal) costs the service nothing."""
    config = ServiceConfig(frames_endpoint="tcp://127.0.0.1:*",
                           results_endpoint="tcp://127.0.0.1:*", sessions_dir=str(tmp_path),
                           results_hwm=10)
    stack = write_tiff_stack(tmp_path / "movie.tif", noisy_frames(40, shape=(64, 80)))
    with WorkerThread(Worker(config)) as thread:
        frames_at, results_at = thread.worker.frames_endpoint, thread.worker.results_endpoint
        assert frames_at is not None
        assert results_at is not None
        with Subscriber(results_at, rcvhwm=5) as paused:
            assert paused.wait_connected(20)
            with open_source(str(stack), fps=4.0) as source, \
                    Publisher(frames_at, results_endpoint=results_at) as publisher:
                report = publisher.publish(source, speed=None, live=False)
            assert report.closed is not None
            assert report.closed.frames_archived == 40
            assert report.closed.frames_analysed == 40
            kept = list(paused.iter(timeout_s=0.5))
    seqs = [m.seq for m in kept]  # what it kept is in order; what it lost, it lost alone
    assert seqs == sorted(seqs)
