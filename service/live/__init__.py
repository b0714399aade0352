"""Live I/O: the service's socket side while a session runs.

* :mod:`.worker`: :class:`Worker` binds the frame, result and echem sockets, receives
  and dispatches, keeps heartbeats, hands each frame to the archive thread
  (:mod:`lithoscope.service.archive.thread`) and the newest to the analysis thread
  (:class:`~lithoscope.service.pipeline.SessionPipeline`);
* :mod:`.fanout`: measuring in N processes (``--workers``), results kept in order;
* :mod:`.session`: :func:`run_local_session`, publisher and worker in one process
  (``lithoscope demo``, ``replay``, ``publish --local``).

Nothing is imported here, so that importing one piece does not start the others.
"""
