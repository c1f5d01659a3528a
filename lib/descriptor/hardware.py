"""VirtualHardwareSection -> CPU count, memory, disks, NICs.

A value the package declares but that cannot be used is kept as
:class:`Unusable` (not replaced by a default): ``info`` shows it, import
refuses it naming the option that overrides it.  Bounds come from
:mod:`..model` (what Ganeti's hypervisors run).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from lxml import etree

from .. import units
from ..errors import DescriptorError, OvfError
from ..model import MAX_MEMORY, MAX_VCPUS, Disk, FileRef, Nic
from .elements import _kind, _number, _rasd, _shown
from .names import RESOURCE_TYPES

__all__ = ["HardwareMixin", "Unusable", "problem_of", "usable"]


class Unusable(NamedTuple):
    """A value the package declares but that cannot be used: kept (not
    replaced by a default) so that import can refuse it by name."""

    problem: str  # e.g. "CPU count '0' is not a positive whole number"
    shown: str  # the declared value, for a disagreement message


_OVERRIDE = {"CPU": "-B vcpus=N", "memory": "-B maxmem=SIZE"}


def _size_name(n: int) -> str:
    return f"{n >> 50} PiB" if n >= 1 << 50 else f"{n} bytes"


class HardwareMixin:
    """The hardware half of the descriptor reader (see :mod:`.reader`)."""

    path: str | None
    properties: dict[str, str | None]
    files: dict[str, FileRef]
    disk_of_file: dict[str, Disk]

    def warn(self, msg: str) -> None:
        raise NotImplementedError

    def _applies(self, item: etree._Element) -> bool:
        raise NotImplementedError

    def _specific(self, item: etree._Element) -> bool | None:
        raise NotImplementedError

    def _hardware(self, hw: etree._Element, sid: str, disks: Mapping[str, Disk]):
        # (for the chosen configuration only?, value) per quantity, in item order
        found: dict[str, list[tuple[bool, int | Unusable]]] = {
            "CPU": [], "memory": [], "video memory": []}
        sys_disks: list[Disk] = []
        nics: list[Nic] = []
        for item in hw:
            if not isinstance(item.tag, str):
                continue
            if _kind(item) not in ("Item", "StorageItem", "EthernetPortItem"):
                continue
            if not self._applies(item):
                continue
            raw_type = _rasd(item, "ResourceType")
            rtype = _number(raw_type) if raw_type else None
            label = _rasd(item, "ElementName") or _rasd(item, "InstanceID") or "?"
            if rtype is None and any(isinstance(c.tag, str) for c in item):
                self.warn(f"system {sid!r}: item {label!r} has no usable ResourceType "
                          f"({_shown(raw_type or '')}); ignored")
            value: int | Unusable | None = None
            if rtype == RESOURCE_TYPES["processor"]:
                value = self._count(item, sid, label)
                what = "CPU"
            elif rtype == RESOURCE_TYPES["memory"]:
                value = self._bytes(item, sid, label, "memory")
                what = "memory"
            elif rtype == RESOURCE_TYPES["graphics"]:
                value = self._bytes(item, sid, label, "video memory", quiet=True)
                what = "video memory"
            elif rtype == RESOURCE_TYPES["ethernet"]:
                nics.append(Nic(network=_rasd(item, "Connection"),
                                mac=_rasd(item, "Address"),
                                model=_rasd(item, "ResourceSubType"),
                                name=_rasd(item, "ElementName")))
            elif rtype == RESOURCE_TYPES["disk"]:
                d = self._disk_item(item, sid, label, disks)
                if d is not None:
                    sys_disks.append(d)
            elif rtype in (RESOURCE_TYPES["cdrom"], RESOURCE_TYPES["dvd"],
                           RESOURCE_TYPES["floppy"]):
                host = _rasd(item, "HostResource")
                if host:
                    self.warn(f"system {sid!r}: {label!r} media {host!r} is not imported")
            if value is not None:
                found[what].append((self._specific(item) is True, value))
        cpus, memory, video = (self._choose(sid, what, found[what])
                               for what in ("CPU", "memory", "video memory"))
        return cpus, memory, video, sys_disks, nics

    def _choose(self, sid: str, what: str,
                found: list[tuple[bool, int | Unusable]]) -> int | Unusable | None:
        """An item made for the chosen configuration beats one for all;
        among equals the first wins, and a disagreement is reported.  An
        unusable first is not skipped for a later one: what the package
        asked for is then unclear, and import refuses it."""
        best = [v for specific, v in found if specific] or [v for _s, v in found]
        if not best:
            return None
        shown = [v.shown if isinstance(v, Unusable) else str(v) for v in best]
        if len(dict.fromkeys(shown)) > 1:
            self.warn(f"system {sid!r}: {len(best)} {what} items disagree "
                      f"({', '.join(shown)}); using the first")
        first = best[0]
        if isinstance(first, Unusable) and what in _OVERRIDE:
            self.warn(f"system {sid!r}: {first.problem}; import needs {_OVERRIDE[what]}")
        return first

    def _count(self, item: etree._Element, sid: str, label: str) -> int | Unusable | None:
        q = _rasd(item, "VirtualQuantity")
        if q is None:
            ovirt = self._ovirt_cpus(item)
            if ovirt is None:
                self.warn(f"system {sid!r}: CPU item {label!r} has no VirtualQuantity; "
                          "ignored")
                return None
            q, n = str(ovirt), ovirt
        else:
            try:
                value = units.resolve_properties(q, self.properties, path=self.path)
            except OvfError as e:
                return Unusable(f"CPU count {_shown(q)} not usable ({e.problem})", q)
            n = _number(value)
            if n is None or n <= 0:
                return Unusable(f"CPU count {_shown(q)} is not a positive whole number", q)
        if n > MAX_VCPUS:
            return Unusable(f"CPU count {_shown(q)} is more than any Ganeti hypervisor "
                             f"runs ({MAX_VCPUS})", q)
        return n

    @staticmethod
    def _ovirt_cpus(item: etree._Element) -> int | None:
        """oVirt counts CPUs as sockets x cores per socket (x threads)."""
        n = 1
        for local, required in (("num_of_sockets", True), ("cpu_per_socket", True),
                                ("threads_per_cpu", False)):
            raw = _rasd(item, local)
            v = _number(raw) if raw else None
            if v is None or v <= 0:
                if required or raw:
                    return None
                continue
            n *= v
        return n

    def _bytes(self, item: etree._Element, sid: str, label: str, what: str,
               quiet: bool = False) -> int | Unusable | None:
        q = _rasd(item, "VirtualQuantity")
        if q is None:
            if not quiet:  # e.g. an item that only sets a Reservation
                self.warn(f"system {sid!r}: {what} item {label!r} has no VirtualQuantity; "
                          "ignored")
            return None
        unit, disagree = self._units_of(item)
        if disagree is not None:
            problem = f"{what} {_shown(q)} not usable ({disagree})"
            if quiet:
                self.warn(f"system {sid!r}: {problem}; ignored")
                return None
            return Unusable(problem, q)
        if unit is None:
            # What VMware and VirtualBox assume; said aloud, never silent.
            self.warn(f"system {sid!r}: {what} has no AllocationUnits; read as MiB")
            unit = "byte * 2^20"
        try:
            value = units.resolve_properties(q, self.properties, path=self.path)
            n = units.to_bytes(value, unit, path=self.path)
        except OvfError as e:
            problem = f"{what} {_shown(q)} not usable ({e.problem})"
            if quiet:  # video memory is only shown: unknown, not an error
                self.warn(f"system {sid!r}: {problem}; ignored")
                return None
            return Unusable(problem, q)
        if quiet:
            return n
        if n == 0:
            return Unusable(f"{what} {_shown(q)} ({unit}) is zero", q)
        if n > MAX_MEMORY:
            return Unusable(f"{what} {_shown(q)} ({unit}) is more than any Ganeti "
                             f"hypervisor gives a guest ({_size_name(MAX_MEMORY)})", q)
        return n

    def _units_of(self, item: etree._Element) -> tuple[str | None, str | None]:
        """(the unit of VirtualQuantity, why it is unknown).  Producers write
        AllocationUnits, VirtualQuantityUnits or both (vCloud, ovftool: the
        same); when both name different multipliers, the package's ask is
        unknown, and guessing one would give a guest 1024 times too much or
        too little memory."""
        alloc = _rasd(item, "AllocationUnits")
        vq = _rasd(item, "VirtualQuantityUnits")
        if not alloc or not vq or alloc == vq:
            return alloc or vq, None
        try:
            same = (units.parse_byte_units(alloc, path=self.path)
                    == units.parse_byte_units(vq, path=self.path))
        except OvfError as e:
            return alloc, e.problem
        if same:
            return alloc, None
        return alloc, (f"AllocationUnits {_shown(alloc)} and VirtualQuantityUnits "
                       f"{_shown(vq)} disagree")

    _HOST_RESOURCE = re.compile(r"^(?:ovf:)?/*(disk|file)/(.+)$")

    def _disk_item(self, item: etree._Element, sid: str, label: str,
                   disks: Mapping[str, Disk]) -> Disk | None:
        host = _rasd(item, "HostResource")
        if not host:
            self.warn(f"system {sid!r}: disk item {label!r} without HostResource ignored")
            return None
        # ovf:/disk/ID as the spec says, /disk/ID (VirtualBox, 0.9) and
        # ovf://disk/ID (open-ovf, some VMware) alike.
        m = self._HOST_RESOURCE.match(host)
        if m:
            kind, ref = m.groups()
            if kind == "disk":
                d = disks.get(ref)
                if d is None:
                    raise DescriptorError(f"system {sid!r}: disk item refers to disk "
                                          f"{_shown(ref)}, which DiskSection does not "
                                          "declare", self.path)
                return d
            fref = self.files.get(ref)
            if fref is None:
                raise DescriptorError(f"system {sid!r}: disk item refers to file "
                                      f"{_shown(ref)}, which References does not declare",
                                      self.path)
            declared = self.disk_of_file.get(fref.file_id)
            return declared or Disk(disk_id=ref, capacity=None, file_ref=fref)
        # oVirt and virt-v2v write the disk's file (id or href) bare.
        d = disks.get(host)
        if d is None:
            fref = self.files.get(host) or self.files_by_href.get(host)
            d = self.disk_of_file.get(fref.file_id) if fref is not None else None
        if d is not None:
            return d
        raise DescriptorError(f"system {sid!r}: disk HostResource {_shown(host)} is neither "
                              "ovf:/disk/ID nor ovf:/file/ID", self.path)


def usable(v: int | Unusable | None) -> int | None:
    return v if isinstance(v, int) else None


def problem_of(v: int | Unusable | None) -> str | None:
    return v.problem if isinstance(v, Unusable) else None
