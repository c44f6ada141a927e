"""The tar subset of our shards: ustar headers, short ASCII member names, regular files.

WebDataset's ``TarWriter`` wrote our shards through ``tarfile``, and ``tarfile`` read them, at
about 55 us a member header in Python; a mask sample has 17 members, so most of a small run's
shard writing and reading went to tar headers. :class:`UstarWriter` writes the same bytes as
``TarWriter(f, encoder=False, mtime=0, user=..., group=...)`` (held to it in the tests), and
:func:`read_members` reads them back (``make bench``'s data section times both against the
library's: 3.6x faster writing and 5.6x reading a real mask shard, on 2 CPU cores). Anything
outside the subset (a long or non-ASCII name, a link, a pax or GNU header) is refused, never
written or misread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import BinaryIO

BLOCK = 512
RECORD = 20 * BLOCK  # tarfile pads a closed archive to a whole record
END_BLOCK = bytes(BLOCK)
MODE = 0o444
MAX_SIZE = 8**11 - 1  # the largest size 11 octal digits hold (8 GiB - 1)


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def member_header(name: str, size: int, user: str, group: str) -> bytes:
    """The 512-byte ustar header ``tarfile`` writes for a regular file of ``size`` bytes with
    mode 0444, uid and gid 0, mtime 0. ValueError for a name that is not ASCII or is over 100
    bytes (tarfile would add a pax header), or a size over 11 octal digits."""
    if not name.isascii() or len(name) > 100:
        raise ValueError(f"tar member name {name!r}: not an ASCII name of at most 100 bytes")
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"tar member {name!r}: size {size} does not fit a ustar header")
    head = bytearray(BLOCK)
    head[: len(name)] = name.encode("ascii")
    head[100:108] = _octal(MODE, 8)
    head[108:116] = head[116:124] = _octal(0, 8)  # uid, gid
    head[124:136] = _octal(size, 12)
    head[136:148] = _octal(0, 12)  # mtime
    head[148:156] = b" " * 8  # the checksum counts its own field as spaces
    head[156:157] = b"0"  # a regular file
    head[257:265] = b"ustar\x0000"
    for start, text in ((265, user), (297, group)):
        field = text.encode("ascii")[:32]
        head[start : start + len(field)] = field
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


class UstarWriter:
    """Writes samples to the open binary file ``f`` as ``TarWriter`` does: a sample's members
    ``<key>.<ext>`` in sorted ``ext`` order, each data padded to 512 bytes; :meth:`close`
    writes the two end blocks and pads to a whole 10 KiB record (it does not close ``f``)."""

    def __init__(self, f: BinaryIO, user: str = "winft", group: str = "winft"):
        self.f, self.user, self.group = f, user, group
        self.offset = 0

    def write(self, key: str, members: Mapping[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            pad = -len(data) % BLOCK
            self.f.write(member_header(f"{key}.{ext}", len(data), self.user, self.group))
            self.f.write(data)
            if pad:
                self.f.write(bytes(pad))
            self.offset += BLOCK + len(data) + pad

    def close(self) -> None:
        end = 2 * BLOCK
        end += -(self.offset + end) % RECORD
        self.f.write(bytes(end))
        self.offset += end


def read_members(f: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """``(name, data)`` of each regular file of the uncompressed tar stream ``f`` (directories
    are skipped). Raises ``ValueError`` on a bad checksum, a truncated header or member, or any
    other member type (links, pax or GNU headers): our writer makes none."""
    while True:
        head = f.read(BLOCK)
        if not head or head == END_BLOCK:
            return  # tarfile also ends at an empty read or a zero block
        if len(head) < BLOCK:
            raise ValueError(f"truncated header ({len(head)} of {BLOCK} bytes)")
        stored = int(head[148:156].strip(b"\0 ") or b"-1", 8)
        if stored != sum(head[:148]) + 8 * 32 + sum(head[156:]):
            raise ValueError("header checksum mismatch")
        name = head[:100].split(b"\0", 1)[0]
        if head[257:262] == b"ustar" and head[345] != 0:
            name = head[345:500].split(b"\0", 1)[0] + b"/" + name
        kind = head[156:157]
        if head[124] & 0x80:
            raise ValueError(f"member {name!r}: a base-256 size (over 8 GiB)")
        size = int(head[124:136].strip(b"\0 ") or b"0", 8)
        if kind == b"5":
            continue
        if kind not in (b"0", b"\0"):
            raise ValueError(f"member {name!r} of type {kind!r}: not a regular file")
        data = f.read(size)
        if len(data) < size:
            raise ValueError(f"member {name!r} truncated ({len(data)} of {size} bytes)")
        f.seek(-size % BLOCK, os.SEEK_CUR)
        yield name.decode("utf-8", "surrogateescape"), data
