"""OVF/OVA package -> Ganeti export directory: the import workflow.

Order matters for safety: the package is indexed and every manifest digest
(and the certificate) checked *before* anything is written; disk images are
inspected (format from content, no backing/data files) before qemu-img
converts them; output goes to a staging sibling renamed at the very end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import disks as diskmod
from . import integrity, oslist, signer, sparse, trust
from .descriptor.reader import parse_descriptor
from .errors import (
    DescriptorError,
    DiskImageError,
    IntegrityError,
    OvfError,
    PackageError,
    UsageError,
)
from .exportdir import (
    MAX_DISKS,
    MAX_NICS,
    ExportConfig,
    ExportDisk,
    check_free_space,
    check_instance_name,
    render_config,
    staging,
    write_config,
)
from .inspection import DiskInspection, inspect_package
from .model import (
    MAX_MEMORY,
    MAX_VCPUS,
    ByteRange,
    Disk,
    Envelope,
    GanetiNic,
    VirtualSystem,
)
from .package import Package, open_package
from .packagecheck import PackageCheck, check_package
from .progress import meter

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

# Backend parameters a package's Ganeti section may set without trust.
SAFE_BACKEND = frozenset(["maxmem", "minmem", "vcpus", "auto_balance", "always_failover",
                          "spindle_use"])

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
    trust_ganeti_section: bool = False
    os_search_path: Sequence[str] | None = None
    use_cluster: bool = True
    trusted_certs: Sequence[str] = ()  # --trusted-cert files
    ca_bundle: str | None = None  # --ca-bundle; None: the system's
    require_signature: bool = False


@dataclass(frozen=True, slots=True)
class ImportResult:
    path: str
    config: ExportConfig
    warnings: tuple[str, ...] = ()
    trusted_signer: str | None = None  # the line naming the anchor, if the signer chains


def load_envelope(pkg: Package, *, configuration: str | None = None) -> Envelope:
    where = f"{pkg.path}: {pkg.descriptor_name}" if pkg.kind == "ova" else pkg.path
    return parse_descriptor(pkg.descriptor_bytes(), path=where, configuration=configuration)


def choose_system(env: Envelope, vsys: str | None, *, path: str) -> VirtualSystem:
    ids = [vs.system_id for vs in env.systems]
    if not ids:
        why = next((w for w in env.warnings if w.startswith("no VirtualSystem")),
                   "no VirtualSystem in the descriptor")
        raise DescriptorError(f"{why}; nothing to import", path)
    try:
        return env.system(vsys)
    except KeyError:
        raise UsageError(f"no virtual system {vsys!r}; the package has: "
                         f"{', '.join(map(repr, ids))}", path) from None
    except ValueError:
        raise UsageError(f"the package holds {len(ids)} virtual systems "
                         f"({', '.join(map(repr, ids))}); choose one with --vsys", path) from None


def _printable(text: str) -> str:
    """A file name as config.ini's informational ``source``: no control
    characters, valid UTF-8."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


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
    name = _plan_name(vs, req, warnings, path)
    os_wanted = req.os_name or (gnt.os_name if gnt else None)
    os_name = oslist.validate_os(os_wanted, search_path=req.os_search_path,
                                 use_cluster=req.use_cluster, path=path)
    trusted = req.trust_ganeti_section
    ignored: list[str] = []
    os_params: dict[str, str] = {}
    if gnt and gnt.os_params and gnt.os_name == os_name:
        if trusted:
            os_params.update(gnt.os_params)
        else:
            ignored.append(f"OS parameters {', '.join(sorted(gnt.os_params))}")
    os_params.update(req.os_params)
    backend = _plan_backend(vs, req, path)
    hypervisor, hv_params = _plan_hypervisor(gnt, req, ignored)
    template = req.disk_template or (gnt.disk_template if gnt else None)
    plan = _plan_disks(vs, req, template, warnings, path)
    nics = _plan_nics(vs, req, gnt, warnings, path, ignored)
    if ignored:
        warnings.append(f"the package's Ganeti section sets {'; '.join(ignored)}: not "
                        "applied (they reach the host or its networks; "
                        "--trust-ganeti-section applies them)")
    tags = tuple(req.tags) if req.tags else (gnt.tags if gnt else ())
    cfg = ExportConfig(
        name=name, os=os_name, disks=(), nics=nics, disk_template=template,
        hypervisor=hypervisor, tags=tags, backend=backend, hv_params=hv_params,
        os_params=os_params, source=_printable(os.path.basename(path)),
    )
    return cfg, plan, warnings


def _plan_name(vs: VirtualSystem, req: ImportRequest, warnings: list[str], path: str) -> str:
    if req.name is not None:
        return check_instance_name(req.name, path=path)
    derived = _safe_name(vs.name) or _safe_name(vs.system_id)
    if derived is None:
        raise UsageError("the package names no instance; give one with -n/--name", path)
    name = check_instance_name(derived, path=path)
    if derived != (vs.name or vs.system_id):
        warnings.append(f"instance name {vs.name or vs.system_id!r} used as {derived!r}")
    return name


def _plan_backend(vs: VirtualSystem, req: ImportRequest, path: str) -> dict[str, str]:
    """Backend parameters: -B, then the package's section, then the OVF hardware."""
    gnt = vs.ganeti
    backend: dict[str, str] = {}
    if gnt:
        # Resource sizes and placement hints only: nothing here reaches
        # the host (unlike hypervisor and OS parameters).
        backend.update({k: v for k, v in gnt.backend.items() if k in SAFE_BACKEND})
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
    _consistent_memory(backend, req.backend)
    _refuse_unusable(vs, backend, path)
    _check_package_sizes(vs, backend, req.backend, path)
    return backend


def _plan_hypervisor(gnt, req: ImportRequest, ignored: list[str]
                     ) -> tuple[str | None, dict[str, str]]:
    hypervisor = req.hypervisor
    trusted = req.trust_ganeti_section
    if hypervisor is None and gnt and gnt.hypervisor:
        # Which hypervisor runs the guest (chroot, lxc, ...) is the host's
        # business: the package's choice applies only when trusted.
        if trusted:
            hypervisor = gnt.hypervisor
        else:
            ignored.append(f"hypervisor {gnt.hypervisor}")
    hv_params: dict[str, str] = {}
    if gnt and gnt.hv_params and req.hypervisor is None:
        # With -H the operator's parameters replace the package's (as
        # upstream); without it they apply only when trusted: kernel paths
        # and extra arguments reach the host.
        if trusted:
            hv_params.update(gnt.hv_params)
        else:
            ignored.append(f"hypervisor parameters {', '.join(sorted(gnt.hv_params))}")
    hv_params.update(req.hv_params)
    return hypervisor, hv_params


def _plan_disks(vs: VirtualSystem, req: ImportRequest, template: str | None,
                warnings: list[str], path: str) -> list[tuple[Disk | None, int]]:
    plan: list[tuple[Disk | None, int]] = []
    if template == "diskless":
        if vs.disks:
            warnings.append(f"disk template 'diskless': {len(vs.disks)} disk(s) of the "
                            "package not imported")
        if req.disk_sizes:
            raise UsageError("--disk cannot be used with disk template 'diskless'", path)
        return plan
    count = max([len(vs.disks)] + [i + 1 for i in req.disk_sizes])
    for i in range(count):
        src = vs.disks[i] if i < len(vs.disks) else None
        size = req.disk_sizes.get(i)
        if size is not None:
            # The operator's size is what Ganeti creates: bounded like a
            # declared capacity, before anything is written.
            diskmod.check_size(size, name=f"--disk {i}:size=", what="size", path=path)
        if size is None and src is not None and src.capacity_problem:
            # Not replaced by the image's size: the package asked for a
            # capacity, and what it meant is unknown.
            raise DescriptorError(f"disk {src.disk_id!r}: {src.capacity_problem}; give "
                                  f"its size with --disk {i}:size=SIZE", path)
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
    return plan


def _consistent_memory(backend: dict[str, str], given: Mapping[str, str]) -> None:
    """When the operator sets only one of maxmem/minmem, keep minmem <= maxmem
    by moving the other one, not by leaving an impossible pair for Ganeti."""
    try:
        lo, hi = int(backend["minmem"]), int(backend["maxmem"])
    except (KeyError, ValueError):
        return
    if lo <= hi:
        return
    if "maxmem" in given and "minmem" not in given:
        backend["minmem"] = backend["maxmem"]
    elif "minmem" in given and "maxmem" not in given:
        backend["maxmem"] = backend["minmem"]


def _refuse_unusable(vs: VirtualSystem, backend: Mapping[str, str], path: str) -> None:
    """A CPU count or memory the package declares but that cannot be used
    is refused, not replaced by Ganeti's default: the instance would get
    what the package did not ask for.  A value from the command line (or
    Ganeti's own section) makes the declared one irrelevant; a value the
    package leaves out is no problem (Ganeti's defaults apply, as upstream)."""
    for problem, key, option in ((vs.memory_problem, "maxmem", "-B maxmem=SIZE"),
                                 (vs.cpus_problem, "vcpus", "-B vcpus=N")):
        if problem and key not in backend:
            raise DescriptorError(f"system {vs.system_id!r}: {problem}; give it with "
                                  f"{option}", path)


_SIZE_OPTIONS = {"vcpus": ("-B vcpus=N", MAX_VCPUS),
                 "maxmem": ("-B maxmem=SIZE", MAX_MEMORY >> 20),
                 "minmem": ("-B minmem=SIZE", MAX_MEMORY >> 20)}


def _check_package_sizes(vs: VirtualSystem, backend: Mapping[str, str],
                         given: Mapping[str, str], path: str) -> None:
    """The CPU count and memory (MiB) a package's Ganeti section sets are
    bounded like the OVF ones: a whole number Ganeti's hypervisors can run,
    or refused naming the option (the operator's own -B is not checked
    here: Ganeti checks it, and it is not a stranger's)."""
    for key, (option, limit) in _SIZE_OPTIONS.items():
        value = backend.get(key)
        if value is None or key in given or (key != "vcpus" and "memory" in given):
            continue
        text = value.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 20
                and 1 <= int(text) <= limit):
            shown = repr(value[:40]) + ("..." if len(value) > 40 else "")
            raise DescriptorError(f"system {vs.system_id!r}: the package's Ganeti section "
                                  f"sets {key} {shown}, not a whole number from 1 to {limit}; "
                                  f"give it with {option}", path)


def _plan_nics(vs: VirtualSystem, req: ImportRequest, gnt, warnings: list[str],
               path: str, ignored: list[str]) -> tuple[GanetiNic, ...]:
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
    placed = []
    for i in range(count):
        g = gnt.nics[i] if gnt and i < len(gnt.nics) else GanetiNic()
        if not req.trust_ganeti_section:
            if g.link or g.network or g.mode or g.ip or g.vlan:
                placed.append(str(i))
            # Which bridge, network or VLAN a NIC joins is the operator's
            # call (--net), not a stranger's.
            g = GanetiNic(mac=g.mac, name=g.name)
        ovf_mac = vs.nics[i].mac if i < len(vs.nics) else None
        mac = g.mac or ovf_mac
        if mac and not MAC_RE.match(mac):
            warnings.append(f"NIC {i}: MAC address {mac!r} is not valid; a new one is "
                            "generated")
            mac = None
        out.append(dataclasses.replace(g, mac=(mac.lower().replace("-", ":") if mac
                                               else "generate")))
    if placed:
        ignored.append(f"mode/link/network/IP of NIC {', '.join(placed)}")
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
    out = sparse.SparseFile(dest)
    try:
        for block in pkg.open_stream(ref, limit=limit):
            out.write(block)
    finally:
        out.close()


class _Digests:
    """The manifest digests of the disk files, computed on worker threads
    while the disks are inspected and converted (one read each, at the
    speed of the other core), instead of in a pass of their own before.
    :meth:`check` waits for them: the output is published only after every
    digest matched.  Holes of a member are not read (:mod:`sparse`)."""

    def __init__(self, pkg: Package, entries: Sequence[integrity.ManifestEntry]) -> None:
        self._pkg = pkg
        self._stop = threading.Event()
        workers = max(1, min(len(entries), os.cpu_count() or 1))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="digest")
        self._jobs = [(e, self._pool.submit(self._digest, e)) for e in entries]

    def _digest(self, entry: integrity.ManifestEntry) -> str:
        m = self._pkg.get(entry.filename)
        hasher = integrity.new_hasher(entry.algorithm)
        try:
            fd = os.open(m.container, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise PackageError(f"{entry.filename!r}: cannot read: {e.strerror}",
                               self._pkg.path) from e
        try:
            for block in sparse.blocks(fd, m.size, entry.filename, start=m.offset):
                if self._stop.is_set():
                    return ""
                hasher.update(block)
        except DiskImageError as e:
            raise IntegrityError(f"{entry.filename!r}: {e.problem}", self._pkg.path) from e
        finally:
            os.close(fd)
        return hasher.hexdigest()

    def check(self) -> None:
        """Wait for every digest; IntegrityError on the first mismatch."""
        for entry, future in self._jobs:
            got = future.result()
            if got != entry.digest:
                raise IntegrityError(
                    f"{entry.algorithm} digest of {entry.filename!r} does not match the "
                    f"manifest (got {got}, manifest says {entry.digest})", self._pkg.path)

    def close(self) -> None:
        """Stop early (on an error or Ctrl-C) and free the threads."""
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _stop_children() -> None:
    """SIGTERM our own child processes (the conversions the worker threads
    wait for), so an interrupt does not wait for them to finish."""
    pids: set[int] = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
    except OSError:
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def _file_names(pkg: Package, env: Envelope) -> frozenset[str]:
    """Manifest names of every member holding a referenced file."""
    names: set[str] = set()
    for ref in env.files:
        try:
            names.update(m.name for m in pkg.file_members(ref))
        except PackageError:
            continue  # reported where the file is used
    return frozenset(names)


_DiskJob = DiskInspection  # one disk to produce: its inspection is the conversion's input


def _produce(pkg: Package, job: _DiskJob, workdir: str,
             progress: Callable[[str], None]) -> ExportDisk:
    if job.ref is None:
        # Ganeti creates a disk that has no dump without importing data:
        # nothing to write, however large the package says it is.
        progress(f"disk {job.index}: blank, {job.size} bytes")
        return ExportDisk(size=job.size, dump=None)
    dump = f"disk{job.index}.raw"
    dest = os.path.join(workdir, dump)
    name = job.ref.href
    if job.src is not None and job.fmt is not None:
        progress(f"disk {job.index}: {name} ({job.fmt}) -> {dump}")
        with meter(progress, job.index, name, job.src.size, watch=dest):
            diskmod.convert_to_raw(job.src, job.fmt, dest, name=name, inspected=job.info)
    else:
        assert job.disk is not None
        tmp = os.path.join(workdir, f".disk{job.index}.stream")
        try:
            progress(f"disk {job.index}: joining/decompressing {name}")
            with meter(progress, job.index, name, job.need):
                _stream_to_file(pkg, job.disk, tmp)
            src = ByteRange(tmp, 0, os.path.getsize(tmp))
            fmt, info = diskmod.inspect(src, name=name, limit=job.size,
                                        declared=job.disk.format_uri, path=pkg.path)
            progress(f"disk {job.index}: {name} ({fmt}) -> {dump}")
            if fmt == "raw":
                os.rename(tmp, dest)  # already the raw bytes: no second copy
            else:
                with meter(progress, job.index, name, src.size, watch=dest):
                    diskmod.convert_to_raw(src, fmt, dest, name=name, inspected=info)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    os.chmod(dest, 0o600)  # guest data, as Ganeti's own dumps
    return ExportDisk(size=job.size, dump=dump)


def import_package(package: str, output_dir: str, req: ImportRequest = ImportRequest(), *,
                   progress: Callable[[str], None] = log.info) -> ImportResult:
    """Convert ``package`` into ``output_dir/NAME``; returns where and what.

    Nothing is written before every check passed: manifest and certificate,
    descriptor, OS, every disk image, free space.  The disk files' digests
    are computed while the disks convert, and the output is published
    only once they matched; a mismatch also explains any failure it
    caused on the way (a damaged image), so it is reported first.
    """
    if req.require_signature and not req.verify:
        raise UsageError("--require-signature and --no-verify exclude each other")
    store = trust.load_store(req.trusted_certs, req.ca_bundle) if req.verify else None
    with open_package(package) as pkg:
        env = load_envelope(pkg, configuration=req.configuration)
        vs = choose_system(env, req.vsys, path=package)
        cfg, plan, warnings = plan_config(env, vs, req, path=package)
        found = inspect_package(pkg, env, plan, verify=req.verify, defer=_file_names(pkg, env),
                                store=store, require_signature=req.require_signature)
        check = found.check
        trusted_line = None
        if check is not None:
            for w in check.warnings:
                log.warning("%s: %s", package, w)
            trusted_line = signer.report_signer(package, check.certificate, check.trust,
                                                check.certificate_name)
        for w in warnings:
            log.warning("%s: %s", package, w)
        digests = _Digests(pkg, check.deferred if check is not None else ())
        try:
            try:
                result = _convert(pkg, vs, cfg, found.disks, warnings, output_dir, digests,
                                  progress)
                return dataclasses.replace(result, trusted_signer=trusted_line)
            except OvfError:
                digests.check()  # a mismatch is the better explanation
                raise
        finally:
            digests.close()


def _convert(pkg: Package, vs: VirtualSystem, cfg: ExportConfig,
             jobs: Sequence[DiskInspection], warnings: list[str], output_dir: str,
             digests: _Digests, progress: Callable[[str], None]) -> ImportResult:
    names = gnt_disk_names(vs)
    # Everything config.ini will hold is known now: refuse what it cannot
    # hold (control characters, too many disks) before converting.
    render_config(dataclasses.replace(cfg, disks=tuple(
        ExportDisk(size=j.size, dump="d", name=names[j.index] if j.index < len(names)
                   else None) for j in jobs)))
    dest = os.path.join(output_dir, cfg.name)
    check_free_space(output_dir, sum(j.need for j in jobs) + (1 << 20), "the import")
    with staging(dest) as work:
        # Disks convert in parallel (qemu-img is a process of its own each).
        busy = [j for j in jobs if j.ref is not None]
        workers = max(1, min(len(busy), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert") as pool:
            futures = [pool.submit(_produce, pkg, job, work, progress) for job in jobs]
            try:
                done = [f.result() for f in futures]
            except BaseException as e:
                for f in futures:
                    f.cancel()
                if not isinstance(e, Exception):  # Ctrl-C, SIGTERM: do not wait for them
                    _stop_children()
                raise
        digests.check()  # before anything is published
        produced = [dataclasses.replace(d, name=names[j.index] if j.index < len(names)
                                        else None) for j, d in zip(jobs, done, strict=True)]
        cfg = dataclasses.replace(cfg, disks=tuple(produced))
        write_config(work, cfg)
    return ImportResult(path=dest, config=cfg, warnings=tuple(warnings))


def gnt_disk_names(vs: VirtualSystem) -> tuple[str | None, ...]:
    return vs.ganeti.disk_names if vs.ganeti else ()
