"""The import graph keeps the rooms of docs/architecture.md apart.

Read from the source with ``ast`` (no import-linter dependency, nothing imported): every
``import`` of a ``lithoscope`` module, at module level or inside a function (*lazy*),
outside ``if TYPE_CHECKING:`` blocks. The contracts below are the table in
docs/architecture.md; a test checks that the table and this file agree.
"""

from __future__ import annotations

import ast
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = {"service": "lithoscope.service", "clients": "lithoscope.clients",
            "replay": "lithoscope.replay"}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    lazy: bool
    line: int


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _edges(name: str, path: Path) -> list[Edge]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Edge] = []

    def add(target: str | None, lazy: bool, line: int) -> None:
        if target and target.startswith("lithoscope.") and target != name:
            found.append(Edge(name, target, lazy, line))

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, inner, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    module = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    module = child.module or ""
                submodules = [f"{module}.{a.name}" for a in child.names
                              if f"{module}.{a.name}" in MODULES]
                for target in submodules:
                    add(target, inner, child.lineno)
                if len(submodules) < len(child.names):
                    add(module, inner, child.lineno)
            visit(child, inner)

    visit(tree, False)
    return found


EDGES = [edge for name, path in MODULES.items() for edge in _edges(name, path)]


def _short(module: str) -> str:
    return module.removeprefix("lithoscope.")


def _matches(module: str, patterns: Iterable[str]) -> bool:
    short = _short(module)
    return any(fnmatchcase(short, p) for p in patterns)


# --------------------------------------------------------------------------- the rooms

PACKAGE = ("service",)
"""The package's front door: its ``open_archive`` loads the offline tools on first use."""
GROUND = ("service.errors", "service.schema", "service.protocol",
          "service.settings", "service._options", "service.physics", "service.sockets")
"""Imported by everyone; import only each other (and numpy)."""
SOURCES = ("service.sources*",)
ANALYSIS = ("service.analysis*", "service.alerts", "service.operando*", "service.pipeline")
ARCHIVE = ("service.archive*",)
LIVE = ("service.live*", "service.publisher",
        "service.security", "service.config", "service.endpoints")
OFFLINE = ("service.offline*",)
CLI = ("service.cli*", "service.__main__")
CLIENTS = ("clients*",)
REPLAY = ("replay*",)

CONTRACTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # room: (its modules, what they may import at module level, and also lazily)
    "package": (PACKAGE, GROUND, OFFLINE),
    "ground floor": (GROUND, GROUND, ()),
    "sources": (SOURCES, GROUND + SOURCES + ("service.operando.echem",), ()),
    "analysis": (ANALYSIS, GROUND + ANALYSIS, ()),
    "archive": (ARCHIVE, GROUND + ARCHIVE, ()),
    "live I/O": (LIVE, GROUND + SOURCES + ANALYSIS + ARCHIVE + LIVE, ()),
    "offline tools": (OFFLINE, GROUND + ANALYSIS + ARCHIVE + OFFLINE, ()),
    "cli": (CLI, GROUND + CLI + ("service.endpoints",),
            SOURCES + ANALYSIS + ARCHIVE + LIVE + OFFLINE + CLIENTS + REPLAY),
    "clients": (CLIENTS, GROUND + CLIENTS, ARCHIVE + ANALYSIS),
    "replay": (REPLAY, GROUND + SOURCES + ARCHIVE + REPLAY, ()),
}
"""Kept equal to the table in docs/architecture.md (test below)."""


def _room(module: str) -> str:
    rooms = [room for room, (members, _, _) in CONTRACTS.items() if _matches(module, members)]
    assert len(rooms) == 1, f"{module} belongs to rooms {rooms}: add it to exactly one"
    return rooms[0]


def test_every_module_is_in_exactly_one_room() -> None:
    for module in MODULES:
        _room(module)


def test_imports_follow_the_contracts() -> None:
    broken = []
    for edge in EDGES:
        _, allowed, lazily = CONTRACTS[_room(edge.source)]
        if _matches(edge.target, allowed) or (edge.lazy and _matches(edge.target, lazily)):
            continue
        if edge.target == "lithoscope.service":
            continue  # the package itself (__version__, the errors) is light for everyone
        how = "lazily " if edge.lazy else ""
        broken.append(f"{_short(edge.source)}:{edge.line} {how}imports {_short(edge.target)}"
                      f" ({_room(edge.source)} may not import {_room(edge.target)})")
    assert broken == [], "\n".join(broken)


def _cycles(edges: Iterable[Edge]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        # Importing a submodule loads its package's __init__ first; that is not a
        # dependency of the package on the module.
        if edge.target in MODULES and not edge.source.startswith(edge.target + "."):
            graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycles() -> None:
    """Not even through a lazy import (readers.py and formats.py had one)."""
    assert _cycles(EDGES) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    a, b = "lithoscope.replay.readers", "lithoscope.replay.formats"
    assert _cycles([Edge(a, b, True, 1), Edge(b, a, False, 1)]) == [sorted([a, b])]


def test_the_contracts_in_docs_architecture_md_are_these() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    for room, (members, allowed, lazily) in CONTRACTS.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| {room} |")),
                   None)
        assert row is not None, f"docs/architecture.md has no row for {room}"
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        for cell, names in zip(cells[1:4], (members, allowed, lazily), strict=True):
            written = {w.strip("` ") for w in cell.split(",") if w.strip("` —")}
            assert written == set(names), f"{room}: docs say {sorted(written)}"


@pytest.mark.parametrize("args", [["--help"], ["monitor", "--help"], ["log", "--help"]])
def test_the_cli_front_door_does_not_import_opencv(args: list[str]) -> None:
    """``lithoscope --help`` starts without OpenCV, zarr or scikit-image."""
    code = ("import sys\nfrom lithoscope.service.cli import main\nsys.argv = ['lithoscope', "
            f"*{args!r}]\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('cv2', 'zarr', 'skimage', 'tifffile') "
            "if m in sys.modules)\nprint('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "120"}, check=True)
    assert out.stdout.splitlines()[-1] == "HEAVY []", out.stdout[-2000:]


def test_a_running_monitor_does_not_import_opencv(tmp_path: Path) -> None:
    """``lithoscope monitor`` itself, run until it has drawn its screen, then stopped
    with Ctrl-C; ``-X importtime`` lists every module it imported."""
    log = tmp_path / "imports.txt"
    # A pseudo-terminal, so that the monitor draws live as on a person's screen; stderr
    # to a file, as -X importtime writes more than a pipe holds.
    screen_fd, terminal_fd = pty.openpty()
    with log.open("w") as stderr:
        monitor = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "lithoscope.service", "monitor",
             "--connect", f"ipc://{tmp_path}/results"],
            stdin=terminal_fd, stdout=terminal_fd, stderr=stderr,
            env={**os.environ, "COLUMNS": "100", "LINES": "40", "TERM": "xterm"})
        os.close(terminal_fd)
        screen = b""
        try:
            deadline = time.monotonic() + 60
            while b"lithoscope monitor" not in screen and time.monotonic() < deadline:
                if select.select([screen_fd], [], [], 1.0)[0]:
                    screen += os.read(screen_fd, 65536)
            assert b"lithoscope monitor" in screen, screen[-2000:]
            monitor.send_signal(signal.SIGINT)
            assert monitor.wait(timeout=30) == 0
        finally:
            if monitor.poll() is None:
                monitor.kill()
                monitor.wait()
            os.close(screen_fd)
    imports = log.read_text()
    imported = {line.split("|")[-1].strip() for line in imports.splitlines()
                if line.startswith("import time:")}
    assert "lithoscope.clients.monitor" in imported
    assert imported.isdisjoint({"cv2", "zarr", "skimage", "tifffile"})
