"""Walking the headers of an OVA's tar, without extracting anything.

Why not ``tarfile``: it stops without a word at the first header it cannot
read (a block of 0xff after a valid member hides every member behind it,
which GNU tar may still extract), raises ValueError on a negative size in
a pax or GNU long-name header, and reads a pax or long-name header's data
whole into memory, however large the header says it is.  This walker reads
one header block at a time, bounds every metadata header, and ends only at
the end-of-archive marker (two zero blocks) or exactly at the end of the
file; anything else is a PackageError naming the offset.

Only what an OVA can hold is understood: ustar, GNU and v7 headers, GNU
long names (``L``/``K``) and pax extended headers (``x``; the keywords
``path``, ``linkpath``, ``size``; ``GNU.sparse.*`` marks a sparse member).
A pax global header (``g``) may only carry a ``comment`` (git archive
writes one).  What the entry is (file, directory, link, ...) is left to
the caller to judge.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import PackageError

__all__ = ["BLOCK", "META_MAX", "TarEntry", "is_header", "walk"]

BLOCK = 512
META_MAX = 1 << 20
"""A pax or GNU long-name header with more data than this is refused: a
path and a size take a few hundred bytes."""

_ZERO = bytes(BLOCK)
_HIGH = bytes(range(128, 256))
_FILE_TYPES = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"1": "hardlink",
               b"2": "symlink", b"S": "sparse"}
_META_TYPES = (b"x", b"g", b"L", b"K")


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One member: ``kind`` is file, dir, hardlink, symlink, sparse or
    other; its ``size`` data bytes start at ``offset``."""

    name: str
    kind: str
    offset: int
    size: int
    linkname: str = ""
    header: int = 0  # offset of its header block


def _corrupt(pos: int, what: str, path: str) -> PackageError:
    return PackageError(f"not a valid OVA (tar) archive: {what} at offset {pos}", path)


def _number(field: bytes, what: str, pos: int, path: str) -> int:
    """A numeric header field: octal text, or GNU base-256 (0x80 positive,
    0xff negative two's complement)."""
    if field[0] in (0x80, 0xFF):
        n = int.from_bytes(field[1:], "big")
        return n - 256 ** (len(field) - 1) if field[0] == 0xFF else n
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.strip(b"01234567"):
        raise _corrupt(pos, f"tar header with a bad {what} field {text[:20]!r}", path)
    return int(text, 8)


def _checksum_ok(blk: bytes) -> bool:
    stored = blk[148:156].split(b"\0", 1)[0].strip(b" ")
    if not stored or stored.strip(b"01234567"):
        return False
    want = int(stored, 8)
    rest = blk[:148] + blk[156:]
    unsigned = 256 + sum(rest)
    if want == unsigned:
        return True
    high = len(rest) - len(rest.translate(None, _HIGH))  # old tars summed signed chars
    return want == unsigned - 256 * high


def is_header(blk: bytes) -> bool:
    """Whether ``blk`` is a tar header block (a valid checksum; v7 tar has no magic)."""
    return len(blk) == BLOCK and blk != _ZERO and _checksum_ok(blk)


def _text(raw: bytes, what: str, pos: int, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(pos, f"tar header with a {what} that is not UTF-8 ({raw[:60]!r})",
                       path) from None


def _pax(data: bytes, pos: int, path: str) -> dict[str, bytes]:
    """The records ``LEN key=value\\n`` of a pax header's data."""
    out: dict[str, bytes] = {}
    i = 0
    while i < len(data) and data[i:].strip(b"\0"):
        sp = data.find(b" ", i, i + 20)
        length = data[i:sp]
        if sp < 0 or not length.isdigit() or int(length) <= sp - i + 1:
            raise _corrupt(pos, "pax header with a malformed record", path)
        end = i + int(length)
        record = data[sp + 1:end]
        key, eq, value = record[:-1].partition(b"=")
        if end > len(data) or not record.endswith(b"\n") or not eq:
            raise _corrupt(pos, "pax header with a malformed record", path)
        out[_text(key, "pax keyword", pos, path)] = value
        i = end
    return out


class _Walk:
    """The state between headers: metadata waiting for its member."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd, self.path = fd, path
        self.end = os.fstat(fd).st_size
        self.pax: dict[str, bytes] = {}
        self.long: dict[bytes, bytes] = {}
        self.seen: set[bytes] = set()  # metadata header types waiting for this member
        self.pending = -1  # offset of the first metadata header not yet used

    def read(self, n: int, pos: int) -> bytes:
        try:
            return os.pread(self.fd, n, pos)
        except OSError as e:
            raise PackageError(f"cannot read: {e.strerror}", self.path) from e

    def meta(self, typ: bytes, size: int, pos: int) -> None:
        if size > META_MAX or pos + BLOCK + size > self.end:
            raise _corrupt(pos, f"tar metadata header ({typ.decode()!r}) of {size} bytes",
                           self.path)
        if typ != b"g":
            # Stacked headers of one kind (two 'x', two 'L'): tar tools
            # disagree on which one names the member, so a second
            # descriptor or disk could hide behind the name we see.
            if typ in self.seen:
                raise _corrupt(pos, f"a second tar metadata header ({typ.decode()!r}) for "
                               "one member (tar tools disagree on which applies)", self.path)
            self.seen.add(typ)
        data = self.read(size, pos + BLOCK)
        if self.pending < 0:
            self.pending = pos
        if typ == b"x":
            self.pax.update(_pax(data, pos, self.path))
        elif typ == b"g":
            extra = sorted(set(_pax(data, pos, self.path)) - {"comment"})
            if extra:
                raise _corrupt(pos, f"pax global header setting {', '.join(extra)[:80]}",
                               self.path)
        else:
            self.long[typ] = data.split(b"\0", 1)[0]

    def entry(self, blk: bytes, typ: bytes, size: int, pos: int) -> TarEntry:
        pax, self.pax = self.pax, {}
        long, self.long = self.long, {}
        self.seen = set()
        for key, gnu in (("path", b"L"), ("linkpath", b"K")):
            if key in pax and gnu in long:
                # tarfile lets the GNU header win, GNU tar the pax one.
                raise _corrupt(self.pending, f"both a pax {key} and a GNU long-name "
                               f"({gnu.decode()!r}) header for one member (tar tools "
                               "disagree on which applies)", self.path)
        self.pending = -1
        if "path" in pax:
            raw = pax["path"]
        elif b"L" in long:
            raw = long[b"L"]
        else:
            raw = blk[:100].split(b"\0", 1)[0]
            prefix = blk[345:500].split(b"\0", 1)[0]
            if blk[257:263] == b"ustar\0" and prefix:
                raw = prefix + b"/" + raw
        link = pax.get("linkpath", long.get(b"K", blk[157:257].split(b"\0", 1)[0]))
        if "size" in pax:
            if not pax["size"].isdigit():
                raise _corrupt(pos, f"pax header with a bad size {pax['size'][:20]!r}", self.path)
            size = int(pax["size"])
        name = _text(raw, "name", pos, self.path)
        kind = _FILE_TYPES.get(typ, "other")
        if kind == "file" and typ == b"\0" and name.endswith("/"):
            kind = "dir"  # old tar: a directory is a name ending in "/"
        if any(k.startswith("GNU.sparse.") for k in pax):
            kind = "sparse"
        return TarEntry(name, kind, pos + BLOCK, size, _text(link, "link name", pos, self.path),
                        pos)


def walk(fd: int, path: str) -> Iterator[TarEntry]:
    """Every member of the tar open on ``fd``, in order; PackageError
    (naming the offset) for anything that is not a clean tar to its end."""
    w = _Walk(fd, path)
    pos = 0
    while True:
        if pos >= w.end and w.pending < 0:
            return  # no end marker, but the file ends cleanly after a member
        blk = w.read(BLOCK, pos)
        if blk == _ZERO:
            after = w.read(BLOCK, pos + BLOCK)
            if w.pending >= 0:
                raise _corrupt(w.pending, "tar metadata header for no member", path)
            if after and after != _ZERO:
                raise _corrupt(pos, "a lone zero block followed by more headers "
                               "(tar tools disagree on where such an archive ends)", path)
            return
        if len(blk) < BLOCK:
            raise _corrupt(pos, "archive ends inside a tar header", path)
        if not _checksum_ok(blk):
            raise _corrupt(pos, "unreadable tar header (bad checksum); members after it "
                           "would be hidden", path)
        typ = blk[156:157]
        size = _number(blk[124:136], "size", pos, path)
        if size < 0:
            raise _corrupt(pos, f"tar header with a negative size ({size})", path)
        if typ in _META_TYPES:
            w.meta(typ, size, pos)
        else:
            ent = w.entry(blk, typ, size, pos)
            if ent.kind == "dir" and ent.size:
                # Tools disagree on whether such data is skipped.
                raise _corrupt(pos, f"directory {ent.name[:80]!r} with {ent.size} bytes of "
                               "data", path)
            yield ent
            size = ent.size
        pos += BLOCK + -(-size // BLOCK) * BLOCK
