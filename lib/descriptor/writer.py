"""Model -> OVF 1.0 / 2.0 descriptor bytes (lxml; names from ``names.WRITE_NS``).

What we write is meant to be taken by VMware (ovftool, vSphere), VirtualBox
and Ganeti alike, and to validate against the DMTF schema of its version
(DSP8023 1.1.1 / 1.0.0 for 1.0, 2.0.1 for 2.0), so some choices are fixed:

* RASD children in the schema's (alphabetical) order, InstanceIDs unique.
* One LSI Logic SCSI controller per 15 disks, unit 7 skipped (the
  controller's own id on VMware); ``lsilogic`` is what both VMware and
  VirtualBox (``ApplianceImplImport.cpp``: LsiLogic, BusLogic, LsiLogicSas)
  accept for ResourceType 6.  Only Ganeti's 16th disk needs a second
  controller, which VirtualBox merely warns about.
* NICs are ResourceType 10 with the model the caller chose.  ``E1000`` is
  the one both accept: VirtualBox maps PCNet32, E1000, E10000 and
  VirtioNet (``ApplianceImplImport.cpp``, anything else gets its default
  adapter); VMware's own descriptors (shared OVF corpus) use E1000,
  E1000e, VmxNet3 and PCNet32, with lsilogic the commonest SCSI type.
* The graphics item (ResourceType 24) is ``ovf:required="false"``:
  VirtualBox's ovfreader.cpp refuses any hardware item of a type it does
  not know unless it is marked so.
* Memory and video memory in ``byte * 2^20`` when whole MiB (the unit
  VirtualBox and Ganeti's own reader require), bytes otherwise.

**Where Ganeti's section goes.**  Upstream Ganeti's ``ovf.py`` finds
``{http://ganeti}GanetiSection`` only as a direct child of ``Envelope``
(``tree.find("{http://ganeti}GanetiSection/...")``); our reader looks
there and in ``VirtualSystem``.  DSP8023 admits no ``xs:any`` among the
children of ``Envelope`` or ``VirtualSystem``: extensions there must be
members of the ``ovf:Section`` substitution group, declared by the
vendor's own schema.  The schema's ``xs:any`` slots (inside References,
File, and after the content of most sections) are places neither Ganeti
reader looks.  So no placement satisfies the plain DMTF schema *and* both
readers; we keep the readers (the section exists to be read back) and
write the section at Envelope level, after NetworkSection, shaped as a
proper Section: ``ovf:Info`` first and ``ovf:required="false"``, so a
consumer that does not know it may skip it (DSP0243; vSphere keeps such
sections as uninterpreted OvfSection data, VirtualBox ignores unknown
Envelope sections).  With the small extension schema that declares
``gnt:GanetiSection`` a member of ``ovf:Section`` (tests/data/schemas/
ganeti/) the descriptor validates; a system without Ganeti data
(``ganeti=None``: ``ovfconverter export --external``) gets no section and
validates against the DMTF schema alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from lxml import etree

from ..errors import DescriptorError
from ..model import Disk, Envelope, FileRef, GanetiInfo, Network, VirtualSystem
from .names import GANETI_NS, RESOURCE_TYPES, WRITE_NS

__all__ = [
    "write_descriptor",
    "VERSIONS",
    "SCSI_SUBTYPE",
    "VIDEO_MEMORY",
    "VIRTUAL_SYSTEM_TYPE",
    "scsi_slots",
]

VERSIONS = ("1.0", "2.0")
SCSI_SUBTYPE = "lsilogic"
VIDEO_MEMORY = 12 << 20
VIRTUAL_SYSTEM_TYPE = "vmx-07"
"""Hardware family: vmx-07 (ESX 4.0+) is the oldest VMware family with
everything we describe, and any vmx-NN lets vSphere accept the package."""

_MIB = 1 << 20
_SCSI_UNITS = tuple(u for u in range(16) if u != 7)
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9._-]*$")
_XSI = "http://www.w3.org/2001/XMLSchema-instance"


def scsi_slots(count: int) -> list[tuple[int, int]]:
    """(controller index, unit) for ``count`` disks: 15 per controller."""
    per = len(_SCSI_UNITS)
    return [(i // per, _SCSI_UNITS[i % per]) for i in range(count)]


class _Writer:
    def __init__(self, version: str) -> None:
        if version not in VERSIONS:
            raise DescriptorError(f"OVF version {version!r} cannot be written "
                                  f"(choose {' or '.join(VERSIONS)})")
        self.version = version
        self.ns = WRITE_NS[version]
        self.next_id = 1

    # -- names -------------------------------------------------------------

    def q(self, role: str, local: str) -> str:
        return f"{{{self.ns[role]}}}{local}"

    def ovf(self, local: str) -> str:
        return self.q("ovf", local)

    def el(self, parent: etree._Element, role: str, local: str, text: object = None,
           **attrs: object) -> etree._Element:
        e = etree.SubElement(parent, self.q(role, local))
        for k, v in attrs.items():
            if v is not None:
                e.set(self.ovf(k), str(v))
        if text is not None:
            e.text = _xml_text(text)
        return e

    def info(self, parent: etree._Element, text: str) -> None:
        self.el(parent, "ovf", "Info", text)

    def new_id(self) -> int:
        n = self.next_id
        self.next_id += 1
        return n

    # -- sections -----------------------------------------------------------

    def envelope(self, env: Envelope) -> etree._Element:
        if len(env.systems) != 1:
            raise DescriptorError(f"{len(env.systems)} virtual systems; we write exactly one")
        vs = env.systems[0]
        nsmap: dict[str | None, str] = {None: self.ns["ovf"], "ovf": self.ns["ovf"],
                                        "rasd": self.ns["rasd"], "vssd": self.ns["vssd"],
                                        "xsi": _XSI}
        if vs.ganeti is not None:
            nsmap["gnt"] = GANETI_NS
        root = etree.Element(self.ovf("Envelope"), nsmap=nsmap)
        root.set(self.ovf("version"), self.version)
        root.set("{http://www.w3.org/XML/1998/namespace}lang", "en-US")
        self.references(root, env.files)
        self.disk_section(root, env.disks)
        self.network_section(root, env.networks)
        if vs.ganeti is not None:
            self.ganeti_section(root, vs)
        self.virtual_system(root, vs)
        return root

    def references(self, root: etree._Element, files: Iterable[FileRef]) -> None:
        refs = self.el(root, "ovf", "References")
        for f in files:
            self.el(refs, "ovf", "File", href=f.href, id=f.file_id, size=f.size,
                    compression=f.compression, chunkSize=f.chunk_size)

    def disk_section(self, root: etree._Element, disks: Iterable[Disk]) -> None:
        disks = tuple(disks)
        if not disks:
            return
        sec = self.el(root, "ovf", "DiskSection")
        self.info(sec, "Virtual disk information")
        for d in disks:
            if d.capacity is None:
                raise DescriptorError(f"disk {d.disk_id!r} has no capacity")
            self.el(sec, "ovf", "Disk", capacity=d.capacity, diskId=d.disk_id,
                    fileRef=d.file_ref.file_id if d.file_ref else None,
                    format=d.format_uri, populatedSize=d.populated_size)

    def network_section(self, root: etree._Element, networks: Iterable[Network]) -> None:
        networks = tuple(networks)
        if not networks:
            return
        sec = self.el(root, "ovf", "NetworkSection")
        self.info(sec, "Logical networks the adapters connect to")
        for n in networks:
            net = self.el(sec, "ovf", "Network", name=n.name)
            if n.description:
                self.el(net, "ovf", "Description", n.description)

    def ganeti_section(self, root: etree._Element, vs: VirtualSystem) -> None:
        g: GanetiInfo = vs.ganeti  # type: ignore[assignment]
        sec = etree.SubElement(root, f"{{{GANETI_NS}}}GanetiSection")
        sec.set(self.ovf("required"), "false")
        self.info(sec, "Ganeti instance parameters")
        _gnt(sec, "Version", g.version)
        _gnt(sec, "DiskTemplate", g.disk_template)
        _gnt(sec, "AutoBalance", g.auto_balance)
        if g.tags:
            _gnt(sec, "Tags", " ".join(g.tags))
        if g.os_name is not None:
            osel = _gnt(sec, "OperatingSystem")
            _gnt(osel, "Name", g.os_name)
            _params(osel, g.os_params)
        if g.hypervisor is not None:
            hv = _gnt(sec, "Hypervisor")
            _gnt(hv, "Name", g.hypervisor)
            _params(hv, g.hv_params)
        if g.backend:
            _params(_gnt(sec, "Backend"), g.backend)
        if g.nics:
            net = _gnt(sec, "Network")
            for i, nic in enumerate(g.nics):
                # Upstream pairs these with NetworkSection by ovf:name.
                name = vs.nics[i].network if i < len(vs.nics) else None
                n = _gnt(net, "Nic")
                if name:
                    n.set(self.ovf("name"), name)
                for local, value in (("Mode", nic.mode), ("MACAddress", nic.mac),
                                     ("IPAddress", nic.ip), ("Link", nic.link),
                                     ("Net", nic.network), ("Name", nic.name),
                                     ("VLAN", nic.vlan)):
                    _gnt(n, local, value)
        if g.disk_names:
            dsec = _gnt(sec, "Disks")
            for dname in g.disk_names:
                _gnt(_gnt(dsec, "Disk"), "Name", dname)

    def virtual_system(self, root: etree._Element, vs: VirtualSystem) -> None:
        sysel = self.el(root, "ovf", "VirtualSystem", id=vs.system_id)
        self.info(sysel, vs.info or "A virtual machine")
        if vs.name:
            self.el(sysel, "ovf", "Name", vs.name)
        ossec = self.el(sysel, "ovf", "OperatingSystemSection",
                        id=vs.os_id if vs.os_id is not None else 1)
        self.info(ossec, "The kind of installed guest operating system")
        if vs.os_description:
            self.el(ossec, "ovf", "Description", vs.os_description)
        self.hardware(sysel, vs)

    def hardware(self, sysel: etree._Element, vs: VirtualSystem) -> None:
        hw = self.el(sysel, "ovf", "VirtualHardwareSection")
        self.info(hw, "Virtual hardware requirements")
        system = self.el(hw, "ovf", "System")
        self.el(system, "vssd", "ElementName", "Virtual Hardware Family")
        self.el(system, "vssd", "InstanceID", 0)
        self.el(system, "vssd", "VirtualSystemIdentifier", vs.name or vs.system_id)
        self.el(system, "vssd", "VirtualSystemType",
                vs.virtual_system_type or VIRTUAL_SYSTEM_TYPE)
        if vs.cpus is None or vs.cpus < 1:
            raise DescriptorError(f"system {vs.system_id!r}: CPU count {vs.cpus!r} is not "
                                  "a positive number")
        self.item(hw, ResourceType=RESOURCE_TYPES["processor"], VirtualQuantity=vs.cpus,
                  ElementName=f"{vs.cpus} virtual CPU(s)",
                  Description="Number of virtual CPUs", AllocationUnits="hertz * 10^6")
        if vs.memory is None or vs.memory < 1:
            raise DescriptorError(f"system {vs.system_id!r}: memory {vs.memory!r} is not "
                                  "a positive size")
        unit, qty = _mib_or_bytes(vs.memory)
        self.item(hw, ResourceType=RESOURCE_TYPES["memory"], VirtualQuantity=qty,
                  AllocationUnits=unit, ElementName=f"{_human(vs.memory)} of memory",
                  Description="Memory size")
        slots = scsi_slots(len(vs.disks))
        controllers: list[int] = []
        for c in range(max((s[0] for s in slots), default=-1) + 1):
            controllers.append(self.item(
                hw, ResourceType=RESOURCE_TYPES["scsi"], ResourceSubType=SCSI_SUBTYPE,
                Address=c, ElementName=f"SCSI controller {c}",
                Description="SCSI controller"))
        if not slots:
            controllers.append(self.item(
                hw, ResourceType=RESOURCE_TYPES["scsi"], ResourceSubType=SCSI_SUBTYPE,
                Address=0, ElementName="SCSI controller 0", Description="SCSI controller"))
        for i, (d, (ctrl, unit)) in enumerate(zip(vs.disks, slots, strict=True)):
            self.item(hw, ResourceType=RESOURCE_TYPES["disk"],
                      HostResource=f"ovf:/disk/{d.disk_id}", Parent=controllers[ctrl],
                      AddressOnParent=unit, ElementName=f"disk{i}",
                      Description="Hard disk")
        for i, nic in enumerate(vs.nics):
            self.item(hw, ResourceType=RESOURCE_TYPES["ethernet"],
                      ResourceSubType=nic.model, Address=nic.mac,
                      Connection=nic.network, AutomaticAllocation="true",
                      ElementName=nic.name or f"ethernet{i}",
                      Description=f"Ethernet adapter on {nic.network!r}"
                      if nic.network else "Ethernet adapter")
        if vs.video_memory:
            unit, qty = _mib_or_bytes(vs.video_memory)
            self.item(hw, required=False, ResourceType=RESOURCE_TYPES["graphics"],
                      AllocationUnits=unit, VirtualQuantity=qty,
                      AutomaticAllocation="false", ElementName="video",
                      Description="Graphics card")

    def item(self, hw: etree._Element, *, required: bool = True, **fields: object) -> int:
        """An Item with the given RASD fields in schema order; returns its InstanceID."""
        iid = self.new_id()
        fields["InstanceID"] = iid
        it = self.el(hw, "ovf", "Item")
        if not required:
            it.set(self.ovf("required"), "false")
        for local in sorted(fields):
            if fields[local] is not None:
                self.el(it, "rasd", local, fields[local])
        return iid


def _xml_text(value: object) -> str:
    text = str(value)
    try:
        # lxml refuses control characters; say which value instead of a traceback.
        etree.Element("x").text = text
    except ValueError:
        raise DescriptorError(f"value {text!r} cannot be written in XML "
                              "(control characters)") from None
    return text


def _gnt(parent: etree._Element, local: str, text: object = None) -> etree._Element:
    """A Ganeti element; None text with a leaf name writes nothing."""
    if text is None and local in _LEAVES:
        return parent  # not written: unset
    e = etree.SubElement(parent, f"{{{GANETI_NS}}}{local}")
    if text is not None:
        e.text = _xml_text(text)
    return e


_LEAVES = frozenset({"Version", "DiskTemplate", "AutoBalance", "Tags", "Name", "Mode",
                     "MACAddress", "IPAddress", "Link", "Net", "VLAN"})


def _params(parent: etree._Element, params: Mapping[str, str]) -> None:
    p = etree.SubElement(parent, f"{{{GANETI_NS}}}Parameters")
    for key, value in params.items():
        if not _NCNAME.match(key) or key.lower().startswith("xml"):
            raise DescriptorError(f"parameter name {key!r} cannot be an XML element name")
        e = etree.SubElement(p, f"{{{GANETI_NS}}}{key}")
        e.text = _xml_text(value)


def _mib_or_bytes(n: int) -> tuple[str, int]:
    if n % _MIB == 0:
        return "byte * 2^20", n // _MIB
    return "byte", n


def _human(n: int) -> str:
    return f"{n // _MIB} MB" if n % _MIB == 0 else f"{n} bytes"


def write_descriptor(env: Envelope, *, version: str = "1.0") -> bytes:
    """The descriptor for ``env`` (one VirtualSystem), UTF-8 with declaration.

    ``env.systems[0].ganeti`` decides whether a Ganeti section is written
    (see the module docstring for where).  DescriptorError for what cannot
    be described: no CPUs or memory, a disk without capacity, a parameter
    name that is no XML name, control characters in a value.
    """
    root = _Writer(version).envelope(env)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
