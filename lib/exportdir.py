"""Ganeti export directories: ``config.ini`` <-> values (staging: :mod:`staging`).

``config.ini`` is read by Ganeti with a *interpolating* ConfigParser
(``objects.SerializableConfigParser``), so a ``%`` in a value must be
written as ``%%``; the string ``None`` means unset.  We write it with
configparser, never by hand, and in the section order Ganeti 3.0 writes
(``backend.FinalizeExport``).
"""

from __future__ import annotations

import configparser
import errno
import fcntl
import io
import math
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import ExportDirError, OvfError
from .model import GanetiNic
from .staging import staging, staging_file

__all__ = [
    "MIB",
    "ExportDisk",
    "ExportConfig",
    "size_mib",
    "render_config",
    "read_config",
    "staging",
    "staging_file",
    "open_input",
    "check_instance_name",
    "CONFIG_MAX",
    "MAX_DISKS",
    "MAX_NICS",
]

MIB = 1 << 20
MAX_DISKS = 16  # constants.MAX_DISKS: Ganeti reads disk0..disk15 only
MAX_NICS = 8  # constants.MAX_NICS
EXPORT_VERSION = 0
CONFIG_MAX = 1 << 20  # bytes of config.ini we read; Ganeti's are ~2 KiB

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def size_mib(nbytes: int) -> int:
    """Bytes to Ganeti's MiB, rounded UP: rounding down would cut the disk."""
    return max(1, math.ceil(nbytes / MIB))


def check_instance_name(name: str, *, path: str | None = None) -> str:
    """A name usable as Ganeti instance name and as a directory name."""
    if not _NAME_RE.match(name) or len(name) > 255 or name.endswith("."):
        raise ExportDirError(f"instance name {name!r} is not a valid host name "
                             "(letters, digits, '.', '-', '_')", path)
    return name


@dataclass(frozen=True, slots=True)
class ExportDisk:
    size: int  # bytes; written as MiB rounded up
    dump: str | None  # file name inside the export dir; None: created empty
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """What a Ganeti export's config.ini holds.  Unset fields are not written,
    so Ganeti's (cluster) defaults apply: nothing is invented."""

    name: str
    os: str
    disks: tuple[ExportDisk, ...] = ()
    nics: tuple[GanetiNic, ...] = ()
    disk_template: str | None = None
    hypervisor: str | None = None
    tags: tuple[str, ...] = ()
    backend: Mapping[str, str] = field(default_factory=dict)
    hv_params: Mapping[str, str] = field(default_factory=dict)
    os_params: Mapping[str, str] = field(default_factory=dict)
    os_params_private: Mapping[str, str] = field(default_factory=dict)
    source: str | None = None
    timestamp: int | None = None


def _esc(value: object) -> str:
    return str(value).replace("%", "%%")


def _opt(value: str | None) -> str:
    return "None" if value is None else _esc(value)


def render_config(cfg: ExportConfig) -> str:
    """The config.ini text for ``cfg``, as Ganeti 3.0's import reads it."""
    if len(cfg.disks) > MAX_DISKS:
        raise ExportDirError(f"{len(cfg.disks)} disks; Ganeti allows at most {MAX_DISKS}")
    if len(cfg.nics) > MAX_NICS:
        raise ExportDirError(f"{len(cfg.nics)} NICs; Ganeti allows at most {MAX_NICS}")
    cp = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp["export"] = {
        "version": str(EXPORT_VERSION),
        "timestamp": str(cfg.timestamp if cfg.timestamp is not None else int(time.time())),
        "source": _esc(cfg.source or "ganeti-ovf"),
        "os": _esc(cfg.os),
        "compression": "none",
    }
    inst: dict[str, str] = {"name": _esc(cfg.name)}
    be = dict(cfg.backend)
    for key in ("maxmem", "minmem", "vcpus"):
        if key in be:
            inst[key] = _esc(be[key])
    if "maxmem" in be:
        inst["memory"] = _esc(be["maxmem"])  # for older readers, as Ganeti does
    if cfg.disk_template:
        inst["disk_template"] = _esc(cfg.disk_template)
    if cfg.hypervisor:
        inst["hypervisor"] = _esc(cfg.hypervisor)
    inst["tags"] = _esc(" ".join(cfg.tags))
    for i, nic in enumerate(cfg.nics):
        inst[f"nic{i}_mac"] = _esc(nic.mac or "generate")
        inst[f"nic{i}_ip"] = _opt(nic.ip)
        inst[f"nic{i}_network"] = _opt(nic.network)
        inst[f"nic{i}_name"] = _opt(nic.name)
        inst[f"nic{i}_link"] = _opt(nic.link)
        inst[f"nic{i}_mode"] = _opt(nic.mode)
        inst[f"nic{i}_vlan"] = _esc(nic.vlan or "")
    inst["nic_count"] = str(len(cfg.nics))
    for i, d in enumerate(cfg.disks):
        inst[f"disk{i}_ivname"] = f"disk/{i}"
        if d.dump is not None:
            inst[f"disk{i}_dump"] = _esc(d.dump)
        inst[f"disk{i}_size"] = str(size_mib(d.size))
        inst[f"disk{i}_name"] = _opt(d.name)
    inst["disk_count"] = str(len(cfg.disks))
    cp["instance"] = inst
    cp["hypervisor"] = {k: _esc(v) for k, v in cfg.hv_params.items()}
    backend = {k: _esc(v) for k, v in be.items()}
    if "maxmem" in be and "memory" not in be:
        # Ganeti < 2.6 (and upstream's converter) read [backend] memory.
        backend["memory"] = _esc(be["maxmem"])
    cp["backend"] = backend
    cp["os"] = {k: _esc(v) for k, v in cfg.os_params.items()}
    cp["os_private"] = {k: _esc(v) for k, v in cfg.os_params_private.items()}
    for section in cp.sections():
        for key, value in cp.items(section, raw=True):
            if _CONTROL.search(key) or _CONTROL.search(value):
                # configparser indents "\n" but not "\r", which Ganeti's
                # reader (universal newlines) takes as a line break: a
                # stranger's text would become keys of its own.
                raise ExportDirError(f"[{section}] {key}: value {value!r} holds a control "
                                     "character")
    buf = io.StringIO()
    cp.write(buf)
    return buf.getvalue()


def read_config(path: str) -> ExportConfig:
    """A Ganeti export's config.ini (3.0's, or older with ``memory``)."""
    cp = configparser.ConfigParser(interpolation=configparser.BasicInterpolation())
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    fd = open_input(path, "config.ini", path)
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(CONFIG_MAX + 1)
    except OSError as e:
        raise ExportDirError(f"cannot read: {e.strerror}", path) from e
    if len(raw) > CONFIG_MAX:
        raise ExportDirError(f"is larger than {CONFIG_MAX} bytes: not a Ganeti config.ini",
                             path)
    try:
        cp.read_string(raw.decode("utf-8"), source=path)
    except (configparser.Error, UnicodeDecodeError) as e:
        raise ExportDirError(f"not a valid config.ini: {str(e).splitlines()[0]}", path) from e

    def get(section: str, key: str) -> str | None:
        try:
            v = cp.get(section, key)
        except (configparser.NoSectionError, configparser.NoOptionError):
            return None
        except configparser.InterpolationError as e:
            raise ExportDirError(f"[{section}] {key}: {e.message.splitlines()[0]}", path) from e
        return None if v.strip().lower() == "none" else v

    def section(name: str) -> dict[str, str]:
        # Parameter sections are kept verbatim: "None" there is a value
        # Ganeti wrote (and reads back), not "unset" as in [instance].
        if not cp.has_section(name):
            return {}
        out = {}
        for k in cp.options(name):
            try:
                out[k] = cp.get(name, k)
            except configparser.InterpolationError as e:
                raise ExportDirError(f"[{name}] {k}: {e.message.splitlines()[0]}", path) from e
        return out

    if not cp.has_section("export"):
        raise ExportDirError("no [export] section: not a Ganeti export", path)
    version = get("export", "version")
    if version is None or version.strip() != str(EXPORT_VERSION):
        raise ExportDirError(f"export version {version!r} is not supported "
                             f"(Ganeti writes {EXPORT_VERSION})", path)
    os_name = get("export", "os")
    if not os_name:
        raise ExportDirError("no OS in [export]", path)
    name = get("instance", "name")
    if not name:
        raise ExportDirError("no instance name in [instance]", path)
    disks = []
    for i in range(MAX_DISKS):
        size = get("instance", f"disk{i}_size")
        if size is None:
            continue
        try:
            mib = int(size)
        except ValueError:
            raise ExportDirError(f"disk{i}_size {size!r} is not a whole number", path) from None
        disks.append(ExportDisk(size=mib * MIB, dump=get("instance", f"disk{i}_dump"),
                                name=get("instance", f"disk{i}_name")))
    nics = []
    for i in range(MAX_NICS):
        if get("instance", f"nic{i}_mac") is None and not cp.has_option("instance", f"nic{i}_mac"):
            break
        nics.append(GanetiNic(
            mac=get("instance", f"nic{i}_mac"), ip=get("instance", f"nic{i}_ip"),
            network=get("instance", f"nic{i}_network"), name=get("instance", f"nic{i}_name"),
            link=get("instance", f"nic{i}_link"), mode=get("instance", f"nic{i}_mode"),
            vlan=get("instance", f"nic{i}_vlan") or None,
        ))
    backend = section("backend")
    if not backend:
        # Old exports keep backend parameters in [instance].
        for key in ("maxmem", "minmem", "memory", "vcpus", "auto_balance"):
            v = get("instance", key)
            if v is not None:
                backend[key] = v
    if "memory" in backend:
        backend.setdefault("maxmem", backend["memory"])
        backend.setdefault("minmem", backend["memory"])
        del backend["memory"]
    ts = get("export", "timestamp")
    return ExportConfig(
        name=name, os=os_name, disks=tuple(disks), nics=tuple(nics),
        disk_template=get("instance", "disk_template"),
        hypervisor=get("instance", "hypervisor"),
        tags=tuple((get("instance", "tags") or "").split()),
        backend=backend, hv_params=section("hypervisor"), os_params=section("os"),
        os_params_private=section("os_private"), source=get("export", "source"),
        timestamp=int(ts) if ts and ts.strip().isdigit() else None,
    )


def open_input(path: str, what: str, label: str, *, missing: str = "no such file") -> int:
    """A read-only descriptor of the export input ``path``, by the import
    side's rules: a regular file, not a symbolic link, not hard-linked
    (a second name may be a file its owner never meant to give us).

    The name is looked at before it is opened, so a device node or FIFO is
    never opened (opening some has effects; a FIFO would block); the
    descriptor is then checked to be what was looked at.  ``what`` names
    the input in messages, ``label`` is the file they are about.
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise ExportDirError(f"{what}: {missing}", label) from None
    except OSError as e:
        raise ExportDirError(f"{what}: cannot read: {e.strerror}", label) from e
    _check_input(before, what, label)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ExportDirError(f"{what} is a symbolic link; links are never followed",
                                 label) from None
        raise ExportDirError(f"{what}: cannot read: {e.strerror}", label) from e
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise ExportDirError(f"{what} changed while being opened", label)
        _check_input(st, what, label)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_input(st: os.stat_result, what: str, label: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise ExportDirError(f"{what} is a symbolic link; links are never followed", label)
    if not stat.S_ISREG(st.st_mode):
        raise ExportDirError(f"{what} is not a regular file", label)
    if st.st_nlink != 1:
        raise ExportDirError(f"{what} has {st.st_nlink} hard links; an input must have one "
                             "name only (copy it)", label)


def human_size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def check_free_space(path: str, need: int, what: str,
                     error: type[OvfError] = ExportDirError) -> None:
    """Refuse, before writing, an output that cannot fit where it goes
    (``path`` or its nearest existing parent)."""
    where = os.path.abspath(path)
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    try:
        st = os.statvfs(where)
    except OSError as e:
        raise error(f"cannot check free space: {e.strerror}", where) from e
    avail = st.f_bavail * st.f_frsize
    if need > avail:
        raise error(f"not enough free space: {what} needs up to {human_size(need)}, "
                    f"{human_size(avail)} available", where)


def write_config(directory: str, cfg: ExportConfig) -> str:
    """Write ``config.ini`` (mode 0600) into ``directory``; returns its path."""
    path = os.path.join(directory, "config.ini")
    text = render_config(cfg)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path
