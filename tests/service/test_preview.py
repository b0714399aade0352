"""What a viewer on another PC gets from a running worker: outlines in every result, and
a `preview` frame while (and only while) someone subscribes to it by name."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from lithoscope.service.config import ServiceConfig
from lithoscope.service.live.preview import PreviewGate, make_preview
from lithoscope.service.live.worker import Worker, WorkerThread
from lithoscope.service.protocol import (
    MAX_PREVIEW_SIDE,
    Heartbeat,
    Message,
    Preview,
    Result,
    SessionClosed,
    decode,
    encode,
)

from support import publishing
from support.arrays import noisy_frames

DEADLINE_S = 60.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    config = ServiceConfig(frames_endpoint=f"ipc://{tmp_path}/frames",
                           results_endpoint=f"ipc://{tmp_path}/results",
                           sessions_dir=str(tmp_path / "sessions"), heartbeat_s=0.1)
    with Worker(config) as w, WorkerThread(w):
        yield w


def subscriber(context: zmq.Context[Any], worker: Worker, topic: bytes) -> zmq.Socket[Any]:
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, topic)
    socket.connect(worker.results_endpoint or "")
    return socket


def until_closed(socket: zmq.Socket[Any]) -> list[Message]:
    messages: list[Message] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if socket.poll(100):
            msg = decode(socket.recv_multipart())
            messages.append(msg)
            if isinstance(msg, SessionClosed):
                return messages
    raise AssertionError("no session_closed")


def publish(worker: Worker, frames: np.ndarray) -> None:
    thread, out = publishing.publish_in_thread(
        worker.frames_endpoint or "", worker.results_endpoint or "", frames, fps=10.0,
        ack_timeout_s=DEADLINE_S, speed=None, live=False)
    publishing.joined(thread, out, DEADLINE_S)


def test_previews_go_to_those_who_ask_and_results_carry_outlines(worker: Worker) -> None:
    context = zmq.Context.instance()
    everything = subscriber(context, worker, b"")
    previews = subscriber(context, worker, b"preview")
    try:
        wait_for(lambda: worker._preview.subscribers == 1, "the preview subscription")
        wait_for(lambda: everything.poll(10) and isinstance(
            decode(everything.recv_multipart()), Heartbeat), "a heartbeat")
        frames = noisy_frames(12, (640, 720))
        publish(worker, frames)
        messages = until_closed(everything)
        results = [m for m in messages if isinstance(m, Result)]
        assert len(results) == 12
        for result in results:
            tracks = set(result.particles["track_id"])
            assert tracks
            assert {o["track_id"] for o in result.outlines} == tracks
            for outline in result.outlines:
                points = np.asarray(outline["points"])
                assert points.shape[1] == 2
                assert len(points) >= 3
                assert points.min() >= 0
                assert points[:, 0].max() < 640
        shown = [m for m in messages if isinstance(m, Preview)]
        assert 1 <= len(shown) <= 12
        preview = shown[0]
        assert preview.image is not None
        assert preview.image.dtype == np.uint8
        assert max(preview.shape) <= MAX_PREVIEW_SIDE
        assert preview.frame_shape == [640, 720]
        assert preview.scale == pytest.approx(720 / preview.shape[1])
        # The preview is that frame (not another, not transposed), shrunk.
        import cv2

        frame = frames[preview.index].astype(np.float32)
        small = cv2.resize(frame, (preview.shape[1], preview.shape[0]),
                           interpolation=cv2.INTER_AREA)
        low, high = preview.display_range
        assert low < high
        r = np.corrcoef(np.clip(small, low, high).ravel(), preview.image.ravel())[0, 1]
        assert r > 0.95
        assert previews.poll(DEADLINE_S * 1000)
        assert isinstance(decode(previews.recv_multipart()), Preview)
    finally:
        previews.close()
    # A subscriber that leaves takes its subscription with it.
    wait_for(lambda: worker._preview.subscribers == 0, "the preview unsubscription")
    try:
        publish(worker, noisy_frames(6, (96, 128), seed=1))
        messages = until_closed(everything)
        assert any(isinstance(m, Result) for m in messages)
        assert not any(isinstance(m, Preview) for m in messages)
    finally:
        everything.close()


def test_the_gate_counts_named_subscriptions_and_spaces_previews() -> None:
    gate = PreviewGate(per_s=2.0)
    gate.subscription(True, b"")
    gate.subscription(True, b"result")
    assert not gate.due(0.0)
    gate.subscription(True, b"prev")
    assert gate.due(10.0)
    assert not gate.due(10.4)
    assert gate.due(10.5)
    gate.subscription(False, b"prev")
    assert not gate.due(20.0)
    with pytest.raises(ValueError, match="per second"):
        PreviewGate(per_s=0)


@pytest.mark.parametrize(("shape", "expected"), [((2048, 2048), (512, 512)),
                                                 ((480, 640), (384, 512)),
                                                 ((100, 50), (100, 50))])
def test_previews_are_small_uint8_and_round_trip(shape: tuple[int, int],
                                                 expected: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    preview = make_preview(image, session_id="s", index=3, t_s=1.5)
    assert tuple(preview.shape) == expected
    again = decode(encode(preview))
    assert isinstance(again, Preview)
    assert again.index == 3
    assert again.image is not None
    assert np.array_equal(again.image, preview.image)


def test_an_oversized_preview_is_refused() -> None:
    from lithoscope.service.errors import ProtocolError

    big = Preview(session_id="s", index=0, t_s=0.0, shape=[600, 10], frame_shape=[600, 10],
                  scale=1.0, display_range=[0.0, 1.0], image=np.zeros((600, 10), np.uint8))
    with pytest.raises(ProtocolError, match="sides 1..512"):
        decode(encode(big))
