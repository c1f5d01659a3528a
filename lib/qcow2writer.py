"""Writing a qcow2 (version 3, compat=1.1) from a raw disk as a stream.

qemu-img writes qcow2 into a file of its own and seeks back to fill its
tables, so an OVA member or a gzip stream needed a temporary copy.  Here
the layout is decided before any data is read, from where the file system
says the data is (SEEK_DATA, :mod:`sparse`): every 64 KiB cluster that
holds data gets the next data cluster of the image, in order.  Then
header, L1 table, refcount table and blocks, L2 tables and data clusters
are written front to back, each once, and the digest is taken by the sink
in the same pass.  Zeros inside data extents are written (as holes, by
sparse sinks) rather than left out: leaving them out would need the data
before the tables.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from . import sparse
from .errors import DiskImageError

__all__ = ["CLUSTER", "write_qcow2", "stored_bound"]

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
L2_ENTRIES = CLUSTER // 8  # one L2 table maps 512 MiB
REFCOUNTS_PER_BLOCK = CLUSTER // 2  # 16-bit refcounts (refcount_order 4)
_COPIED = 1 << 63  # refcount is exactly 1: what qemu-img check expects
_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
_READ = sparse.BUF  # bytes per read (a multiple of CLUSTER)

Sink = Callable[[bytes], object]


def _clusters(n_bytes: int) -> int:
    return -(-n_bytes // CLUSTER)


def _layout(total: int, data: int, l2_tables: int) -> tuple[int, int, int, int]:
    """(L1 clusters, refcount table clusters, refcount blocks, file clusters)."""
    l1 = _clusters(-(-total // L2_ENTRIES) * 8)
    blocks = 1
    while True:
        table = _clusters(blocks * 8)
        clusters = 1 + l1 + table + blocks + l2_tables + data
        need = -(-clusters // REFCOUNTS_PER_BLOCK)
        if need <= blocks:
            return l1, table, blocks, clusters
        blocks = need


def stored_bound(size: int) -> int:
    """Upper bound of the image's size for a disk of ``size`` bytes."""
    total = _clusters(size)
    l2 = -(-total // L2_ENTRIES)
    return _layout(total, total, l2)[3] * CLUSTER


def _runs(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(first cluster, count) of each run of data clusters, in order."""
    start = count = 0
    for off in sparse.data_windows(fd, size, CLUSTER):
        c = off // CLUSTER
        if count and c == start + count:
            count += 1
            continue
        if count:
            yield start, count
        start, count = c, 1
    if count:
        yield start, count


def write_qcow2(fd: int, size: int, write: Sink, *, label: str) -> int:
    """Write the first ``size`` bytes of ``fd`` (raw) as qcow2 through
    ``write``; returns the bytes written.  The virtual size is ``size``
    rounded up to whole sectors, as qemu-img makes it."""
    vsize = -(-size // 512) * 512
    total = _clusters(size)
    data = 0
    tables: set[int] = set()
    for first, count in _runs(fd, size):
        data += count
        tables.update(range(first // L2_ENTRIES, (first + count - 1) // L2_ENTRIES + 1))
    l2_order = sorted(tables)
    l1c, rtc, rbc, fc = _layout(total, data, len(l2_order))
    l1_off = CLUSTER
    rt_off = l1_off + l1c * CLUSTER
    rb_off = rt_off + rtc * CLUSTER
    l2_off = rb_off + rbc * CLUSTER
    data_off = l2_off + len(l2_order) * CLUSTER
    l1_size = -(-total // L2_ENTRIES)

    header = _HEADER.pack(b"QFI\xfb", 3, 0, 0, CLUSTER_BITS, vsize, 0, l1_size, l1_off,
                          rt_off, rtc, 0, 0, 0, 0, 0, 4, _HEADER.size)
    header += bytes(8)  # end of header extensions
    write(header + bytes(CLUSTER - len(header)))
    l1 = [0] * (l1c * CLUSTER // 8)
    for i, t in enumerate(l2_order):
        l1[t] = (l2_off + i * CLUSTER) | _COPIED
    write(struct.pack(f">{len(l1)}Q", *l1))
    rt = [0] * (rtc * CLUSTER // 8)
    for i in range(rbc):
        rt[i] = rb_off + i * CLUSTER
    write(struct.pack(f">{len(rt)}Q", *rt))
    for i in range(rbc):
        n = min(REFCOUNTS_PER_BLOCK, fc - i * REFCOUNTS_PER_BLOCK)
        write(struct.pack(f">{n}H", *([1] * n)) + bytes((REFCOUNTS_PER_BLOCK - n) * 2))
    # L2 tables: the n-th data cluster of the disk is at data_off + n clusters.
    rank = 0
    runs = _runs(fd, size)
    pending = next(runs, None)
    for t in l2_order:
        entries = [0] * L2_ENTRIES
        lo, hi = t * L2_ENTRIES, (t + 1) * L2_ENTRIES
        while pending is not None and pending[0] < hi:
            first, count = pending
            take = min(first + count, hi) - first
            for c in range(first, first + take):
                entries[c - lo] = (data_off + rank * CLUSTER) | _COPIED
                rank += 1
            pending = (first + take, count - take) if take < count else next(runs, None)
        write(struct.pack(f">{L2_ENTRIES}Q", *entries))
    if rank != data:
        raise DiskImageError("changed while being read (its data extents moved)", label)
    # Data clusters, in the same order.
    written = 0
    for first, count in _runs(fd, size):
        pos, end = first * CLUSTER, min((first + count) * CLUSTER, size)
        while pos < end:
            n = min(_READ, end - pos)
            chunk = sparse.read_exact(fd, pos, n, label)
            if n % CLUSTER:
                chunk += bytes(CLUSTER - n % CLUSTER)
            write(chunk)
            written += _clusters(n)
            pos += n
    if written != data:
        raise DiskImageError("changed while being read (its data extents moved)", label)
    return fc * CLUSTER
