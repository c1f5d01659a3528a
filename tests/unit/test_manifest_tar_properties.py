"""Property tests of the two parsers that read a stranger's bytes first:
the manifest parser and the OVA's tar index.  Whatever the bytes, only our
own error types escape, in bounded time; and on the archives real tools
write, the tar index sees exactly what Python's tarfile sees."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganeti_ovf import tarindex
from ganeti_ovf.errors import IntegrityError, OvfError
from ganeti_ovf.integrity import format_manifest, parse_manifest
from ganeti_ovf.ovawriter import OvaWriter
from ganeti_ovf.package import open_package

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
BOUND = 5.0  # seconds for one hostile input: each takes milliseconds

# ---------------------------------------------------------------------------
# manifest parser

_LINE = st.one_of(
    st.builds(lambda a, n, h, sp: f"{a}{sp}({n}){sp}={sp}{h}",
              st.sampled_from(["SHA1", "SHA256", "sha512", "MD5", "SHA-1", ""]),
              st.text(max_size=30), st.text("0123456789abcdefABCDEF", max_size=130),
              st.sampled_from(["", " ", "\t"])),
    st.text(max_size=60),
)


@FAST
@given(st.lists(_LINE, max_size=20), st.sampled_from(["\n", "\r\n"]), st.binary(max_size=40))
def test_manifest_parser_raises_only_integrity_errors(lines, eol, tail):
    data = eol.join(lines).encode("utf-8", "surrogatepass") + tail
    start = time.monotonic()
    try:
        manifest = parse_manifest(data, allow_empty=True)
    except IntegrityError as e:
        assert "\n" not in str(e)
    else:
        for entry in manifest:
            assert manifest.lookup(entry.filename) is entry
    assert time.monotonic() - start < BOUND


@FAST
@given(st.binary(max_size=2000))
def test_manifest_parser_on_random_bytes(data):
    try:
        parse_manifest(data)
    except IntegrityError:
        pass


_NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                min_size=1, max_size=40).filter(lambda s: s == s.strip(" \t\0"))


@FAST
@given(st.dictionaries(_NAME, st.binary(max_size=8), min_size=1, max_size=10),
       st.sampled_from(["SHA1", "SHA256", "SHA512"]))
def test_manifests_we_write_read_back_exactly(files, algorithm):
    pairs = [(n, hashlib.new(algorithm, d).hexdigest()) for n, d in files.items()]
    data = format_manifest(pairs, algorithm)
    assert data.endswith(b"\n") and data.count(b"\n") == len(pairs)
    parsed = parse_manifest(data)
    assert [(e.filename, e.digest) for e in parsed] == pairs


# ---------------------------------------------------------------------------
# tar index

DESCRIPTOR = b'<?xml version="1.0"?>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>\n'


def _small_ova() -> bytes:
    """A small OVA written by our own writer: descriptor, manifest, disk."""
    disk = bytes(range(256)) * 8 + bytes(1024)
    mf = format_manifest([("t.ovf", hashlib.sha256(DESCRIPTOR).hexdigest()),
                          ("t-disk1.raw", hashlib.sha256(disk).hexdigest())], "SHA256")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.ova")
        open(path, "wb").close()
        ova = OvaWriter(path, mtime=0)
        ova.add("t.ovf", DESCRIPTOR)
        ova.add("t.mf", mf)
        m = ova.open_member("t-disk1.raw")
        m.write(disk)
        m.close()
        ova.close()
        with open(path, "rb") as f:
            return f.read()


OVA = _small_ova()


def _index(data: bytes) -> list[tarindex.TarEntry] | None:
    """What the index makes of ``data``: its entries, or None if refused."""
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        try:
            return list(tarindex.walk(f.fileno(), "fuzz.ova"))
        except OvfError as e:
            assert "\n" not in str(e)
            return None


def _open(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "fuzz.ova")
        with open(path, "wb") as f:
            f.write(data)
        try:
            with open_package(path) as pkg:
                pkg.descriptor_bytes()
                for name in pkg.names():
                    pkg.member(name)
        except OvfError as e:
            assert "\n" not in str(e)


_EDITS = st.lists(st.tuples(st.integers(0, len(OVA) - 1), st.integers(0, 255)), max_size=12)


@FAST
@given(_EDITS, st.one_of(st.none(), st.integers(0, len(OVA))))
def test_mutated_ova_raises_only_our_errors(edits, cut):
    data = bytearray(OVA)
    for pos, value in edits:
        data[pos] = value
    if cut is not None:
        del data[cut:]
    start = time.monotonic()
    _index(bytes(data))
    _open(bytes(data))
    assert time.monotonic() - start < BOUND


_HEADER_FIELD = st.sampled_from([(0, 100), (100, 8), (124, 12), (148, 8), (156, 1),
                                 (157, 100), (257, 8), (345, 155)])


_FIELD_VALUE = st.one_of(
    st.binary(min_size=1, max_size=155),
    st.integers(-(1 << 40), 1 << 40).map(  # GNU base-256, negative ones too
        lambda n: (b"\xff" if n < 0 else b"\x80") + (n % 256**11).to_bytes(11, "big")),
    st.integers(0, 8**11 - 1).map(lambda n: b"%011o\0" % n),
)


@FAST
@given(st.integers(0, 3), _HEADER_FIELD, _FIELD_VALUE, st.sampled_from(b"0125LKxgS7V\0"))
def test_corrupted_header_fields_raise_only_our_errors(member, field, value, typ):
    """Numbers, names, magic and type of one header, rewritten (checksum fixed)."""
    data = bytearray(OVA)
    headers = [e.header for e in _index(OVA) or ()] + [len(OVA) - 1024]
    at = headers[min(member, len(headers) - 1)]
    if at + 512 > len(data):
        return
    off, width = field
    data[at + off:at + off + width] = value[:width].ljust(width, b"\0")
    data[at + 156] = typ
    data[at + 148:at + 156] = b" " * 8
    data[at + 148:at + 156] = b"%06o\0 " % sum(data[at:at + 512])
    start = time.monotonic()
    _index(bytes(data))
    _open(bytes(data))
    assert time.monotonic() - start < BOUND


_MEMBER_NAME = st.text("abcXYZ019._-/", min_size=1, max_size=160).filter(
    lambda n: not n.startswith("/") and "//" not in n and not n.endswith("/"))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_MEMBER_NAME, st.integers(0, 1500)), min_size=1, max_size=6,
                unique_by=lambda t: t[0]),
       st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
def test_index_sees_what_tarfile_sees_on_valid_archives(members, fmt):
    buf = io.BytesIO()
    try:
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
            for name, size in members:
                ti = tarfile.TarInfo(name)
                ti.size = size
                t.addfile(ti, io.BytesIO(bytes([len(name) % 256]) * size))
    except ValueError:
        return  # a ustar name too long for its fields: tarfile refuses to write it
    data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        want = [(m.name, m.offset_data, m.size) for m in t]
    got = _index(data)
    assert got is not None
    assert [(e.name, e.offset, e.size) for e in got] == want
    assert all(e.kind == "file" for e in got)


def _raw_header(name: str, size: int, typ: bytes) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.type = size, typ
    return ti.tobuf(tarfile.USTAR_FORMAT)


def _raw_member(name: str, body: bytes, typ: bytes = b"0") -> bytes:
    return _raw_header(name, len(body), typ) + body + bytes(-len(body) % 512)


def _pax_data(key: str, value: str) -> bytes:
    rec = f" {key}={value}\n".encode()
    n = len(rec) + len(str(len(rec)))
    n += len(str(n)) != len(str(len(rec)))
    return str(n).encode() + rec


def _meta(kind: str, name: str) -> bytes:
    """One metadata header: pax path ('x'), GNU long name ('L'), or a pax
    global header carrying only a comment ('g', as git archive writes)."""
    if kind == "x":
        return _raw_member("PaxHeader", _pax_data("path", name), b"x")
    if kind == "L":
        return _raw_member("././@LongLink", name.encode() + b"\0", b"L")
    return _raw_member("pax_global_header", _pax_data("comment", name), b"g")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 700), st.lists(st.sampled_from("xLg"), max_size=3)),
                min_size=1, max_size=5))
def test_stacked_name_headers_refused_exactly_when_tools_could_disagree(members):
    """Metadata headers before each member, each naming it differently.  With
    at most one header naming a member (one 'x' or one 'L', any 'g' comment),
    Python's tarfile is unambiguous and the index must see what it sees; two
    of a kind, or an 'x' and an 'L' together, must be refused."""
    data = b""
    ambiguous = False
    for i, (size, metas) in enumerate(members):
        naming = [k for k in metas if k != "g"]
        ambiguous |= len(naming) > 1
        data += b"".join(_meta(k, f"m{i}-{j}-{k}.bin") for j, k in enumerate(metas))
        data += _raw_member(f"m{i}.bin", bytes([i]) * size)
    data += bytes(1024)
    got = _index(data)
    if ambiguous:
        assert got is None
        return
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        want = [(m.name, m.offset_data, m.size) for m in t]
    assert got is not None
    assert [(e.name, e.offset, e.size) for e in got] == want
