"""One registry for every source of frames, live and recorded: what a spec opens.

A *spec* is what a person types after ``lithoscope publish`` or ``lithoscope replay``:
``sim``, ``sim:SCENARIO``, ``watch:DIR``, ``imagezmq://ENDPOINT``, a file or a folder.
:func:`open_source` turns it into an open :class:`~lithoscope.service.sources.Source`.

The service owns the registry and registers its live sources here (the simulator, a
watched folder, an imagezmq hub), each opened lazily so that asking for ``sim`` does not
import imagezmq. Readers of recorded files live in :mod:`lithoscope.replay` and register
themselves when that package is imported (:func:`register`): the service never imports
replay, and the CLI, which composes the two, imports it before opening a file. A file
reader may also declare that it reads single frame files
(:attr:`SourceKind.read_frame`); a watched folder then accepts those files too.

Dispatch order: a spec's prefix (``watch:``, ``imagezmq://``, ``sim``), then for an
existing directory the first kind that claims it (archives before plain folders), then
a file's suffix, compared case-insensitively. A file literally named ``sim`` is
reached as ``./sim``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, SourceError
from .base import Source
from .imagefile import FrameFile, FrameFileReader, read_image_file

__all__ = [
    "SourceKind",
    "SourceOpener",
    "describe_kinds",
    "file_opener",
    "frame_file_reader",
    "open_source",
    "parse_optional_positive",
    "register",
    "registered",
]


class SourceOpener(Protocol):
    """Opens one kind of source. ``target`` is the spec without its prefix (kinds with
    a prefix) or the absolute path (files and folders); ``options`` are extra
    source-specific settings (only the simulator takes any)."""

    def __call__(self, target: Any, *, fps: float | None, pixel_size_nm: float | None,
                 stop: threading.Event | None, options: Mapping[str, Any]) -> Source: ...


@dataclass(frozen=True)
class SourceKind:
    """One kind of source and how a spec selects it."""

    name: str
    """Short name (``sim``, ``tiff``, ``archive``)."""
    description: str
    """What a person would call it, for messages ("TIFF stack", "'watch:DIR'")."""
    open: SourceOpener
    prefix: str | None = None
    """The spec starts with this (``watch:``, ``imagezmq://``, ``sim:``)."""
    alone: bool = False
    """The prefix's name by itself (``sim``) also selects this kind, with no target."""
    suffixes: frozenset[str] = frozenset()
    """File name suffixes, lower case with the dot."""
    claims_directory: Callable[[Path], bool] | None = None
    """For folder kinds: does this directory belong to this kind?"""
    priority: int = 0
    """Lower first when several directory kinds could claim the same folder."""
    takes_options: bool = False
    """Accepts source-specific ``options`` (the simulator's settings)."""
    read_frame: FrameFileReader | None = field(default=None, compare=False)
    """Reads one frame file of this kind (for watched folders and image folders), with
    the file's own calibration, if it can."""


_KINDS: dict[str, SourceKind] = {}
_LOCK = threading.Lock()


def register(kind: SourceKind) -> None:
    """Add a kind of source (replacing one of the same name, so re-imports are harmless).

    Raises
    ------
    ValueError
        Another kind already claims one of its suffixes or its prefix.
    """
    with _LOCK:
        for other in _KINDS.values():
            if other.name == kind.name:
                continue
            if other.suffixes & kind.suffixes or (kind.prefix and other.prefix == kind.prefix):
                raise ValueError(f"source kind {kind.name!r} collides with {other.name!r}")
        _KINDS[kind.name] = kind


def registered() -> tuple[SourceKind, ...]:
    """The kinds registered so far, in registration order."""
    with _LOCK:
        return tuple(_KINDS.values())


def describe_kinds() -> str:
    """"a TIFF stack, ..., 'imagezmq://ENDPOINT' or 'sim'": for help and errors."""
    # Files first, then kinds that only read folders, then prefixes.
    kinds = sorted(registered(), key=lambda k: (
        k.prefix is not None, k.claims_directory is not None and not k.suffixes))
    names = [k.description for k in kinds]
    return ", ".join(names[:-1]) + (f" or {names[-1]}" if len(names) > 1 else "".join(names))


def frame_file_reader() -> tuple[frozenset[str], FrameFileReader]:
    """Suffixes and reader of single frame files, from every kind that reads them (the
    service's own :func:`~.imagefile.read_image_file` for the rest)."""
    readers = {suffix: kind.read_frame for kind in registered() if kind.read_frame
               for suffix in kind.suffixes}

    def read(path: Path) -> FrameFile:
        reader = readers.get(path.suffix.casefold())
        if reader is None:
            return read_image_file(path)
        return reader(path)

    return frozenset(readers), read


def parse_optional_positive(value: object, name: str) -> float | None:
    """``value`` as a float, or ``None``; zero, negatives, NaN and bools are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(
            f"Expected {name} to be a positive number or None. Got {value!r} instead."
        )
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"Expected {name} to be a positive finite number. Got {value!r} instead.")
    return number


def file_opener(cls: Callable[..., Source]) -> SourceOpener:
    """The opener of a reader class built as ``cls(path, fps=..., pixel_size_nm=...)``."""

    def open_file(target: Any, *, fps: float | None, pixel_size_nm: float | None,
                  stop: threading.Event | None, options: Mapping[str, Any]) -> Source:
        return cls(target, fps=fps, pixel_size_nm=pixel_size_nm)

    return open_file


def open_source(
    spec: str | os.PathLike[str],
    *,
    fps: float | None = None,
    pixel_size_nm: float | None = None,
    stop: threading.Event | None = None,
    **options: Any,
) -> Source:
    """Open the source a command-line argument names.

    Parameters
    ----------
    spec : str or os.PathLike
        ``sim``, ``sim:SCENARIO``, ``watch:DIR``, ``imagezmq://ENDPOINT``, a file or a
        folder (see the module docstring for the order).
    fps, pixel_size_nm : float, optional
        Override what the source records (or supply what it lacks).
    stop : threading.Event, optional
        Ends a live source's stream (``watch:``, ``imagezmq://``) when set; files
        ignore it (the publisher checks it between frames).
    **options
        Source-specific settings; only the simulator takes any (``SimConfig`` fields).

    Returns
    -------
    Source
        An open source; use it as a context manager.

    Raises
    ------
    SourceError
        Missing path, empty or damaged file, empty folder or unknown kind of file.
    ConfigError
        Invalid ``fps`` / ``pixel_size_nm``, or ``options`` for a source without any.
    """
    text = os.fspath(spec)
    fps = parse_optional_positive(fps, "fps")
    pixel_size_nm = parse_optional_positive(pixel_size_nm, "pixel_size_nm")
    kinds = registered()
    for kind in kinds:
        if kind.prefix is None:
            continue
        if text.startswith(kind.prefix):
            return _open(kind, text.removeprefix(kind.prefix), fps, pixel_size_nm, stop,
                         options)
        if kind.alone and text == kind.prefix.rstrip(":/"):
            return _open(kind, "", fps, pixel_size_nm, stop, options)
    path = Path(text).expanduser().absolute()
    if not path.exists():
        raise SourceError(f"Cannot read {path}: no such file or directory.")
    if path.is_dir():
        for kind in sorted((k for k in kinds if k.claims_directory), key=lambda k: k.priority):
            assert kind.claims_directory is not None
            if kind.claims_directory(path):
                return _open(kind, path, fps, pixel_size_nm, stop, options)
    else:
        suffix = path.suffix.casefold()
        for kind in kinds:
            if suffix in kind.suffixes:
                return _open(kind, path, fps, pixel_size_nm, stop, options)
    what = "folder" if path.is_dir() else (f"'{path.suffix}'" if path.suffix
                                           else "(no file extension)")
    raise SourceError(f"Unknown source type {what} for {path}; expected one of: "
                      f"{describe_kinds()}.")


def _open(kind: SourceKind, target: Any, fps: float | None, pixel_size_nm: float | None,
          stop: threading.Event | None, options: Mapping[str, Any]) -> Source:
    if options and not kind.takes_options:
        raise ConfigError(
            f"Expected simulator options only with a 'sim' source. Got "
            f"{', '.join(sorted(options))} for {target}."
        )
    return kind.open(target, fps=fps, pixel_size_nm=pixel_size_nm, stop=stop, options=options)


# ------------------------------------------------------------------ the service's live sources


def _open_sim(target: str, *, fps: float | None, pixel_size_nm: float | None,
              stop: threading.Event | None, options: Mapping[str, Any]) -> Source:
    from .sim import SimConfig, SimulatedSource

    scenario = target or None
    config = SimConfig.from_dict(options) if options else SimConfig()
    source: Source = (SimulatedSource(config, scenario=scenario) if scenario
                      else SimulatedSource(config))
    return source


def _open_watch(target: str, *, fps: float | None, pixel_size_nm: float | None,
                stop: threading.Event | None, options: Mapping[str, Any]) -> Source:
    from .watch import WATCH_SUFFIXES, WatchFolderSource

    if not target:
        raise SourceError("Expected a folder after 'watch:' (watch:DIR).")
    suffixes, reader = frame_file_reader()
    source: Source = WatchFolderSource(target, suffixes=WATCH_SUFFIXES | suffixes,
                                       reader=reader, fps=fps, pixel_size_nm=pixel_size_nm,
                                       stop=stop)
    return source


def _open_imagezmq(target: str, *, fps: float | None, pixel_size_nm: float | None,
                   stop: threading.Event | None, options: Mapping[str, Any]) -> Source:
    from .imagezmq import ImagezmqSource

    source: Source = ImagezmqSource(target, fps=fps, pixel_size_nm=pixel_size_nm, stop=stop)
    return source


register(SourceKind("watch", "'watch:DIR'", _open_watch, prefix="watch:"))
register(SourceKind("imagezmq", "'imagezmq://ENDPOINT'", _open_imagezmq, prefix="imagezmq://"))
register(SourceKind("sim", "'sim'", _open_sim, prefix="sim:", alone=True, takes_options=True))
