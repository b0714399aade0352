"""Operando context of each analysed frame: electrochemistry, electron dose, lithium.

* :mod:`.context`: :class:`OperandoContext`, the per-session state machine that adds
  the bias, charge, dose and lithium bookkeeping to each frame's analysis, and its
  options :class:`OperandoConfig`;
* :mod:`.echem`: the potentiostat side stream (alignment to frames, charge, lithium
  atoms) and the worker's bounded backlog of early samples;
* :mod:`.dose`: dose rate from counts, cumulative dose per field, particle and region.

The pieces import only the ground floor, :mod:`numpy` and :mod:`~lithoscope.service.alerts`;
the simulator imports :mod:`.echem` for its lithium numbers.
"""

from __future__ import annotations

from .context import OPERANDO_COLUMNS, FrameContext, OperandoConfig, OperandoContext
from .dose import DoseAccumulator, dose_rate_from_counts, region_levels
from .echem import EchemBacklog, EchemTrace

__all__ = [
    "OPERANDO_COLUMNS",
    "DoseAccumulator",
    "EchemBacklog",
    "EchemTrace",
    "FrameContext",
    "OperandoConfig",
    "OperandoContext",
    "dose_rate_from_counts",
    "region_levels",
]
