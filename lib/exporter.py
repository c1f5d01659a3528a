"""Ganeti export directory (or an instance's disks) -> OVF/OVA package:
the export workflow.

Order matters, as in the importer: config.ini and every dump are checked
(names, links, sizes, content) and free space is estimated *before*
anything is written (:mod:`exportplan`); output goes to a locked 0700
staging directory beside it, put in place at the very end or removed on
any error, Ctrl-C included, and cleared by the next run after a SIGKILL
(:mod:`staging`, :mod:`pkgwriter`).  Each disk is read once and encoded straight into its
package file or OVA member with its digest (:mod:`diskencode`); no
temporary copy of a disk is made in any format or layout.

The default output directory is the current directory (the CLI's choice,
documented there); the package is ``OUTPUT_DIR/NAME/NAME.ovf`` with
``NAME.mf``, ``NAME.cert`` and ``NAME-diskN.<fmt>`` beside it, or
``OUTPUT_DIR/NAME.ova``.  [os_private] values are never written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .diskencode import chunk_names, estimate_space, stored_bound
from .errors import ExportDirError, PackageError, UsageError
from .exportdir import MIB, ExportConfig, check_free_space, read_config
from .exportplan import (
    FORMAT_URIS,
    FORMATS,
    MIN_CHUNK_SIZE,
    NIC_MODEL,
    DiskPlan,
    ExportRequest,
    allocated,
    build_envelope,
    byte_size,
    check_dump,
    check_request,
    descriptor,
    is_dump8_stream,
    locate_config,
    package_name,
    refuse_ambiguous_raw,
)
from .model import Envelope
from .ovawriter import NAME_MAX
from .pkgwriter import DirPackage, OvaPackage, signer, write_package
from .sparse import write_error

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


@dataclass(frozen=True, slots=True)
class ExportResult:
    path: str  # the .ova, or the package directory
    descriptor: str  # the .ovf: its path, or for an OVA its member name
    files: tuple[str, ...]  # every file/member, in package order
    warnings: tuple[str, ...] = ()


def export_package(source: str, output_dir: str, req: ExportRequest = ExportRequest(), *,
                   progress: Callable[[str], None] = log.info) -> ExportResult:
    """Convert the Ganeti export ``source`` (directory or its config.ini)
    into a package in ``output_dir``; returns where and what."""
    check_request(req)
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
    check_request(req)
    config = label
    name = package_name(cfg, req, config)
    warnings: list[str] = []
    if cfg.os_params_private:
        warnings.append(f"private OS parameters ({', '.join(sorted(cfg.os_params_private))}) "
                        "are not exported; give them again when importing")
    ext = req.disk_format  # the file extension is the format alias
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
        size = byte_size(path)
        if size < d.size:  # larger (an LV rounded up to its extents): read up to d.size
            raise ExportDirError(f"disk {i} ({path}) is {size} bytes, smaller than the disk "
                                 f"size {d.size}", config)
        if req.disk_format == "raw":
            refuse_ambiguous_raw(path, i, config, d.size)
        href = f"{name}-disk{i}.{ext}" + (".gz" if req.compress else "")
        plans.append(DiskPlan(i, d.size, path, min(allocated(path), d.size), f"file{i}",
                              href))
    names = {"ovf": f"{name}.ovf", "mf": f"{name}.mf", "cert": f"{name}.cert"}
    if req.ova:
        members = list(names.values()) + [chunk_names(p.href, req, stored_bound(p, req))[-1]
                                          for p in plans if p.href]
        for member in members:
            if len(member.encode("utf-8")) > NAME_MAX:
                raise UsageError(f"member name {member!r} is longer than the {NAME_MAX} "
                                 "bytes an OVA (ustar) allows; choose a shorter name with "
                                 "-n/--name")
    # Fail now on anything the descriptor cannot hold, not after the disks.
    descriptor(build_envelope(cfg, name, plans, {}, req, config=config), req, config)
    sig = signer(req, names["mf"])
    for w in warnings:
        log.warning("%s: %s", config, w)
    dest = os.path.join(output_dir, name + ".ova" if req.ova else name)
    if os.path.lexists(dest):
        raise PackageError("already exists; remove it or choose another name with -n", dest)
    check_free_space(output_dir, estimate_space(plans, req), "the package", PackageError)

    def env_for(sizes: dict) -> Envelope:
        return build_envelope(cfg, name, plans, sizes, req, config=config)

    writer = OvaPackage(dest) if req.ova else DirPackage(dest)
    try:
        files = write_package(writer, plans, env_for, req, names, sig, progress, config)
    except OSError as e:
        raise write_error(e, e.filename or dest) from e
    ovf = os.path.join(dest, names["ovf"]) if not req.ova else names["ovf"]
    return ExportResult(path=dest, descriptor=ovf, files=tuple(files),
                        warnings=tuple(warnings))
