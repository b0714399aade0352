"""Offline tools: what reads an archive again after (or beside) the session.

* :mod:`.xr`: :func:`open_archive`, the archive as xarray/dask (also
  ``lithoscope.service.open_archive``);
* :mod:`.reanalyze`: the live :class:`~lithoscope.service.pipeline.SessionPipeline`
  run again on the archived frames, into a new group of the same archive;
* :mod:`.export`: CSV tables, TIFF stacks and MP4 movies.

Nothing is imported here: each tool pulls in heavy libraries (dask, OpenCV) that the
live service and the clients do not need. Import the module you use.
"""
