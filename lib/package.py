"""Where a package's files live: a directory beside the ``.ovf``, or an OVA
tar read in place.

An OVA is indexed once into ``Member`` values (name, data offset, size) and
never extracted: a disk is handed on as a ``ByteRange`` of the tar itself.
Every name is checked before use: no URLs, no absolute paths, no ``..``, no
links (symbolic, or hard links in a directory) or special files, no
duplicates (a tar with two members of one name, or two descriptors, is
ambiguous, and extraction tools disagree on which wins).  A directory
package's tree is never walked: only the names the descriptor references
are looked up.  An OVA's headers are read by :mod:`tarindex`.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import resource
import stat
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from . import tarindex
from .errors import PackageError, UnsafeMemberError
from .model import ByteRange, FileRef

__all__ = [
    "Member",
    "Package",
    "open_package",
    "check_name",
    "chunk_names",
    "MAX_DESCRIPTOR_SIZE",
]

MAX_DESCRIPTOR_SIZE = 64 << 20
"""A descriptor larger than this is refused: real ones are kilobytes."""

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
CHUNK_SUFFIX = re.compile(r"\.(\d{9})$")


@dataclass(frozen=True, slots=True)
class Member:
    """One regular file of the package: ``size`` bytes at ``offset`` of ``container``.

    ``container`` is ``/proc/self/fd/N`` of a descriptor the package holds
    open, so every later reader (digests, qemu-img with the fd passed on)
    sees the very file that was checked, even if its path is swapped for a
    link meanwhile.  ``label`` is the path to show the operator.
    """

    name: str
    container: str
    offset: int
    size: int
    label: str = ""

    def byte_range(self) -> ByteRange:
        return ByteRange(self.container, self.offset, self.size, self.label)


def check_name(name: str, *, path: str) -> str:
    """The normalised package-relative name, or UnsafeMemberError.

    Pure policy (like tarfile's data filter): names are relative POSIX
    paths that stay inside the package.
    """
    if not name or "\x00" in name:
        raise UnsafeMemberError(f"file name {name!r} is empty or has a NUL byte", path, name)
    if _SCHEME.match(name) and not re.match(r"^[A-Za-z]:[\\/]", name):
        raise UnsafeMemberError(f"file reference {name!r} is a URL; only files in the "
                                "package are used", path, name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise UnsafeMemberError(f"file name {name!r} is an absolute path", path, name)
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafeMemberError(f"file name {name!r} leaves the package", path, name)
    if not parts:
        raise UnsafeMemberError(f"file name {name!r} names no file", path, name)
    return "/".join(parts)


def chunk_names(href: str) -> Iterator[str]:
    """``href.000000000``, ``href.000000001``, ... (DSP0243 chunked files)."""
    i = 0
    while True:
        yield f"{href}.{i:09d}"
        i += 1


class Package:
    """A package's files by name.  Subclasses say where the bytes are.

    A package holds its files open (see ``Member``); use it as a context
    manager, or call ``close``.
    """

    path: str
    descriptor_name: str
    kind: str
    _fds: list[int]

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fds = getattr(self, "_fds", None)
        while fds:
            try:
                os.close(fds.pop())
            except OSError:
                pass

    def _pin(self, fd: int) -> str:
        self._fds.append(fd)
        return f"/proc/self/fd/{fd}"

    def member(self, name: str) -> Member | None:
        raise NotImplementedError

    def names(self) -> tuple[str, ...]:
        """Every regular file the package holds (for 'unreferenced file' checks)."""
        raise NotImplementedError

    def _chunk_numbers(self, href: str) -> set[int]:
        """The numbers N of the members named ``href.NNNNNNNNN`` (any N)."""
        raise NotImplementedError

    # -- shared behaviour ------------------------------------------------

    def get(self, name: str) -> Member:
        """The member for a (checked) name, or PackageError naming it."""
        safe = check_name(name, path=self.path)
        m = self.member(safe)
        if m is None and "%" in safe:
            m = self.member(check_name(urllib.parse.unquote(safe), path=self.path))
        if m is None:
            raise PackageError(f"file {name!r} is referenced but not in the package", self.path)
        return m

    def descriptor_bytes(self) -> bytes:
        m = self.get(self.descriptor_name)
        if m.size > MAX_DESCRIPTOR_SIZE:
            raise PackageError(f"descriptor {self.descriptor_name!r} is {m.size} bytes; "
                               f"refusing more than {MAX_DESCRIPTOR_SIZE}", self.path)
        return m.byte_range().read(0, m.size)

    def sibling(self, suffix: str) -> Member | None:
        """The descriptor's ``.mf``/``.cert`` companion, if present."""
        stem = self.descriptor_name.rsplit(".", 1)[0]
        return self.member(stem + suffix)

    def sibling_lookalikes(self, suffix: str) -> tuple[str, ...]:
        """Members named like the ``.mf``/``.cert`` companion but for case
        (``upmf.MF`` beside ``upmf.ovf``): DSP0243 names the manifest
        exactly, so these are never used, and the caller says so."""
        want = self.descriptor_name.rsplit(".", 1)[0] + suffix
        return tuple(n for n in self._names_like(want.lower()) if n != want)

    def _names_like(self, lower: str) -> list[str]:
        return [n for n in self.names() if n.lower() == lower]

    def file_members(self, ref: FileRef) -> tuple[Member, ...]:
        """The member(s) holding a File reference: one, or its chunks in order."""
        if ref.chunk_size is None:
            return (self.get(ref.href),)
        href = check_name(ref.href, path=self.path)
        found = []
        for cname in chunk_names(href):
            m = self.member(cname)
            if m is None:
                break
            found.append(m)
        if not found:
            raise PackageError(f"chunked file {ref.href!r} has no chunk {href + '.000000000'!r}",
                               self.path)
        later = [i for i in self._chunk_numbers(href) if i >= len(found)]
        if later:
            raise PackageError(f"chunked file {ref.href!r} lacks chunk "
                               f"{href}.{len(found):09d} but has "
                               f"{f'{href}.{min(later):09d}'!r}", self.path)
        for m in found[:-1]:
            if m.size != ref.chunk_size:
                raise PackageError(f"chunk {m.name!r} is {m.size} bytes, not the declared "
                                   f"chunk size {ref.chunk_size}", self.path)
        if found[-1].size > ref.chunk_size:
            raise PackageError(f"chunk {found[-1].name!r} is larger than the chunk size "
                               f"{ref.chunk_size}", self.path)
        return tuple(found)

    def stored_size(self, ref: FileRef) -> int:
        return sum(m.size for m in self.file_members(ref))

    def open_stream(self, ref: FileRef, *, limit: int) -> Iterator[bytes]:
        """The file's content, chunks joined and gzip undone, in blocks.

        ``limit`` bounds the bytes produced, so a gzip bomb or a lying
        header costs at most that much.
        """
        members = self.file_members(ref)
        raw = _concat(members)
        if ref.compression is None:
            yield from _bounded(raw, limit, self.path, ref.href)
            return
        if ref.compression != "gzip":
            raise PackageError(f"file {ref.href!r} uses unsupported compression "
                               f"{ref.compression!r} (only gzip is defined by OVF)", self.path)
        yield from _bounded(_gunzip(raw, self.path, ref.href), limit, self.path, ref.href)


def _concat(members: tuple[Member, ...], block: int = 1 << 20) -> Iterator[bytes]:
    for m in members:
        with open(m.container, "rb") as f:
            f.seek(m.offset)
            left = m.size
            while left:
                data = f.read(min(block, left))
                if not data:
                    raise PackageError(f"member {m.name!r} is truncated", m.label or m.name)
                left -= len(data)
                yield data


class _Chunks:
    """A read()-able view of an iterator of bytes, for gzip.GzipFile."""

    def __init__(self, it: Iterator[bytes]) -> None:
        self._it = it
        self._buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _gunzip(raw: Iterator[bytes], path: str, href: str) -> Iterator[bytes]:
    try:
        with gzip.GzipFile(fileobj=_Chunks(raw), mode="rb") as gz:  # type: ignore[arg-type]
            while True:
                data = gz.read(1 << 20)
                if not data:
                    return
                yield data
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise PackageError(f"file {href!r} is not valid gzip data: {e}", path) from e


def _bounded(it: Iterator[bytes], limit: int, path: str, href: str) -> Iterator[bytes]:
    total = 0
    for data in it:
        total += len(data)
        if total > limit:
            raise PackageError(f"file {href!r} expands beyond {limit} bytes, more than its "
                               "disk can hold", path)
        yield data


def _raise_fd_limit() -> None:
    """Files are held open, one per member: a package of a thousand chunks
    needs more than the usual soft limit of 1024 descriptors.  The soft
    limit is raised toward the hard one (never the hard one itself)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass


class DirPackage(Package):
    """A ``.ovf`` with its files beside it (in its directory or below).

    Every file is opened relative to a descriptor of the package directory,
    component by component with ``O_NOFOLLOW``: a symbolic link anywhere
    on the way is refused, and what was opened is what is read later.
    """

    kind = "ovf"

    def __init__(self, descriptor: str) -> None:
        self._fds = []
        self.path = descriptor
        # The operator's own path may be a link (their choice); inside the
        # package directory nothing is followed.
        real = os.path.realpath(descriptor)
        self.root = os.path.dirname(real)
        self.descriptor_name = os.path.basename(real)
        self._members: dict[str, Member | None] = {}
        self._listings: dict[str, tuple[str, ...]] = {}
        _raise_fd_limit()
        try:
            self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise PackageError(f"cannot open its directory: {e.strerror}", descriptor) from e
        self._fds.append(self._root_fd)

    def member(self, name: str) -> Member | None:
        if name not in self._members:
            self._members[name] = self._open(name)
        return self._members[name]

    def _open(self, name: str) -> Member | None:
        parts = name.split("/")
        cur = self._root_fd
        opened: list[int] = []
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                # Look before opening: a device node must not even be opened
                # (opening some has effects), a link is never followed.
                try:
                    before = os.stat(part, dir_fd=cur, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    return None
                except OSError as e:
                    raise PackageError(f"cannot read {name!r}: {e.strerror}",
                                       self.path) from e
                if stat.S_ISLNK(before.st_mode):
                    raise UnsafeMemberError(f"file {name!r} is a symbolic link; links are "
                                            "never followed", self.path, name)
                if not last and not stat.S_ISDIR(before.st_mode):
                    return None
                if last and not stat.S_ISREG(before.st_mode):
                    raise UnsafeMemberError(f"file {name!r} is not a regular file", self.path,
                                            name)
                flags = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK
                         | (0 if last else os.O_DIRECTORY))
                try:
                    fd = os.open(part, flags, dir_fd=cur)
                except OSError as e:
                    if e.errno == errno.ELOOP:
                        raise UnsafeMemberError(f"file {name!r} is a symbolic link; links "
                                                "are never followed", self.path, name) from None
                    raise PackageError(f"cannot read {name!r}: {e.strerror}",
                                       self.path) from e
                opened.append(fd)
                cur = fd
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
                    raise PackageError(f"file {name!r} changed while being opened", self.path)
            if st.st_nlink > 1:
                # Another name for a file elsewhere, perhaps one its owner
                # never meant us to read (made by whoever wrote the package).
                raise UnsafeMemberError(f"file {name!r} has {st.st_nlink} hard links; a "
                                        "package file must have only its own name", self.path,
                                        name)
            container = self._pin(opened.pop())
            return Member(name, container, 0, st.st_size, os.path.join(self.root, name))
        finally:
            for fd in opened:
                os.close(fd)

    def names(self) -> tuple[str, ...]:
        """The regular files beside the descriptor.  The tree below is never
        walked: only names the descriptor references are looked up."""
        return tuple(sorted(n for n in _listdir(self._root_fd, self.path)
                            if stat.S_ISREG(_lstat(n, self._root_fd))))

    def _names_like(self, lower: str) -> list[str]:
        # Match before stat-ing: a large directory costs one listing.
        return sorted(n for n in _listdir(self._root_fd, self.path)
                      if n.lower() == lower and stat.S_ISREG(_lstat(n, self._root_fd)))

    def _chunk_numbers(self, href: str) -> set[int]:
        """From one listing of the directory that holds ``href``'s chunks."""
        head, _, base = href.rpartition("/")
        if head not in self._listings:
            fd = self._open_dir(head) if head else self._root_fd
            try:
                self._listings[head] = () if fd is None else tuple(_listdir(fd, self.path))
            finally:
                if fd is not None and fd != self._root_fd:
                    os.close(fd)
        return {int(n[-9:]) for n in self._listings[head]
                if n.startswith(base + ".") and len(n) == len(base) + 10
                and CHUNK_SUFFIX.search(n)}

    def _open_dir(self, name: str) -> int | None:
        """A descriptor of the package's directory ``name``, no link followed."""
        cur = self._root_fd
        for part in name.split("/"):
            try:
                fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=cur)
            except OSError:
                fd = None
            if cur != self._root_fd:
                os.close(cur)
            if fd is None:
                return None
            cur = fd
        return cur


def _listdir(fd: int, path: str) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError as e:
        raise PackageError(f"cannot list its directory: {e.strerror}", path) from e


def _lstat(name: str, dir_fd: int) -> int:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except OSError:
        return 0


class OvaPackage(Package):
    """An OVA: an uncompressed tar whose members are read where they lie."""

    kind = "ova"

    def __init__(self, path: str, fd: int) -> None:
        """Index the OVA open on ``fd`` (which the package now owns)."""
        self._fds = []
        self.path = path
        container = self._pin(fd)
        try:
            self._index(path, fd, container)
        except BaseException:
            self.close()
            raise

    def _index(self, path: str, fd: int, container: str) -> None:
        self._members: dict[str, Member] = {}
        order: list[str] = []
        for ent in tarindex.walk(fd, path):
            name = _check_tar_member(ent, path)
            if name is None:
                continue
            if name in self._members:
                raise UnsafeMemberError(f"member {name!r} appears twice", path, name)
            self._members[name] = Member(name, container, ent.offset, ent.size,
                                         f"{path}: {name}")
            order.append(name)
        size = os.fstat(fd).st_size
        end = 0
        for m in sorted(self._members.values(), key=lambda m: m.offset):
            if m.offset + m.size > size:
                raise PackageError(f"member {m.name!r} is truncated", path)
            if m.offset < end:
                raise UnsafeMemberError(f"member {m.name!r} overlaps another member", path,
                                        m.name)
            end = m.offset + m.size
        self.order = tuple(order)
        self._chunks: dict[str, set[int]] | None = None
        descriptors = [n for n in order if n.lower().endswith(".ovf")]
        if not descriptors:
            raise PackageError("no OVF descriptor (.ovf member) in the archive", path)
        if len(descriptors) > 1:
            # DSP0243: one descriptor, the first member.  Tools differ on
            # which of two they read (the first, the last, the one matching
            # the OVA's name), so the operator could not know what runs.
            raise UnsafeMemberError(f"holds two descriptors, {descriptors[0]!r} and "
                                    f"{descriptors[1]!r}; an OVA has exactly one", path,
                                    descriptors[1])
        self.descriptor_name = descriptors[0]

    def member(self, name: str) -> Member | None:
        return self._members.get(name)

    def names(self) -> tuple[str, ...]:
        return self.order

    def _chunk_numbers(self, href: str) -> set[int]:
        if self._chunks is None:  # one pass over the members, for every file
            self._chunks = {}
            for n in self.order:
                if CHUNK_SUFFIX.search(n):
                    self._chunks.setdefault(n[:-10], set()).add(int(n[-9:]))
        return self._chunks.get(href, set())


def _check_tar_member(ent: tarindex.TarEntry, path: str) -> str | None:
    """Name of a regular member, None for a directory, UnsafeMemberError else."""
    name = ent.name
    if ent.kind == "dir":
        check_name(name, path=path)
        return None
    if ent.kind in ("symlink", "hardlink"):
        raise UnsafeMemberError(f"member {name!r} is a link to {ent.linkname!r}; links are "
                                "never followed", path, name)
    if ent.kind == "sparse":
        # Its data is not one contiguous byte range: reading it in place
        # would see other bytes than every extracting tool does.
        raise UnsafeMemberError(f"member {name!r} is a sparse tar member; an OVA holds "
                                "plain members only", path, name)
    if ent.kind != "file":
        raise UnsafeMemberError(f"member {name!r} is not a regular file", path, name)
    return check_name(name, path=path)


def open_package(path: str) -> Package:
    """A package from a ``.ovf`` path or an ``.ova`` path (decided by content)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise PackageError(f"cannot open: {e.strerror}", path) from e
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PackageError("not a regular file", path)
        head = os.pread(fd, 512, 0)
        if _looks_like_tar(head):
            owned, fd = fd, -1
            return OvaPackage(path, owned)  # owns the descriptor from here on
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    os.close(fd)
    if head[:2] == b"\x1f\x8b":
        # Ganeti's old ovfconverter took these; an OVA is a plain tar that we
        # read in place, which a gzip stream does not allow.
        raise PackageError("is gzip-compressed; an OVA is an uncompressed tar, so "
                           "decompress it first (gzip -dc)", path)
    if path.lower().endswith(".ova"):
        hint = ""
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
            hint = " (it is XML: a descriptor belongs in a .ovf file)"
        raise PackageError(f"not a valid OVA (tar) archive{hint}", path)
    return DirPackage(path)


def _looks_like_tar(head: bytes) -> bool:
    if len(head) < 512:
        return False
    # Old v7 tar has no magic, but a valid header checksum.
    return head[257:262] == b"ustar" or tarindex.is_header(head)
