"""What an export writes, decided before anything is written: the
operator's request, the checked input (config.ini, dumps) and the model of
the package (:func:`build_envelope`).

Dumps are whatever an OS's export script wrote, so each is checked to be
a raw image of the disk's exact size (a dump(8) stream is refused, naming
the OS); an instance's own disks (``gnt-backup export --ovf``) may be
larger than the disk (a logical volume rounded up to its extents) and are
then read only up to the disk size (:func:`sparse.open_source`).
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from . import diskformats, integrity
from . import disks as diskmod
from .descriptor.writer import VERSIONS, write_descriptor
from .errors import DescriptorError, DiskImageError, ExportDirError, UsageError
from .exportdir import MIB, ExportConfig, ExportDisk, check_instance_name, open_input
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

__all__ = [
    "ExportRequest",
    "DiskPlan",
    "FORMATS",
    "FORMAT_URIS",
    "NIC_MODEL",
    "MIN_CHUNK_SIZE",
    "locate_config",
    "is_dump8_stream",
    "check_dump",
    "refuse_ambiguous_raw",
    "allocated",
    "byte_size",
    "check_request",
    "package_name",
    "read_pem",
    "build_envelope",
    "descriptor",
]

log = logging.getLogger(__name__)

FORMATS = diskformats.EXPORT_ALIASES  # vmdk (default), qcow2, raw
# The ovf:format each writes: the first URI of its row in diskformats.
FORMAT_URIS = {name: diskformats.by_name(name).uris[0] for name in FORMATS}
NIC_MODEL = "E1000"  # the adapter both VMware and VirtualBox accept (see descriptor.writer)
MIN_CHUNK_SIZE = MIB
VIDEO_MEMORY = 12 * MIB

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
class DiskPlan:
    """One disk of the export, checked, before anything is written."""

    index: int
    capacity: int
    dump: str | None  # checked absolute path; None: blank disk
    allocated: int  # bytes the dump occupies on disk
    file_id: str | None
    href: str | None



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
    fd = open_input(path, what, config, missing="no such file in the export directory")
    try:
        st = os.fstat(fd)
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


def refuse_ambiguous_raw(path: str, index: int, config: str, size: int) -> None:
    """A raw disk file whose guest data begins like an image header would be
    read as that image by content-sniffing importers (ours included): only a
    wrapping format (vmdk, qcow2) keeps such a disk unambiguous."""
    try:
        fmt = diskmod.detect_format(ByteRange(path, 0, size), name=path)
    except DiskImageError as e:
        fmt = e.problem
    if fmt != "raw":
        raise UsageError(f"disk {index} begins like {fmt if ' ' in fmt else 'a ' + fmt + ' image'}"
                         "; as a raw file it would be misread: use --format vmdk or qcow2",
                         config)


def allocated(path: str) -> int:
    """Bytes a dump occupies: its blocks for a file, its size for a device."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ExportDirError(f"cannot read: {e.strerror}", path) from e
    return st.st_blocks * 512 if stat.S_ISREG(st.st_mode) else byte_size(path)


def byte_size(path: str) -> int:
    """Size of a regular file or a block device (whose st_size is 0)."""
    try:
        # O_NONBLOCK: a FIFO must not hang us (it then fails the seek).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            return os.lseek(fd, 0, os.SEEK_END)
        finally:
            os.close(fd)
    except OSError as e:
        raise ExportDirError(f"cannot read: {e.strerror}", path) from e


def check_request(req: ExportRequest) -> None:
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


def package_name(cfg: ExportConfig, req: ExportRequest, config: str) -> str:
    if req.name is None:
        return check_instance_name(cfg.name, path=config)
    try:
        return check_instance_name(req.name)
    except ExportDirError as e:
        raise UsageError(f"--name: {e.problem}") from None


def read_pem(path: str, what: str) -> bytes:
    """The operator's key or certificate (links followed: their own files),
    a regular file; a FIFO in its place must not hang the export."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot read the {what}: {e.strerror}", path) from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"the {what} is not a regular file", path)
        try:
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


def descriptor(env: Envelope, req: ExportRequest, config: str) -> bytes:
    try:
        return write_descriptor(env, version=req.ovf_version)
    except DescriptorError as e:
        raise ExportDirError(e.problem, config) from e

