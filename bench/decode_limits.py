"""What the decode limits cost per frame message (issue 19's checks of every value).

    .venv/bin/python bench/decode_limits.py [--repeat 20000]

Times ``protocol.decode`` of a 512x512 uint16 frame message with a typical header
(operando metadata), and the parts of its header handling: ``json.loads`` alone and
``_check_values`` (depth, int64, finite floats, strings) on the parsed header.
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Sequence

import numpy as np

from lithoscope.service import protocol


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20_000)
    args = parser.parse_args(argv)
    image = np.zeros((512, 512), np.uint16)
    msg = protocol.Frame(
        session_id="s", index=3, t_s=0.75, acquired_at=1.7e9, shape=[512, 512],
        dtype="uint16", pixel_size_nm=0.5, seq=4, image=image,
        metadata={"bias_v": -2.0, "current_a": 1e-9, "dose_rate_e_per_a2_s": 5.0})
    parts = [bytes(p) for p in protocol.encode(msg)]
    header = json.loads(parts[1])
    n = args.repeat
    for name, call in (("decode", lambda: protocol.decode(parts)),
                       ("json.loads", lambda: json.loads(parts[1])),
                       ("_check_values", lambda: protocol._check_values(header))):
        best = min(timeit.repeat(call, number=n, repeat=3)) / n
        print(f"{name:>14}: {best * 1e6:6.1f} us per frame message")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
