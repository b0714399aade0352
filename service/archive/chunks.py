"""Chunks written as files beside zarr, not through it: whole frames (and label images),
and the rows of the measurement tables.

A frame is one chunk of ``frames`` (``chunks=(1, Y, X)``). zarr's write path for a
chunk (its asyncio event loop, codec pipeline and buffers) holds the GIL for several ms
per frame, taken from the analysis running beside it in the worker, and at 1024² it
was twice the time of encoding and writing the same bytes (``bench/archive_write.py``).
So :class:`ChunkFiles` does only that: the array's own codecs (numcodecs' Blosc, which
zarr's ``BloscCodec`` wraps, and which releases the GIL) encode each frame, and its
bytes go to the file zarr reads the chunk from (the key from the array's metadata, in
its ``LocalStore``), through a temporary file and a rename, as zarr's store writes
them: a chunk file is whole or absent. Two threads encode and write a batch.

The tables' numeric columns (1-D, chunks of many rows, zstd) go the same way. A flush
rewrites each column's last chunk: through zarr that is a read back, a decode, a merge
and an encode in zarr's event loop for each of a session's fifty columns, once a second,
holding the GIL by turns; the writer (:class:`~.writer.ArchiveWriter`) keeps each
column's last chunk in memory and writes it whole instead.

Everything else (creating and resizing arrays, metadata, reading) stays zarr's. An
array this cannot write byte for byte as zarr would (another store, other codecs, a
string column, a big-endian machine) gets no :class:`ChunkFiles` (:func:`chunk_files`
returns None), and the writer uses zarr's setitem.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
import zarr.codecs
from zarr.storage import LocalStore

__all__ = ["ChunkFiles", "chunk_files", "write_chunks"]

_THREADS = 2
"""Threads encoding and writing a batch of frames (blosc and file writes release the
GIL); the worker's machine is assumed to have at least two cores for them."""
_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
            "bitshuffle": numcodecs.Blosc.BITSHUFFLE}

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="lithoscope-chunks")
        return _pool


class ChunkFiles:
    """Writes chunks of one array as files (see the module)."""

    def __init__(self, array: zarr.Array[Any], root: Path,
                 encode: Callable[[np.ndarray], bytes]) -> None:
        self._array = array
        self._folder = root / array.path if array.path else root
        self._encode = encode
        self._zeros = (0,) * (len(array.chunks) - 1)
        self._made: set[Path] = set()
        """Folders made already (a table's chunks share one: no mkdir per write)."""

    def _key(self, coords: tuple[int, ...]) -> Path:
        return self._folder / self._array.metadata.encode_chunk_key(coords)

    def _put(self, coords: tuple[int, ...], chunk: np.ndarray) -> None:
        data = self._encode(np.ascontiguousarray(chunk))
        path = self._key(coords)
        if path.parent not in self._made:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(path.parent)
        temporary = path.with_name(f".{path.name}.{threading.get_ident()}.partial")
        try:
            with open(temporary, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def write(self, frames: Sequence[tuple[int, np.ndarray]]) -> None:
        """Write each ``(position, image)`` as its chunk, all or raise the first error
        (``OSError`` for the disk's). The caller (:meth:`ArchiveWriter.append_frames`)
        has checked each image's shape and dtype against the array's and grown the
        array over the positions."""
        write_chunks([(self, self.coords(position), image) for position, image in frames])

    def coords(self, position: int) -> tuple[int, ...]:
        """The chunk coordinates of the whole image at ``position`` along the first axis."""
        return (position, *self._zeros)


def write_chunks(chunks: Sequence[tuple[ChunkFiles, tuple[int, ...], np.ndarray]]) -> None:
    """Write chunks of any arrays, each ``(its array's ChunkFiles, chunk coordinates,
    whole chunk)``, all or raise the first error; more than one go to the two threads
    (a flush of the tables writes a chunk of each of fifty columns, and a file written
    and renamed costs more in system calls than in encoding)."""
    if len(chunks) == 1:
        files, coords, chunk = chunks[0]
        files._put(coords, chunk)
        return
    futures = [_threads().submit(files._put, coords, chunk) for files, coords, chunk in chunks]
    errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error


def chunk_files(array: zarr.Array[Any]) -> ChunkFiles | None:
    """A :class:`ChunkFiles` for ``array`` if its chunks are whole frames (or, 1-D, rows
    of a table) in a local store, stored with the bytes codec (little-endian) and at
    most one compressor, blosc or zstd; else None (write through zarr)."""
    store = array.store
    if not isinstance(store, LocalStore) or sys.byteorder != "little":
        return None
    if array.ndim > 1 and (array.chunks[0] != 1
                           or tuple(array.chunks[1:]) != tuple(array.shape[1:])):
        return None
    codecs = array.metadata.codecs  # type: ignore[union-attr]
    if not codecs or not isinstance(codecs[0], zarr.codecs.BytesCodec):
        return None
    endian = codecs[0].endian
    if endian is not None and endian.value != "little":
        return None
    rest = codecs[1:]
    encode: Callable[[np.ndarray], bytes]
    if not rest:
        def encode(image: np.ndarray) -> bytes:
            return image.tobytes()
    elif len(rest) == 1 and isinstance(rest[0], zarr.codecs.BloscCodec):
        blosc = rest[0]
        codec = numcodecs.Blosc(cname=blosc.cname.value, clevel=blosc.clevel,
                                shuffle=_SHUFFLE[blosc.shuffle.value],
                                blocksize=blosc.blocksize)

        def encode(image: np.ndarray) -> bytes:
            return bytes(codec.encode(image))
    elif len(rest) == 1 and isinstance(rest[0], zarr.codecs.ZstdCodec):
        # zarr's ZstdCodec is numcodecs' Zstd over the chunk's bytes.
        zstd = numcodecs.Zstd(level=rest[0].level, checksum=rest[0].checksum)

        def encode(image: np.ndarray) -> bytes:
            return bytes(zstd.encode(image.tobytes()))
    else:
        return None
    return ChunkFiles(array, Path(store.root), encode)
