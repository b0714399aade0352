"""A real archive from the simulator, made once for the report tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lithoscope.service.session import run_local_session
from lithoscope.service.sources.echem import SimulatedEchem
from lithoscope.service.sources.sim import SimConfig, SimulatedSource


@pytest.fixture(scope="session")
def sim_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The lithiation scenario at one frame per second and 256² (120 frames), replayed
    losslessly so every frame is analysed: contact, swelling, withdrawal, contraction;
    with the simulated potentiostat's bias and current beside it."""
    path = tmp_path_factory.mktemp("archive") / "sim.zarr"
    config = SimConfig(shape=(256, 256), pixel_size_nm=1.0, fps=1.0)
    report = run_local_session(SimulatedSource(config), archive_path=path, speed=None,
                               live=False, echem=SimulatedEchem(config))
    assert report.closed is not None
    assert report.closed.frames_archived == report.frames_sent
    return path
