"""Frame sources: one module per source, each real source with a simulator twin."""

from __future__ import annotations

from .base import Source, SourceBase, SourceFrame, SourceInfo

__all__ = ["Source", "SourceBase", "SourceFrame", "SourceInfo"]
