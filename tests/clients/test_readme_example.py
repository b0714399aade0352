"""The README's ten-line client runs as printed, against a real socket."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from lithoscope.service.protocol import Event, Result, encode

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_client_example(capsys: pytest.CaptureFixture[str]) -> None:
    found = re.search(r"## Following a running service from another tool\n\n```python\n(.*?)```",
                      README.read_text(), re.S)
    assert found is not None
    code = found.group(1)
    assert len(code.strip().splitlines()) <= 10
    context: zmq.Context[Any] = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    stop = threading.Event()

    def feed() -> None:  # until the example has had its fill: a subscriber joins late
        i = 0
        while not stop.wait(0.02):
            i += 1
            pub.send_multipart(encode(Event(session_id="s", kind="contact_made", t_s=i,
                                            frame=i, message="Needle touched the cluster.")))
            pub.send_multipart(encode(Event(session_id="s", kind="drift_warning", t_s=i,
                                            frame=i)))
            pub.send_multipart(encode(Result(session_id="s", index=i, t_s=i, latency_s=0.0,
                                             cluster={"area_nm2": 10234.5}, particles={})))
            if i == 40:
                return

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    try:
        exec(code.replace("tcp://127.0.0.1:5556", endpoint).replace("timeout_s=60",
                                                                     "timeout_s=2"), {})
    finally:
        stop.set()
        thread.join()
        pub.close(linger=0)
        context.term()
    out = capsys.readouterr().out
    assert "contact_made: Needle touched the cluster." in out
    assert "cluster 10,234 nm²" in out
    assert "drift_warning" not in out
