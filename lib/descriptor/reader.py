"""OVF 0.9 / 1.x / 2.x descriptor -> model, leniently and safely.

Lenient: real tools write descriptors that fail their own schema (vendor
sections, element order, odd namespaces), and the tools that made them read
them fine; we read them too and record what we could not use in
``Envelope.warnings``.  Safe: the XML parser never loads a DTD, never
expands entities, never touches the network; a DOCTYPE that declares
entities is refused outright (as defusedxml does), before parsing.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator, Mapping

from lxml import etree

from .. import units
from ..disks import MAX_VIRTUAL_SIZE
from ..errors import DescriptorError, OvfError, UnsafeMemberError
from ..model import (
    MAX_CAPACITY,
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
from ..package import check_name
from .elements import (
    _attr,
    _child,
    _children,
    _int,
    _kind,
    _number,
    _qn,
    _shown,
    _text,
    _vendor_attr,
)
from .hardware import HardwareMixin, Unusable, problem_of, usable
from .names import ovf_version_of
from .xmlsafe import MAX_DEPTH, MAX_MARKUP, parse_xml

__all__ = ["MAX_DEPTH", "MAX_MARKUP", "parse_descriptor", "parse_xml"]

# ---------------------------------------------------------------- reader


def _distinct_ids(what: str, new: str, known: dict[str, str], path: str | None) -> None:
    """References are read with outer white space stripped (``fileRef``,
    ``HostResource``): ids equal once stripped make them ambiguous."""
    key = new.strip()
    old = known.get(key)
    if old is not None and old != new:
        raise DescriptorError(f"{what} ids {_shown(old)} and {_shown(new)} differ only in "
                              "white space; a reference to either is ambiguous", path)
    known[key] = new


def _member_names(href: str, path: str | None) -> tuple[str, ...]:
    """The member names ``Package.get`` may find ``href`` under (normalised,
    then percent-decoded); an unsafe href is refused later, by the package,
    and is compared as written here."""
    try:
        safe = check_name(href, path=path or href)
        if "%" not in safe:
            return (safe,)
        return (safe, check_name(urllib.parse.unquote(safe), path=path or href))
    except UnsafeMemberError:
        return (href,)


class _Reader(HardwareMixin):
    def __init__(self, root: etree._Element, path: str | None,
                 configuration: str | None) -> None:
        self.root = root
        self.path = path
        self.warnings: dict[str, None] = {}  # in order, each once
        self._vs: list[etree._Element] | None = None
        self.wanted_configuration = configuration
        self.configuration: str | None = None
        self.files: dict[str, FileRef] = {}
        self.files_by_href: dict[str, FileRef] = {}
        self.files_by_name: dict[str, FileRef] = {}  # by normalised member name
        self.disk_of_file: dict[str, Disk] = {}  # File id -> the one Disk using it
        self.properties: dict[str, str | None] = {}

    def warn(self, msg: str) -> None:
        self.warnings.setdefault(msg, None)

    def read(self) -> Envelope:
        root = self.root
        role, local = _qn(root)
        if local != "Envelope" or role != "ovf":
            ns = etree.QName(root).namespace
            what = f"{{{ns}}}{local}" if ns else local
            raise DescriptorError(f"not an OVF descriptor (root element is {what!r}, "
                                  "not Envelope)", self.path)
        version = ovf_version_of(etree.QName(root).namespace, _attr(root, "version"))
        self._entities()
        self.files = files = self._files()
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
            why = self._no_system()
            if "VirtualSystemCollection" not in why:
                raise DescriptorError(why, self.path)
            # An empty vApp (as VMware's and DMTF's examples): info shows
            # what is there; import refuses it (importer.choose_system).
            self.warn(why)
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

    def _entities(self) -> None:
        """Entity references stay references (the parser never expands
        them); their text is left out, and the operator is told."""
        names = sorted({e.name for e in self.root.iter(etree.Entity)})
        if names:
            shown = ", ".join(f"&{n};" for n in names[:5]) + (", ..." if len(names) > 5 else "")
            self.warn(f"entity reference(s) {shown} not expanded; left out of the text")

    def _no_system(self) -> str:
        collections = [_attr(e, "id") or "" for e in self.root.iter()
                       if isinstance(e.tag, str) and _qn(e)[0] == "ovf"
                       and _kind(e) == "VirtualSystemCollection"]
        if collections:
            return ("no VirtualSystem in the descriptor (VirtualSystemCollection "
                    f"{_shown(collections[0])} holds none)")
        return "no VirtualSystem in the descriptor"

    def _sections(self, el: etree._Element, kind: str) -> Iterator[etree._Element]:
        for c in el:
            if isinstance(c.tag, str) and _qn(c)[0] == "ovf" and _kind(c) == kind:
                yield c

    # -- References / DiskSection ----------------------------------------

    def _files(self) -> dict[str, FileRef]:
        """Every References/File by id.  oVirt writes References twice: the
        same declaration again is harmless, a different one is ambiguous."""
        out: dict[str, FileRef] = {}
        stripped: dict[str, str] = {}  # id, stripped -> as written
        sections = list(self._sections(self.root, "References"))
        if len(sections) > 1:
            self.warn(f"{len(sections)} References sections; read as one")
        for sec in sections:
            for f in _children(sec, "File"):
                ref = self._file(f)
                old = out.get(ref.file_id)
                if old is None:
                    _distinct_ids("file", ref.file_id, stripped, self.path)
                    self._unique_href(ref)
                    out[ref.file_id] = ref
                elif old == ref:
                    self.warn(f"file id {ref.file_id!r} is declared twice, identically")
                else:
                    raise DescriptorError(
                        f"file id {_shown(ref.file_id)} is declared twice (as "
                        f"{_shown(old.href)} and {_shown(ref.href)})", self.path)
        return out

    def _unique_href(self, ref: FileRef) -> None:
        """Two Files naming one member: which declaration (size, compression,
        chunking) describes the bytes cannot be told; refused.  Compared by
        every name the package looks the href up by (``./a``, ``a/``,
        ``.\\a`` and ``%61`` all find ``a``), not as strings."""
        self.files_by_href.setdefault(ref.href, ref)
        for name in _member_names(ref.href, self.path):
            other = self.files_by_name.setdefault(name, ref)
            if other is not ref:
                raise DescriptorError(
                    f"files {_shown(other.file_id)} (href {_shown(other.href)}) and "
                    f"{_shown(ref.file_id)} (href {_shown(ref.href)}) name the same member "
                    f"{_shown(name)}", self.path)

    def _file(self, f: etree._Element) -> FileRef:
        fid = _attr(f, "id")
        href = (_attr(f, "href") or "").strip()
        if not fid:
            raise DescriptorError(f"References/File {_shown(href)} has no ovf:id", self.path)
        if not href:
            raise DescriptorError(f"References/File {_shown(fid)} has no ovf:href", self.path)
        comp = _attr(f, "compression")
        if comp is not None:
            comp = comp.strip().lower()
            if comp in ("", "identity"):
                comp = None
        # ovf:size only cross-checks what is stored: a placeholder left by
        # a build template is a warning; a negative size cannot be true.
        size = None
        raw = _attr(f, "size")
        if raw is not None and raw.strip():
            size = _number(raw)
            if size is None:
                self.warn(f"file {fid!r}: size {_shown(raw)} is not a whole number; ignored")
            elif size < 0:
                raise DescriptorError(f"file {_shown(fid)}: size {_shown(raw)} is negative",
                                      self.path)
        # ovf:chunkSize says where the bytes are: it must be usable.
        chunk = _int(_attr(f, "chunkSize"), f"file {_shown(fid)}: chunkSize", self.path)
        if chunk == 0:
            raise DescriptorError(f"file {_shown(fid)}: chunkSize is 0", self.path)
        return FileRef(file_id=fid, href=href, size=size, compression=comp, chunk_size=chunk)

    def _disks(self, files: Mapping[str, FileRef]) -> dict[str, Disk]:
        out: dict[str, Disk] = {}
        stripped: dict[str, str] = {}  # id, stripped -> as written
        sections = list(self._sections(self.root, "DiskSection"))
        # OVF 2 may also carry DiskSection inside VirtualSystem.
        for vs in self._all_vs():
            sections.extend(self._sections(vs, "DiskSection"))
        for sec in sections:
            for d in _children(sec, "Disk"):
                disk = self._disk(d, files)
                old = out.get(disk.disk_id)
                if old is None:
                    _distinct_ids("disk", disk.disk_id, stripped, self.path)
                    self._one_disk_per_file(disk)
                    out[disk.disk_id] = disk
                elif old == disk:
                    self.warn(f"disk id {disk.disk_id!r} is declared twice, identically")
                else:
                    raise DescriptorError(f"disk id {_shown(disk.disk_id)} is declared twice, "
                                          "differently", self.path)
        return out

    def _one_disk_per_file(self, disk: Disk) -> None:
        """One File behind two Disks would import the same bytes twice under
        two capacities and formats: which one the package means is a guess."""
        if disk.file_ref is None:
            return
        other = self.disk_of_file.setdefault(disk.file_ref.file_id, disk)
        if other is not disk:
            raise DescriptorError(f"file {_shown(disk.file_ref.file_id)} is used by two "
                                  f"disks, {_shown(other.disk_id)} and {_shown(disk.disk_id)}",
                                  self.path)

    def _one_item_per_disk(self, sid: str, sys_disks: list[Disk]) -> None:
        """Two disk Items naming one Disk (or File) with an image would import
        the same bytes as two disks: like one File behind two Disks, refused.
        A blank Disk named twice is left alone (vCenter's appliances do so
        across configurations): two empty disks hold nobody's bytes."""
        seen: set[str] = set()
        for disk in sys_disks:
            if disk.file_ref is None:
                continue
            key = disk.file_ref.file_id
            if key in seen:
                raise DescriptorError(f"system {_shown(sid)}: two disk items refer to disk "
                                      f"{_shown(disk.disk_id)}", self.path)
            seen.add(key)

    def _disk(self, d: etree._Element, files: Mapping[str, FileRef]) -> Disk:
        did = _attr(d, "diskId")
        fref = (_attr(d, "fileRef") or "").strip()
        if not did:
            raise DescriptorError("Disk without ovf:diskId"
                                  + (f" (fileRef {_shown(fref)})" if fref else ""), self.path)
        capacity = self._capacity(d, did)
        return Disk(
            disk_id=did,
            capacity=capacity if isinstance(capacity, int) else None,
            capacity_problem=capacity.problem if isinstance(capacity, Unusable) else None,
            file_ref=self._disk_file(did, fref, files) if fref else None,
            format_uri=_attr(d, "format"),
            populated_size=self._populated(d, did),
            parent_ref=_attr(d, "parentRef") or None,  # oVirt writes parentRef=""
        )

    def _disk_file(self, did: str, fref: str, files: Mapping[str, FileRef]) -> FileRef:
        ref = files.get(fref)
        if ref is not None:
            return ref
        # oVirt's fileRef is the File's href ("image-group/image"), not its id.
        by_href = self.files_by_href.get(fref)
        if by_href is not None:
            return by_href
        raise DescriptorError(f"disk {_shown(did)} refers to file {_shown(fref)}, which "
                              "References does not declare", self.path)

    def _capacity(self, d: etree._Element, did: str) -> int | Unusable | None:
        """The capacity in bytes; None if not declared; Unusable if declared
        but unusable (info shows the package, import refuses it)."""
        cap = _attr(d, "capacity")
        if cap is None or not cap.strip():
            return None
        unit = _attr(d, "capacityAllocationUnits")
        problem = None
        try:
            value = units.resolve_properties(cap, self.properties, path=self.path)
            n = units.to_bytes(value, unit, default_units="byte", path=self.path)
        except OvfError as e:
            problem = f"capacity {_shown(cap)} not usable ({e.problem})"
        else:
            if n == 0:
                problem = f"capacity {_shown(cap)} is zero"
            elif n > MAX_CAPACITY:
                problem = (f"capacity {_shown(cap)} ({unit or 'byte'}) is more than a disk "
                           "image can hold (2^63 bytes)")
            elif n > MAX_VIRTUAL_SIZE:
                # The bound images and blank disks have: a populated disk
                # would otherwise be created at what the descriptor says.
                problem = (f"capacity {_shown(cap)} ({unit or 'byte'}) is {n} bytes, more "
                           f"than the {MAX_VIRTUAL_SIZE >> 40} TiB a disk may have")
        if problem is None:
            return n
        self.warn(f"disk {did!r}: {problem}; import needs --disk N:size=SIZE")
        return Unusable(problem, cap)

    def _populated(self, d: etree._Element, did: str) -> int | None:
        """ovf:populatedSize is informational: unusable means unknown."""
        raw = _attr(d, "populatedSize")
        if raw is None or not raw.strip():
            return None
        n = _number(raw)
        if n is None or n < 0:
            self.warn(f"disk {did!r}: populatedSize {_shown(raw)} is not a size; ignored")
            return None
        return n

    # -- properties / configurations -------------------------------------

    def _all_properties(self) -> dict[str, str | None]:
        """Every ProductSection property's default, by key (and class.key).

        One walk, each Property seen once and counted for its nearest
        ProductSection: nested sections would otherwise be walked again for
        every enclosing one (quadratic in the nesting)."""
        props: dict[str, str | None] = {}
        # (class, instance, defaults seen in this section) per open section
        stack: list[tuple[str | None, str | None, dict[str, str | None]]] = []
        for event, el in etree.iterwalk(self.root, events=("start", "end")):
            if not isinstance(el.tag, str):
                continue
            kind = _kind(el)
            if kind == "ProductSection" and _qn(el)[0] == "ovf":
                if event == "start":
                    stack.append((_attr(el, "class"), _attr(el, "instance"), {}))
                else:
                    stack.pop()
            elif kind == "Property" and event == "start" and stack:
                self._property(el, *stack[-1], props)
        return props

    def _property(self, p: etree._Element, cls: str | None, inst: str | None,
                  seen: dict[str, str | None], props: dict[str, str | None]) -> None:
        key = _attr(p, "key")
        if not key:
            return
        value = _attr(p, "value")
        full = ".".join(x for x in (cls, key, inst) if x)
        if key in seen and seen[key] != value:
            self.warn(f"property {full!r} is declared twice; its first default is used")
        seen.setdefault(key, value)
        props.setdefault(key, value)
        props.setdefault(full, value)

    def _configurations(self) -> tuple[tuple[str, ...], str | None]:
        sec = next(self._sections(self.root, "DeploymentOptionSection"), None)
        seen: dict[str, None] = {}  # in order, each once
        default = None
        for c in (_children(sec, "Configuration") if sec is not None else ()):
            cid = _attr(c, "id")
            if not cid or cid in seen:
                continue
            seen[cid] = None
            if default is None and (_attr(c, "default") or "").strip().lower() in ("true", "1"):
                default = cid
        ids = list(seen)
        if not ids:
            if self.wanted_configuration is not None:
                raise DescriptorError(
                    f"no deployment configuration {self.wanted_configuration!r}; the "
                    "package offers none", self.path)
            return (), None
        chosen = default or ids[0]
        if self.wanted_configuration is not None:
            if self.wanted_configuration not in seen:
                raise DescriptorError(
                    f"no deployment configuration {self.wanted_configuration!r}; "
                    f"the package offers {', '.join(ids)}", self.path)
            chosen = self.wanted_configuration
        ordered = (chosen, *(i for i in ids if i != chosen))
        return ordered, chosen

    def _applies(self, item: etree._Element) -> bool:
        """An item counts if its bound is normal (min/max items only bound a
        range) and, when it names configurations, the chosen one is among them."""
        bound = (_attr(item, "bound") or "normal").strip().lower()
        if bound != "normal":
            return False
        return self._specific(item) is not False

    def _specific(self, item: etree._Element) -> bool | None:
        """True: the item is for the chosen configuration only; False: for
        others only; None: for every configuration."""
        confs = (_attr(item, "configuration") or "").split()
        if not confs or self.configuration is None:
            return None
        return self.configuration in confs

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
        if not sid:
            self.warn("VirtualSystem without ovf:id")
        name = _text(_child(vs, "Name"))
        os_id = os_desc = os_type = None
        ossec = next(self._sections(vs, "OperatingSystemSection"), None)
        if ossec is not None:
            raw = _attr(ossec, "id")
            os_id = _number(raw) if raw else None
            if os_id is not None and os_id < 0:
                os_id = None
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
        self._one_item_per_disk(sid, sys_disks)
        if not sys_disks and disks and len(self._all_vs()) == 1:
            self.warn(f"system {sid!r}: no disk items; using every disk of DiskSection "
                      "in order")
            sys_disks = list(disks.values())
        products = tuple(self._product(p) for p in self._sections(vs, "ProductSection"))
        eulas = tuple(t for t in (_text(_child(e, "License"))
                                  for e in self._sections(vs, "EulaSection")) if t)
        ganeti = self._ganeti(vs) or env_ganeti
        return VirtualSystem(
            system_id=sid, name=name, info=_text(_child(vs, "Info")), os_id=os_id,
            os_description=os_desc, os_type=os_type, cpus=usable(cpus),
            memory=usable(memory), disks=tuple(sys_disks), nics=tuple(nics),
            video_memory=usable(video), virtual_system_type=vtype, products=products,
            eulas=eulas, ganeti=ganeti, cpus_problem=problem_of(cpus),
            memory_problem=problem_of(memory),
        )

    def _all_vs(self) -> list[etree._Element]:
        """Every VirtualSystem anywhere, found once: asking again per system
        made a collection of N systems cost N walks of the tree."""
        if self._vs is None:
            self._vs = [e for e in self.root.iter() if isinstance(e.tag, str)
                        and _kind(e) == "VirtualSystem" and _qn(e)[0] == "ovf"]
        return self._vs

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
