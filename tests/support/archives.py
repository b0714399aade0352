"""Record small real session archives through the real pipeline, for archive-side tools."""

from __future__ import annotations

from pathlib import Path

from lithoscope.service.live.session import run_local_session
from lithoscope.service.sources.sim import SimConfig, SimulatedSource

__all__ = ["SMALL_SIM", "record_sim_archive"]

SMALL_SIM = SimConfig(shape=(160, 160), pixel_size_nm=1.5, fps=1.0, duration_s=40.0,
                      contact_s=5.0, bias_on_s=8.0, withdraw_s=30.0)
"""40 frames of a whole lithiation experiment in miniature (contact, swelling, withdrawal)."""


def record_sim_archive(path: Path, config: SimConfig = SMALL_SIM) -> Path:
    """Publish the simulator to an in-process worker; the archive it writes, closed."""
    with SimulatedSource(config) as source:
        report = run_local_session(source, archive_path=path, speed=None, live=False)
    assert report.closed is not None, "the worker did not close the archive"
    return path
