"""Settings are parsed in one place from the dataclasses' annotations: errors name the
file, the key, what was expected and what was given; the defaults print as a complete
commented TOML that loads back; docs/configuration.md is generated from the same source."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from lithoscope.service import settings
from lithoscope.service.alerts import AlertConfig
from lithoscope.service.analysis import AnalysisConfig
from lithoscope.service.config import (
    ServiceConfig,
    defaults_toml,
    load_config,
    settings_markdown,
)
from lithoscope.service.errors import ConfigError
from lithoscope.service.operando.context import OperandoConfig
from lithoscope.service.protocol import FrameLimits
from lithoscope.service.sources.sim import SimConfig

DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lithoscope.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "key", "expected", "given"), [
    ('heartbeat_s = "1.0"', "heartbeat_s", "a number", "'1.0' (a string)"),
    ("archive_queue_frames = true", "archive_queue_frames", "an integer", "True (a boolean)"),
    ('[limits]\nmax_side = "x"', "limits.max_side", "an integer", "'x' (a string)"),
    ("[analysis]\nbinning = 2.5", "analysis.binning", "an integer", "2.5 (a number)"),
    ("[alerts]\ncontact_debounce_frames = [1]", "alerts.contact_debounce_frames",
     "an integer", "[1] (a list)"),
    ("allow_remote = 1", "allow_remote", "true or false", "1 (an integer)"),
    ("sessions_dir = 3", "sessions_dir", "a string", "3 (an integer)"),
    ("analysis = 3", "analysis", "a table", "3 (an integer)"),
])
def test_a_value_of_the_wrong_kind_names_file_key_expected_and_given(
        tmp_path: Path, text: str, key: str, expected: str, given: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {key}: Expected {expected}. Got {given} instead."


def test_unknown_keys_and_refused_values_name_the_file_and_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[analysis]\nbinnig = 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}: \[analysis\]: Unknown analysis option "
                                          r"'binnig'\. Expected one of reference_pixel_size_nm"):
        load_config(path)
    path = write(tmp_path, "[operando]\ndose_regions = 0\n")
    with pytest.raises(ConfigError, match=rf"^{path}: \[operando\]: Expected dose_regions"):
        load_config(path)
    path = write(tmp_path, "heartbeat_s = -1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: Expected heartbeat_s > 0\. Got -1"):
        load_config(path)
    path = write(tmp_path, "nonsense = 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}: Unknown service option 'nonsense'"):
        load_config(path)


def test_integers_are_numbers_and_nested_tables_are_parsed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "heartbeat_s = 2\n[limits]\nmax_side = 4096\n"
                                         "[analysis]\nsplit_touching = false\n"))
    assert config.heartbeat_s == 2.0
    assert isinstance(config.heartbeat_s, float)
    assert config.limits == FrameLimits(max_side=4096)
    assert config.analysis == AnalysisConfig(split_touching=False)


def _leaves(cls: type, prefix: str = "") -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", hints[f.name]))
    return out


@pytest.mark.parametrize(("key", "annotation"), _leaves(ServiceConfig))
def test_every_setting_refuses_a_value_of_another_kind_by_name(
        key: str, annotation: Any) -> None:
    wrong: Any = {"a": 1} if annotation is str or "str" in str(annotation) else "text"
    section, _, name = key.rpartition(".")
    data: dict[str, Any] = {section: {name: wrong}} if section else {name: wrong}
    with pytest.raises(ConfigError, match=rf"^f\.toml: {key}: Expected .* Got "):
        ServiceConfig.from_dict(data, where="f.toml")


def test_defaults_print_as_a_complete_commented_toml_that_loads_back(tmp_path: Path) -> None:
    text = defaults_toml()
    path = write(tmp_path, text)
    assert load_config(path) == ServiceConfig()
    # Complete: every setting with a default TOML can write is there, uncommented;
    # those unset by default are there commented out.
    loaded = tomllib.loads(text)
    for key, _ in _leaves(ServiceConfig):
        section, _, name = key.rpartition(".")
        table = loaded.get(section, {}) if section else loaded
        default = settings.options_to_dict(ServiceConfig())
        value = default[section][name] if section else default[name]
        if value is None:
            assert f"# {name} = ..." in text, key
        else:
            assert table[name] == value, key
    # Commented: every setting's line follows its documentation.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith(("#", "[")):
            assert lines[i - 1].startswith("#"), line


def test_every_setting_is_documented() -> None:
    for cls in (ServiceConfig, FrameLimits, AnalysisConfig, AlertConfig, OperandoConfig):
        docs = settings.field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert missing == [], f"{cls.__name__}: no docstring under {missing}"


def test_docs_settings_reference_matches_the_code() -> None:
    text = DOCS.read_text()
    begin, end = "<!-- BEGIN GENERATED SETTINGS -->", "<!-- END GENERATED SETTINGS -->"
    generated = text.split(begin, 1)[1].split(end, 1)[0].strip()
    assert generated == settings_markdown().strip(), (
        "docs/configuration.md is out of date: regenerate its reference with "
        "`python -m lithoscope.service.config`")


@pytest.mark.parametrize("config", [
    ServiceConfig(heartbeat_s=2.5, limits=FrameLimits(max_side=1024),
                  analysis=AnalysisConfig(binning=2), alerts=AlertConfig(noise_floor=0.02),
                  operando=OperandoConfig(dose_regions=2)),
    SimConfig(shape=(300, 200), particle_diameter_nm=(20.0, 30.0)),
])
def test_to_dict_and_from_dict_are_inverses(config: Any) -> None:
    plain = settings.options_to_dict(config)
    assert settings.parse_options(type(config), plain) == config
    assert type(config).from_dict(plain) == config
