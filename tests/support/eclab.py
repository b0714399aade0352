"""Real BioLogic EC-Lab files (tests/data/eclab, README there) and the same files with
fewer records, as a tailer finds them while EC-Lab is still writing.

An ``.mpr`` is a magic line and a chain of modules (``MODULE``, a header naming the
module and its length, then its bytes): settings, data, and a log at the end. The data
module starts with its record count and column IDs and ends in fixed-size records.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parents[1] / "data" / "eclab"
MB = DATA / "00_test_02_MB_C01.mpr"
"""Modulo Bat, potentiostatic hold at -1.65 V: 11 records of control/V, Ewe/V, I/mA."""
OCV = DATA / "00_test_01_OCV_C01.mpr"
"""Open circuit: 2 records of time/s and Ewe/V, no current column."""
GCPL = DATA / "jdb11_gcpl_C09_first600.mpr"
"""Galvanostatic cycling: no current column; control/V/mA and dq/mA.h (cut, README)."""

_MAGIC_BYTES = 52  # b"BIO-LOGIC MODULAR FILE\x1a" padded to 48 bytes, then 4 zero bytes


@dataclass(frozen=True)
class Module:
    name: bytes
    start: int
    """Offset of its ``MODULE`` tag."""
    length_at: int
    """Offset of its length field (u32)."""
    body: int
    """Offset of its first byte of content."""
    length: int


def modules(data: bytes) -> list[Module]:
    """The modules of an ``.mpr``, in file order."""
    out = []
    pos = _MAGIC_BYTES
    while pos < len(data):
        assert data[pos:pos + 6] == b"MODULE", f"no module at byte {pos}"
        names = pos + 6
        # EC-Lab 11.50 and newer put a "max length" of 0xFFFFFFFF before the length
        # and a further u32 after the version (as galvani's VMPmodule_hdr_v2).
        newer = data[names + 35:names + 39] == b"\xff" * 4
        length_at = names + 35 + (4 if newer else 0)
        (length,) = struct.unpack_from("<I", data, length_at)
        body = names + (59 if newer else 51)
        out.append(Module(data[names:names + 10], pos, length_at, body, length))
        pos = body + length
    return out


def keep_records(data: bytes, count: int, *, log: bool = True) -> bytes:
    """The same ``.mpr`` holding only its first ``count`` records.

    Only the data module's record count and length change; every other byte is the
    file's own. ``log=False`` also drops the log module (the start time), as in a file
    whose log EC-Lab has not written yet.
    """
    from galvani import BioLogic

    record = BioLogic.MPRfile(io.BytesIO(data)).dtype.itemsize
    (block,) = (m for m in modules(data) if m.name == b"VMP data  ")
    (total,) = struct.unpack_from("<I", data, block.body)
    assert count <= total
    header = block.length - total * record
    out = bytearray(data[:block.body + header + count * record])
    struct.pack_into("<I", out, block.length_at, header + count * record)
    struct.pack_into("<I", out, block.body, count)
    end = block.body + block.length
    return bytes(out) + (data[end:] if log else b"")
