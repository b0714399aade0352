"""The readers of recorded movies, by the names they have always been imported under.

Each reader lives in its own module and registers itself with the service's source
registry (:mod:`lithoscope.service.sources.registry`) when imported: TIFF stacks
(:mod:`.tiff`), AVI / MP4 movies (:mod:`.video`), folders of frame files and GMS
In-Situ trees (:mod:`.folder`); microscope formats are in :mod:`.formats` and
:mod:`.rosetta`. ``open_source`` picks the reader for a path.

Times: ``t_s = index / fps`` when the frame rate is known (from the argument or the
file); when it is not, ``info.fps`` is ``None`` and ``t_s`` counts frames, and the CLI
must require ``--fps`` or warn that times are frame numbers. Bad input raises
:class:`~lithoscope.service.errors.SourceError` with one line naming the file, at open
for what the headers show, during iteration (after every good frame) for damage found
later.
"""

from __future__ import annotations

from typing import Final

from lithoscope.service.sources.imagefile import IMAGE_SUFFIXES as _IMAGE_SUFFIXES
from lithoscope.service.sources.registry import open_source

from .folder import FolderSource
from .tiff import TIFF_SUFFIXES, TiffSource
from .video import VIDEO_SUFFIXES, VideoSource

__all__ = [
    "IMAGE_SUFFIXES",
    "TIFF_SUFFIXES",
    "VIDEO_SUFFIXES",
    "FolderSource",
    "TiffSource",
    "VideoSource",
    "open_source",
]

IMAGE_SUFFIXES: Final = _IMAGE_SUFFIXES
"""File name suffixes a `FolderSource` treats as frames (besides DM3/DM4 and MRC)."""
