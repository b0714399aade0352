"""lithoscope.replay: readers for recorded movies and archives, fed to the service's publisher.

Importing the package registers every reader with the service's source registry
(:mod:`lithoscope.service.sources.registry`): TIFF stacks, vendor TIFFs included
(:mod:`.tiff`), movies (:mod:`.video`), folders of frame files and GMS In-Situ trees
(:mod:`.folder`), every format of RosettaSciIO's plugin registry (:mod:`.rosetta`),
MRC files (:mod:`.formats`) and lithoscope archives (:mod:`.archive_source`);
:mod:`.readers` re-exports the file readers. :func:`open_source` then opens any of
them, or a live source.
"""

from __future__ import annotations

from lithoscope.service.sources.registry import open_source

from . import archive_source, folder, formats, readers, rosetta, tiff, video

__all__ = [
    "archive_source",
    "folder",
    "formats",
    "open_source",
    "readers",
    "rosetta",
    "tiff",
    "video",
]
