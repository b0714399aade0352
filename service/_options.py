"""The options dataclasses' ``from_dict`` / ``to_dict``: the generic ones of :mod:`.settings`."""

from __future__ import annotations

from .settings import options_from_dict, options_to_dict

__all__ = ["options_from_dict", "options_to_dict"]
