"""How long `lithoscope --help` and `lithoscope monitor --help` take to start, and which
heavy libraries they load, for one Python environment (default: this one).

    .venv/bin/python bench/cli_startup.py [--python OTHER/bin/python] [--rounds 5]

Each round is a fresh interpreter; the figure is the median wall time of the rounds.
Compare two trees by pointing --python at each one's venv (both editable installs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("cv2", "zarr", "skimage", "tifffile", "scipy", "matplotlib")
CODE = """
import sys
from lithoscope.service.cli import main
sys.argv = ["lithoscope", *{args!r}]
try:
    main()
except SystemExit:
    pass
print("HEAVY", " ".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


def measure(python: str, args: list[str], rounds: int) -> dict[str, object]:
    times, heavy = [], ""
    for _ in range(rounds):
        started = time.perf_counter()
        done = subprocess.run([python, "-c", CODE.format(args=args, heavy=HEAVY)],
                              capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - started)
        heavy = done.stderr.strip().splitlines()[-1].removeprefix("HEAVY").strip()
    return {"command": " ".join(["lithoscope", *args]), "median_s": statistics.median(times),
            "heavy_modules": heavy.split()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    rows = [measure(options.python, args, options.rounds)
            for args in (["--help"], ["monitor", "--help"])]
    print(json.dumps({"python": options.python, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
