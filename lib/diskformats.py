"""Disk formats: the one table that knows each of them.

Per format (:class:`DiskFormat`): its magic, the qemu-img driver and the
``-o`` options we write it with, the OVF ``ovf:format`` URIs that declare
it, whether ``qemu-img check`` applies, the ``--format`` alias.  Detection
from content (:func:`detect_format`) and the declared-versus-content check
(:func:`check_declared`) live here too, next to the knowledge they use.
Nothing here runs qemu-img: :mod:`ganeti_ovf.disks` does.

Declared versus content (:func:`check_declared`).  A Disk's ``ovf:format``
names a format; the bytes are detected independently.  They must agree,
except for these tolerated near-misses:

* no ``ovf:format`` at all, or a URI no tool we know writes: the content
  decides (OVF 1.0 makes the attribute optional; many tools invent URIs);
* a VMDK URI whose fragment names another VMDK subformat than the
  image's (``#streamOptimized`` on a monolithicSparse image): both are
  one qemu driver, and tools are careless about the fragment;
* a raw URI (:data:`RAW_URIS`, or any URI ending ``#raw``) on raw content.

Everything else -- random bytes declared as a VMDK, a qcow2 declared as a
VMDK, an image header declared raw -- is refused, naming both.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import DiskImageError
from .model import ByteRange

__all__ = [
    "DiskFormat",
    "FORMATS",
    "ACCEPTED_FORMATS",
    "CHECKED_FORMATS",
    "EXPORT_ALIASES",
    "EXPORT_FORMATS",
    "RAW_URIS",
    "REFUSED_MAGIC",
    "by_name",
    "declared_format",
    "declares_raw",
    "check_declared",
    "detect_format",
]


@dataclass(frozen=True, slots=True)
class DiskFormat:
    """What we know about one disk format."""

    name: str  # what detect_format returns; the qemu-img driver (-f/-O)
    magic: tuple[tuple[int, bytes], ...]  # (offset, bytes); -512: the footer
    uris: tuple[str, ...] = ()  # ovf:format values declaring it (first: ours)
    uri_prefixes: tuple[str, ...] = ()  # any URI starting so declares it (VMDK fragments)
    checked: bool = False  # qemu-img check looks at where metadata points
    write_options: tuple[str, ...] | None = None  # -o for export; None: not written
    alias: str | None = None  # --format name on export


VMDK_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html"
# The spellings tools write, whatever the fragment (#sparse, #compressed,
# #streamOptimized, #monolithicSparse): OVF 1.x, VMware's OVF 0.9, and a
# doubled "interfaces" seen in the wild.
_VMDK_PREFIXES = (VMDK_URI, "http://www.vmware.com/specifications/vmdk.html",
                  "http://www.vmware.com/interfaces/interfaces/specifications/vmdk.html")

#: The table.  Rows with an ``alias`` are the export formats, the default
#: (streamOptimized VMDK) first.
FORMATS: tuple[DiskFormat, ...] = (
    # streamOptimized is the VMDK that ovftool, ESXi and VirtualBox import.
    DiskFormat("vmdk", ((0, b"KDMV"),), uris=(VMDK_URI + "#streamOptimized",),
               uri_prefixes=_VMDK_PREFIXES, checked=True,
               write_options=("-o", "subformat=streamOptimized"), alias="vmdk"),
    # compat=1.1 is the qcow2 every supported qemu reads.
    DiskFormat("qcow2", ((0, b"QFI\xfb"),),
               uris=("http://www.gnome.org/~markmc/qcow-image-format.html",
                     "https://people.gnome.org/~markmc/qcow-image-format.html"),
               checked=True, write_options=("-o", "compat=1.1"), alias="qcow2"),
    DiskFormat("raw", (), uris=("http://en.wikipedia.org/wiki/Byte",  # upstream Ganeti's
                                "http://www.ganeti.org/raw"),
               write_options=(), alias="raw"),
    DiskFormat("qed", ((0, b"QED\x00"),), checked=True),
    DiskFormat("vdi", ((0x40, b"\x7f\x10\xda\xbe"),),
               uris=("http://www.virtualbox.org/manual/ch12.html#vdi",)),
    DiskFormat("vhdx", ((0, b"vhdxfile"),), checked=True,
               uris=("http://technet.microsoft.com/en-us/library/hh831446.aspx",
                     "https://docs.microsoft.com/en-us/windows-server/virtualization/"
                     "hyper-v/vhdx")),
    DiskFormat("vpc", ((0, b"conectix"), (-512, b"conectix")),
               uris=("http://go.microsoft.com/fwlink/?LinkId=137171",
                     "http://www.microsoft.com/technet/virtualserver/downloads/vhdspec.mspx")),
)

_BY_NAME = {f.name: f for f in FORMATS}

#: Formats we hand to qemu-img as ``-f``: the values detect_format returns.
ACCEPTED_FORMATS = frozenset(_BY_NAME)
#: Formats whose ``qemu-img check`` looks at where metadata points.
CHECKED_FORMATS = frozenset(f.name for f in FORMATS if f.checked)
#: ``--format`` names of the export formats, the default first.
EXPORT_ALIASES: tuple[str, ...] = tuple(f.alias for f in FORMATS if f.alias)
#: Export formats and the ``-o`` options qemu-img writes each with.
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    f.name: f.write_options for f in FORMATS if f.write_options is not None}
#: URIs that declare raw bytes (no image format).
RAW_URIS = frozenset(_BY_NAME["raw"].uris)

#: Magic we refuse although qemu-img could read it: (offset, magic, what,
#: why).  A negative offset counts from the end of the image.
REFUSED_MAGIC: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"LUKS\xba\xbe", "LUKS", "encrypted; we have no key for it"),
    (0, b"COWD", "VMDK3 (COWD)", "an ESX redo log whose parent is not in the package"),
    (0, b"WithoutFreeSpace", "Parallels", "format not accepted"),
    (0, b"WithouFreSpacExt", "Parallels", "format not accepted"),
    (0, b"Bochs Virtual HD Image", "Bochs", "format not accepted"),
    (0, b"#!/bin/sh\n#V2.0 Format\n", "cloop", "format not accepted"),
    (-512, b"koly", "DMG", "format not accepted"),
    (0, b"\x1f\x8b", "gzip", "compressed; declare ovf:compression or unpack it first"),
    (0, b"\xfd7zXZ\x00", "xz", "compressed; unpack it first"),
    (0, b"\x28\xb5\x2f\xfd", "zstd", "compressed; unpack it first"),
    (0, b"BZh", "bzip2", "compressed; unpack it first"),  # + digit + "1AY&SY", below
)

SECTOR = 512
_HEAD = 4096  # bytes of the start we look at; every magic we know is inside


def by_name(name: str) -> DiskFormat:
    """The table row of format ``name`` (KeyError if unknown)."""
    return _BY_NAME[name]


def declares_raw(uri: str | None) -> bool:
    """Whether a Disk's ovf:format says raw bytes (no image format)."""
    return bool(uri) and (uri.strip() in RAW_URIS or uri.strip().lower().endswith("#raw"))


def declared_format(uri: str | None) -> str | None:
    """The format an ovf:format URI declares; None if absent or unknown."""
    if not uri or not uri.strip():
        return None
    if declares_raw(uri):
        return "raw"
    u = uri.strip()
    for f in FORMATS:
        if u in f.uris or any(u.lower().startswith(p.lower()) for p in f.uri_prefixes):
            return f.name
    return None


def check_declared(uri: str | None, fmt: str, *, name: str, path: str | None = None) -> None:
    """Refuse content ``fmt`` that the declared ``uri`` contradicts.

    Tolerated near-misses are listed in the module docstring.
    """
    declared = declared_format(uri)
    if declared is None or declared == fmt:
        return
    if declared == "raw":
        # A raw disk whose guest data begins like an image header: which
        # one is meant cannot be told, and guessing gives a different disk.
        raise DiskImageError(f"image {name!r} is declared raw ({uri}) but begins like a "
                             f"{fmt} image; refusing to guess which it is", path or name)
    what = "no image header (raw bytes)" if fmt == "raw" else f"a {fmt} image"
    raise DiskImageError(f"image {name!r} is declared {declared} ({uri}) but its content is "
                         f"{what}; refusing a disk that is not what the package says",
                         path or name)


# --- detection from content ---------------------------------------------


def _read(src: ByteRange, start: int, length: int, label: str) -> bytes:
    try:
        return src.read(start, length)
    except OSError as e:
        raise DiskImageError(f"cannot read image: {e.strerror or e}", label) from e


def _u32le(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0] if len(b) >= off + 4 else 0


def _u32be(b: bytes, off: int) -> int:
    return struct.unpack_from(">I", b, off)[0] if len(b) >= off + 4 else 0


def _u64le(b: bytes, off: int) -> int:
    return struct.unpack_from("<Q", b, off)[0] if len(b) >= off + 8 else 0


def _vmdk_descriptor_type(head: bytes) -> str | None:
    """createType of a VMDK text descriptor, '' if unnamed, None if not one.

    Recognised as qemu's vmdk probe does: the first line that is neither
    blank nor a comment starts with ``version=``.
    """
    text = head.decode("latin-1")
    if not text.lstrip("\ufeff \t\r\n").lower().startswith("# disk descriptorfile"):
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith("version="):
                return None
            break
        else:
            return None
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "createType":
            return value.strip().strip('"')
    return ""


def _magic(fmt: str, head: bytes, tail: bytes) -> bool:
    for off, magic in _BY_NAME[fmt].magic:
        data = tail if off < 0 else head[off:]
        if data.startswith(magic):
            return True
    return False


def detect_format(src: ByteRange, *, name: str | None = None) -> str:
    """The image's format, decided from its bytes: one of ACCEPTED_FORMATS.

    Refuses (DiskImageError) what we will not open: an empty image, a VMDK
    text descriptor or a sparse VMDK whose embedded descriptor names other
    files (qemu would open whatever path they name), differencing VHD/VDI
    images, and everything in REFUSED_MAGIC.  Anything unknown is raw.
    """
    label = name or src.label or src.path
    if src.size <= 0:
        raise DiskImageError("image is empty", label)
    head = _read(src, 0, _HEAD, label)
    if not head:
        raise DiskImageError("image is empty (no bytes in its range)", label)
    tail = _read(src, src.size - SECTOR, SECTOR, label) if src.size >= SECTOR else b""

    if _magic("qcow2", head, tail):
        version = _u32be(head, 4)
        if version in (2, 3):
            return "qcow2"
        what = "qcow version 1 (legacy)" if version == 1 else f"qcow version {version}"
        raise DiskImageError(f"{what} images are not accepted", label)
    if _magic("qed", head, tail):
        return "qed"
    if _magic("vmdk", head, tail):
        if _u64le(head, 12) == 0:
            # capacity 0 makes qemu read the embedded descriptor and open
            # its extents: any host file the stranger names.
            raise DiskImageError(
                "sparse VMDK with capacity 0 defers to an embedded descriptor "
                "whose extents are separate files; not accepted", label)
        return "vmdk"
    if _magic("vdi", head, tail):
        image_type = _u32le(head, 0x4C)
        if image_type not in (1, 2):  # 1 normal (dynamic), 2 fixed
            raise DiskImageError(
                f"VDI image type {image_type} (undo/differencing) needs its "
                "parent image; not accepted", label)
        return "vdi"
    if _magic("vhdx", head, tail):
        return "vhdx"
    for footer in (head[:SECTOR], tail):
        if footer.startswith(b"conectix"):
            if _u32be(footer, 60) == 4:
                raise DiskImageError("differencing VHD needs its parent image; not accepted", label)
            return "vpc"
    desc = _vmdk_descriptor_type(head)
    if desc is not None:
        raise DiskImageError(
            f"is a VMDK text descriptor (createType {desc!r}) whose data is in "
            "separate extent files; ship one monolithicSparse or "
            "streamOptimized VMDK instead", label)
    for offset, magic, what, why in REFUSED_MAGIC:
        data = tail if offset < 0 else head[offset:]
        if data.startswith(magic):
            if magic == b"BZh" and not (head[3:4].isdigit() and head[4:10] == b"1AY&SY"):
                continue
            raise DiskImageError(f"{what} image: {why}", label)
    return "raw"
