#!/usr/bin/env python3
"""Build small, real OVF/OVA appliances with qemu-img, in the shapes that
VMware (ovftool), VirtualBox, OVF 2.0 and OVF 0.9 producers write.

Used by the tests (``tests/conftest.py``) and the demo.  Broken packages are
derived from good ones by the tests, each named for its fault.

    python3 tools/make_fixtures.py OUTDIR      # builds demo.ova and demo/ in OUTDIR
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field

from lxml import etree

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
OVF09 = "http://www.vmware.com/schema/ovf/1/envelope"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
SASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData"
EPASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
VMW = "http://www.vmware.com/schema/ovf"
VBOX = "http://www.virtualbox.org/ovf/machine"

FORMAT_URI = {
    "vmdk": "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
    "vmdk-sparse": "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse",
    "qcow2": "http://www.gnome.org/~markmc/qcow-image-format.html",
    "vdi": "http://www.virtualbox.org/manual/ch12.html#vdi",
    "vhdx": "https://docs.microsoft.com/en-us/windows-server/virtualization/hyper-v/vhdx",
    "raw": "http://www.ganeti.org/raw",
}

QEMU_FMT = {"vmdk": ("vmdk", ["-o", "subformat=streamOptimized"]),
            "vmdk-sparse": ("vmdk", ["-o", "subformat=monolithicSparse"]),
            "qcow2": ("qcow2", []), "vdi": ("vdi", []), "vhdx": ("vhdx", []),
            "raw": ("raw", [])}


def pattern_bytes(size: int, seed: int = 1) -> bytes:
    """Deterministic, incompressible data with zero holes (sparse-friendly)."""
    out = bytearray()
    block = 0
    while len(out) < size:
        if block % 3 == 2:
            out += bytes(65536)  # a hole
        else:
            out += hashlib.shake_256(f"{seed}:{block}".encode()).digest(65536)
        block += 1
    return bytes(out[:size])


def make_image(raw_path: str, out_path: str, fmt: str) -> None:
    qfmt, opts = QEMU_FMT[fmt]
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", qfmt, *opts, raw_path, out_path],
                   check=True, capture_output=True)


@dataclass
class DiskSpec:
    size: int  # bytes of content / capacity
    fmt: str = "vmdk"  # a key of QEMU_FMT, or None for a blank disk
    seed: int = 1
    blank: bool = False
    capacity_units: str | None = None  # e.g. "byte * 2^20": capacity in those units


@dataclass
class Appliance:
    name: str = "demo-vm"
    cpus: int = 2
    memory_mib: int = 256
    disks: list[DiskSpec] = field(default_factory=lambda: [DiskSpec(4 << 20)])
    nics: list[tuple[str, str | None]] = field(default_factory=lambda: [("VM Network", None)])
    style: str = "vmware"  # vmware | virtualbox | ovf2 | ovf09
    memory_units: str = "byte * 2^20"
    ganeti_os: str | None = None


def _sub(parent, tag, text=None, **attrib):
    el = etree.SubElement(parent, tag, {k: v for k, v in attrib.items() if v is not None})
    if text is not None:
        el.text = str(text)
    return el


def build_descriptor(app: Appliance, files: list[tuple[str, int]]) -> bytes:
    """The .ovf bytes for ``app``; ``files[i]`` = (href, size) of disk i (None: blank)."""
    ns = {"ovf2": OVF2, "ovf09": OVF09}.get(app.style, OVF1)
    nsmap = {None: ns, "ovf": ns, "rasd": RASD, "vssd": VSSD, "xsi": XSI}
    if app.style == "vmware":
        nsmap["vmw"] = VMW
    if app.style == "virtualbox":
        nsmap["vbox"] = VBOX
    if app.style == "ovf2":
        nsmap.update(sasd=SASD, epasd=EPASD)
    O = lambda t: f"{{{ns}}}{t}"  # noqa: E731,E741
    R = lambda t: f"{{{RASD}}}{t}"  # noqa: E731
    env = etree.Element(O("Envelope"), nsmap=nsmap)
    env.set(O("version"), {"ovf2": "2.0", "ovf09": "0.9"}.get(app.style, "1.0"))

    def section(parent, kind):
        if app.style == "ovf09":
            el = _sub(parent, O("Section"))
            el.set(f"{{{XSI}}}type", f"ovf:{kind}_Type")
            return el
        return _sub(parent, O(kind))

    refs = _sub(env, O("References"))
    for i, f in enumerate(files):
        if f is not None:
            _sub(refs, O("File"), **{O("href"): f[0], O("id"): f"file{i}", O("size"): str(f[1])})
    ds = section(env, "DiskSection")
    _sub(ds, O("Info"), "Virtual disk information")
    for i, (d, f) in enumerate(zip(app.disks, files, strict=True)):
        cap = d.size
        attrs = {O("diskId"): f"vmdisk{i}", O("capacity"): str(cap)}
        if d.capacity_units:
            from ganeti_ovf.units import parse_byte_units  # noqa: PLC0415
            attrs[O("capacity")] = str(cap // parse_byte_units(d.capacity_units))
            attrs[O("capacityAllocationUnits")] = d.capacity_units
        if f is not None:
            attrs[O("fileRef")] = f"file{i}"
            attrs[O("format")] = FORMAT_URI[d.fmt]
        _sub(ds, O("Disk"), **attrs)
    ns_ = section(env, "NetworkSection")
    _sub(ns_, O("Info"), "The list of logical networks")
    for net in dict.fromkeys(n for n, _ in app.nics):
        n = _sub(ns_, O("Network"), **{O("name"): net})
        _sub(n, O("Description"), f"The {net} network")
    vs = _sub(env, O("Content") if app.style == "ovf09" else O("VirtualSystem"),
              **{O("id"): app.name})
    if app.style == "ovf09":
        vs.set(f"{{{XSI}}}type", "ovf:VirtualSystem_Type")
    _sub(vs, O("Info"), "A virtual machine")
    _sub(vs, O("Name"), app.name)
    os_ = section(vs, "OperatingSystemSection")
    os_.set(O("id"), "96")
    if app.style == "vmware":
        os_.set(f"{{{VMW}}}osType", "debian10_64Guest")
    _sub(os_, O("Info"), "The kind of installed guest operating system")
    _sub(os_, O("Description"), "Debian GNU/Linux 12 (64-bit)")
    hw = section(vs, "VirtualHardwareSection")
    _sub(hw, O("Info"), "Virtual hardware requirements")
    system = _sub(hw, O("System"))
    _sub(system, f"{{{VSSD}}}ElementName", "Virtual Hardware Family")
    _sub(system, f"{{{VSSD}}}InstanceID", "0")
    _sub(system, f"{{{VSSD}}}VirtualSystemIdentifier", app.name)
    _sub(system, f"{{{VSSD}}}VirtualSystemType",
         "virtualbox-2.2" if app.style == "virtualbox" else "vmx-13")
    iid = [0]

    def item(kind="Item", prefix=RASD, **fields):
        el = _sub(hw, O(kind))
        iid[0] += 1
        fields.setdefault("InstanceID", str(iid[0]))
        for k in sorted(fields):  # schema order is alphabetical for RASD
            _sub(el, f"{{{prefix}}}{k}", fields[k])
        return el

    item(AllocationUnits="hertz * 10^6", Description="Number of Virtual CPUs",
         ElementName=f"{app.cpus} virtual CPU(s)", ResourceType="3",
         VirtualQuantity=str(app.cpus))
    mem_q = app.memory_mib
    if app.memory_units == "byte":
        mem_q = app.memory_mib << 20
    item(AllocationUnits=app.memory_units, Description="Memory Size",
         ElementName=f"{app.memory_mib}MB of memory", ResourceType="4",
         VirtualQuantity=str(mem_q))
    ctrl = item(Address="0", Description="SCSI Controller", ElementName="SCSI Controller 0",
                ResourceSubType="lsilogic", ResourceType="6")
    ctrl_id = ctrl.findtext(R("InstanceID"))
    storage_kind, storage_ns = ("StorageItem", SASD) if app.style == "ovf2" else ("Item", RASD)
    for i, _ in enumerate(app.disks):
        host = f"ovf:/disk/vmdisk{i}" if app.style != "ovf09" else f"/disk/vmdisk{i}"
        item(storage_kind, storage_ns, AddressOnParent=str(i), ElementName=f"Hard Disk {i + 1}",
             HostResource=host, Parent=ctrl_id, ResourceType="17")
    eth_kind, eth_ns = ("EthernetPortItem", EPASD) if app.style == "ovf2" else ("Item", RASD)
    for i, (net, mac) in enumerate(app.nics):
        fields = dict(AddressOnParent=str(7 + i), AutomaticAllocation="true", Connection=net,
                      ElementName=f"Network adapter {i + 1}",
                      ResourceSubType="E1000" if app.style != "virtualbox" else "E1000",
                      ResourceType="10")
        if mac:
            fields["Address"] = mac
        item(eth_kind, eth_ns, **fields)
    item(AutomaticAllocation="false", ElementName="Video card", ResourceType="24",
         AllocationUnits="byte * 2^20", VirtualQuantity="16")
    if app.ganeti_os:
        g = etree.SubElement(env, "{http://ganeti}GanetiSection",
                             nsmap={"gnt": "http://ganeti"})
        _sub(g, "{http://ganeti}Version", "0")
        osel = _sub(g, "{http://ganeti}OperatingSystem")
        _sub(osel, "{http://ganeti}Name", app.ganeti_os)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def build_package(app: Appliance, outdir: str, *, ova: bool, manifest: str | None = "SHA256",
                  workdir: str | None = None) -> tuple[str, list[bytes]]:
    """Write ``app`` as OUTDIR/NAME.ova or OUTDIR/NAME/NAME.ovf.

    Returns (package path, raw content of each disk) so tests can compare.
    """
    workdir = workdir or outdir
    os.makedirs(outdir, exist_ok=True)
    pkgdir = outdir if ova else os.path.join(outdir, app.name)
    os.makedirs(pkgdir, exist_ok=True)
    staging = os.path.join(workdir, f".{app.name}-build")
    os.makedirs(staging, exist_ok=True)
    raws: list[bytes] = []
    files: list[tuple[str, int] | None] = []
    members: list[tuple[str, str]] = []  # (name, path)
    for i, d in enumerate(app.disks):
        if d.blank:
            raws.append(bytes(0))
            files.append(None)
            continue
        data = pattern_bytes(d.size, d.seed)
        raws.append(data)
        raw = os.path.join(staging, f"disk{i}.raw")
        with open(raw, "wb") as f:
            f.write(data)
        ext = {"vmdk-sparse": "vmdk"}.get(d.fmt, d.fmt)
        name = f"{app.name}-disk{i + 1}.{ext}"
        out = os.path.join(staging if ova else pkgdir, name)
        make_image(raw, out, d.fmt)
        os.unlink(raw)
        files.append((name, os.path.getsize(out)))
        members.append((name, out))
    ovf_name = f"{app.name}.ovf"
    ovf_path = os.path.join(staging if ova else pkgdir, ovf_name)
    with open(ovf_path, "wb") as f:
        f.write(build_descriptor(app, files))
    members.insert(0, (ovf_name, ovf_path))
    if manifest:
        mf_path = os.path.join(staging if ova else pkgdir, f"{app.name}.mf")
        with open(mf_path, "w") as f:
            for name, path in members:
                h = hashlib.new(manifest.lower())
                with open(path, "rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                f.write(f"{manifest}({name})= {h.hexdigest()}\n")
        members.insert(1, (f"{app.name}.mf", mf_path))
    if not ova:
        os.rmdir(staging)
        return ovf_path, raws
    ova_path = os.path.join(outdir, f"{app.name}.ova")
    with tarfile.open(ova_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, path in members:
            tar.add(path, arcname=name)
    for _, path in members:
        os.unlink(path)
    os.rmdir(staging)
    return ova_path, raws


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    app = Appliance(name="demo-vm",
                    disks=[DiskSpec(8 << 20, "vmdk"), DiskSpec(4 << 20, "qcow2", seed=2)],
                    nics=[("VM Network", "00:50:56:aa:bb:01"), ("Backend", None)])
    path, _ = build_package(app, out, ova=True)
    print(path)
