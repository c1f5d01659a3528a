"""OVF/OVA package -> Ganeti export directory: the import workflow.

Order matters for safety: the package is indexed and every manifest digest
(and the certificate) checked *before* anything is written; disk images are
inspected (format from content, no backing/data files) before qemu-img
converts them; output goes to a staging sibling renamed at the very end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import disks as diskmod
from . import integrity, oslist
from .descriptor.reader import parse_descriptor
from .errors import DiskImageError, IntegrityError, PackageError, UsageError
from .exportdir import (
    MAX_DISKS,
    MAX_NICS,
    ExportConfig,
    ExportDisk,
    check_instance_name,
    staging,
    write_config,
)
from .model import ByteRange, Disk, Envelope, GanetiNic, VirtualSystem
from .package import Package, open_package

__all__ = [
    "ImportRequest",
    "ImportResult",
    "PackageCheck",
    "check_package",
    "load_envelope",
    "choose_system",
    "plan_config",
    "import_package",
]

log = logging.getLogger(__name__)

MAC_RE = re.compile(r"^([0-9a-f]{2})([:-][0-9a-f]{2}){5}$", re.I)

# Gzip/chunk streams may hold an image format's metadata on top of the
# disk's capacity; anything beyond this bound is refused (gzip bombs).
STREAM_SLACK = 64 << 20


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """What the operator asked for; None means 'take it from the package'."""

    name: str | None = None
    os_name: str | None = None
    os_params: Mapping[str, str] = field(default_factory=dict)
    disk_template: str | None = None
    disk_sizes: Mapping[int, int] = field(default_factory=dict)  # index -> bytes
    backend: Mapping[str, str] = field(default_factory=dict)
    hypervisor: str | None = None
    hv_params: Mapping[str, str] = field(default_factory=dict)
    nics: Sequence[Mapping[str, str]] | None = None  # --net, by index
    no_nics: bool = False
    tags: Sequence[str] = ()
    vsys: str | None = None
    configuration: str | None = None
    verify: bool = True
    os_search_path: Sequence[str] | None = None
    use_cluster: bool = True


@dataclass(frozen=True, slots=True)
class PackageCheck:
    """What integrity checking found (for ``info`` and ``verify``)."""

    manifest: str | None = None  # member name, if any
    algorithms: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()  # files whose digest matched
    certificate: integrity.CertInfo | None = None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImportResult:
    path: str
    config: ExportConfig
    warnings: tuple[str, ...] = ()


def check_package(pkg: Package, *, collect: bool = False) -> PackageCheck:
    """Verify the manifest and certificate.

    With ``collect`` every problem is returned (``verify``); otherwise the
    first one raises IntegrityError (``import`` stops at the first).
    """
    problems: list[str] = []

    def problem(msg: str) -> None:
        if not collect:
            raise IntegrityError(msg, pkg.path)
        problems.append(msg)

    mf = pkg.sibling(".mf")
    if mf is None:
        return PackageCheck()
    mf_bytes = mf.byte_range().read(0, mf.size)
    manifest = integrity.parse_manifest(mf_bytes, path=f"{pkg.path}: {mf.name}"
                                        if pkg.kind == "ova" else mf.container)
    verified = []
    for entry in manifest.entries:
        try:
            m = pkg.get(entry.filename)
        except PackageError:
            problem(f"manifest lists {entry.filename!r}, which is not in the package")
            continue
        got = integrity.digest_file(m.container, entry.algorithm, m.offset, m.size)
        if got != entry.digest:
            problem(f"{entry.algorithm} digest of {entry.filename!r} does not match the "
                    f"manifest (got {got}, manifest says {entry.digest})")
        else:
            verified.append(entry.filename)
    warnings = []
    if manifest.lookup(pkg.descriptor_name) is None:
        # VirtualBox 5.0 wrote manifests like this; the descriptor then
        # goes unchecked, which the operator should know.
        warnings.append(f"manifest does not list the descriptor {pkg.descriptor_name!r}; "
                        "it is not protected by the manifest")
    cert = None
    cm = pkg.sibling(".cert")
    if cm is not None:
        try:
            cert = integrity.verify_certificate(cm.byte_range().read(0, cm.size), mf.name,
                                                mf_bytes, path=pkg.path)
        except IntegrityError as e:
            problem(e.problem)
    return PackageCheck(
        manifest=mf.name,
        algorithms=tuple(sorted({e.algorithm for e in manifest.entries})),
        verified=tuple(verified), certificate=cert, problems=tuple(problems),
        warnings=tuple(warnings),
    )


def load_envelope(pkg: Package, *, configuration: str | None = None) -> Envelope:
    path = pkg.path if pkg.kind == "ova" else pkg.path
    where = f"{path}: {pkg.descriptor_name}" if pkg.kind == "ova" else path
    return parse_descriptor(pkg.descriptor_bytes(), path=where, configuration=configuration)


def choose_system(env: Envelope, vsys: str | None, *, path: str) -> VirtualSystem:
    ids = [vs.system_id for vs in env.systems]
    try:
        return env.system(vsys)
    except KeyError:
        raise UsageError(f"no virtual system {vsys!r}; the package has: "
                         f"{', '.join(map(repr, ids))}", path) from None
    except ValueError:
        raise UsageError(f"the package holds {len(ids)} virtual systems "
                         f"({', '.join(map(repr, ids))}); choose one with --vsys", path) from None


def _safe_name(raw: str | None) -> str | None:
    """A host-name-like instance name derived from a package's free text."""
    if not raw:
        return None
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", raw.strip()).strip("-._")
    return name or None


def plan_config(env: Envelope, vs: VirtualSystem, req: ImportRequest, *,
                path: str) -> tuple[ExportConfig, list[tuple[Disk | None, int]], list[str]]:
    """The config.ini to write, the disks to produce (source, size) and warnings.

    Precedence: the command line, then Ganeti's own section of the
    package, then the generic OVF hardware; what none gives is left out so
    Ganeti's cluster defaults apply.
    """
    warnings: list[str] = list(env.warnings)
    gnt = vs.ganeti
    # Name
    if req.name is not None:
        name = check_instance_name(req.name, path=path)
    else:
        derived = _safe_name(vs.name) or _safe_name(vs.system_id)
        if derived is None:
            raise UsageError("the package names no instance; give one with -n/--name", path)
        name = check_instance_name(derived, path=path)
        if derived != (vs.name or vs.system_id):
            warnings.append(f"instance name {vs.name or vs.system_id!r} used as {derived!r}")
    # OS
    os_wanted = req.os_name or (gnt.os_name if gnt else None)
    os_name = oslist.validate_os(os_wanted, search_path=req.os_search_path,
                                 use_cluster=req.use_cluster, path=path)
    os_params = dict(gnt.os_params) if gnt and gnt.os_name == os_name else {}
    os_params.update(req.os_params)
    # Backend
    backend: dict[str, str] = {}
    if gnt:
        backend.update(gnt.backend)
        if gnt.auto_balance is not None and "auto_balance" not in backend:
            backend["auto_balance"] = gnt.auto_balance
    if vs.memory is not None and "maxmem" not in backend:
        mib = -(-vs.memory // (1 << 20))
        backend["maxmem"] = backend["minmem"] = str(mib)
    if vs.cpus is not None and "vcpus" not in backend:
        backend["vcpus"] = str(vs.cpus)
    backend.pop("memory", None)
    for key, value in req.backend.items():
        if key == "memory":
            backend["maxmem"] = backend["minmem"] = value
        else:
            backend[key] = value
    # Hypervisor
    hypervisor = req.hypervisor or (gnt.hypervisor if gnt else None)
    hv_params: dict[str, str] = {}
    if gnt and gnt.hypervisor and hypervisor == gnt.hypervisor:
        hv_params.update(gnt.hv_params)
    hv_params.update(req.hv_params)
    # Disk template
    template = req.disk_template or (gnt.disk_template if gnt else None)
    # Disks
    plan: list[tuple[Disk | None, int]] = []
    if template == "diskless":
        if vs.disks:
            warnings.append(f"disk template 'diskless': {len(vs.disks)} disk(s) of the "
                            "package not imported")
        if req.disk_sizes:
            raise UsageError("--disk cannot be used with disk template 'diskless'", path)
    else:
        count = max([len(vs.disks)] + [i + 1 for i in req.disk_sizes])
        for i in range(count):
            src = vs.disks[i] if i < len(vs.disks) else None
            size = req.disk_sizes.get(i)
            if size is None:
                if src is None:
                    raise UsageError(f"--disk: disk {i} is not in the package, and disks "
                                     "before it need a size too", path)
                if src.capacity is None and src.file_ref is None:
                    raise UsageError(f"disk {src.disk_id!r} has neither capacity nor file; "
                                     f"give its size with --disk {i}:size=SIZE", path)
                size = src.capacity or 0  # 0: taken from the image
            plan.append((src, size))
        if len(plan) > MAX_DISKS:
            raise UsageError(f"{len(plan)} disks; Ganeti allows at most {MAX_DISKS}", path)
    # NICs
    nics = _plan_nics(vs, req, gnt, warnings, path)
    tags = tuple(req.tags) if req.tags else (gnt.tags if gnt else ())
    cfg = ExportConfig(
        name=name, os=os_name, disks=(), nics=nics, disk_template=template,
        hypervisor=hypervisor, tags=tags, backend=backend, hv_params=hv_params,
        os_params=os_params, source=os.path.basename(path),
    )
    return cfg, plan, warnings


def _plan_nics(vs: VirtualSystem, req: ImportRequest, gnt, warnings: list[str],
               path: str) -> tuple[GanetiNic, ...]:
    if req.no_nics:
        return ()
    if req.nics is not None:
        out = []
        for i, opts in enumerate(req.nics):
            unknown = set(opts) - {"mac", "ip", "mode", "link", "network", "name", "vlan"}
            if unknown:
                raise UsageError(f"--net {i}: unknown parameter(s) {', '.join(sorted(unknown))}",
                                 path)
            mac = opts.get("mac")
            if mac and mac not in ("generate", "auto") and not MAC_RE.match(mac):
                raise UsageError(f"--net {i}: invalid MAC address {mac!r}", path)
            out.append(GanetiNic(mac=mac or "generate", ip=opts.get("ip"),
                                 mode=opts.get("mode"), link=opts.get("link"),
                                 network=opts.get("network"), name=opts.get("name"),
                                 vlan=opts.get("vlan")))
        return tuple(out)
    out = []
    count = max(len(vs.nics), len(gnt.nics) if gnt else 0)
    for i in range(count):
        g = gnt.nics[i] if gnt and i < len(gnt.nics) else GanetiNic()
        ovf_mac = vs.nics[i].mac if i < len(vs.nics) else None
        mac = g.mac or ovf_mac
        if mac and not MAC_RE.match(mac):
            warnings.append(f"NIC {i}: MAC address {mac!r} is not valid; a new one is "
                            "generated")
            mac = None
        out.append(dataclasses.replace(g, mac=(mac.lower().replace("-", ":") if mac
                                               else "generate")))
    if len(out) > MAX_NICS:
        raise UsageError(f"{len(out)} NICs; Ganeti allows at most {MAX_NICS}", path)
    return tuple(out)


def _stream_to_file(pkg: Package, disk: Disk, dest: str) -> None:
    """Join chunks / undo gzip into ``dest``, bounded by the disk's capacity."""
    ref = disk.file_ref
    assert ref is not None
    if disk.capacity is None:
        raise PackageError(f"file {ref.href!r} is compressed or chunked but its disk "
                           "declares no capacity to bound it", pkg.path)
    limit = disk.capacity + disk.capacity // 10 + STREAM_SLACK
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for block in pkg.open_stream(ref, limit=limit):
            if block.count(0) == len(block):
                out.seek(len(block), os.SEEK_CUR)  # keep holes
            else:
                out.write(block)
        out.truncate()


def _produce_disk(pkg: Package, disk: Disk | None, size: int, index: int,
                  workdir: str, progress: Callable[[str], None]) -> ExportDisk:
    dump = f"disk{index}.raw"
    dest = os.path.join(workdir, dump)
    if disk is None or disk.file_ref is None:
        if size <= 0:
            raise UsageError(f"disk {index} has no size")
        progress(f"disk {index}: blank, {size} bytes")
        diskmod.create_blank(dest, -(-size // 512) * 512)
        os.chmod(dest, 0o600)
        return ExportDisk(size=size, dump=dump)
    ref = disk.file_ref
    name = ref.href
    tmp = None
    if ref.compression or ref.chunk_size:
        tmp = os.path.join(workdir, f".disk{index}.stream")
        progress(f"disk {index}: joining/decompressing {name}")
        _stream_to_file(pkg, disk, tmp)
        src = ByteRange(tmp, 0, os.path.getsize(tmp))
    else:
        member = pkg.get(ref.href)
        if ref.size is not None and ref.size != member.size:
            raise PackageError(f"file {name!r} is {member.size} bytes, but References "
                               f"declares {ref.size}", pkg.path)
        src = member.byte_range()
    try:
        fmt = diskmod.detect_format(src, name=name)
        info = diskmod.image_info(src, fmt, name=name)
        diskmod.check_safe(info, name=name)
        if size and info.virtual_size > size:
            raise DiskImageError(f"image {name!r} holds {info.virtual_size} bytes, more than "
                                 f"the disk size {size}", pkg.path)
        size = max(size, info.virtual_size)
        progress(f"disk {index}: {name} ({fmt}) -> {dump}")
        if tmp is not None and fmt == "raw":
            os.rename(tmp, dest)  # already the raw bytes: no second copy
            tmp = None
        else:
            diskmod.convert_to_raw(src, fmt, dest, name=name)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    os.chmod(dest, 0o600)  # guest data, as Ganeti's own dumps
    return ExportDisk(size=size, dump=dump)


def import_package(package: str, output_dir: str, req: ImportRequest = ImportRequest(), *,
                   progress: Callable[[str], None] = log.info) -> ImportResult:
    """Convert ``package`` into ``output_dir/NAME``; returns where and what."""
    pkg = open_package(package)
    if req.verify:
        for w in check_package(pkg).warnings:
            log.warning("%s: %s", package, w)
    env = load_envelope(pkg, configuration=req.configuration)
    vs = choose_system(env, req.vsys, path=package)
    cfg, plan, warnings = plan_config(env, vs, req, path=package)
    for w in warnings:
        log.warning("%s: %s", package, w)
    names = gnt_disk_names(vs)
    dest = os.path.join(output_dir, cfg.name)
    with staging(dest) as work:
        produced = []
        for i, (disk, size) in enumerate(plan):
            d = _produce_disk(pkg, disk, size, i, work, progress)
            produced.append(dataclasses.replace(d, name=names[i] if i < len(names) else None))
        cfg = dataclasses.replace(cfg, disks=tuple(produced))
        write_config(work, cfg)
    return ImportResult(path=dest, config=cfg, warnings=tuple(warnings))


def gnt_disk_names(vs: VirtualSystem) -> tuple[str | None, ...]:
    return vs.ganeti.disk_names if vs.ganeti else ()
