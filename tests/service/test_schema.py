"""Every table's columns are declared once (lithoscope.service.schema); the archive, the
analysis, the operando context, the result messages and docs/archive.md agree with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from lithoscope.service import protocol, schema
from lithoscope.service.analysis import SessionAnalyzer
from lithoscope.service.archive import ArchiveReader, ArchiveWriter
from lithoscope.service.operando.context import OperandoContext
from lithoscope.service.sources.sim import SimulatedSource

from support.archives import SMALL_SIM

DOCS = Path(__file__).parents[2] / "docs" / "archive.md"


def test_docs_archive_tables_match_the_schema() -> None:
    text = DOCS.read_text()
    begin, end = "<!-- BEGIN GENERATED TABLES -->", "<!-- END GENERATED TABLES -->"
    generated = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert generated == schema.tables_markdown().strip(), (
        "docs/archive.md is out of date: regenerate its tables with "
        "`python -m lithoscope.service.schema`")


def _row(table: schema.Table, rows: int) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in table.columns:
        if column.dtype == "str":
            values[column.name] = np.array([f"{column.name}{i}" for i in range(rows)],
                                           dtype=object)
        else:
            values[column.name] = np.arange(rows).astype(column.dtype)
    return values


def test_the_archive_stores_every_schema_column_with_its_dtype(tmp_path: Path) -> None:
    path = tmp_path / "s.zarr"
    writer = ArchiveWriter(path, session={"session_id": "s"})
    writer.append_frame(np.zeros((4, 4), np.uint16), seq=0, index=0, t_s=0.0, acquired_at=0.0)
    for name, table in schema.TABLES.items():
        if name != "frame_table":
            writer.append_rows(name, _row(table, 3))
    writer.close()
    group = zarr.open_group(path, mode="r")
    reader = ArchiveReader(path)
    for name, table in schema.TABLES.items():
        stored = dict(group[name].arrays())  # type: ignore[union-attr]
        assert sorted(stored) == sorted(table.names()), name
        for column in table.columns:
            dtype = stored[column.name].dtype
            if column.dtype == "str":
                assert dtype.kind in "OTU" or str(dtype).startswith("<U") or "str" in str(dtype)
            else:
                assert dtype == np.dtype(column.dtype), (name, column.name)
        if name != "frame_table":
            read = reader.table(name)
            assert len(read[table.key]) == 3, name


@pytest.fixture(scope="module")
def analysed() -> list[tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any],
                             dict[str, np.ndarray]]]:
    """Three simulated frames through the session analyzer and the operando context."""
    analyzer, operando = SessionAnalyzer(), OperandoContext()
    size = SMALL_SIM.pixel_size_nm
    out = []
    with SimulatedSource(SMALL_SIM) as source:
        for frame in source:
            if frame.index >= 3:
                break
            cluster, particles, alerts = analyzer.update(
                frame.image, t_s=frame.t_s, index=frame.index, pixel_size_nm=size)
            rich_cluster, rich_particles, _, context = operando.update(
                image=frame.image, t_s=frame.t_s, index=frame.index, pixel_size_nm=size,
                exposure_s=None, metadata=frame.metadata, cluster=cluster,
                particles=particles, alerts=alerts)
            out.append((cluster, particles, rich_cluster, rich_particles))
            assert set(context.row) == set(schema.OPERANDO.names())
            assert set(context.particle_rows) | {"frame", "t_s"} == set(
                schema.PARTICLE_DOSE.names())
            assert set(context.region_rows) | {"frame", "t_s"} == set(
                schema.REGION_DOSE.names())
    return out


def test_the_analysis_produces_exactly_the_schema_columns(analysed: Any) -> None:
    for cluster, particles, _, _ in analysed:
        assert set(cluster) == set(schema.CLUSTER_VALUES)
        assert list(particles) == list(schema.SESSION_PARTICLE_COLUMNS)
        for name, dtype in schema.SESSION_PARTICLE_COLUMNS.items():
            assert particles[name].dtype == dtype, name
        assert set(schema.CLUSTER.names()) - set(cluster) == {"frame", "t_s", "latency_s"}
        assert set(schema.PARTICLES.names()) - set(particles) == {"frame", "t_s"}


def test_results_carry_exactly_the_documented_values(analysed: Any) -> None:
    for _, _, cluster, particles in analysed:
        assert set(cluster) == set(schema.RESULT_CLUSTER_VALUES)
        assert set(particles) == set(schema.RESULT_PARTICLE_VALUES)
    doc = protocol.schema_markdown()
    for name in (*schema.RESULT_CLUSTER_VALUES, *schema.RESULT_PARTICLE_VALUES):
        assert f"`{name}`" in doc, name


def test_column_names_carry_units_and_one_name_has_one_meaning() -> None:
    dtypes: dict[str, set[str]] = {}
    for table in schema.TABLES.values():
        for column in table.columns:
            dtypes.setdefault(column.name, set()).add(column.dtype)
            assert column.meaning, (table.name, column.name)
    # A name is one thing with one dtype in every table it appears in.
    assert {name: kinds for name, kinds in dtypes.items() if len(kinds) > 1} == {}
    for suffix, unit in (("_px", "px"), ("_nm2", "nm²"), ("_s", "s"), ("_v", "V"),
                         ("_a", "A"), ("_c", "C")):
        for table in schema.TABLES.values():
            for column in table.columns:
                if column.name.endswith(suffix) and column.dtype != "str" and not any(
                        column.name.endswith(s) for s in ("_per_s", "_per_a2_s")):
                    assert column.unit in (unit, f"unix {unit}"), (table.name, column.name)
