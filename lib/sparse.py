"""Sparse I/O: the one place that knows about holes, for import and export.

Disks are mostly holes (a fresh 20 GiB Ganeti disk holds a few GiB of
data), so every reader here asks the file system where data is
(``SEEK_DATA``/``SEEK_HOLE``) and reads only that, and every writer turns
runs of zeros into holes instead of writing them.  Where holes cannot be
asked about (block devices, old file systems), everything counts as data:
slower, never wrong.

* :func:`data_windows` -- the aligned windows of a file that hold data:
  what the VMDK and qcow2 encoders read, one grain-aligned window at a time.
* :func:`blocks` -- every byte in order, holes as shared zero buffers that
  are never read: what the raw and gzip encoders and the digests consume.
* :func:`allocated` -- bytes of data in a range, for free-space estimates.
* :func:`all_zero`, :func:`pwrite_all`, :class:`SparseFile` -- the write
  side: a zero run of 4 KiB or more is a seek, never a write.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from .errors import DiskImageError, PackageError
from .staging import no_space

__all__ = [
    "BUF",
    "ZERO_MIN",
    "open_source",
    "data_extents",
    "data_windows",
    "read_exact",
    "blocks",
    "allocated",
    "all_zero",
    "zeros",
    "pwrite_all",
    "write_error",
    "SparseFile",
]

BUF = 1 << 20  # read size; a multiple of every grain and cluster we write
ZERO_MIN = 4096  # zero runs at least this long become holes


# ------------------------------------------------------------------ reading

def open_source(path: str, size: int, label: str) -> int:
    """A read-only descriptor of ``path`` holding at least ``size`` bytes.

    A file or device *larger* than ``size`` is read only up to it (a
    logical volume is rounded up to its extent size); a smaller one is an
    error naming both sizes.
    """
    try:
        # No O_NOFOLLOW: an instance's disk is a link (/dev/VG/LV); dumps
        # of an export directory were checked not to be links.
        # O_NONBLOCK: a FIFO in its place must not hang us (refused below).
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise DiskImageError(f"cannot read: {e.strerror}", label) from e
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            os.close(fd)
            raise DiskImageError("is neither a regular file nor a block device", label)
        os.set_blocking(fd, True)
        have = byte_size(fd)
    except OSError as e:
        os.close(fd)
        raise DiskImageError(f"cannot read: {e.strerror}", label) from e
    if have < size:
        os.close(fd)
        raise DiskImageError(f"is {have} bytes, smaller than the disk size {size}", label)
    return fd


def byte_size(fd: int) -> int:
    """Size of an open regular file or block device (whose st_size is 0)."""
    st = os.fstat(fd)
    return st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)


def _seek(fd: int, pos: int, whence: int, end: int) -> int:
    try:
        return os.lseek(fd, pos, whence)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data (SEEK_DATA) at or after pos
            return end
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support: all data
            return pos if whence == os.SEEK_DATA else end
        raise


def data_extents(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each data extent of ``[start, end)``, in order."""
    pos = start
    while pos < end:
        data = min(_seek(fd, pos, os.SEEK_DATA, end), end)
        if data >= end:
            return
        hole = min(max(_seek(fd, data, os.SEEK_HOLE, end), data + 1), end)
        yield data, hole - data
        pos = hole


def data_windows(fd: int, size: int, window: int = BUF) -> Iterator[int]:
    """Offsets of the ``window``-aligned windows of ``[0, size)`` that hold
    any data, in order (each once)."""
    last = -1
    for off, length in data_extents(fd, 0, size):
        first = max(off // window, last + 1)
        stop = (off + length - 1) // window
        for w in range(first, stop + 1):
            yield w * window
        last = max(last, stop)


def read_exact(fd: int, offset: int, length: int, label: str) -> bytes:
    """``length`` bytes at ``offset``; a short read means the file shrank."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise DiskImageError(f"ended at {offset + len(data)} bytes while being read",
                                 label)
        data += more
    return data


def blocks(fd: int, size: int, label: str, *, start: int = 0,
           bufsize: int = BUF) -> Iterator[bytes]:
    """The bytes of ``[start, start+size)`` in order, in blocks of up to
    ``bufsize``; holes come as shared zero buffers and are never read."""
    end = start + size
    pos = start
    try:
        for off, length in data_extents(fd, start, end):
            while pos < off:
                n = min(bufsize, off - pos)
                yield zeros(n)
                pos += n
            stop = off + length
            while pos < stop:
                n = min(bufsize, stop - pos)
                yield read_exact(fd, pos, n, label)
                pos += n
        while pos < end:
            n = min(bufsize, end - pos)
            yield zeros(n)
            pos += n
    except OSError as e:
        raise DiskImageError(f"cannot read: {e.strerror}", label) from e


def allocated(path: str, offset: int = 0, length: int | None = None) -> int:
    """Bytes of data (not holes) in ``[offset, offset+length)`` of ``path``;
    the whole length when holes cannot be told apart or the file cannot be
    opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return length or 0
    try:
        end = byte_size(fd) if length is None else offset + length
        return sum(n for _, n in data_extents(fd, offset, end))
    except OSError:
        return end - offset
    finally:
        os.close(fd)


# ------------------------------------------------------------------ writing

_ZERO_CACHE: dict[int, bytes] = {}


def zeros(n: int) -> bytes:
    """``n`` zero bytes, shared for the common sizes."""
    z = _ZERO_CACHE.get(n)
    if z is None:
        z = bytes(n)
        if len(_ZERO_CACHE) < 16:
            _ZERO_CACHE[n] = z
    return z


def all_zero(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` is at least 4 KiB of zeros: worth a hole, not a write."""
    n = len(data)
    if n < ZERO_MIN:
        return False
    view = memoryview(data).cast("B")
    # A sparse sample first, so data is rejected without a full compare;
    # then compare as bytes (memcmp): memoryview == bytes goes item by item.
    if any(view[:: ZERO_MIN // 8]):
        return False
    raw = data if isinstance(data, bytes) else view.tobytes()
    return raw == zeros(n)


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int, path: str) -> None:
    """Write all of ``data`` at ``offset`` (pwrite may write less)."""
    view = memoryview(data).cast("B")
    try:
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n
    except OSError as e:
        raise write_error(e, path) from e


def write_error(e: OSError, path: str) -> PackageError:
    """The one line for a failed write of ``path``: a full file system is
    named by its mount point."""
    full = no_space(e, path, PackageError)
    return full if isinstance(full, PackageError) else \
        PackageError(f"cannot write: {e.strerror}", path)


class SparseFile:
    """A new file written sequentially; zero runs become holes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise no_space(e, path, PackageError) or \
                PackageError(f"cannot create: {e.strerror}", path) from e

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        if not all_zero(data):
            pwrite_all(self._fd, data, self.size, self.path)
        self.size += n
        return n

    def close(self) -> int:
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, self.size)
                os.fsync(self._fd)
            except OSError as e:
                raise write_error(e, self.path) from e
            finally:
                os.close(self._fd)
                self._fd = -1
        return self.size

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
