"""Package inspection: what ``verify`` and ``import`` both do before anything
is written.

:func:`inspect_package` is that one step: the integrity check
(:func:`ganeti_ovf.packagecheck.check_package`: manifest, certificate,
trust) and every disk's inspection, returned as one typed
:class:`PackageInspection` that the conversion takes as it is.

:func:`inspect_disk` checks one disk of a plan -- the File's size against
References, the stream bound, the format from content against the declared
one, the header's bounds, the virtual size against the disk size, safety
and integrity (:func:`ganeti_ovf.disks.inspect`) -- and returns a typed
:class:`DiskInspection`.  The importer converts from that result (no second
``qemu-img info``/``check``); ``verify`` reports it.  Nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import disks as diskmod
from . import integrity, trust
from .errors import IntegrityError, OvfError, PackageError, UsageError
from .model import ByteRange, Disk, Envelope, FileRef
from .package import Package
from .packagecheck import PackageCheck, check_package

__all__ = ["DiskInspection", "PackageInspection", "inspect_disk", "inspect_disks",
           "inspect_package"]


@dataclass(frozen=True, slots=True)
class DiskInspection:
    """One disk to produce, inspected before anything is written."""

    index: int
    size: int  # bytes of the Ganeti disk: the plan's, or the image's if larger
    ref: FileRef | None = None  # None: blank
    disk: Disk | None = None
    src: ByteRange | None = None  # the image in place; None for a stream
    fmt: str | None = None  # detected from content
    info: diskmod.ImageInfo | None = None  # what qemu-img info said
    need: int = 0  # bytes of output space it may take


def inspect_disk(pkg: Package, disk: Disk | None, size: int, index: int, *,
                 data: bool = True) -> DiskInspection:
    """Check one disk of the plan (``size`` 0: take it from the image).

    ``data`` also counts the image's data extents (``qemu-img map``) as the
    output space it needs; ``verify`` does without.
    """
    if disk is None or disk.file_ref is None:
        if size <= 0:
            raise UsageError(f"disk {index} has no size", pkg.path)
        # Ganeti creates it at this size: bounded like any image.
        diskmod.check_size(size, name=f"disk {index}", what="blank", path=pkg.path)
        return DiskInspection(index, size)
    ref = disk.file_ref
    members = pkg.file_members(ref)
    stored = sum(m.size for m in members)
    if ref.size is not None and ref.size != stored:
        raise PackageError(f"file {ref.href!r} is {stored} bytes, but References "
                           f"declares {ref.size}", pkg.path)
    if ref.compression or ref.chunk_size:
        if disk.capacity is None:
            raise PackageError(f"file {ref.href!r} is compressed or chunked but its disk "
                               "declares no capacity to bound it", pkg.path)
        # What a stream expands to is known only once it is read: counted
        # at its stored size here; running out later is still clean (the
        # staging directory goes, the error names the file system).
        diskmod.check_size(max(size, disk.capacity), name=ref.href, what="disk",
                           path=pkg.path)
        return DiskInspection(index, max(size, disk.capacity), ref, disk, need=stored)
    src = members[0].byte_range()
    # Declared format, header bounds and the virtual size against the disk
    # size are checked before qemu-img does work that grows with the image.
    fmt, info = diskmod.inspect(src, name=ref.href, limit=size or None,
                                declared=disk.format_uri, path=pkg.path)
    need = diskmod.data_bytes(src, fmt, name=ref.href, info=info) if data else 0
    return DiskInspection(index, max(size, info.virtual_size), ref, disk, src, fmt, info,
                          need=need)


def inspect_disks(pkg: Package, disks: Sequence[Disk]) -> tuple[list[DiskInspection],
                                                               list[str]]:
    """Every Disk of a descriptor at its declared capacity, for ``verify``:
    (what passed, one problem line per disk that did not).  A disk whose
    file is missing is left to the caller, which names the file."""
    done: list[DiskInspection] = []
    problems: list[str] = []
    for i, disk in enumerate(disks):
        if disk.capacity_problem:  # what import refuses (e.g. over 64 TiB)
            problems.append(f"disk {disk.disk_id!r}: {disk.capacity_problem}")
            continue
        if disk.file_ref is None and not disk.capacity:
            continue  # the operator must give its size; nothing to check
        try:
            done.append(inspect_disk(pkg, disk, disk.capacity or 0, i, data=False))
        except OvfError as e:
            if disk.file_ref is None or pkg.member(disk.file_ref.href) is not None:
                problems.append(e.problem)
    return done, problems


@dataclass(frozen=True, slots=True)
class PackageInspection:
    """Everything established about a package before anything is written."""

    check: PackageCheck | None  # None: --no-verify
    disks: tuple[DiskInspection, ...]
    problems: tuple[str, ...] = ()  # disk problems, when collected (verify)


def inspect_package(pkg: Package, env: Envelope,
                    plan: Sequence[tuple[Disk | None, int]] | None = None, *,
                    verify: bool = True, collect: bool = False,
                    defer: frozenset[str] = frozenset(),
                    store: trust.TrustStore | None = None,
                    require_signature: bool = False) -> PackageInspection:
    """Check integrity, then inspect each disk.

    ``plan`` is the import's (disk, size) list; None inspects every Disk at
    its declared capacity without counting data (``verify``, ``info``).
    With ``collect`` every problem is returned rather than the first
    raised.  Digests of the members in ``defer`` are left to the caller
    (the importer takes them while converting); should a disk's inspection
    fail meanwhile, those digests are taken first, since a mismatch is the
    better explanation of a damaged image.
    """
    check = None
    if verify:
        check = check_package(pkg, env, collect=collect, defer=defer, store=store,
                              require_signature=require_signature)
    if plan is None:
        disks, problems = inspect_disks(pkg, env.disks)
        return PackageInspection(check, tuple(disks), tuple(problems))
    try:
        jobs = tuple(inspect_disk(pkg, d, size, i) for i, (d, size) in enumerate(plan))
    except OvfError:
        if check is not None:
            _check_deferred(pkg, check.deferred)
        raise
    return PackageInspection(check, jobs)


def _check_deferred(pkg: Package, entries: Sequence[integrity.ManifestEntry]) -> None:
    for entry in entries:
        m = pkg.get(entry.filename)
        got = integrity.digest_file(m.container, entry.algorithm, m.offset, m.size)
        if got != entry.digest:
            raise IntegrityError(
                f"{entry.algorithm} digest of {entry.filename!r} does not match the "
                f"manifest (got {got}, manifest says {entry.digest})", pkg.path)
