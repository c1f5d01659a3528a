"""Disk images: the one module that runs qemu-img.

Images come from strangers and we run as root, so every call follows the
same rules:

* The format is decided here from the image's own bytes
  (:func:`detect_format`) and always passed with ``-f``; qemu-img never
  probes.  Formats qemu could read but we do not accept are refused by magic
  (:data:`REFUSED_MAGIC`), and so are headers that point qemu at other files.
* Images are opened through a ``json:`` filename (:func:`json_filename`):
  a byte range of a real file, read-only, ``"backing": null``.  A member of
  an OVA is read in place, never extracted.
* Nothing outside the image is ever opened: backing files, external data
  files and VMDK extents are reported by ``qemu-img info`` (which does not
  open them) and refused by :func:`check_safe` before ``check`` or
  ``convert`` would.
* ``info`` and ``check`` run under CPU and address-space limits, as
  OpenStack does for the same reason (crafted headers make qemu-img burn
  CPU or memory).
* Every failure is a :class:`~ganeti_ovf.errors.DiskImageError` whose one
  line names the image as the operator knows it (``disk1.vmdk``) and quotes
  qemu-img's last stderr line, like Ganeti's ``RunResult.fail_reason``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import sparse
from .errors import DiskImageError
from .model import ByteRange
from .staging import no_space

__all__ = [
    "inspect",
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

#: Formats we hand to qemu-img as ``-f``: the values detect_format returns.
ACCEPTED_FORMATS = frozenset({"raw", "qcow2", "qed", "vmdk", "vdi", "vhdx", "vpc"})

#: Output formats of :func:`convert_from_raw` and the ``-o`` options each
#: gets: streamOptimized is the VMDK that ovftool, ESXi and VirtualBox
#: import; compat=1.1 is the qcow2 every supported qemu reads.
EXPORT_FORMATS: dict[str, tuple[str, ...]] = {
    "raw": (),
    "qcow2": ("-o", "compat=1.1"),
    "vmdk": ("-o", "subformat=streamOptimized"),
}

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

_SECTOR = 512
_HEAD = 4096  # bytes of the start we look at; every magic we know is inside
_VMDK_NO_PARENT = 0xFFFFFFFF


class _Limits(NamedTuple):
    """Resource limits for one qemu-img run (0 = none)."""

    address_space: int = 0  # bytes, RLIMIT_AS
    cpu_seconds: int = 0  # RLIMIT_CPU; SIGXCPU kills qemu-img past it
    wall_seconds: float | None = None  # subprocess timeout


# Parsing headers is where crafted images hurt (CVE-2015-5162 and kin);
# these are OpenStack's long-standing numbers for `qemu-img info`.  `check`
# walks all metadata, so it gets more CPU; `convert` is bounded by the data.
_INFO_LIMITS = _Limits(address_space=1 << 30, cpu_seconds=30, wall_seconds=120)
_CHECK_LIMITS = _Limits(address_space=1 << 30, cpu_seconds=600)
_NO_LIMITS = _Limits()

# Runs in a fresh interpreter, sets the limits, then becomes qemu-img: the
# thread-safe equivalent of preexec_fn (cf. oslo_concurrency.prlimit).  The
# CPU hard limit sits above the soft one so the kill is a telling SIGXCPU,
# not the SIGKILL that equal limits give.
_TRAMPOLINE = (
    "import os, resource, sys\n"
    "a, c = int(sys.argv[1]), int(sys.argv[2])\n"
    "if a: resource.setrlimit(resource.RLIMIT_AS, (a, a))\n"
    "if c: resource.setrlimit(resource.RLIMIT_CPU, (c, c + 5))\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)

# Nothing from the caller's environment: no QEMU_*/LD_* surprises, C locale
# so messages are the English ones we match and quote.
_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


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


# --- reading headers ----------------------------------------------------


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
    tail = _read(src, src.size - _SECTOR, _SECTOR, label) if src.size >= _SECTOR else b""

    if head.startswith(b"QFI\xfb"):
        version = _u32be(head, 4)
        if version in (2, 3):
            return "qcow2"
        what = "qcow version 1 (legacy)" if version == 1 else f"qcow version {version}"
        raise DiskImageError(f"{what} images are not accepted", label)
    if head.startswith(b"QED\x00"):
        return "qed"
    if head.startswith(b"KDMV"):
        if _u64le(head, 12) == 0:
            # capacity 0 makes qemu read the embedded descriptor and open
            # its extents: any host file the stranger names.
            raise DiskImageError(
                "sparse VMDK with capacity 0 defers to an embedded descriptor "
                "whose extents are separate files; not accepted",
                label,
            )
        return "vmdk"
    if head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        image_type = _u32le(head, 0x4C)
        if image_type not in (1, 2):  # 1 normal (dynamic), 2 fixed
            raise DiskImageError(
                f"VDI image type {image_type} (undo/differencing) needs its "
                "parent image; not accepted",
                label,
            )
        return "vdi"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    for footer in (head[:_SECTOR], tail):
        if footer.startswith(b"conectix"):
            disk_type = _u32be(footer, 60)
            if disk_type == 4:
                raise DiskImageError("differencing VHD needs its parent image; not accepted", label)
            return "vpc"
    desc = _vmdk_descriptor_type(head)
    if desc is not None:
        raise DiskImageError(
            f"is a VMDK text descriptor (createType {desc!r}) whose data is in "
            "separate extent files; ship one monolithicSparse or "
            "streamOptimized VMDK instead",
            label,
        )
    for offset, magic, what, why in REFUSED_MAGIC:
        data = tail if offset < 0 else head[offset:]
        if data.startswith(magic):
            if magic == b"BZh" and not (head[3:4].isdigit() and head[4:10] == b"1AY&SY"):
                continue
            raise DiskImageError(f"{what} image: {why}", label)
    return "raw"


# --- json: filenames ----------------------------------------------------


def _file_node(src: ByteRange, label: str) -> tuple[dict[str, Any], bool]:
    """qemu's node for the range, and whether it is the whole file.

    qemu's raw driver wants ``size`` in whole 512-byte sectors, so a range
    that ends mid-sector is widened to the end of that sector -- allowed only
    when the range starts on a sector boundary, as tar members do, so the
    extra bytes are the member's own tar padding, never another member.
    """
    path = os.path.abspath(src.path)
    shown = src.label or src.path
    try:
        path.encode("utf-8")  # qemu's JSON is UTF-8; a stray byte names another file
    except UnicodeEncodeError as e:
        raise DiskImageError(f"file name {shown!r} is not valid UTF-8", label) from e
    try:
        st = os.stat(path)
    except OSError as e:
        raise DiskImageError(f"cannot read {shown!r}: {e.strerror or e}", label) from e
    if not stat.S_ISREG(st.st_mode):
        raise DiskImageError(f"{shown!r} is not a regular file", label)
    if src.size <= 0:
        raise DiskImageError("image is empty", label)
    if src.offset < 0 or src.offset + src.size > st.st_size:
        raise DiskImageError(
            f"byte range {src.offset}+{src.size} runs past the end of "
            f"{shown!r} ({st.st_size} bytes)",
            label,
        )
    file_node: dict[str, Any] = {"driver": "file", "filename": path}
    if src.offset == 0 and src.size == st.st_size:
        return file_node, True
    size = -(-src.size // _SECTOR) * _SECTOR
    if size != src.size and (src.offset % _SECTOR or src.offset + size > st.st_size):
        raise DiskImageError(
            f"byte range {src.offset}+{src.size} of {shown!r} cannot be read "
            "in place (qemu needs whole 512-byte sectors)",
            label,
        )
    node = {"driver": "raw", "offset": src.offset, "size": size, "file": file_node}
    return node, False


def _check_format(fmt: str, label: str) -> None:
    if fmt not in ACCEPTED_FORMATS:
        raise DiskImageError(f"disk format {fmt!r} is not accepted", label)


def _spec(src: ByteRange, fmt: str, label: str) -> tuple[str, bool]:
    _check_format(fmt, label)
    node, whole = _file_node(src, label)
    # read-only: not even `check -r` could write; backing null: never open
    # a backing file, whatever the header says (every driver accepts it).
    spec = {"driver": fmt, "read-only": True, "backing": None, "file": node}
    return "json:" + json.dumps(spec, separators=(",", ":")), whole


def json_filename(src: ByteRange, fmt: str) -> str:
    """The ``json:`` filename opening ``src`` as ``fmt``: read-only, no backing.

    Validates the range against the file (DiskImageError) so qemu is never
    asked for bytes that are not there.
    """
    return _spec(src, fmt, src.path)[0]


# --- running qemu-img ---------------------------------------------------


def _qemu_img(label: str) -> str:
    path = QEMU_IMG or shutil.which("qemu-img") or "/usr/bin/qemu-img"
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise DiskImageError(
            f"qemu-img is not installed (install package qemu-utils; looked for {path!r})",
            label,
        )
    return path


_JSON_NAME = re.compile(r"json:\{[^']*\}")


def _reason(stderr: str, argv: list[str], name: str, prefer: str = "") -> str:
    """The stderr line the operator needs, with json: specs shown as ``name``.

    The last non-empty line, like Ganeti's fail_reason; or the first line
    starting with ``prefer`` (qemu-img check ends with a vaguer summary).
    """
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if prefer:
        lines = [ln for ln in lines if ln.startswith(prefer)][:1] or lines
    if not lines:
        return ""
    line = lines[-1]
    for arg in argv:
        if arg.startswith("json:"):
            line = line.replace(arg, name)
    line = _JSON_NAME.sub(lambda _m: name, line)  # qemu's own spelling of inner nodes
    return line.removeprefix("qemu-img: ").strip()


_PINNED_FD = re.compile(r"/proc/self/fd/(\d+)")


def _run(
    argv: list[str],
    *,
    name: str,
    limits: _Limits = _NO_LIMITS,
    ok: tuple[int, ...] = (0,),
    prefer: str = "",
) -> str:
    """Run ``qemu-img argv`` and return its stdout.

    Raises DiskImageError naming ``name`` and saying why: exit code or
    signal plus qemu-img's last stderr line, timeout, or qemu-img missing.
    Exit codes in ``ok`` count as success; ``prefer`` picks the first
    stderr line with that prefix over the last line.
    """
    qemu = _qemu_img(name)
    sub = argv[0] if argv else "?"
    if limits.address_space or limits.cpu_seconds:
        cmd = [
            sys.executable or "/usr/bin/python3",
            "-I",
            "-S",
            "-c",
            _TRAMPOLINE,
            str(limits.address_space),
            str(limits.cpu_seconds),
            qemu,
            *argv,
        ]
    else:
        cmd = [qemu, *argv]
    log.debug("running %s", " ".join([qemu, *argv]))
    # Files a package holds open are named /proc/self/fd/N; qemu-img gets
    # the same descriptors, so it reads the very file that was checked.
    fds = tuple(sorted({int(n) for a in argv for n in _PINNED_FD.findall(a)}))
    try:
        res = subprocess.run(
            cmd,
            pass_fds=fds,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_ENV,
            cwd="/",
            timeout=limits.wall_seconds,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise DiskImageError(
            f"qemu-img {sub} did not finish within {limits.wall_seconds:g} s", name
        ) from e
    except OSError as e:
        raise DiskImageError(f"cannot run qemu-img: {e.strerror or e}", name) from e
    stdout = res.stdout.decode("utf-8", "replace")
    stderr = res.stderr.decode("utf-8", "replace")
    if res.returncode in ok:
        return stdout
    log.debug("qemu-img %s exited %d, stderr:\n%s", sub, res.returncode, stderr)
    last = _reason(stderr, argv, name, prefer)
    if res.returncode < 0:
        signum = -res.returncode
        try:
            signame = signal.Signals(signum).name
        except ValueError:
            signame = "unknown"
        problem = f"qemu-img {sub} was killed by signal {signum} ({signame})"
        if signum == signal.SIGXCPU:
            problem += f": CPU time limit of {limits.cpu_seconds} s exceeded"
        elif last:
            problem += f": {last}"
    else:
        problem = f"qemu-img {sub} exited with code {res.returncode}"
        if last:
            problem += f": {last}"
    raise DiskImageError(problem, name)


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
    spec, whole = _spec(src, fmt, label)
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


# Formats whose qemu-img check looks at where metadata points.
_CHECKED_FORMATS = frozenset({"qcow2", "qed", "vmdk", "vhdx"})


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
    spec, _ = _spec(src, fmt, name)
    if fmt == "vdi":
        problem = _vdi_truncated(src, name)
        if problem:
            raise DiskImageError(problem, name)
    if fmt not in _CHECKED_FORMATS:
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


def inspect(src: ByteRange, *, name: str) -> tuple[str, ImageInfo]:
    """Format (from content) and facts of an untrusted image, refusing any
    that is unsafe or damaged: detect, info, check_safe, check_image -- the
    one sequence the importer and ``verify`` share."""
    fmt = detect_format(src, name=name)
    info = image_info(src, fmt, name=name)
    check_safe(info, name=name)
    check_image(src, fmt, name=name)
    return fmt, info


def data_bytes(src: ByteRange, fmt: str, *, name: str) -> int:
    """Bytes of guest data the image holds (its allocated extents), an upper
    bound of what its sparse raw conversion occupies.  For raw, the range's
    data (SEEK_DATA/SEEK_HOLE: holes of a sparse file or OVA do not count)."""
    if fmt == "raw":
        return sparse.allocated(src.path, src.offset, src.size)
    spec, _ = _spec(src, fmt, name)
    out = _run(["map", "-f", fmt, "--output=json", spec], name=name, limits=_CHECK_LIMITS)
    try:
        extents = json.loads(out)
        return sum(int(e["length"]) for e in extents if e.get("data"))
    except (ValueError, KeyError, TypeError) as e:
        raise DiskImageError(f"qemu-img map gave no usable answer: {e}", name) from e


def convert_to_raw(src: ByteRange, fmt: str, dest: str, *, name: str,
                   inspected: bool = False) -> None:
    """Write the image's guest-visible bytes to a new sparse raw file ``dest``.

    Runs info, check_safe and check_image first, so no caller can convert
    an unsafe image by forgetting a step; ``inspected`` says the caller has
    just run :func:`inspect` on this very range (the importer does, before
    planning), which saves two qemu-img runs per disk.  Zero runs become holes (qemu's
    default ``-S 4k`` on a freshly created raw file).  No ``-W``: qemu
    recommends out-of-order writes only for preallocated block devices, and
    on a sparse file they fragment it.
    """
    if not inspected:
        check_safe(image_info(src, fmt, name=name), name=name)
        check_image(src, fmt, name=name)
    spec, _ = _spec(src, fmt, name)
    try:
        _run(
            ["convert", "-q", "-f", fmt, "-O", "raw", spec, os.path.abspath(dest)],
            name=name,
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
    _run(["create", "-q", "-f", "raw", os.path.abspath(dest), str(size)], name=label)


def _trusted_spec(path: str, fmt: str, label: str, size: int | None = None) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        raise DiskImageError(f"cannot read {path!r}: {e.strerror or e}", label) from e
    if stat.S_ISBLK(st.st_mode):
        # An instance's own block device (blockdev, LVM), read in place;
        # ``size`` caps it at the disk size Ganeti records.
        file_node: dict[str, Any] = {"driver": "host_device", "filename": os.path.abspath(path)}
        if size is not None:
            file_node = {"driver": "raw", "offset": 0, "size": size, "file": file_node}
        spec = {"driver": fmt, "read-only": True, "backing": None, "file": file_node}
        return "json:" + json.dumps(spec, separators=(",", ":"))
    return _spec(ByteRange(path, 0, st.st_size if size is None else size), fmt, label)[0]


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
    spec = _trusted_spec(src_path, "raw", name, size)
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
    )


def virtual_size(path: str, fmt: str) -> int:
    """The guest-visible size in bytes of the image file ``path`` read as ``fmt``."""
    label = os.path.basename(path) or path
    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise DiskImageError(f"cannot read {path!r}: {e.strerror or e}", label) from e
    return image_info(ByteRange(path, 0, size), fmt, name=label).virtual_size
