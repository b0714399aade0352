"""Live I/O: the service's socket side while a session runs.

* :mod:`.worker`: :class:`Worker` binds the frame, result and echem sockets, receives
  and dispatches, keeps heartbeats, hands each frame to the archive thread
  (:mod:`lithoscope.service.archive.thread`) and the newest to the analysis thread
  (:class:`~lithoscope.service.pipeline.SessionPipeline`); its other parts are its
  bases, one concern each: :mod:`.sessions` (the session table: ownership, open,
  close, fallback), :mod:`.analysing` (the analysis thread, the skip policy, joining
  measurements, echem filing) and :mod:`.state` (the session record, publishing);
* :mod:`.budget`: the bytes of every frame the worker holds, against
  ``memory_budget_bytes`` (full: the worker stops reading frames);
* :mod:`.fanout`: measuring in N processes (``--workers``), results kept in order;
* :mod:`.session`: :func:`run_local_session`, publisher and worker in one process
  (``lithoscope demo``, ``replay``, ``publish --local``).

Nothing is imported here, so that importing one piece does not start the others.
"""
