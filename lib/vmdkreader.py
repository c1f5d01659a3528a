"""Compressed sparse VMDKs (streamOptimized): read by us, not by qemu-img.

Why: qemu's vmdk driver answers block status one grain at a time, so
``qemu-img map`` and ``convert`` work in proportion to the *declared*
capacity, not to the file.  A streamOptimized image leaves out the grain
tables of empty space (VMware, open-vmdk and our own writer all do), so
2 MiB can honestly declare 8 TiB -- and ``qemu-img map`` 7.2 then takes
33 s of CPU on it, minutes at 64 TiB.  Here the grain directory and tables
are read directly and only allocated grains are inflated into the raw dump:
time and memory follow the file's bytes, whatever it declares.  qemu-img
still opens the image first (``info``: descriptor, extents, parent), so
what it would refuse stays refused.

We read what qemu reads (block/vmdk.c): the footer's header when the
first one says GD_AT_END; compressed meaning compressAlgorithm 1 (not the
flags); a grain table entry of 1 a zeroed grain when the zeroed-grain
flag is set; a grain as one zlib stream, its length the marker's when the
header says there are markers.  Stricter than qemu, so no grain is
inflated twice and no two readers can see different disks:

* grain tables and grains lie inside the file; each grain table starts
  after the previous one ends, each grain after the previous grain (in
  disk order) ends: the order a stream is written in, by every producer;
* a grain marker's LBA is the grain's own (a reader that trusts markers,
  as sequential ones do, would put it elsewhere);
* a grain inflates to exactly its size (the last one at least to the
  capacity), and the file is whole 512-byte sectors;
* grains are 8 to 128 sectors and grain tables 512 entries (every
  producer writes 128 and 512), and every stored grain takes a sector of
  its own, so what is inflated is at most 128 times the file's bytes.
"""

from __future__ import annotations

import functools
import itertools
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import sparse
from .errors import DiskImageError
from .model import ByteRange
from .ordered import run_ordered
from .staging import no_space

__all__ = ["Header", "Layout", "read_header", "check_header", "scan", "convert",
           "MIN_GRAIN_SECTORS", "MAX_GRAIN_SECTORS"]

SECTOR = 512
GD_AT_END = 0xFFFFFFFFFFFFFFFF
DEFLATE = 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_MARKER = 1 << 17
#: The VMDK spec: "grainSize must be a power of 2 and must be greater than
#: 8 (4 KB)"; every tool writes 128.
MIN_GRAIN_SECTORS = 8
#: Compressed grains are at most this (what every producer writes): each
#: stored grain takes at least a sector of the file, so what is inflated
#: stays within 128 times the file's bytes.
MAX_GRAIN_SECTORS = 128
MAX_GTES = 512  # qemu: "L2 table size too big" above
_GTE_ZEROED = 1
# magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize,
# numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown, newline
# characters, compressAlgorithm: the first 77 bytes of a sector.
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
_MARKER = struct.Struct("<QII")  # value, size, type
_GRAIN_MARKER = struct.Struct("<QI")  # LBA, compressed size
_FOOTER, _EOS = 3, 0
_GD_CHUNK = 16384  # grain directory entries read at a time (64 KiB)
_WINDOW = 1 << 20  # bytes of the file read at a time while converting
_BLOCK = 4096  # zero blocks of this size stay holes, as qemu-img's -S 4k


@dataclass(frozen=True, slots=True)
class Header:
    """The sparse extent header qemu uses (the footer's, if at the end)."""

    version: int
    flags: int
    capacity: int  # sectors
    grain: int  # sectors
    gtes: int  # entries per grain table
    gd_offset: int  # sector
    overhead: int  # sectors
    compress: int
    footer: bool  # read from the footer

    @property
    def compressed(self) -> bool:
        return self.compress == DEFLATE

    @property
    def tables(self) -> int:
        """Grain directory entries: one per ``gtes`` grains of the capacity."""
        return -(-self.capacity // (self.grain * self.gtes)) if self.grain * self.gtes else 0

    @property
    def grains(self) -> int:
        return -(-self.capacity // self.grain) if self.grain else 0


@dataclass(frozen=True, slots=True)
class Layout:
    """A compressed VMDK's checked layout, and the space its dump needs."""

    header: Header
    size: int  # bytes of the image file
    grains: int  # allocated (stored) grains
    data_bytes: int  # bytes of disk those grains cover

    @property
    def virtual_size(self) -> int:
        return self.header.capacity * SECTOR


class _Image:
    """The image's bytes through one descriptor: preads inside the range."""

    def __init__(self, src: ByteRange, name: str) -> None:
        self.src, self.name, self.size = src, name, src.size
        try:
            self.fd = os.open(src.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise DiskImageError(f"cannot read image: {e.strerror or e}", name) from e

    def read(self, start: int, length: int) -> bytes:
        length = max(0, min(length, self.size - start))
        try:
            return sparse.read_exact(self.fd, self.src.offset + start, length, self.name)
        except OSError as e:
            raise DiskImageError(f"cannot read image: {e.strerror or e}", self.name) from e

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> _Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(raw: bytes, footer: bool) -> Header:
    (_, version, flags, capacity, grain, _, _, gtes, _, gd_offset, overhead, _, _,
     compress) = _HEADER.unpack_from(raw.ljust(_HEADER.size, b"\0"))
    return Header(version, flags, capacity, grain, gtes, gd_offset, overhead, compress, footer)


def _read(src: ByteRange, start: int, length: int, name: str) -> bytes:
    try:
        return src.read(start, length)
    except OSError as e:
        raise DiskImageError(f"cannot read image: {e.strerror or e}", name) from e


def read_header(src: ByteRange, *, name: str) -> Header | None:
    """The header qemu opens the image with; None when it is no sparse VMDK.

    With ``gdOffset`` GD_AT_END, qemu takes the footer's header, which it
    finds 1536 bytes before the end (footer marker, header, end-of-stream
    marker) and rejects unless both markers are what they should be.
    """
    head = _read(src, 0, SECTOR, name)
    if not head.startswith(b"KDMV"):
        return None
    first = _parse(head, False)
    if first.gd_offset != GD_AT_END:
        return first
    if src.size % SECTOR:
        raise DiskImageError(f"VMDK with its grain directory at the end is {src.size} bytes, "
                             "not whole 512-byte sectors", name)
    if src.size < 4 * SECTOR:
        raise DiskImageError("VMDK says its grain directory is at the end, but has no footer",
                             name)
    tail = _read(src, src.size - 3 * SECTOR, 3 * SECTOR, name)
    _, msize, mtype = _MARKER.unpack_from(tail, 0)
    eval_, esize, etype = _MARKER.unpack_from(tail, 2 * SECTOR)
    if (tail[SECTOR:SECTOR + 4] != b"KDMV" or msize != 0 or mtype != _FOOTER
            or eval_ != 0 or esize != 0 or etype != _EOS):
        raise DiskImageError("VMDK footer is invalid (no footer and end-of-stream markers "
                             "where its header says the grain directory is at the end)", name)
    return _parse(tail[SECTOR:2 * SECTOR], True)


def _check_grains(h: Header, size: int, name: str) -> None:
    """Grain size and directory: what every sparse header must get right."""
    if h.grain < MIN_GRAIN_SECTORS or h.grain & (h.grain - 1):
        raise DiskImageError(f"VMDK grain size of {h.grain} sectors is not a power of 2 of at "
                             f"least {MIN_GRAIN_SECTORS}; not accepted", name)
    if not 1 <= h.gtes <= MAX_GTES:
        raise DiskImageError(f"VMDK header has {h.gtes} entries per grain table (1 to "
                             f"{MAX_GTES} are valid)", name)
    gd_end = h.gd_offset * SECTOR + h.tables * 4
    if gd_end > size:
        raise DiskImageError(
            f"VMDK grain directory for {h.capacity} sectors ends at byte {gd_end}, beyond the "
            f"end of the image ({size} bytes): the header claims more than the file holds",
            name)


def check_header(src: ByteRange, *, name: str) -> Header | None:
    """Refuse a sparse VMDK header whose metadata cannot be in the file,
    before qemu-img opens it; returns the header (None: no sparse VMDK).

    Grains must be as large as the spec says (smaller ones multiply every
    reader's work) and the grain directory must lie inside the image.  A
    hosted sparse extent holds every grain table from its creation (VMware
    and qemu-img preallocate them: an empty 8 GiB one is ~1 MiB), so a file
    too small for them claims a capacity it has no metadata for, and would
    make qemu-img walk it grain by grain.  A compressed one may leave
    tables out; it is read here (:func:`scan`), within tighter bounds.
    """
    h = read_header(src, name=name)
    if h is None:
        return None
    if h.compressed and h.gtes != MAX_GTES:  # smaller tables multiply the reads
        raise DiskImageError(f"compressed VMDK has {h.gtes} entries per grain table; only "
                             f"{MAX_GTES}, what every producer writes, is accepted", name)
    _check_grains(h, src.size, name)
    if h.compressed:
        if h.version > 3:
            raise DiskImageError(f"VMDK version {h.version} is not supported", name)
        if h.grain > MAX_GRAIN_SECTORS:
            raise DiskImageError(f"compressed VMDK grain size of {h.grain} sectors is more "
                                 f"than {MAX_GRAIN_SECTORS}; not accepted", name)
        if h.capacity == 0 or h.overhead * SECTOR > src.size:
            raise DiskImageError(f"VMDK is truncated or empty: capacity {h.capacity} "
                                 f"sectors, grains from sector {h.overhead}, "
                                 f"{src.size} bytes", name)
    elif h.tables * h.gtes * 4 > src.size:
        raise DiskImageError(
            f"VMDK header claims {h.capacity} sectors, whose grain tables alone take "
            f"{h.tables * h.gtes * 4} bytes, more than the image holds ({src.size} bytes)",
            name)
    return h


def _tables(img: _Image, h: Header) -> Iterator[tuple[int, bytes]]:
    """(first grain index, entries) of each grain table present, in order."""
    gd, table_bytes = h.gd_offset * SECTOR, h.gtes * 4
    end = 0
    for base in range(0, h.tables, _GD_CHUNK):
        count = min(_GD_CHUNK, h.tables - base)
        raw = img.read(gd + base * 4, count * 4)
        if raw.count(0) == len(raw):
            continue
        entries = struct.unpack(f"<{count}I", raw)
        for i in itertools.compress(range(count), entries):
            start = entries[i] * SECTOR
            if start < end or start + table_bytes > img.size:
                where = "before the end of the previous one" if start < end else \
                    f"beyond the end of the image ({img.size} bytes)"
                raise DiskImageError(f"VMDK grain table {base + i} at sector {entries[i]} "
                                     f"starts {where}", img.name)
            end = start + table_bytes
            yield (base + i) * h.gtes, img.read(start, table_bytes)


def _grains(img: _Image, h: Header) -> Iterator[tuple[int, int]]:
    """(grain index, byte offset of its record) of every stored grain, in
    disk order; zeroed grains and entries past the capacity are left out."""
    zero_grain = bool(h.flags & FLAG_ZERO_GRAIN)
    last = 0
    for first, raw in _tables(img, h):
        if raw.count(0) == len(raw):
            continue
        entries = struct.unpack(f"<{h.gtes}I", raw)
        for i in itertools.compress(range(h.gtes), entries):
            index, sector = first + i, entries[i]
            if index >= h.grains:
                break  # the last table's tail: beyond the capacity, never read
            if sector == _GTE_ZEROED and zero_grain:
                continue
            if sector <= last or sector * SECTOR >= img.size:
                where = f"beyond the end of the image ({img.size} bytes)" \
                    if sector > last else f"not after the previous grain (sector {last}): " \
                    "grains must be stored once, in disk order"
                raise DiskImageError(f"VMDK grain {index} at sector {sector} is {where}",
                                     img.name)
            last = sector
            yield index, sector * SECTOR


def scan(src: ByteRange, *, name: str) -> Layout:
    """Check a compressed VMDK's header, grain directory and tables, and
    count its grains -- what ``qemu-img check`` and ``map`` would tell,
    in time bounded by the file's size."""
    h = check_header(src, name=name)
    if h is None or not h.compressed:
        raise DiskImageError("not a compressed sparse VMDK", name)
    grain_bytes, capacity = h.grain * SECTOR, h.capacity * SECTOR
    stored = covered = 0
    with _Image(src, name) as img:
        for rec in _records(img, h, payload=False):
            stored += 1
            covered += min(grain_bytes, capacity - rec.index * grain_bytes)
    return Layout(h, src.size, stored, covered)


# --- conversion -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    index: int
    start: int  # byte offset in the image
    payload: bytes  # the zlib stream (and, without markers, what follows)


def _window(img: _Image, buf: bytes, at: int, start: int,
            length: int) -> tuple[bytes, int]:
    """A window of the image holding ``[start, start + length)``."""
    if start < at or start + length > at + len(buf):
        buf, at = img.read(start, max(_WINDOW, length)), start
        if len(buf) < length:
            raise DiskImageError(f"VMDK grain at sector {start // SECTOR} runs past the end "
                                 f"of the image ({img.size} bytes)", img.name)
    return buf, at


def _records(img: _Image, h: Header, payload: bool = True) -> Iterator[_Record]:
    """Each stored grain's zlib stream, reading the file forward in windows;
    with ``payload`` False only the markers are read (for :func:`scan`)."""
    grain_bytes = h.grain * SECTOR
    marker = _GRAIN_MARKER.size if h.flags & FLAG_MARKER else 0
    buf, at = b"", 0  # buf holds the image's bytes [at, at + len(buf))
    end = 0  # where the previous marker says its grain ends
    for index, start in _grains(img, h):
        where = f"VMDK grain {index} at sector {start // SECTOR}"
        length = min(grain_bytes, img.size - start)  # qemu's input without markers
        if marker:
            if start < end:  # a reader that follows markers would skip this grain
                raise DiskImageError(f"{where} lies inside the previous grain's compressed "
                                     "data", img.name)
            if payload:
                buf, at = _window(img, buf, at, start, marker)
                head = buf[start - at:start - at + marker]
            else:
                head = img.read(start, marker)
            if len(head) < marker:
                raise DiskImageError(f"{where} has no room for its marker", img.name)
            lba, size = _GRAIN_MARKER.unpack(head)
            if lba != index * h.grain:
                raise DiskImageError(f"VMDK grain marker at sector {start // SECTOR} says LBA "
                                     f"{lba}, but the grain table puts it at "
                                     f"{index * h.grain}", img.name)
            length = marker + size
            end = start + length
            # qemu reads two grains from the marker on: the stream must lie in them.
            if not 0 < size <= 2 * grain_bytes - marker or end > img.size:
                raise DiskImageError(f"{where} claims {size} compressed bytes, more than a "
                                     f"grain of {grain_bytes} or the image can hold", img.name)
        if payload:
            buf, at = _window(img, buf, at, start, length)
            yield _Record(index, start, buf[start - at + marker:start - at + length])
        else:
            yield _Record(index, start, b"")


def _inflate(rec: _Record, want: int, grain_bytes: int, name: str) -> tuple[bytes, int]:
    """The grain's bytes, and how many bytes of the payload its stream took."""
    where = f"VMDK grain {rec.index} at sector {rec.start // SECTOR}"
    d = zlib.decompressobj()
    try:
        out = d.decompress(rec.payload, grain_bytes)
        if not d.eof and d.decompress(d.unconsumed_tail, 1):
            raise DiskImageError(f"{where} inflates to more than its {grain_bytes} bytes", name)
    except zlib.error as e:
        raise DiskImageError(f"{where} does not inflate: {e}", name) from e
    if not d.eof:
        raise DiskImageError(f"{where} is truncated (its deflate stream does not end)", name)
    if len(out) < want:
        raise DiskImageError(f"{where} inflates to {len(out)} bytes, not its {want}", name)
    return out, len(rec.payload) - len(d.unused_data)


def _write(fd: int, pos: int, data: bytes, dest: str) -> None:
    """Write ``data`` at ``pos`` leaving its zero blocks as holes."""
    if data == sparse.zeros(len(data)):
        return
    view, zero = memoryview(data), sparse.zeros(_BLOCK)
    run = -1
    try:
        for off in range(0, len(data) + _BLOCK, _BLOCK):
            block = view[off:off + _BLOCK]
            if block and block != zero[:len(block)]:
                run = off if run < 0 else run
            elif run >= 0:
                os.pwrite(fd, view[run:off], pos + run)
                run = -1
    except OSError as e:
        raise no_space(e, dest, DiskImageError) or DiskImageError(
            f"cannot write: {e.strerror or e}", dest) from e


def _convert_batch(fd: int, batch: list[_Record], h: Header, dest: str,
                   name: str) -> list[tuple[int, int]]:
    grain_bytes, capacity = h.grain * SECTOR, h.capacity * SECTOR
    marker = _GRAIN_MARKER.size if h.flags & FLAG_MARKER else 0
    spans = []
    for rec in batch:
        pos = rec.index * grain_bytes
        want = min(grain_bytes, capacity - pos)
        data, used = _inflate(rec, want, grain_bytes, name)
        _write(fd, pos, data[:want], dest)
        spans.append((rec.start, rec.start + marker + used))
    return spans


def convert(src: ByteRange, layout: Layout, dest: str, *, name: str,
            workers: int | None = None) -> None:
    """Write the disk of a scanned compressed VMDK to new sparse raw ``dest``.

    The file is read forward once; grains are inflated and written by a pool
    of threads (zlib and pwrite release the GIL), a bounded number of
    windows ahead, so memory stays flat; zero blocks stay holes.
    """
    h = layout.header
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise DiskImageError(f"cannot create: {e.strerror or e}", dest) from e
    end = 0

    def take(spans: list[tuple[int, int]]) -> None:
        nonlocal end
        for start, stop in spans:
            if start < end:  # without markers: where the previous stream ended
                raise DiskImageError(f"VMDK grain at sector {start // SECTOR} lies "
                                     "inside the previous grain's compressed data", name)
            end = stop

    def jobs(img: _Image) -> Iterator[Callable[[], list[tuple[int, int]]]]:
        batch: list[_Record] = []
        size = 0
        for rec in _records(img, h):
            batch.append(rec)
            size += len(rec.payload)
            if size >= _WINDOW:
                yield functools.partial(_convert_batch, out, batch, h, dest, name)
                batch, size = [], 0
        if batch:
            yield functools.partial(_convert_batch, out, batch, h, dest, name)

    try:
        os.ftruncate(out, layout.virtual_size)
        with _Image(src, name) as img:
            run_ordered(jobs(img), take, workers=workers, name="vmdk-in")
        # No fsync, as qemu-img convert (cache=unsafe): the dump is staging
        # that Ganeti reads next, and a crash discards it anyway.
    except BaseException as e:
        os.unlink(dest)  # ours (O_EXCL): a partial disk is no disk
        if isinstance(e, OSError):
            raise no_space(e, dest, DiskImageError) or DiskImageError(
                f"cannot write: {e.strerror or e}", dest) from e
        raise
    finally:
        os.close(out)
