"""OVF 0.9 / 1.x / 2.x descriptor -> model, leniently and safely.

Lenient: real tools write descriptors that fail their own schema (vendor
sections, element order, odd namespaces), and the tools that made them read
them fine; we read them too and record what we could not use in
``Envelope.warnings``.  Safe: the XML parser never loads a DTD, never
expands entities, never touches the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

from lxml import etree

from .. import units
from ..errors import DescriptorError, OvfError
from ..model import (
    Disk,
    Envelope,
    FileRef,
    GanetiInfo,
    GanetiNic,
    Network,
    Nic,
    Product,
    VirtualSystem,
)
from .names import RESOURCE_TYPES, ns_role, ovf_version_of

__all__ = ["parse_descriptor", "parse_xml"]

_XSI = "http://www.w3.org/2001/XMLSchema-instance"
MAX_DEPTH = 64


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_xml(data: bytes, *, path: str | None = None) -> etree._Element:
    """The root element, or DescriptorError with lxml's first complaint.

    A file that declares UTF-16 but is really 8-bit (XenCenter does this)
    is read again as UTF-8: that is what the producing tool meant.
    """
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as e:
        retry = _undeclare_utf16(data)
        if retry is None:
            raise DescriptorError(f"not well-formed XML: {_xml_msg(e)}", path) from e
        try:
            root = etree.fromstring(retry, _parser())
        except etree.XMLSyntaxError:
            raise DescriptorError(f"not well-formed XML: {_xml_msg(e)}", path) from e
    except ValueError as e:  # e.g. unicode strings with declarations
        raise DescriptorError(f"not readable as XML: {e}", path) from e
    if root is None:
        raise DescriptorError("empty XML document", path)
    _check_depth(root, path)
    return root


def _xml_msg(e: etree.XMLSyntaxError) -> str:
    msg = str(e.msg if getattr(e, "msg", None) else e)
    return msg.splitlines()[0] if msg else "syntax error"


def _undeclare_utf16(data: bytes) -> bytes | None:
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return None  # really UTF-16
    m = re.match(rb"\s*<\?xml[^>]*encoding=[\"']utf-16[\"'][^>]*\?>", data, re.I)
    if not m:
        return None
    return data[m.end():]


def _check_depth(root: etree._Element, path: str | None) -> None:
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise DescriptorError(f"XML nested deeper than {MAX_DEPTH} levels", path)
        stack.extend((c, depth + 1) for c in el)


# ---------------------------------------------------------------- helpers

def _qn(el: etree._Element) -> tuple[str, str]:
    """(role, local name) of an element."""
    if not isinstance(el.tag, str):
        return ("", "")
    q = etree.QName(el)
    return ns_role(q.namespace), q.localname


def _kind(el: etree._Element) -> str:
    """Local name, with 0.9's ``<Section xsi:type="ovf:DiskSection_Type">``
    and ``<Content xsi:type=...>`` resolved to what they are."""
    role, local = _qn(el)
    if local in ("Section", "Content") and role == "ovf":
        t = el.get(f"{{{_XSI}}}type")
        if t:
            t = t.split(":")[-1]
            return t[:-5] if t.endswith("_Type") else t
    return local


def _children(el: etree._Element, local: str, role: str = "ovf") -> Iterator[etree._Element]:
    for c in el:
        if isinstance(c.tag, str) and _kind(c) == local and _qn(c)[0] == role:
            yield c


def _child(el: etree._Element, local: str, role: str = "ovf") -> etree._Element | None:
    return next(_children(el, local, role), None)


def _text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    t = "".join(el.itertext()).strip()
    return t or None


def _attr(el: etree._Element, local: str) -> str | None:
    """An attribute by local name, in the OVF namespace or unqualified
    (some producers drop the prefix; VMware 0.9 uses its own namespace)."""
    for k, v in el.attrib.items():
        q = etree.QName(k)
        if q.localname == local and (q.namespace is None or ns_role(q.namespace) == "ovf"):
            return v
    return None


def _vendor_attr(el: etree._Element, local: str, role: str) -> str | None:
    for k, v in el.attrib.items():
        q = etree.QName(k)
        if q.localname == local and q.namespace and ns_role(q.namespace) == role:
            return v
    return None


def _int(value: str | None, what: str, path: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        n = int(value.strip())
    except ValueError:
        raise DescriptorError(f"{what} {value!r} is not a whole number", path) from None
    if n < 0:
        raise DescriptorError(f"{what} {value!r} is negative", path)
    return n


def _rasd(item: etree._Element, local: str) -> str | None:
    """A RASD-like field of an Item/StorageItem/EthernetPortItem by local name."""
    for c in item:
        if isinstance(c.tag, str) and _qn(c)[1] == local and _qn(c)[0] in (
                "rasd", "sasd", "epasd", "ovf", "other"):
            return _text(c)
    return None


# ---------------------------------------------------------------- reader

class _Reader:
    def __init__(self, root: etree._Element, path: str | None,
                 configuration: str | None) -> None:
        self.root = root
        self.path = path
        self.warnings: list[str] = []
        self.wanted_configuration = configuration

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)

    def read(self) -> Envelope:
        root = self.root
        role, local = _qn(root)
        if local != "Envelope" or role != "ovf":
            ns = etree.QName(root).namespace
            what = f"{{{ns}}}{local}" if ns else local
            raise DescriptorError(f"not an OVF descriptor (root element is {what!r}, "
                                  "not Envelope)", self.path)
        version = ovf_version_of(etree.QName(root).namespace, _attr(root, "version"))
        files = self._files()
        self.properties = self._all_properties()
        disks = self._disks(files)
        networks = tuple(
            Network(name=_attr(n, "name") or "", description=_text(_child(n, "Description")))
            for sec in self._sections(root, "NetworkSection")
            for n in _children(sec, "Network")
        )
        configurations, chosen = self._configurations()
        self.configuration = chosen
        env_ganeti = self._ganeti(root)
        systems = tuple(self._systems(root, disks, env_ganeti))
        if not systems:
            raise DescriptorError("no VirtualSystem in the descriptor", self.path)
        return Envelope(
            version=version,
            files=tuple(files.values()),
            disks=tuple(disks.values()),
            networks=networks,
            systems=systems,
            configurations=configurations,
            configuration=chosen,
            warnings=tuple(self.warnings),
        )

    def _sections(self, el: etree._Element, kind: str) -> Iterator[etree._Element]:
        for c in el:
            if isinstance(c.tag, str) and _qn(c)[0] == "ovf" and _kind(c) == kind:
                yield c

    # -- References / DiskSection ----------------------------------------

    def _files(self) -> dict[str, FileRef]:
        out: dict[str, FileRef] = {}
        refs = _child(self.root, "References")
        if refs is None:
            return out
        for f in _children(refs, "File"):
            fid = _attr(f, "id")
            href = _attr(f, "href")
            if not fid or not href:
                raise DescriptorError("References/File without ovf:id or ovf:href", self.path)
            if fid in out:
                raise DescriptorError(f"file id {fid!r} is declared twice", self.path)
            comp = _attr(f, "compression")
            if comp is not None:
                comp = comp.strip().lower()
                if comp in ("", "identity"):
                    comp = None
            out[fid] = FileRef(
                file_id=fid,
                href=href.strip(),
                size=_int(_attr(f, "size"), f"size of file {fid!r}", self.path),
                compression=comp,
                chunk_size=_int(_attr(f, "chunkSize"), f"chunkSize of file {fid!r}", self.path),
            )
        return out

    def _disks(self, files: Mapping[str, FileRef]) -> dict[str, Disk]:
        out: dict[str, Disk] = {}
        sections = list(self._sections(self.root, "DiskSection"))
        # OVF 2 may also carry DiskSection inside VirtualSystem.
        for vs in self.root.iter():
            if isinstance(vs.tag, str) and _kind(vs) == "VirtualSystem":
                sections.extend(self._sections(vs, "DiskSection"))
        for sec in sections:
            for d in _children(sec, "Disk"):
                did = _attr(d, "diskId")
                if not did:
                    raise DescriptorError("Disk without ovf:diskId", self.path)
                file_ref = None
                fref = _attr(d, "fileRef")
                if fref:
                    file_ref = files.get(fref)
                    if file_ref is None:
                        raise DescriptorError(f"disk {did!r} refers to file {fref!r}, "
                                              "which References does not declare", self.path)
                out[did] = Disk(
                    disk_id=did,
                    capacity=self._capacity(d, did),
                    file_ref=file_ref,
                    format_uri=_attr(d, "format"),
                    populated_size=_int(_attr(d, "populatedSize"),
                                        f"populatedSize of disk {did!r}", self.path),
                    parent_ref=_attr(d, "parentRef"),
                )
        return out

    def _capacity(self, d: etree._Element, did: str) -> int | None:
        cap = _attr(d, "capacity")
        if cap is None or not cap.strip():
            return None
        try:
            cap = units.resolve_properties(cap, self.properties, path=self.path)
            unit = _attr(d, "capacityAllocationUnits")
            return units.to_bytes(cap, unit, default_units="byte", path=self.path)
        except OvfError as e:
            self.warn(f"disk {did!r}: capacity {cap!r} not usable ({e.problem})")
            return None

    # -- properties / configurations -------------------------------------

    def _all_properties(self) -> dict[str, str | None]:
        """Every ProductSection property's default, by key (and class.key)."""
        props: dict[str, str | None] = {}
        for el in self.root.iter():
            if not isinstance(el.tag, str) or _kind(el) != "ProductSection" or _qn(el)[0] != "ovf":
                continue
            cls = _attr(el, "class")
            inst = _attr(el, "instance")
            for p in el.iter():
                if not isinstance(p.tag, str) or _kind(p) != "Property":
                    continue
                key = _attr(p, "key")
                if not key:
                    continue
                value = _attr(p, "value")
                full = ".".join(x for x in (cls, key, inst) if x)
                props.setdefault(key, value)
                props.setdefault(full, value)
        return props

    def _configurations(self) -> tuple[tuple[str, ...], str | None]:
        sec = next(self._sections(self.root, "DeploymentOptionSection"), None)
        if sec is None:
            return (), None
        ids: list[str] = []
        default = None
        for c in _children(sec, "Configuration"):
            cid = _attr(c, "id")
            if not cid:
                continue
            ids.append(cid)
            if (_attr(c, "default") or "").strip().lower() == "true":
                default = cid
        if not ids:
            return (), None
        chosen = default or ids[0]
        if self.wanted_configuration is not None:
            if self.wanted_configuration not in ids:
                raise DescriptorError(
                    f"no deployment configuration {self.wanted_configuration!r}; "
                    f"the package offers {', '.join(ids)}", self.path)
            chosen = self.wanted_configuration
        ordered = tuple([chosen] + [i for i in ids if i != chosen])
        return ordered, chosen

    def _applies(self, item: etree._Element) -> bool:
        conf = _attr(item, "configuration")
        if conf and self.configuration is not None:
            return self.configuration in conf.split()
        bound = (_attr(item, "bound") or "normal").strip().lower()
        return bound == "normal"

    # -- systems ----------------------------------------------------------

    def _systems(self, el: etree._Element, disks: Mapping[str, Disk],
                 env_ganeti: GanetiInfo | None, depth: int = 0) -> Iterator[VirtualSystem]:
        for c in el:
            if not isinstance(c.tag, str) or _qn(c)[0] != "ovf":
                continue
            kind = _kind(c)
            if kind == "VirtualSystem":
                yield self._system(c, disks, env_ganeti)
            elif kind == "VirtualSystemCollection":
                yield from self._systems(c, disks, env_ganeti, depth + 1)

    def _system(self, vs: etree._Element, disks: Mapping[str, Disk],
                env_ganeti: GanetiInfo | None) -> VirtualSystem:
        sid = _attr(vs, "id") or ""
        name = _text(_child(vs, "Name"))
        os_id = os_desc = os_type = None
        ossec = next(self._sections(vs, "OperatingSystemSection"), None)
        if ossec is not None:
            os_id = _int(_attr(ossec, "id"), "OperatingSystemSection id", self.path) \
                if (_attr(ossec, "id") or "").strip().isdigit() else None
            os_desc = _text(_child(ossec, "Description"))
            os_type = _vendor_attr(ossec, "osType", "vmw")
        hw_secs = list(self._sections(vs, "VirtualHardwareSection"))
        if len(hw_secs) > 1:
            self.warn(f"system {sid!r}: {len(hw_secs)} VirtualHardwareSections; "
                      "using the first")
        cpus = memory = video = None
        vtype = None
        sys_disks: list[Disk] = []
        nics: list[Nic] = []
        if hw_secs:
            hw = hw_secs[0]
            system = _child(hw, "System")
            if system is not None:
                vtype = _rasd_any(system, "VirtualSystemType")
            cpus, memory, video, sys_disks, nics = self._hardware(hw, sid, disks)
        else:
            self.warn(f"system {sid!r}: no VirtualHardwareSection")
        if not sys_disks and disks and len(self._all_vs()) == 1:
            attached = [d for d in disks.values()]
            if attached:
                self.warn(f"system {sid!r}: no disk items; using every disk of DiskSection "
                          "in order")
                sys_disks = attached
        products = tuple(self._product(p) for p in self._sections(vs, "ProductSection"))
        eulas = tuple(t for t in (_text(_child(e, "License"))
                                  for e in self._sections(vs, "EulaSection")) if t)
        ganeti = self._ganeti(vs) or env_ganeti
        return VirtualSystem(
            system_id=sid, name=name, info=_text(_child(vs, "Info")), os_id=os_id,
            os_description=os_desc, os_type=os_type, cpus=cpus, memory=memory,
            disks=tuple(sys_disks), nics=tuple(nics), video_memory=video,
            virtual_system_type=vtype, products=products, eulas=eulas, ganeti=ganeti,
        )

    def _all_vs(self) -> list[etree._Element]:
        return [e for e in self.root.iter()
                if isinstance(e.tag, str) and _kind(e) == "VirtualSystem" and _qn(e)[0] == "ovf"]

    def _product(self, p: etree._Element) -> Product:
        props = {}
        for prop in p.iter():
            if isinstance(prop.tag, str) and _kind(prop) == "Property" and _attr(prop, "key"):
                props[_attr(prop, "key")] = _attr(prop, "value")
        return Product(
            product=_text(_child(p, "Product")), vendor=_text(_child(p, "Vendor")),
            version=_text(_child(p, "Version")), full_version=_text(_child(p, "FullVersion")),
            product_url=_text(_child(p, "ProductUrl")), properties=props,
        )

    def _hardware(self, hw: etree._Element, sid: str, disks: Mapping[str, Disk]):
        cpus = memory = video = None
        sys_disks: list[Disk] = []
        nics: list[Nic] = []
        for item in hw:
            if not isinstance(item.tag, str):
                continue
            if _kind(item) not in ("Item", "StorageItem", "EthernetPortItem"):
                continue
            if not self._applies(item):
                continue
            rtype = _int(_rasd(item, "ResourceType"), "ResourceType", self.path) \
                if (_rasd(item, "ResourceType") or "").isdigit() else None
            label = _rasd(item, "ElementName") or _rasd(item, "InstanceID") or "?"
            if rtype == RESOURCE_TYPES["processor"]:
                cpus = self._quantity(item, f"system {sid!r}: CPU item", None)
            elif rtype == RESOURCE_TYPES["memory"]:
                memory = self._bytes(item, sid, "memory")
            elif rtype == RESOURCE_TYPES["graphics"]:
                video = self._bytes(item, sid, "video memory", missing_ok=True)
            elif rtype == RESOURCE_TYPES["ethernet"]:
                nics.append(Nic(network=_rasd(item, "Connection"),
                                mac=_rasd(item, "Address"),
                                model=_rasd(item, "ResourceSubType"),
                                name=_rasd(item, "ElementName")))
            elif rtype == RESOURCE_TYPES["disk"]:
                d = self._disk_item(item, sid, disks)
                if d is not None:
                    sys_disks.append(d)
            elif rtype in (RESOURCE_TYPES["cdrom"], RESOURCE_TYPES["dvd"],
                           RESOURCE_TYPES["floppy"]):
                host = _rasd(item, "HostResource")
                if host:
                    self.warn(f"system {sid!r}: {label!r} media {host!r} is not imported")
        return cpus, memory, video, sys_disks, nics

    def _quantity(self, item: etree._Element, what: str, default: int | None) -> int | None:
        q = _rasd(item, "VirtualQuantity")
        if q is None:
            return default
        try:
            q = units.resolve_properties(q, self.properties, path=self.path)
        except OvfError as e:
            raise DescriptorError(f"{what}: quantity {q!r} not usable ({e.problem})",
                                  self.path) from e
        return _int(q, f"{what}: quantity", self.path)

    def _bytes(self, item: etree._Element, sid: str, what: str,
               missing_ok: bool = False) -> int | None:
        q = _rasd(item, "VirtualQuantity")
        if q is None:
            if missing_ok:
                return None
            raise DescriptorError(f"system {sid!r}: {what} item has no VirtualQuantity",
                                  self.path)
        unit = _rasd(item, "AllocationUnits") or _rasd(item, "VirtualQuantityUnits")
        if unit is None:
            # What VMware and VirtualBox assume; said aloud, never silent.
            self.warn(f"system {sid!r}: {what} has no AllocationUnits; read as MiB")
            unit = "byte * 2^20"
        try:
            q = units.resolve_properties(q, self.properties, path=self.path)
            return units.to_bytes(q, unit, path=self.path)
        except OvfError as e:
            if missing_ok:
                self.warn(f"system {sid!r}: {what} not usable ({e.problem})")
                return None
            raise DescriptorError(f"system {sid!r}: {what}: {e.problem}", self.path) from e

    def _disk_item(self, item: etree._Element, sid: str,
                   disks: Mapping[str, Disk]) -> Disk | None:
        host = _rasd(item, "HostResource")
        if not host:
            self.warn(f"system {sid!r}: disk item without HostResource ignored")
            return None
        m = re.match(r"^(?:ovf:)?/?(disk|file)/(.+)$", host.strip())
        if not m:
            raise DescriptorError(f"system {sid!r}: disk HostResource {host!r} is neither "
                                  "ovf:/disk/ID nor ovf:/file/ID", self.path)
        kind, ref = m.groups()
        if kind == "disk":
            d = disks.get(ref)
            if d is None:
                raise DescriptorError(f"system {sid!r}: disk item refers to disk {ref!r}, "
                                      "which DiskSection does not declare", self.path)
            return d
        fref = next((f for f in self._files().values() if f.file_id == ref), None)
        if fref is None:
            raise DescriptorError(f"system {sid!r}: disk item refers to file {ref!r}, "
                                  "which References does not declare", self.path)
        return Disk(disk_id=ref, capacity=None, file_ref=fref)

    # -- Ganeti's own section ---------------------------------------------

    def _ganeti(self, el: etree._Element) -> GanetiInfo | None:
        sec = next((c for c in el if isinstance(c.tag, str)
                    and _qn(c) == ("gnt", "GanetiSection")), None)
        if sec is None:
            return None

        def g(parent, local):
            return None if parent is None else next(
                (c for c in parent if isinstance(c.tag, str) and _qn(c) == ("gnt", local)), None)

        def params(parent) -> dict[str, str]:
            p = g(parent, "Parameters")
            if p is None:
                return {}
            return {etree.QName(c).localname: (c.text or "").strip()
                    for c in p if isinstance(c.tag, str)}

        osel = g(sec, "OperatingSystem")
        hv = g(sec, "Hypervisor")
        be = g(sec, "Backend")
        nics = []
        net = g(sec, "Network")
        if net is not None:
            for n in net:
                if not isinstance(n.tag, str) or _qn(n) != ("gnt", "Nic"):
                    continue
                nics.append(GanetiNic(
                    mode=_none(_text(g(n, "Mode"))), link=_none(_text(g(n, "Link"))),
                    mac=_none(_text(g(n, "MACAddress"))), ip=_none(_text(g(n, "IPAddress"))),
                    network=_none(_text(g(n, "Net"))), name=_none(_text(g(n, "Name"))),
                    vlan=_none(_text(g(n, "VLAN"))),
                ))
        disk_names: list[str | None] = []
        dsec = g(sec, "Disks")
        if dsec is not None:
            for d in dsec:
                if isinstance(d.tag, str) and _qn(d) == ("gnt", "Disk"):
                    disk_names.append(_none(_text(g(d, "Name"))))
        tags = tuple(t for t in re.split(r"[\s,]+", _text(g(sec, "Tags")) or "") if t)
        return GanetiInfo(
            os_name=_text(g(osel, "Name")),
            os_params=params(osel),
            hypervisor=_none(_text(g(hv, "Name"))),
            hv_params=params(hv),
            backend=params(be) if be is not None else {},
            disk_template=_none(_text(g(sec, "DiskTemplate"))),
            tags=tags,
            nics=tuple(nics),
            disk_names=tuple(disk_names),
            version=_text(g(sec, "Version")),
            auto_balance=_none(_text(g(sec, "AutoBalance"))),
        )


def _none(v: str | None) -> str | None:
    """Ganeti writes unset values as 'None'/'none'/'auto'; they mean unset."""
    if v is None or v.strip().lower() in ("", "none", "auto"):
        return None
    return v


def _rasd_any(el: etree._Element, local: str) -> str | None:
    for c in el:
        if isinstance(c.tag, str) and _qn(c)[1] == local:
            return _text(c)
    return None


def parse_descriptor(data: bytes, *, path: str | None = None,
                     configuration: str | None = None) -> Envelope:
    """The model of an OVF descriptor's bytes; DescriptorError if unusable."""
    root = parse_xml(data, path=path)
    return _Reader(root, path, configuration).read()
