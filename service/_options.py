"""One way to build an options dataclass from plain values (STYLE 7 and 9).

The analysis, alert and simulator options all come from TOML, JSON or the CLI and all
must refuse a misspelt key by name, so they share this rather than three copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["options_from_dict", "options_to_dict"]

T = TypeVar("T")


def options_from_dict(cls: type[T], data: Mapping[str, Any], *, what: str) -> T:
    """``cls(**data)`` with lists as tuples, or a ConfigError naming the bad key or value.

    ``what`` names the options in messages ("analysis", "alert", "simulator").
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            raise ConfigError(
                f"Unknown {what} option {key!r}. Expected one of {', '.join(names)}.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Invalid {what} options: {exc}.") from None


def options_to_dict(options: Any) -> dict[str, Any]:
    """Plain, JSON-ready values (tuples as lists); inverse of :func:`options_from_dict`."""
    return {
        f.name: list(v) if isinstance(v := getattr(options, f.name), tuple) else v
        for f in dataclasses.fields(options)
    }
