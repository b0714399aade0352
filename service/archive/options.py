"""``[archive]`` settings: how frames are compressed and written.

The choice of codec is measured by ``bench/archive_compression.py`` (MB/s and ratio at
1024², 2048² and 4096²; the figures are in docs/archive.md): blosc-lz4 at level 1 with
bitshuffle keeps up with a camera on one core and halves noisy uint16 frames;
``zstd`` saves more disk for more CPU; ``none`` writes raw chunks (fastest to write,
largest on disk).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ArchiveConfig", "Compression"]


class Compression(enum.StrEnum):
    """Codec of the ``frames`` array (blosc with bitshuffle, or none)."""

    LZ4 = "lz4"
    ZSTD = "zstd"
    NONE = "none"


@dataclass(frozen=True)
class ArchiveConfig:
    """How the archive thread writes a session's frames (docs/archive.md)."""

    compression: Compression = Compression.LZ4
    """Codec of the frames: ``lz4`` (blosc-lz4 + bitshuffle: fast, about half the size
    of noisy uint16 frames), ``zstd`` (blosc-zstd + bitshuffle: smaller, slower) or
    ``none`` (raw chunks). Tables are always lz4."""
    compression_level: int = 1
    """Blosc level, 1 to 9 (1: fast; higher levels gain little on noisy frames)."""
    batch_frames: int = 8
    """Most frames written in one call: the frames that queued up while the disk was
    busy go together, encoded and stored by two threads. A frame that arrives while
    the archive thread is idle is written at once, alone (batches never wait to fill)."""
    inline: bool = False
    """Write in the worker's own thread, without the archive thread (no overlap with
    receiving; for comparison and debugging)."""

    def __post_init__(self) -> None:
        if self.compression not in set(Compression):
            raise ConfigError(f"Expected archive.compression to be one of lz4, zstd, none. "
                              f"Got {self.compression!r}.")
        object.__setattr__(self, "compression", Compression(self.compression))
        level = self.compression_level
        if type(level) is not int or not 1 <= level <= 9:
            raise ConfigError(f"Expected archive.compression_level from 1 to 9. Got {level!r}.")
        if type(self.batch_frames) is not int or self.batch_frames < 1:
            raise ConfigError("Expected archive.batch_frames to be a positive integer. "
                              f"Got {self.batch_frames!r}.")
