"""imagezmq compatibility: frames sent with imagezmq's own ImageSender feed the worker."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import imagezmq
import numpy as np
import pytest
import zmq

from lithoscope.service.archive import ArchiveReader
from lithoscope.service.errors import SourceError
from lithoscope.service.live.session import run_local_session
from lithoscope.service.sources import Source
from lithoscope.service.sources.imagezmq import ImagezmqSource, decode_imagezmq

from support.media import make_frames
from support.source_conformance import SourceConformance

SHAPE = (24, 32)
FRAMES = make_frames(5, SHAPE, np.uint8, seed=11)


def send_with_imagezmq(endpoint: str, frames: list[np.ndarray], *, bgr: bool = True,
                       stop: bool = True) -> None:
    """What an existing camera script does: ImageSender.send_image per frame (REQ/REP)."""
    sender = imagezmq.ImageSender(connect_to=endpoint)
    try:
        for number, frame in enumerate(frames):
            image = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if bgr else frame
            reply = sender.send_image(f"camera-{number}", image)
            assert reply == b"OK"
        if stop:
            sender.send_image("lithoscope:stop", frames[0])
    finally:
        sender.close()


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


class TestImagezmqSource(SourceConformance):
    reiterable = False  # a live stream: each frame is received once

    @pytest.fixture
    def source_factory(self, context: zmq.Context[zmq.Socket[bytes]]
                       ) -> Callable[[], Source]:
        def factory() -> Source:
            source = ImagezmqSource("tcp://127.0.0.1:0", idle_timeout_s=5,
                                    first_frame_timeout_s=30, context=context)
            # The sender's last request may go unanswered when a test closes early.
            thread = threading.Thread(target=_send_quietly, args=(source.endpoint,),
                                      daemon=True)
            thread.start()
            return source

        # Senders are not joined: one whose hub a test closed early waits out its 3 s
        # receive timeout on its own (daemon thread, its own imagezmq context).
        return factory

    @pytest.fixture
    def expected_frames(self) -> list[np.ndarray]:
        return FRAMES


def _send_quietly(endpoint: str) -> None:
    sender = imagezmq.ImageSender(connect_to=endpoint)
    sender.zmq_socket.setsockopt(zmq.RCVTIMEO, 3000)
    sender.zmq_socket.setsockopt(zmq.LINGER, 0)
    try:
        for number, frame in enumerate(FRAMES):
            sender.send_image(f"camera-{number}", cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
        sender.send_image("lithoscope:stop", FRAMES[0])
    except zmq.Again:
        pass  # the hub closed before answering: the test stopped reading
    finally:
        sender.close()


def test_imagezmq_sender_feeds_the_worker(tmp_path: Path,
                                          context: zmq.Context[zmq.Socket[bytes]]) -> None:
    source = ImagezmqSource("tcp://127.0.0.1:0", idle_timeout_s=10, context=context,
                            pixel_size_nm=0.5)
    sender = threading.Thread(target=send_with_imagezmq, args=(source.endpoint, FRAMES))
    sender.start()
    with source:
        report = run_local_session(source, archive_path=tmp_path / "izmq.zarr")
    sender.join(timeout=30)
    assert report.closed is not None
    reader = ArchiveReader(tmp_path / "izmq.zarr")
    assert reader.frame_count == len(FRAMES)
    for position, truth in enumerate(FRAMES):
        assert np.array_equal(reader.frame(position), truth)
    assert reader.meta["source_kind"] == "imagezmq"
    assert reader.pixel_size_nm == 0.5


def test_jpeg_frames_and_names(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    source = ImagezmqSource("tcp://127.0.0.1:0", idle_timeout_s=10, context=context)

    def send() -> None:
        sender = imagezmq.ImageSender(connect_to=source.endpoint)
        ok, jpg = cv2.imencode(".jpg", FRAMES[0], [cv2.IMWRITE_JPEG_QUALITY, 100])
        assert ok
        sender.send_jpg("scope-1", jpg)
        sender.send_jpg("lithoscope:stop", b"00")
        sender.close()

    thread = threading.Thread(target=send)
    thread.start()
    with source:
        frames = list(source)
    thread.join(timeout=30)
    assert len(frames) == 1
    assert frames[0].metadata == {"imagezmq_msg": "scope-1"}
    assert np.abs(frames[0].image.astype(int) - FRAMES[0]).mean() < 8  # JPEG is lossy


def test_idle_timeout_ends_the_stream(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    source = ImagezmqSource("tcp://127.0.0.1:0", idle_timeout_s=0.2, context=context)
    thread = threading.Thread(target=send_with_imagezmq,
                              args=(source.endpoint, FRAMES[:2]), kwargs={"stop": False})
    thread.start()
    with source:
        assert len(list(source)) == 2
    thread.join(timeout=30)


@pytest.mark.parametrize(("parts", "match"), [
    ([b"{}"], "expected 2"),
    ([b"not json", b""], "not JSON"),
    ([b'{"dtype": "uint8"}', b""], "without 'msg'"),
    ([b'{"msg": "a", "dtype": "uint8", "shape": [2, 2]}', b"abc"], "does not match"),
    ([b'{"msg": "a"}', b"not a jpeg"], "could not be decoded"),
])
def test_malformed_requests_are_one_line_errors(parts: list[bytes], match: str) -> None:
    with pytest.raises(SourceError, match=match):
        decode_imagezmq(parts)


def test_port_in_use(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    with ImagezmqSource("tcp://127.0.0.1:0", context=context) as first, \
            pytest.raises(SourceError, match="Cannot listen"):
        ImagezmqSource(first.endpoint, context=context)
