"""Ganeti export directory -> OVF/OVA package: the export workflow.

Order matters, as in the importer: config.ini and every dump are checked
(names, links, sizes, content) and free space is estimated *before*
anything is written; output goes to a staging sibling that is renamed at
the very end (or removed on any error, Ctrl-C included).

Bytes are handled once.  A raw dump is read once, sparse-aware (holes are
skipped, zero runs written as holes), and streamed into its file, its
gzip stream, its chunks or its OVA member, with the manifest digest
computed in that same pass.  vmdk and qcow2 are made by qemu-img
(``disks.convert_from_raw``): straight into the package directory when no
further processing is needed (the digest then costs one read of the
result), otherwise into a temporary file that is streamed (and digested)
into its destination, then deleted.  qemu-img cannot write into the OVA
itself: it needs its own named, seekable file (it creates the image, then
seeks back to update metadata: qcow2 tables, the streamOptimized footer),
while a tar member is a byte range whose header, holding its size, comes
before the data.

DSP0243 puts the descriptor, manifest and certificate *first* in an OVA,
yet they describe (sizes) and digest the disks written after them.  So
their members are reserved up front with sizes that are safe upper bounds
(:mod:`ovawriter`) and filled at the end, padded with spaces (descriptor,
manifest: as VirtualBox pads its manifests) or newlines (certificate).

The default output directory is the current directory (the CLI's choice,
documented there); the package is ``OUTPUT_DIR/NAME/NAME.ovf`` with
``NAME.mf``, ``NAME.cert`` and ``NAME-diskN.<fmt>`` beside it, or
``OUTPUT_DIR/NAME.ova``.  [os_private] values are never written.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import math
import os
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from . import disks as diskmod
from . import integrity
from .descriptor.writer import VERSIONS, write_descriptor
from .errors import (
    DescriptorError,
    DiskImageError,
    ExportDirError,
    IntegrityError,
    OvfError,
    PackageError,
    UsageError,
)
from .exportdir import (
    MIB,
    ExportConfig,
    ExportDisk,
    check_free_space,
    check_instance_name,
    read_config,
    staging,
    staging_file,
)
from .model import (
    ByteRange,
    Disk,
    Envelope,
    FileRef,
    GanetiInfo,
    GanetiNic,
    Network,
    Nic,
    VirtualSystem,
)
from .ovawriter import NAME_MAX, OvaWriter, all_zero, pwrite_all
from .progress import meter

__all__ = [
    "ExportRequest",
    "ExportResult",
    "DiskPlan",
    "FORMATS",
    "FORMAT_URIS",
    "NIC_MODEL",
    "MIN_CHUNK_SIZE",
    "locate_config",
    "check_dump",
    "is_dump8_stream",
    "build_envelope",
    "estimate_space",
    "export_config",
    "export_package",
]

log = logging.getLogger(__name__)

FORMATS = ("vmdk", "qcow2", "raw")
FORMAT_URIS = {
    "vmdk": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    "qcow2": "http://www.gnome.org/~markmc/qcow-image-format.html",
    "raw": "http://en.wikipedia.org/wiki/Byte",  # upstream Ganeti's URI for raw
}
NIC_MODEL = "E1000"  # the adapter both VMware and VirtualBox accept (see descriptor.writer)
MIN_CHUNK_SIZE = MIB
VIDEO_MEMORY = 12 * MIB

_BUF = 1 << 20
_ZEROS = bytes(_BUF)
_SIZE_PLACEHOLDER = 10**19 - 1  # more digits than any real size: descriptor upper bound
_EC_SIGNATURE_SLACK = 32  # bytes an ECDSA signature may outgrow our trial one

# dump(8) tape header: c_type (TS_TAPE = 1) at 0, c_magic at 24 (after six
# 32-bit fields).  60011 OFS_MAGIC, 60012 NFS_MAGIC (Linux dump), 19540119
# FS_UFS2_MAGIC (BSD).  As photorec's file_dump.c recognises it.
_DUMP_MAGICS = (60011, 60012, 19540119)
_TS_TAPE = 1


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What the operator asked for (the CLI's options, as values)."""

    name: str | None = None  # package/instance name; default config.ini's
    disk_format: str = "vmdk"  # vmdk (streamOptimized), qcow2 or raw
    compress: bool = False  # gzip every disk file (ovf:compression="gzip")
    external: bool = False  # no Ganeti section
    ova: bool = False
    ovf_version: str = "1.0"
    manifest: str = "SHA256"  # SHA1, SHA256 or SHA512
    sign_key: str | None = None  # PEM private key file
    sign_cert: str | None = None  # PEM certificate file
    chunk_size: int | None = None  # bytes; files split as NAME.000000000, ...


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: str  # the .ova, or the package directory
    descriptor: str  # the .ovf: its path, or for an OVA its member name
    files: tuple[str, ...]  # every file/member, in package order
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DiskPlan:
    """One disk of the export, checked, before anything is written."""

    index: int
    capacity: int
    dump: str | None  # checked absolute path; None: blank disk
    allocated: int  # bytes the dump occupies on disk
    file_id: str | None
    href: str | None


@dataclass(frozen=True, slots=True)
class _Written:
    """One file of the package as written: name, size, digest (hex)."""

    name: str
    size: int
    digest: str


# --------------------------------------------------------------- checking input

def locate_config(source: str) -> tuple[str, str]:
    """(export directory, config.ini path) from either of them."""
    config = os.path.join(source, "config.ini") if os.path.isdir(source) else source
    return os.path.dirname(os.path.abspath(config)), config


def is_dump8_stream(head: bytes) -> bool:
    """Whether ``head`` starts with a dump(8) tape header (either byte order)."""
    if len(head) < 28:
        return False
    for order in ("<", ">"):
        c_type = struct.unpack_from(order + "i", head, 0)[0]
        magic = struct.unpack_from(order + "i", head, 24)[0]
        if c_type == _TS_TAPE and magic in _DUMP_MAGICS:
            return True
    return False


def check_dump(export_dir: str, disk: ExportDisk, index: int, *, os_name: str,
               config: str) -> str:
    """The dump's path, once it is known to be a raw image of the disk's size.

    A dump is whatever the OS's export script wrote: noop writes the raw
    disk, debootstrap a dump(8) stream of the root file system.  Only the
    former is a disk image, so everything else is refused, saying why.
    Dumps are read from the export directory only: a plain name, no link.
    """
    name = disk.dump or ""
    what = f"disk{index}_dump {name!r}"
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ExportDirError(f"{what} is not a file name inside the export directory", config)
    path = os.path.join(export_dir, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ExportDirError(f"{what}: no such file in the export directory", config) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ExportDirError(f"{what} is a symbolic link; dumps are read from the "
                                 "export directory itself", config) from None
        raise ExportDirError(f"{what}: cannot read: {e.strerror}", config) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ExportDirError(f"{what} is not a regular file", config)
        head = os.pread(fd, 1024, 0)
    finally:
        os.close(fd)
    if is_dump8_stream(head):
        raise ExportDirError(
            f"{what} is a dump(8) file-system stream, not a raw disk image: the export "
            f"script of OS {os_name!r} writes dump(8) (as debootstrap's does); only OSes "
            "that export the raw disk (such as noop) can be converted", config)
    if st.st_size != disk.size:
        raise ExportDirError(
            f"{what} is {st.st_size} bytes, not disk{index}_size "
            f"{disk.size // MIB} MiB ({disk.size} bytes), so it is not a raw disk image: "
            f"the export script of OS {os_name!r} wrote something else", config)
    # Exactly the disk's size: a raw disk image, opened as raw from here on
    # (never probed).  Guest data may begin like an image format or a
    # compressed stream; that is the guest's business, said as a warning.
    try:
        fmt = diskmod.detect_format(ByteRange(path, 0, st.st_size), name=name)
    except DiskImageError as e:
        fmt = e.problem
    if fmt != "raw":
        log.warning("%s: %s has the disk's exact size but begins like %s; exported as the "
                    "raw disk it is", config, what, fmt if " " in fmt else f"a {fmt} image")
    return path


def _refuse_ambiguous_raw(path: str, index: int, config: str) -> None:
    """A raw disk file whose guest data begins like an image header would be
    read as that image by content-sniffing importers (ours included): only a
    wrapping format (vmdk, qcow2) keeps such a disk unambiguous."""
    try:
        fmt = diskmod.detect_format(ByteRange(path, 0, _byte_size(path)), name=path)
    except DiskImageError as e:
        fmt = e.problem
    if fmt != "raw":
        raise UsageError(f"disk {index} begins like {fmt if ' ' in fmt else 'a ' + fmt + ' image'}"
                         "; as a raw file it would be misread: use --format vmdk or qcow2",
                         config)


def _allocated(path: str) -> int:
    """Bytes a dump occupies: its blocks for a file, its size for a device."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ExportDirError(f"cannot read: {e.strerror}", path) from e
    return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else _byte_size(path)


def _byte_size(path: str) -> int:
    """Size of a regular file or a block device (whose st_size is 0)."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError as e:
        raise ExportDirError(f"cannot read: {e.strerror}", path) from e


def _check_request(req: ExportRequest) -> None:
    if req.disk_format not in FORMATS:
        raise UsageError(f"disk format {req.disk_format!r} is not one of "
                         f"{', '.join(FORMATS)}")
    if req.ovf_version not in VERSIONS:
        raise UsageError(f"OVF version {req.ovf_version!r} is not one of {', '.join(VERSIONS)}")
    integrity.new_hasher(req.manifest)  # UsageError for an unknown algorithm
    if req.chunk_size is not None and req.chunk_size < MIN_CHUNK_SIZE:
        raise UsageError(f"chunk size {req.chunk_size} is below the minimum of "
                         f"{MIN_CHUNK_SIZE} bytes (1 MiB)")
    if (req.sign_key is None) != (req.sign_cert is None):
        raise UsageError("--sign KEY and --cert CERT go together")


def _package_name(cfg: ExportConfig, req: ExportRequest, config: str) -> str:
    if req.name is None:
        return check_instance_name(cfg.name, path=config)
    try:
        return check_instance_name(req.name)
    except ExportDirError as e:
        raise UsageError(f"--name: {e.problem}") from None


def _read_pem(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise UsageError(f"cannot read the {what}: {e.strerror}", path) from e


def _int_param(cfg: ExportConfig, key: str, config: str) -> int:
    value = cfg.backend.get(key)
    if value is None or not value.strip():
        raise ExportDirError(f"no {key} in [backend] or [instance]", config)
    try:
        n = int(value.strip())
    except ValueError:
        raise ExportDirError(f"{key} {value!r} is not a whole number", config) from None
    if n < 1:
        raise ExportDirError(f"{key} {value!r} is not positive", config)
    return n


# ---------------------------------------------------------------- the model

def _network_name(nic: GanetiNic, index: int) -> str:
    """One network per NIC, named like upstream (``bridged0``): upstream's
    reader counts NICs by networks and pairs them with Ganeti's section by
    this name, and takes the mode from it when that section is absent."""
    return f"{nic.mode or 'network'}{index}"


def _network_description(nic: GanetiNic, index: int) -> str:
    if nic.network:
        return f"Ganeti NIC {index}: network {nic.network}"
    parts = [f"mode {nic.mode}" if nic.mode else None, f"link {nic.link}" if nic.link else None]
    return f"Ganeti NIC {index}: " + (", ".join(p for p in parts if p) or "cluster defaults")


def build_envelope(cfg: ExportConfig, name: str, plans: Sequence[DiskPlan],
                   sizes: dict[str, int], req: ExportRequest, *, config: str) -> Envelope:
    """The model of the package: files with ``sizes`` (by file id)."""
    memory = _int_param(cfg, "maxmem", config) * MIB
    cpus = _int_param(cfg, "vcpus", config)
    files: list[FileRef] = []
    disks: list[Disk] = []
    for p in plans:
        ref = None
        if p.file_id is not None and p.href is not None:
            ref = FileRef(file_id=p.file_id, href=p.href, size=sizes.get(p.file_id),
                          compression="gzip" if req.compress else None,
                          chunk_size=req.chunk_size)
            files.append(ref)
        disks.append(Disk(disk_id=f"disk{p.index}", capacity=p.capacity, file_ref=ref,
                          format_uri=FORMAT_URIS[req.disk_format] if ref else None,
                          populated_size=min(p.allocated, p.capacity) if ref else None))
    nets = [Network(_network_name(n, i), _network_description(n, i))
            for i, n in enumerate(cfg.nics)]
    nics = [Nic(network=nets[i].name,
                mac=n.mac if n.mac and n.mac.lower() not in ("generate", "auto") else None,
                model=NIC_MODEL, name=n.name)
            for i, n in enumerate(cfg.nics)]
    ganeti = None
    if not req.external:
        ganeti = GanetiInfo(
            os_name=cfg.os, os_params=dict(cfg.os_params), hypervisor=cfg.hypervisor,
            hv_params=dict(cfg.hv_params), backend=dict(cfg.backend),
            disk_template=cfg.disk_template, tags=tuple(cfg.tags), nics=tuple(cfg.nics),
            disk_names=tuple(d.name for d in cfg.disks), version="0",
            auto_balance=cfg.backend.get("auto_balance"),
        )
    vs = VirtualSystem(
        system_id=name, name=name, info="A Ganeti instance", os_id=1,
        os_description=f"Ganeti OS {cfg.os}", cpus=cpus, memory=memory,
        disks=tuple(disks), nics=tuple(nics), video_memory=VIDEO_MEMORY, ganeti=ganeti,
    )
    return Envelope(version=req.ovf_version, files=tuple(files), disks=tuple(disks),
                    networks=tuple(nets), systems=(vs,))


def _descriptor(env: Envelope, req: ExportRequest, config: str) -> bytes:
    try:
        return write_descriptor(env, version=req.ovf_version)
    except DescriptorError as e:
        raise ExportDirError(e.problem, config) from e


# ---------------------------------------------------------------- estimates

def _stored_bound(p: DiskPlan, req: ExportRequest) -> int:
    """An upper bound of a disk file's stored size, before it is written.

    Exact for uncompressed raw.  Otherwise the capacity plus 1/32 and
    4 MiB: qcow2 metadata is ~1/8000 of the capacity, streamOptimized
    VMDK adds at most ~1% (grain markers, sector padding, deflate's
    worst case), gzip ~0.03%.
    """
    if req.disk_format == "raw" and not req.compress:
        return p.capacity
    return p.capacity + p.capacity // 32 + 4 * MIB


def _needs_temp(req: ExportRequest) -> bool:
    return req.disk_format != "raw" and (req.ova or req.compress or req.chunk_size is not None)


def estimate_space(plans: Sequence[DiskPlan], req: ExportRequest) -> int:
    """Bytes the export may need on the output file system, at most.

    Each disk's output is bounded by the blocks its dump occupies (zeros
    and holes shrink, never grow) plus the same slack as _stored_bound;
    where qemu-img's output is a temporary file, the largest of those
    exists beside the package while it is streamed in.
    """
    outs = [p.allocated + p.allocated // 32 + 4 * MIB for p in plans if p.dump]
    need = sum(outs) + MIB  # descriptor, manifest, certificate, tar headers
    if outs and _needs_temp(req):
        need += max(outs)
    return need


# ---------------------------------------------------------------- writing

class _SparseFile:
    """A new file written sequentially; zero runs become holes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise PackageError(f"cannot create: {e.strerror}", path) from e

    def write(self, data: bytes | memoryview) -> int:
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
                raise PackageError(f"cannot write: {e.strerror}", self.path) from e
            finally:
                os.close(self._fd)
                self._fd = -1
        return self.size


class _Output(Protocol):
    """Where one package file's bytes go: a _SparseFile or an OVA member."""

    def write(self, data: bytes | memoryview) -> int: ...

    def close(self) -> int: ...


class _Open:
    """The file of a _Files being written."""

    __slots__ = ("name", "out", "hasher", "size")

    def __init__(self, name: str, out: _Output, hasher: Any) -> None:
        self.name = name
        self.out = out
        self.hasher = hasher
        self.size = 0


class _Files:
    """The files of one References/File: the whole file, or its chunks;
    digested as they are written.  A file-like sink for gzip.GzipFile (it
    has no ``name``, so gzip records no file name in its header)."""

    def __init__(self, open_out: Callable[[str], _Output], href: str,
                 chunk_size: int | None, algorithm: str) -> None:
        self._open_out = open_out
        self._href = href
        self._chunk = chunk_size
        self._alg = algorithm
        self._cur: _Open | None = None
        self._done: list[_Written] = []

    def _start(self) -> _Open:
        name = self._href if self._chunk is None else f"{self._href}.{len(self._done):09d}"
        self._cur = _Open(name, self._open_out(name), integrity.new_hasher(self._alg))
        return self._cur

    def _finish(self, cur: _Open) -> None:
        cur.out.close()
        self._done.append(_Written(cur.name, cur.size, cur.hasher.hexdigest()))
        self._cur = None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            cur = self._cur or self._start()
            n = len(view) if self._chunk is None else min(len(view), self._chunk - cur.size)
            piece = view[:n]
            cur.hasher.update(piece)
            cur.out.write(piece)
            cur.size += n
            view = view[n:]
            if self._chunk is not None and cur.size == self._chunk:
                self._finish(cur)
        return total

    def flush(self) -> None:
        pass

    def close(self) -> list[_Written]:
        if self._cur is None and not self._done:
            self._start()  # an empty stream is still one (empty) file
        if self._cur is not None:
            self._finish(self._cur)
        return self._done

    def abort(self) -> None:
        if self._cur is not None:
            with contextlib.suppress(OvfError, OSError, ValueError):
                self._cur.out.close()
            self._cur = None


def _seek(fd: int, pos: int, whence: int, size: int) -> int:
    try:
        return os.lseek(fd, pos, whence)
    except OSError as e:
        if e.errno == errno.ENXIO:  # no data (SEEK_DATA) at or after pos
            return size
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # no hole support
            return pos if whence == os.SEEK_DATA else size
        raise


def _blocks(path: str, label: str, limit: int | None = None) -> Iterator[bytes]:
    """The file's bytes (the first ``limit`` only) in blocks of up to 1 MiB;
    holes are not read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise DiskImageError(f"cannot read: {e.strerror}", label) from e
    try:
        st = os.fstat(fd)
        size = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)
        size = size if limit is None else min(size, limit)
        pos = 0
        while pos < size:
            data_at = min(_seek(fd, pos, os.SEEK_DATA, size), size)
            while pos < data_at:
                n = min(_BUF, data_at - pos)
                yield _ZEROS if n == _BUF else bytes(n)
                pos += n
            if pos >= size:
                break
            hole_at = min(max(_seek(fd, pos, os.SEEK_HOLE, size), pos + 1), size)
            while pos < hole_at:
                data = os.pread(fd, min(_BUF, hole_at - pos), pos)
                if not data:
                    raise DiskImageError(f"file ended at {pos} bytes while being read, "
                                         f"not at {size}", label)
                yield data
                pos += len(data)
    except OSError as e:
        raise DiskImageError(f"cannot read: {e.strerror}", label) from e
    finally:
        os.close(fd)


def _write_new(path: str, data: bytes) -> None:
    out = _SparseFile(path)
    out.write(data)
    out.close()


def _produce(p: DiskPlan, req: ExportRequest, *, open_out: Callable[[str], _Output],
             final_dir: str | None, tmp_prefix: str,
             progress: Callable[[str], None]) -> list[_Written]:
    """Write one disk's file(s); returns them with sizes and digests.

    qemu-img's temporary output is ``tmp_prefix + href + ".tmp"``: a name
    known before the file exists, so the cleanup below covers it whenever
    an interrupt lands.
    """
    if p.dump is None or p.href is None:
        return []
    label = os.path.basename(p.dump)
    fmt = req.disk_format
    tmp = None
    if fmt == "raw":
        source = p.dump
        progress(f"disk {p.index}: {label} -> {p.href}")
    elif final_dir is not None and not req.compress and req.chunk_size is None:
        # qemu-img writes the package file itself; digest it afterwards.
        dest = os.path.join(final_dir, p.href)
        progress(f"disk {p.index}: {label} -> {p.href} (qemu-img, {fmt})")
        diskmod.convert_from_raw(p.dump, dest, fmt, name=label, size=p.capacity)
        try:
            fd = os.open(dest, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            size = os.path.getsize(dest)
        except OSError as e:
            raise PackageError(f"cannot read back: {e.strerror}", dest) from e
        return [_Written(p.href, size, integrity.digest_file(dest, req.manifest))]
    else:
        tmp = f"{tmp_prefix}{p.href}.tmp"
        progress(f"disk {p.index}: {label} -> {p.href} (qemu-img, {fmt}, via a temporary file)")
        diskmod.convert_from_raw(p.dump, tmp, fmt, name=label, size=p.capacity)
        source = tmp
    files = _Files(open_out, p.href, req.chunk_size, req.manifest)
    limit = p.capacity if tmp is None else None  # raw: the device may be larger
    try:
        if req.compress:
            with gzip.GzipFile(fileobj=files, mode="wb", compresslevel=6, mtime=0) as gz:
                for block in _blocks(source, label, limit):
                    gz.write(block)
        else:
            for block in _blocks(source, label, limit):
                files.write(block)
        return files.close()
    except BaseException:
        files.abort()
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _chunk_names(href: str, req: ExportRequest, bound: int) -> list[str]:
    if req.chunk_size is None:
        return [href]
    return [f"{href}.{i:09d}" for i in range(max(1, math.ceil(bound / req.chunk_size)))]


@dataclass(frozen=True, slots=True)
class _Signer:
    key: bytes
    cert: bytes
    size_bound: int  # bytes the .cert may need

    def sign(self, mf_name: str, manifest: bytes, algorithm: str) -> bytes:
        return integrity.sign_manifest(mf_name, manifest, self.key, self.cert, algorithm)


def _signer(req: ExportRequest, mf_name: str) -> _Signer | None:
    """Load and try the key and certificate now, before any disk is written."""
    if req.sign_key is None or req.sign_cert is None:
        return None
    key = _read_pem(req.sign_key, "signing key")
    cert = _read_pem(req.sign_cert, "certificate")
    try:
        trial = integrity.sign_manifest(mf_name, b"trial\n", key, cert, req.manifest)
    except UsageError as e:
        raise UsageError(f"--sign/--cert: {e.problem}", req.sign_key) from e
    except IntegrityError as e:
        raise UsageError(f"--sign/--cert: {e.problem}", req.sign_cert) from e
    parsed = integrity.parse_certificate_file(trial)
    # RSA signatures have the modulus' length; ECDSA's DER length varies a little.
    rsa_key = isinstance(parsed.certificates[0].public_key(), rsa.RSAPublicKey)
    slack = 0 if rsa_key else 2 * _EC_SIGNATURE_SLACK
    return _Signer(key, cert, len(trial) + slack)


def _write_dir(dest: str, plans: Sequence[DiskPlan], env_for: Callable[[dict], Envelope],
               req: ExportRequest, names: dict[str, str], signer: _Signer | None,
               progress: Callable[[str], None], config: str) -> list[str]:
    with staging(dest) as work:
        written: list[_Written] = []
        sizes: dict[str, int] = {}
        for p in plans:
            with meter(progress, p.index, p.href or "", p.allocated, watch=p.href):
                files = _produce(p, req, open_out=lambda n: _SparseFile(os.path.join(work, n)),
                                 final_dir=work, tmp_prefix=os.path.join(work, "."),
                                 progress=progress)
            written += files
            if p.file_id is not None:
                sizes[p.file_id] = sum(f.size for f in files)
        ovf = _descriptor(env_for(sizes), req, config)
        _write_new(os.path.join(work, names["ovf"]), ovf)
        digest = integrity.new_hasher(req.manifest)
        digest.update(ovf)
        manifest = integrity.format_manifest(
            [(names["ovf"], digest.hexdigest())] + [(w.name, w.digest) for w in written],
            req.manifest)
        _write_new(os.path.join(work, names["mf"]), manifest)
        order = [names["ovf"], names["mf"]]
        if signer is not None:
            _write_new(os.path.join(work, names["cert"]),
                       signer.sign(names["mf"], manifest, req.manifest))
            order.append(names["cert"])
    return order + [w.name for w in written]


def _write_ova(dest: str, plans: Sequence[DiskPlan], env_for: Callable[[dict], Envelope],
               req: ExportRequest, names: dict[str, str], signer: _Signer | None,
               progress: Callable[[str], None], config: str) -> list[str]:
    """Members: descriptor, manifest, certificate, then the files in
    References order, each once, ustar.

    DSP0243 (5.3) wants the descriptor first and the manifest and
    certificate either right after it or both at the end; we put them
    right after it, where both big consumers take them: VirtualBox reads
    .ovf/.mf/.cert wherever they are ("the manifest and its optional
    signature file either follows immediately or at the very end of the
    OVA", Appliance::i_readFSOVA in src/VBox/Main/src-server/
    ApplianceImplImport.cpp), and VMware's own OVA builder writes this
    order (``tar cf NAME.ova *.ovf *.mf *.vmdk`` in vmware/open-vmdk
    ova/mkova.sh).  A reader can then check the manifest before any disk.
    """
    bounds = {p.file_id: _stored_bound(p, req) for p in plans if p.file_id}
    ovf_bound = len(_descriptor(env_for({fid: _SIZE_PLACEHOLDER for fid in bounds}),
                                req, config))
    hexlen = integrity.ALGORITHMS[req.manifest.upper()]
    potential = [names["ovf"]] + [n for p in plans if p.href and p.file_id
                                  for n in _chunk_names(p.href, req, bounds[p.file_id])]
    mf_bound = len(integrity.format_manifest([(n, "0" * hexlen) for n in potential],
                                             req.manifest))
    with staging_file(dest) as tmp:
        ova = OvaWriter(tmp)
        try:
            res_ovf = ova.reserve(names["ovf"], ovf_bound)
            res_mf = ova.reserve(names["mf"], mf_bound)
            res_cert = ova.reserve(names["cert"], signer.size_bound) if signer else None
            written: list[_Written] = []
            sizes: dict[str, int] = {}
            for p in plans:
                # qemu-img's temporary output: beside the OVA being written.
                with meter(progress, p.index, p.href or "", p.allocated, watch=p.href):
                    files = _produce(p, req, open_out=ova.open_member, final_dir=None,
                                     tmp_prefix=tmp + ".", progress=progress)
                written += files
                if p.file_id is not None and p.href is not None:
                    sizes[p.file_id] = sum(f.size for f in files)
                    if len(files) > len(_chunk_names(p.href, req, bounds[p.file_id])):
                        raise PackageError(f"{p.href!r} came out at {sizes[p.file_id]} "
                                           "bytes, more chunks than the manifest has "
                                           "room for", dest)
            ovf = _descriptor(env_for(sizes), req, config)
            ovf += b" " * (res_ovf.size - len(ovf))
            digest = integrity.new_hasher(req.manifest)
            digest.update(ovf)
            manifest = integrity.format_manifest(
                [(names["ovf"], digest.hexdigest())] + [(w.name, w.digest) for w in written],
                req.manifest)
            manifest += b" " * (res_mf.size - len(manifest))
            try:
                ova.fill(res_ovf, ovf)
                ova.fill(res_mf, manifest)
                if signer is not None and res_cert is not None:
                    ova.fill(res_cert, signer.sign(names["mf"], manifest, req.manifest),
                             pad=b"\n")
            except ValueError as e:
                raise PackageError(f"internal error: {e}", dest) from e
            ova.close()
        except BaseException:
            ova.abort()
            raise
    order = [names["ovf"], names["mf"]] + ([names["cert"]] if signer else [])
    return order + [w.name for w in written]


def export_package(source: str, output_dir: str, req: ExportRequest = ExportRequest(), *,
                   progress: Callable[[str], None] = log.info) -> ExportResult:
    """Convert the Ganeti export ``source`` (directory or its config.ini)
    into a package in ``output_dir``; returns where and what."""
    _check_request(req)
    export_dir, config = locate_config(source)
    cfg = read_config(config)
    dumps: list[str | None] = []
    for i, d in enumerate(cfg.disks):
        if d.size <= 0:
            raise ExportDirError(f"disk{i}_size must be positive", config)
        dumps.append(None if d.dump is None
                     else check_dump(export_dir, d, i, os_name=cfg.os, config=config))
    return export_config(cfg, dumps, output_dir, req, progress=progress, label=config)


def export_config(cfg: ExportConfig, dumps: Sequence[str | None], output_dir: str,
                  req: ExportRequest = ExportRequest(), *,
                  progress: Callable[[str], None] = log.info,
                  label: str = "instance") -> ExportResult:
    """The package for ``cfg`` whose disk ``i`` holds the raw bytes at
    ``dumps[i]`` (None: blank).  The paths must already be trusted: checked
    dumps of an export directory, or an instance's own disks as Ganeti
    reports them (regular files or block devices; one larger than the disk
    size, as LVM extents and adopted devices are, is read up to that size).
    """
    _check_request(req)
    config = label
    name = _package_name(cfg, req, config)
    warnings: list[str] = []
    if cfg.os_params_private:
        warnings.append(f"private OS parameters ({', '.join(sorted(cfg.os_params_private))}) "
                        "are not exported; give them again when importing")
    ext = {"vmdk": "vmdk", "qcow2": "qcow2", "raw": "raw"}[req.disk_format]
    plans: list[DiskPlan] = []
    for i, d in enumerate(cfg.disks):
        if d.size <= 0:
            raise ExportDirError(f"disk {i} size must be positive", config)
        path = dumps[i] if i < len(dumps) else None
        if path is None:
            warnings.append(f"disk {i} has no dump; exported as a blank disk of "
                            f"{d.size // MIB} MiB")
            plans.append(DiskPlan(i, d.size, None, 0, None, None))
            continue
        size = _byte_size(path)
        if size < d.size:
            raise ExportDirError(f"disk {i} ({path}) is {size} bytes, smaller than the disk "
                                 f"size {d.size} bytes that Ganeti records", config)
        # Larger (LVM extents, an adopted device): only Ganeti's size is the disk.
        if req.disk_format == "raw":
            _refuse_ambiguous_raw(path, i, config)
        href = f"{name}-disk{i}.{ext}" + (".gz" if req.compress else "")
        plans.append(DiskPlan(i, d.size, path, min(_allocated(path), d.size), f"file{i}",
                              href))
    names = {"ovf": f"{name}.ovf", "mf": f"{name}.mf", "cert": f"{name}.cert"}
    if req.ova:
        members = list(names.values()) + [_chunk_names(p.href, req, _stored_bound(p, req))[-1]
                                          for p in plans if p.href]
        for member in members:
            if len(member.encode("utf-8")) > NAME_MAX:
                raise UsageError(f"member name {member!r} is longer than the {NAME_MAX} "
                                 "bytes an OVA (ustar) allows; choose a shorter name with "
                                 "-n/--name")
    # Fail now on anything the descriptor cannot hold, not after the disks.
    _descriptor(build_envelope(cfg, name, plans, {}, req, config=config), req, config)
    signer = _signer(req, names["mf"])
    for w in warnings:
        log.warning("%s: %s", config, w)
    dest = os.path.join(output_dir, name + ".ova" if req.ova else name)
    if os.path.lexists(dest):
        raise PackageError("already exists; remove it or choose another name with -n", dest)
    check_free_space(output_dir, estimate_space(plans, req), "the package", PackageError)

    def env_for(sizes: dict) -> Envelope:
        return build_envelope(cfg, name, plans, sizes, req, config=config)

    writer = _write_ova if req.ova else _write_dir
    try:
        files = writer(dest, plans, env_for, req, names, signer, progress, config)
    except OSError as e:
        raise PackageError(f"cannot write: {e.strerror or e}", e.filename or dest) from e
    descriptor = os.path.join(dest, names["ovf"]) if not req.ova else names["ovf"]
    return ExportResult(path=dest, descriptor=descriptor, files=tuple(files),
                        warnings=tuple(warnings))
