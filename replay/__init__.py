"""lithoscope.replay: readers for recorded movies and archives, fed to the service's publisher.

Importing the package registers every reader with the service's source registry
(:mod:`lithoscope.service.sources.registry`): TIFF stacks, movies and image folders
(:mod:`.readers`), DM3/DM4, EMD and MRC files (:mod:`.formats`) and lithoscope archives
(:mod:`.archive_source`). :func:`open_source` then opens any of them, or a live source.
"""

from __future__ import annotations

from lithoscope.service.sources.registry import open_source

from . import archive_source, formats, readers

__all__ = ["archive_source", "formats", "open_source", "readers"]
