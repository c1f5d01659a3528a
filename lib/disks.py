"""Disk images: the one module that runs qemu-img.

Images come from strangers and we run as root, so every call follows the
same rules:

* The format is decided here from the image's own bytes
  (:func:`detect_format`) and always passed with ``-f``; qemu-img never
  probes.  Formats qemu could read but we do not accept are refused by magic
  (:data:`REFUSED_MAGIC`), and so are headers that point qemu at other files.
* Images are opened through a ``json:`` filename (:mod:`ganeti_ovf.qemuspec`):
  a byte range of a real file, read-only, ``"backing": null``.  A member of
  an OVA is read in place, never extracted.
* Nothing outside the image is ever opened: backing files, external data
  files and VMDK extents are reported by ``qemu-img info`` (which does not
  open them) and refused by :func:`check_safe` before ``check`` or
  ``convert`` would.
* Every qemu-img run has CPU and address-space limits, as OpenStack gives
  ``info`` for the same reason (crafted headers make qemu-img burn CPU or
  memory); ``convert`` gets CPU in proportion to the virtual size.  The
  runner (:mod:`ganeti_ovf.qemuimg`) also ties qemu-img's life to ours.
* Sizes are checked before work grows with them (:func:`inspect`): the
  declared format, the VMDK header's bounds, the virtual size against the
  disk size and :data:`MAX_VIRTUAL_SIZE` come before ``check`` and ``map``.
* A compressed (streamOptimized) VMDK is checked, measured and converted
  by :mod:`ganeti_ovf.vmdkreader` instead: qemu-img would walk it one
  grain at a time, in time that grows with the capacity it declares
  rather than with its bytes.  ``info`` still opens it first.
  Formats themselves are described in :mod:`ganeti_ovf.diskformats`.
* Every failure is a :class:`~ganeti_ovf.errors.DiskImageError` whose one
  line names the image as the operator knows it (``disk1.vmdk``) and quotes
  qemu-img's last stderr line, like Ganeti's ``RunResult.fail_reason``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import qemuimg, qemuspec, sparse, vmdkreader
from .diskformats import (
    ACCEPTED_FORMATS,
    CHECKED_FORMATS,
    EXPORT_FORMATS,
    REFUSED_MAGIC,
    _read,
    check_declared,
    detect_format,
)
from .errors import DiskImageError
from .exportdir import human_size
from .model import ByteRange
from .qemuimg import Limits as _Limits
from .qemuspec import json_filename
from .staging import no_space

__all__ = [
    "inspect",
    "check_size",
    "MAX_VIRTUAL_SIZE",
    "data_bytes",
    "QEMU_IMG",
    "ACCEPTED_FORMATS",
    "EXPORT_FORMATS",
    "REFUSED_MAGIC",
    "ImageInfo",
    "detect_format",
    "json_filename",
    "image_info",
    "check_safe",
    "check_image",
    "convert_to_raw",
    "create_blank",
    "convert_from_raw",
    "virtual_size",
]

log = logging.getLogger(__name__)

#: Path of the qemu-img binary; None means ``shutil.which("qemu-img")``,
#: then ``/usr/bin/qemu-img``.  Tests and odd installations set it.
QEMU_IMG: str | None = None

_SECTOR = 512
_VMDK_NO_PARENT = 0xFFFFFFFF


# Parsing headers is where crafted images hurt (CVE-2015-5162 and kin);
# these are OpenStack's long-standing numbers for `qemu-img info`.  `check`
# and `map` walk all metadata, so they get more CPU.  Every call has
# limits (no qemu-img runs unbounded): `create` writes no data, so the info
# limits fit it; `convert` gets CPU in proportion to the size it converts
# (:func:`_convert_limits`).
_INFO_LIMITS = _Limits(address_space=1 << 30, cpu_seconds=30, wall_seconds=120)
# Metadata only, so half an hour of wall clock is generous even on slow storage.
_CHECK_LIMITS = _Limits(address_space=1 << 30, cpu_seconds=600, wall_seconds=1800)

#: `qemu-img convert`: CPU seconds granted whatever the size, and bytes of
#: virtual size per further CPU second.  qemu-img inflates a compressed
#: VMDK/qcow2 at well over 100 MiB/s of output per core and skips holes, so
#: 16 MiB/s is a bound no honest image reaches, while a crafted one that
#: makes qemu work per sector is stopped in proportion to what it claims.
#: No wall-clock bound: a big disk on slow storage takes long legitimately,
#: and a stuck qemu-img dies with us (PR_SET_PDEATHSIG) or on Ctrl-C.
CONVERT_CPU_FLOOR = 300
CONVERT_BYTES_PER_CPU_SECOND = 16 << 20
# qemu-img convert runs a pool of threads, each with its own stack and
# malloc arena: more address space than info, still a bound on a header
# that makes qemu allocate in proportion to a claimed size.
_CONVERT_ADDRESS_SPACE = 4 << 30

def _convert_limits(size: int) -> _Limits:
    """Limits for converting ``size`` virtual bytes."""
    return _Limits(address_space=_CONVERT_ADDRESS_SPACE,
                   cpu_seconds=CONVERT_CPU_FLOOR + size // CONVERT_BYTES_PER_CPU_SECOND)


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What ``qemu-img info`` says about an image, as values.

    ``filename`` is qemu's name for the opened image; :func:`check_safe`
    uses it to tell the image's own VMDK extent from a foreign one.
    ``actual_size`` is None when the image is a range inside a larger file
    (qemu would report the whole file's allocation).
    """

    format: str
    virtual_size: int
    actual_size: int | None = None
    backing_file: str | None = None
    data_file: str | None = None
    create_type: str | None = None
    extents: tuple[str, ...] = ()
    parent_cid: int | None = None
    dirty: bool = False
    corrupt: bool = False
    encrypted: bool = False
    filename: str = ""
    #: A compressed VMDK's layout, read by us (:mod:`ganeti_ovf.vmdkreader`):
    #: what stands in for ``qemu-img check``, ``map`` and ``convert``.
    stream: vmdkreader.Layout | None = None


def _u32le(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0] if len(b) >= off + 4 else 0


# --- running qemu-img ---------------------------------------------------


def _run(argv: list[str], *, name: str, limits: _Limits, ok: tuple[int, ...] = (0,),
         prefer: str = "", on_line: Callable[[str], None] | None = None) -> str:
    """:func:`qemuimg.run` with our qemu-img (:data:`QEMU_IMG`)."""
    return qemuimg.run(_qemu_img(name), argv, name=name, limits=limits, ok=ok, prefer=prefer,
                       on_line=on_line)


def _qemu_img(label: str) -> str:
    path = QEMU_IMG or shutil.which("qemu-img") or "/usr/bin/qemu-img"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise DiskImageError(
            f"qemu-img is not installed (install package qemu-utils; looked for {path!r})",
            label,
        )
    return path


# --- operations ---------------------------------------------------------


def _extent_key(filename: str) -> str:
    """Compare qemu node names by meaning, not by JSON spelling."""
    if filename.startswith("json:"):
        try:
            node = json.loads(filename[5:])
        except ValueError:
            return filename
        if (
            isinstance(node, dict)
            and set(node) == {"driver", "filename"}
            and node.get("driver") == "file"
        ):
            return str(node["filename"])
        return json.dumps(node, sort_keys=True)
    return filename


def _own_names(filename: str) -> set[str]:
    """Keys under which an image's own file may show up as a VMDK extent."""
    names = {_extent_key(filename)}
    if filename.startswith("json:"):
        try:
            node = json.loads(filename[5:])
        except ValueError:
            return names
        if isinstance(node, dict) and isinstance(node.get("file"), dict):
            names.add(_extent_key("json:" + json.dumps(node["file"])))
    return names


def _parse_info(text: str, fmt: str, whole: bool, label: str) -> ImageInfo:
    try:
        data = json.loads(text)
    except ValueError as e:
        raise DiskImageError("qemu-img info printed no JSON", label) from e
    size = data.get("virtual-size") if isinstance(data, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise DiskImageError(f"qemu-img info gave no virtual size ({size!r})", label)
    if data.get("format") != fmt:
        raise DiskImageError(
            f"qemu-img info reports format {data.get('format')!r}, expected {fmt!r}", label
        )
    specific = data.get("format-specific") or {}
    extra = (specific.get("data") or {}) if isinstance(specific, dict) else {}
    extents = tuple(
        str(e.get("filename", "")) for e in extra.get("extents", ()) if isinstance(e, dict)
    )
    actual = data.get("actual-size")
    parent = extra.get("parent-cid")
    return ImageInfo(
        format=fmt,
        virtual_size=size,
        actual_size=actual if whole and isinstance(actual, int) else None,
        backing_file=data.get("backing-filename") or data.get("full-backing-filename"),
        data_file=extra.get("data-file"),
        create_type=extra.get("create-type"),
        extents=extents,
        parent_cid=parent if isinstance(parent, int) else None,
        dirty=bool(data.get("dirty-flag", False)),
        corrupt=bool(extra.get("corrupt", False)),
        encrypted=bool(data.get("encrypted", False)),
        filename=str(data.get("filename", "")),
    )


def image_info(src: ByteRange, fmt: str, *, name: str | None = None) -> ImageInfo:
    """``qemu-img info --output=json`` on the range, as an ImageInfo.

    ``info`` never opens backing or external data files (verified with
    strace on qemu-img 7.2), so it is safe to run before check_safe.
    """
    label = name or src.label or src.path
    spec, whole = qemuspec.spec(src, fmt, label)
    out = _run(
        ["info", "-f", fmt, "--output=json", spec],
        name=label,
        limits=_INFO_LIMITS,
    )
    return _parse_info(out, fmt, whole, label)


def check_safe(info: ImageInfo, *, name: str) -> None:
    """Refuse an image that would make qemu read anything but itself.

    A backing file, an external data file, a VMDK extent that is another
    file, a VMDK delta (parent CID) all mean data from elsewhere; a corrupt
    or encrypted image cannot be converted faithfully.
    """
    if info.backing_file:
        raise DiskImageError(
            f"{info.format} image has a backing file {info.backing_file!r}; "
            "only self-contained images are accepted",
            name,
        )
    if info.data_file:
        raise DiskImageError(
            f"{info.format} image has an external data file {info.data_file!r}; "
            "only self-contained images are accepted",
            name,
        )
    if info.parent_cid is not None and info.parent_cid != _VMDK_NO_PARENT:
        raise DiskImageError(
            f"VMDK is a delta disk (parentCID {info.parent_cid:#010x}) whose parent "
            "is not in the package",
            name,
        )
    own = _own_names(info.filename)
    for extent in info.extents:
        if _extent_key(extent) not in own:
            raise DiskImageError(
                f"VMDK extent {extent!r} is a separate file; only single-file VMDKs are accepted",
                name,
            )
    if info.encrypted:
        raise DiskImageError(f"{info.format} image is encrypted; not accepted", name)
    if info.corrupt:
        raise DiskImageError(f"{info.format} image is marked corrupt", name)


def _vdi_truncated(src: ByteRange, label: str) -> str | None:
    """qemu's VDI check ignores the file's length; compare it ourselves."""
    head = _read(src, 0, 0x190, label)
    if _u32le(head, 0x44) != 0x00010001:  # version 1.1, the one qemu reads
        return None
    offset_data, block_size = _u32le(head, 0x158), _u32le(head, 0x178)
    need = offset_data + _u32le(head, 0x184) * block_size  # blocks allocated
    if src.size < need:
        return f"VDI image is truncated: its header needs {need} bytes, it has {src.size}"
    return None


def check_image(src: ByteRange, fmt: str, *, name: str) -> None:
    """Refuse an image whose metadata points outside its byte range.

    Reads past the end of a range come back as zeros (qemu's block layer),
    so a truncated image or a range cut short converts "successfully" into
    a wrong disk; ``qemu-img check`` catches that for qcow2, qed, vmdk and
    vhdx, and we check VDI's length ourselves (vpc fails at open, raw has
    no metadata).  Call after check_safe: ``check`` opens external data
    files.
    """
    spec, _ = qemuspec.spec(src, fmt, name)
    if fmt == "vdi":
        problem = _vdi_truncated(src, name)
        if problem:
            raise DiskImageError(problem, name)
    if fmt not in CHECKED_FORMATS:
        return
    # Exit codes: 0 clean, 3 leaked clusters only (harmless to a reader),
    # 63 no check for this format; 2 corruptions, 1 the check failed.
    try:
        _run(
            ["check", "-f", fmt, "--output=json", spec],
            name=name,
            limits=_CHECK_LIMITS,
            ok=(0, 3, 63),
            prefer="ERROR",
        )
    except DiskImageError as e:
        problem = f"image check failed (truncated or damaged?): {e.problem}"
        raise DiskImageError(problem, name) from e


#: The largest virtual disk accepted: 64 TiB, the VHDX maximum and above
#: VMware's 62 TiB, so no image any hypervisor makes is refused, while a
#: header claiming a petabyte is stopped before qemu-img walks it.
MAX_VIRTUAL_SIZE = 64 << 40


def check_size(size: int, *, name: str, limit: int | None = None,
               what: str = "image", path: str | None = None) -> None:
    """Refuse a virtual ``size`` above :data:`MAX_VIRTUAL_SIZE`, or above
    ``limit`` (the disk size the descriptor or the operator gives)."""
    where = path or name
    if limit and size > limit:
        raise DiskImageError(f"{what} {name!r} holds {size} bytes, more than the disk size "
                             f"{limit}", where)
    if size > MAX_VIRTUAL_SIZE:
        raise DiskImageError(f"{what} {name!r} claims a virtual size of {size} bytes "
                             f"({human_size(size)}); more than {human_size(MAX_VIRTUAL_SIZE)} "
                             "is not accepted", where)


def inspect(src: ByteRange, *, name: str, limit: int | None = None,
            declared: str | None = None, path: str | None = None) -> tuple[str, ImageInfo]:
    """Format (from content) and facts of an untrusted image, refusing any
    that is unsafe, damaged, or not what the package says -- the one
    sequence the importer and ``verify`` share.

    Cheap checks come before the ones whose work grows with the image:
    detect, the declared format ``declared`` (an ovf:format URI), the
    VMDK header's own bounds, ``info``, the virtual size against ``limit``
    and :data:`MAX_VIRTUAL_SIZE`; only then ``check_safe`` and ``check``.
    Size errors name ``path`` (the package) when given.
    """
    fmt = detect_format(src, name=name)
    check_declared(declared, fmt, name=name, path=path)
    return fmt, _inspect_as(src, fmt, name=name, limit=limit, path=path)


def _inspect_as(src: ByteRange, fmt: str, *, name: str, limit: int | None = None,
                path: str | None = None) -> ImageInfo:
    """:func:`inspect` once the format is known: the VMDK header's bounds,
    ``info``, the size, check_safe, then the metadata check -- qemu-img's,
    or for a compressed VMDK our reading of its grain tables (qemu-img
    walks those grain by grain, in time that grows with the declared
    capacity)."""
    header = vmdkreader.check_header(src, name=name) if fmt == "vmdk" else None
    info = image_info(src, fmt, name=name)
    check_size(info.virtual_size, name=name, limit=limit, path=path)
    check_safe(info, name=name)
    if header is None or not header.compressed:
        check_image(src, info.format, name=name)
        return info
    layout = vmdkreader.scan(src, name=name)
    if layout.virtual_size != info.virtual_size:
        raise DiskImageError(f"VMDK holds {layout.virtual_size} bytes by its header, "
                             f"{info.virtual_size} by qemu-img", name)
    return dataclasses.replace(info, stream=layout)


class _DataCounter:
    """Sums the data extents of ``qemu-img map --output=json``, one line at
    a time: qemu prints one extent per line, and a crafted image can make
    millions of them, so the whole answer is never held."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0

    def __call__(self, line: str) -> None:
        text = line.strip().lstrip("[").rstrip("],").strip()
        if not text:
            return
        try:
            extent = json.loads(text)
            if extent.get("data"):
                self.total += int(extent["length"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DiskImageError(f"qemu-img map gave no usable answer: {e}", self.name) from e


def data_bytes(src: ByteRange, fmt: str, *, name: str, info: ImageInfo | None = None) -> int:
    """Bytes of guest data the image holds (its allocated extents), an upper
    bound of what its sparse raw conversion occupies.  For raw, the range's
    data (SEEK_DATA/SEEK_HOLE: holes of a sparse file or OVA do not count);
    for a compressed VMDK its grains, counted when ``info`` was made."""
    if fmt == "raw":
        return sparse.allocated(src.path, src.offset, src.size)
    if info is not None and info.stream is not None:
        return info.stream.data_bytes
    spec, _ = qemuspec.spec(src, fmt, name)
    count = _DataCounter(name)
    _run(["map", "-f", fmt, "--output=json", spec], name=name, limits=_CHECK_LIMITS,
         on_line=count)
    return count.total


def convert_to_raw(src: ByteRange, fmt: str, dest: str, *, name: str,
                   inspected: ImageInfo | None = None) -> None:
    """Write the image's guest-visible bytes to a new sparse raw file ``dest``.

    Runs info, check_safe and check_image first, so no caller can convert
    an unsafe image by forgetting a step; ``inspected`` is what
    :func:`inspect` just said about this very range (the importer runs it
    before planning), which saves two qemu-img runs per disk.  Zero runs
    become holes (qemu's default ``-S 4k`` on a freshly created raw file).
    No ``-W``: qemu recommends out-of-order writes only for preallocated
    block devices, and on a sparse file they fragment it.  CPU is bounded
    in proportion to the virtual size (:data:`CONVERT_BYTES_PER_CPU_SECOND`).
    """
    info = inspected if inspected is not None else _inspect_as(src, fmt, name=name)
    if info.stream is not None:
        vmdkreader.convert(src, info.stream, os.path.abspath(dest), name=name)
        return
    spec, _ = qemuspec.spec(src, fmt, name)
    try:
        _run(
            ["convert", "-q", "-f", fmt, "-O", "raw", spec, os.path.abspath(dest)],
            name=name,
            limits=_convert_limits(info.virtual_size),
        )
    except DiskImageError as e:
        raise _full_disk(e, dest) from e


def _full_disk(e: DiskImageError, dest: str) -> DiskImageError:
    """qemu-img's ENOSPC/EDQUOT as our one line: the file and the file system."""
    for code in (errno.ENOSPC, errno.EDQUOT):
        if e.problem.endswith(os.strerror(code)):
            full = no_space(OSError(code, os.strerror(code)), dest, DiskImageError)
            if isinstance(full, DiskImageError):
                return full
    return e


def create_blank(dest: str, size: int) -> None:
    """A new raw image of ``size`` zero bytes (a hole), for disks with no file."""
    label = os.path.basename(dest) or dest
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % _SECTOR:
        raise DiskImageError(f"blank disk size {size!r} is not a positive multiple of 512", label)
    check_size(size, name=label, what="blank disk")
    _run(["create", "-q", "-f", "raw", os.path.abspath(dest), str(size)], name=label,
         limits=_INFO_LIMITS)


def convert_from_raw(src_path: str, dest: str, out_fmt: str, *, name: str,
                     size: int | None = None) -> None:
    """Write raw ``src_path`` (a Ganeti dump, or an instance's file or block
    device; its first ``size`` bytes) as ``out_fmt`` into new ``dest``.

    The input is opened as raw explicitly, never probed: a guest can write
    a qcow2 header into its own disk.
    """
    if out_fmt not in EXPORT_FORMATS:
        choices = ", ".join(sorted(EXPORT_FORMATS))
        raise DiskImageError(f"output format {out_fmt!r} is not one of {choices}", name)
    spec = qemuspec.trusted_spec(src_path, "raw", name, size)
    _run(
        [
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            out_fmt,
            *EXPORT_FORMATS[out_fmt],
            spec,
            os.path.abspath(dest),
        ],
        name=name,
        limits=_convert_limits(size if size is not None else _length(src_path)),
    )


def _length(path: str) -> int:
    """Bytes of a file or block device (st_size is 0 for a device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0  # trusted_spec has reported a missing file already
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def virtual_size(path: str, fmt: str) -> int:
    """The guest-visible size in bytes of the image file ``path`` read as ``fmt``."""
    label = os.path.basename(path) or path
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise DiskImageError(f"cannot read {path!r}: {e.strerror or e}", label) from e
    return image_info(ByteRange(path, 0, size), fmt, name=label).virtual_size
