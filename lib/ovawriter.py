"""Writing an OVA: one tar file, POSIX ustar headers, members in our order.

Why not ``tarfile``: OVA needs ustar (``tarfile.USTAR_FORMAT``; the default
pax headers confuse some OVA readers), but tarfile's ustar writer refuses a
member of 8 GiB or more ("overflow in number field"), and disks are that
big.  Such sizes are written here in GNU tar's base-256 form (first byte
0x80, then the size in big-endian binary), which GNU tar, libarchive
(bsdtar), Python's tarfile, 7-Zip and VirtualBox's RTZipTar read; every
other field stays plain ustar.  tarfile also wants each member's size
before its data, which a converted or compressed disk does not have, and it
cannot leave room for members filled in later.  So the writer is ours:

* :meth:`OvaWriter.reserve` sets aside a member whose size is known now but
  whose bytes come at the end (the descriptor, manifest and certificate,
  which DSP0243 wants *first* but which describe the disks written after
  them); :meth:`OvaWriter.fill` writes them, padded to the reserved size
  (a manifest is reserved with its exact size: see :mod:`pkgwriter`).
* :meth:`OvaWriter.open_member` streams a member of unknown size; its
  header is patched when it is closed (the file is ours and seekable).
* Runs of zeros in member data are skipped with a seek (:mod:`sparse`), so
  the OVA is as sparse on disk as the data allows; the archive reads the same.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .errors import PackageError
from .sparse import all_zero, pwrite_all, write_error

__all__ = [
    "BLOCK",
    "RECORD",
    "NAME_MAX",
    "USTAR_SIZE_MAX",
    "all_zero",
    "pwrite_all",
    "ustar_header",
    "Reservation",
    "MemberWriter",
    "OvaWriter",
]

BLOCK = 512
RECORD = 20 * BLOCK  # tar's default blocking factor; the archive ends on a record
NAME_MAX = 100  # ustar name field; longer names need a prefix split or pax
USTAR_SIZE_MAX = 8**11 - 1  # 11 octal digits: 8 GiB - 1


def _octal(value: int, width: int) -> bytes:
    """``width``-byte NUL-terminated octal field."""
    return b"%0*o\0" % (width - 1, value)


def _size_field(size: int) -> bytes:
    """12-byte size: octal up to 8 GiB - 1, GNU base-256 beyond."""
    if size < 0:
        raise ValueError(f"negative member size {size}")
    if size <= USTAR_SIZE_MAX:
        return _octal(size, 12)
    if size >= 256**11:
        raise ValueError(f"member size {size} does not fit a tar header")
    return b"\x80" + size.to_bytes(11, "big")


def ustar_header(name: str, size: int, *, mtime: int, mode: int = 0o600) -> bytes:
    """One 512-byte POSIX ustar header for a regular file ``name``.

    ``name`` must be a plain file name of at most 100 bytes (no prefix
    split: our members have no directories).  Owner is 0/0 with empty
    user and group names, so extracting as root gives root's files and
    nothing leaks about the exporting host.
    """
    raw = name.encode("utf-8")
    if not raw or len(raw) > NAME_MAX or "/" in name or "\0" in name:
        raise ValueError(f"member name {name!r} is not a plain ustar name "
                         f"(1..{NAME_MAX} bytes, no '/')")
    hdr = bytearray(BLOCK)
    hdr[0:len(raw)] = raw
    hdr[100:108] = _octal(mode & 0o7777, 8)
    hdr[108:116] = _octal(0, 8)  # uid
    hdr[116:124] = _octal(0, 8)  # gid
    hdr[124:136] = _size_field(size)
    hdr[136:148] = _octal(max(0, mtime), 12)
    hdr[148:156] = b" " * 8  # checksum counts as spaces while summing
    hdr[156:157] = b"0"  # regular file
    hdr[257:263] = b"ustar\0"  # POSIX magic and version "00"
    hdr[263:265] = b"00"
    hdr[329:337] = _octal(0, 8)  # devmajor
    hdr[337:345] = _octal(0, 8)  # devminor
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr)


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


@dataclass(frozen=True, slots=True)
class Reservation:
    """A member whose header is written and whose ``size`` bytes of data
    start at ``offset``, to be filled later."""

    name: str
    offset: int
    size: int


class MemberWriter:
    """Streams one member's data; the header is patched on :meth:`close`."""

    def __init__(self, ova: OvaWriter, name: str, header_offset: int) -> None:
        self._ova = ova
        self.name = name
        self._header_offset = header_offset
        self._start = header_offset + BLOCK
        self.size = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data`` (zero runs become holes); returns its length."""
        if self.closed:
            raise ValueError(f"member {self.name!r} is closed")
        n = len(data)
        if not all_zero(data):  # else a hole: never written, reads as zeros
            self._ova._pwrite(data, self._start + self.size)
        self.size += n
        return n

    def close(self) -> int:
        """Patch the header with the final size; returns the size."""
        if not self.closed:
            self.closed = True
            self._ova._pwrite(ustar_header(self.name, self.size, mtime=self._ova.mtime),
                              self._header_offset)
            self._ova._end_member(self._start + _padded(self.size))
        return self.size


class OvaWriter:
    """An OVA being written into the (new, empty) file ``path``.

    Members appear in the order they are reserved or opened; one streamed
    member at a time.  :meth:`close` writes the end-of-archive blocks.
    ``mtime`` is stamped on every member.
    """

    def __init__(self, path: str, *, mtime: int | None = None) -> None:
        self.path = path
        self.mtime = int(time.time()) if mtime is None else mtime
        self._names: set[str] = set()
        self._pos = 0  # where the next header goes
        self._open: MemberWriter | None = None
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        except OSError as e:
            raise PackageError(f"cannot write: {e.strerror}", path) from e

    # -- low level ---------------------------------------------------------

    def _pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        pwrite_all(self._fd, data, offset, self.path)

    def _new_member(self, name: str) -> int:
        if self._open is not None and not self._open.closed:
            raise ValueError(f"member {self._open.name!r} is still open")
        if name in self._names:
            raise ValueError(f"member {name!r} would appear twice")
        ustar_header(name, 0, mtime=self.mtime)  # validates the name early
        self._names.add(name)
        return self._pos

    def _end_member(self, end: int) -> None:
        self._pos = end

    # -- members -----------------------------------------------------------

    def reserve(self, name: str, size: int) -> Reservation:
        """A member of exactly ``size`` bytes, filled later by :meth:`fill`."""
        offset = self._new_member(name)
        self._pwrite(ustar_header(name, size, mtime=self.mtime), offset)
        self._pos = offset + BLOCK + _padded(size)
        return Reservation(name, offset + BLOCK, size)

    def fill(self, res: Reservation, data: bytes, *, pad: bytes = b" ") -> None:
        """Write a reserved member's bytes, padded with ``pad`` to its size.

        Raises ValueError if ``data`` is larger than the reservation (a bug:
        reservations are upper bounds).
        """
        if len(data) > res.size:
            raise ValueError(f"member {res.name!r}: {len(data)} bytes do not fit the "
                             f"{res.size} reserved")
        self._pwrite(data + pad * (res.size - len(data)), res.offset)

    def add(self, name: str, data: bytes) -> None:
        """A member whose bytes are known now."""
        res = self.reserve(name, len(data))
        self.fill(res, data)

    def open_member(self, name: str) -> MemberWriter:
        """A streamed member; write to it, then close it before the next one."""
        offset = self._new_member(name)
        self._open = MemberWriter(self, name, offset)
        self._pos = offset + BLOCK  # provisional, fixed by close()
        return self._open

    def close(self) -> int:
        """End the archive (two zero blocks, padded to a full record),
        flush it to disk and return its length."""
        if self._open is not None and not self._open.closed:
            raise ValueError(f"member {self._open.name!r} is still open")
        end = -(-(self._pos + 2 * BLOCK) // RECORD) * RECORD
        try:
            os.ftruncate(self._fd, end)  # the end blocks are zeros: holes
            os.fsync(self._fd)
        except OSError as e:
            raise write_error(e, self.path) from e
        finally:
            os.close(self._fd)
            self._fd = -1
        return end

    def abort(self) -> None:
        """Close the file without finishing the archive (the caller removes it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
