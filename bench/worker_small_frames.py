"""The worker's own cost per frame, on frames so small that the analysis costs little.

    .venv/bin/python bench/worker_small_frames.py [--frames 600] [--shape 24 32] [--rounds 2]

What the test suite's many-frame worker tests pay per frame beyond the analysis:
receiving, the archive thread, label images, operando bookkeeping, results. A real
``Worker`` in a thread and a real ``Publisher`` over ipc, replay pacing (every frame
archived and analysed), the frames of ``tests/support/arrays.noisy_frames``. Prints
the wall time per round and per frame. For where it goes, run it under py-spy:
``py-spy record --threads --format raw -o stacks.txt -- .venv/bin/python
bench/worker_small_frames.py``. An older tree runs the same with ``PYTHONPATH``
pointing at it (the script falls back to the module layout before ``service.live``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--shape", type=int, nargs=2, default=[24, 32])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from lithoscope.service.config import ServiceConfig
    from lithoscope.service.publisher import Publisher

    from support.arrays import ArraySource, noisy_frames
    try:
        from lithoscope.service.live.worker import Worker, WorkerThread
    except ImportError:  # the layout before service.live
        from lithoscope.service.worker import Worker, WorkerThread  # type: ignore[no-redef]

    frames = noisy_frames(args.frames, shape=tuple(args.shape))
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="lithoscope-small-") as tmp:
            config = ServiceConfig(frames_endpoint=f"ipc://{tmp}/frames",
                                   results_endpoint=f"ipc://{tmp}/results",
                                   sessions_dir=str(Path(tmp) / "sessions"),
                                   results_hwm=8, heartbeat_s=0.2)
            worker = Worker(config)
            with WorkerThread(worker):
                start = time.perf_counter()
                with Publisher(worker.frames_endpoint, results_endpoint=worker.results_endpoint,
                               ack_timeout_s=120) as publisher:
                    publisher.publish(ArraySource(frames), speed=None, live=False)
                wall = time.perf_counter() - start
        print(f"round {round_ + 1}: {len(frames)} frames of {args.shape[0]}x{args.shape[1]} "
              f"in {wall:.2f} s, {1e3 * wall / len(frames):.1f} ms per frame")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
