"""The descriptor writer (model -> OVF XML) and the OVA tar writer."""

from __future__ import annotations

import dataclasses
import io
import re
import tarfile
from pathlib import Path

import pytest
from lxml import etree

from ganeti_ovf.descriptor.names import GANETI_NS, WRITE_NS
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.descriptor.writer import scsi_slots, write_descriptor
from ganeti_ovf.errors import DescriptorError
from ganeti_ovf.model import (
    Disk,
    Envelope,
    FileRef,
    GanetiInfo,
    GanetiNic,
    Network,
    Nic,
    VirtualSystem,
)
from ganeti_ovf.ovawriter import (
    BLOCK,
    RECORD,
    USTAR_SIZE_MAX,
    OvaWriter,
    all_zero,
    ustar_header,
)

MIB = 1 << 20
SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "schemas"
DMTF = {"1.0": ["ovf-1.x/dsp8023_1.1.1.xsd", "ovf-1.0/ovf-envelope.xsd"],
        "2.0": ["ovf-2.x/dsp8023_2.0.1.xsd"]}
WITH_GANETI = {"1.0": ["ganeti/ganeti-ovf-1.x.xsd", "ganeti/ganeti-ovf-1.0.xsd"],
               "2.0": ["ganeti/ganeti-ovf-2.x.xsd"]}
_cache: dict[str, etree.XMLSchema] = {}


class _LocalOnly(etree.Resolver):
    def resolve(self, url, pubid, context):
        if url and url.split(":", 1)[0].lower() in ("http", "https", "ftp"):
            raise OSError(f"schema import needs the network: {url}")
        return None


def schema(rel: str) -> etree.XMLSchema:
    """A vendored schema set, loaded offline (as shared/ovf/validate_ovf.py does)."""
    if rel not in _cache:
        parser = etree.XMLParser(no_network=True, resolve_entities=False)
        parser.resolvers.add(_LocalOnly())
        _cache[rel] = etree.XMLSchema(etree.parse(str(SCHEMAS / rel), parser))
    return _cache[rel]


def errors(rel: str, data: bytes) -> list[str]:
    s = schema(rel)
    s.validate(etree.fromstring(data))
    return [e.message for e in s.error_log]


def envelope(version: str = "1.0", *, ganeti: bool = True, disks: int = 2,
             memory: int = 256 * MIB) -> Envelope:
    files, dks = [], []
    for i in range(disks):
        f = FileRef(f"file{i}", f"vm-disk{i}.vmdk", 1000 + i,
                    compression="gzip" if i == 1 else None,
                    chunk_size=MIB if i == 1 else None)
        files.append(f)
        dks.append(Disk(f"disk{i}", (i + 1) * 8 * MIB, f,
                        "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
                        populated_size=4096))
    g = None
    if ganeti:
        g = GanetiInfo(
            os_name="debootstrap+default", os_params={"filesystem": "ext4"},
            hypervisor="kvm",
            hv_params={"acpi": "True", "kernel_path": "", "vnc_bind_address": "None"},
            backend={"maxmem": "256", "minmem": "128", "vcpus": "2", "auto_balance": "True"},
            disk_template="plain", tags=("env:test", "web"),
            nics=(GanetiNic(mode="bridged", link="br0", mac="aa:00:00:00:00:01", name="eth0"),
                  GanetiNic(mode="routed", link="rt", ip="192.0.2.7", vlan=".100")),
            disk_names=tuple("root" if i == 0 else None for i in range(disks)),
            version="0", auto_balance="True")
    vs = VirtualSystem(
        "vm1", name="vm1", os_id=1, os_description="Ganeti OS debootstrap+default", cpus=2,
        memory=memory, disks=tuple(dks),
        nics=(Nic("bridged0", "aa:00:00:00:00:01", "E1000", "eth0"),
              Nic("routed1", None, "E1000")),
        video_memory=12 * MIB, ganeti=g)
    return Envelope(version=version, files=tuple(files), disks=tuple(dks),
                    networks=(Network("bridged0", "Ganeti NIC 0"), Network("routed1")),
                    systems=(vs,))


# ------------------------------------------------------------ schema validity

@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_external_descriptor_validates_against_dmtf(version):
    data = write_descriptor(envelope(version, ganeti=False), version=version)
    for rel in DMTF[version]:
        assert errors(rel, data) == [], rel
    assert b"http://ganeti" not in data


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_ganeti_section_validates_with_its_declaration(version):
    data = write_descriptor(envelope(version), version=version)
    for rel in WITH_GANETI[version]:
        assert errors(rel, data) == [], rel
    # Against the bare DMTF schema the section is the one and only complaint.
    for rel in DMTF[version]:
        errs = errors(rel, data)
        assert len(errs) == 1 and "{http://ganeti}GanetiSection" in errs[0], errs


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_sixteen_disks_two_controllers_unit_seven_skipped(version):
    env = envelope(version, ganeti=False, disks=16)
    data = write_descriptor(env, version=version)
    for rel in DMTF[version]:
        assert errors(rel, data) == [], rel
    root = etree.fromstring(data)
    rasd = WRITE_NS[version]["rasd"]
    ctrls = [i for i in root.iter(f"{{{WRITE_NS[version]['ovf']}}}Item")
             if i.findtext(f"{{{rasd}}}ResourceType") == "6"]
    assert [c.findtext(f"{{{rasd}}}Address") for c in ctrls] == ["0", "1"]
    assert all(c.findtext(f"{{{rasd}}}ResourceSubType") == "lsilogic" for c in ctrls)
    assert scsi_slots(16)[6:8] == [(0, 6), (0, 8)]
    assert scsi_slots(16)[-1] == (1, 0)


# ------------------------------------------------------------ content

def test_round_trip_through_our_reader():
    env = envelope("1.0")
    back = parse_descriptor(write_descriptor(env))
    assert back.warnings == ()
    vs, orig = back.system(), env.systems[0]
    assert (vs.system_id, vs.name, vs.cpus, vs.memory, vs.video_memory, vs.os_id) == \
        ("vm1", "vm1", 2, 256 * MIB, 12 * MIB, 1)
    assert [d.capacity for d in vs.disks] == [8 * MIB, 16 * MIB]
    assert [d.file_ref for d in vs.disks] == list(env.files)
    assert [(n.network, n.mac, n.model) for n in vs.nics] == \
        [("bridged0", "aa:00:00:00:00:01", "E1000"), ("routed1", None, "E1000")]
    assert vs.ganeti == orig.ganeti
    assert [n.name for n in back.networks] == ["bridged0", "routed1"]


def test_ganeti_section_shape():
    root = etree.fromstring(write_descriptor(envelope("1.0")))
    sec = root.find(f"{{{GANETI_NS}}}GanetiSection")  # a direct child, as upstream wants
    assert sec is not None
    ovf = WRITE_NS["1.0"]["ovf"]
    assert sec.get(f"{{{ovf}}}required") == "false"
    assert sec[0].tag == f"{{{ovf}}}Info"
    kids = [etree.QName(c).localname for c in sec]
    assert kids == ["Info", "Version", "DiskTemplate", "AutoBalance", "Tags",
                    "OperatingSystem", "Hypervisor", "Backend", "Network", "Disks"]
    nic_names = [n.get(f"{{{ovf}}}name") for n in sec.iter(f"{{{GANETI_NS}}}Nic")]
    assert nic_names == ["bridged0", "routed1"]
    # Sections order: References, DiskSection, NetworkSection, Ganeti, VirtualSystem.
    order = [etree.QName(c).localname for c in root]
    assert order == ["References", "DiskSection", "NetworkSection", "GanetiSection",
                     "VirtualSystem"]


def test_hardware_items_for_vmware_and_virtualbox():
    root = etree.fromstring(write_descriptor(envelope("1.0", ganeti=False)))
    ovf, rasd = WRITE_NS["1.0"]["ovf"], WRITE_NS["1.0"]["rasd"]
    items = {i.findtext(f"{{{rasd}}}ResourceType"): i for i in root.iter(f"{{{ovf}}}Item")}
    assert items["4"].findtext(f"{{{rasd}}}AllocationUnits") == "byte * 2^20"
    assert items["4"].findtext(f"{{{rasd}}}VirtualQuantity") == "256"
    video = items["24"]
    assert video.get(f"{{{ovf}}}required") == "false"  # VirtualBox refuses unknown required items
    assert video.findtext(f"{{{rasd}}}VirtualQuantity") == "12"
    assert items["10"].findtext(f"{{{rasd}}}ResourceSubType") == "E1000"
    ids = [i.findtext(f"{{{rasd}}}InstanceID") for i in root.iter(f"{{{ovf}}}Item")]
    assert len(ids) == len(set(ids))
    disk = next(i for i in root.iter(f"{{{ovf}}}Item")
                if i.findtext(f"{{{rasd}}}ResourceType") == "17")
    assert disk.findtext(f"{{{rasd}}}Parent") == items["6"].findtext(f"{{{rasd}}}InstanceID")


def test_memory_not_whole_mib_is_written_in_bytes():
    env = envelope("2.0", ganeti=False, memory=256 * MIB + 512)
    data = write_descriptor(env, version="2.0")
    assert errors(DMTF["2.0"][0], data) == []
    assert parse_descriptor(data).system().memory == 256 * MIB + 512


def test_control_characters_refused():
    bad = _with_ganeti(envelope(), os_params={"x": "a\x01b"})
    with pytest.raises(DescriptorError, match=re.escape("value 'a\\x01b' cannot be written")):
        write_descriptor(bad)


def test_parameter_name_must_be_an_xml_name():
    bad = _with_ganeti(envelope(), hv_params={"1x": "y"})
    with pytest.raises(DescriptorError, match=re.escape("parameter name '1x' cannot be an "
                                                        "XML element name")):
        write_descriptor(bad)


def test_version_and_system_count_checked():
    with pytest.raises(DescriptorError, match=re.escape("OVF version '0.9' cannot be written")):
        write_descriptor(envelope(), version="0.9")
    env = envelope()
    with pytest.raises(DescriptorError, match="2 virtual systems"):
        write_descriptor(Envelope(version="1.0", systems=env.systems * 2))


def _with_ganeti(env: Envelope, **kw) -> Envelope:
    vs = env.systems[0]
    return dataclasses.replace(env, systems=(
        dataclasses.replace(vs, ganeti=dataclasses.replace(vs.ganeti, **kw)),))


# ------------------------------------------------------------ tar writer

def test_ustar_header_small_is_plain_octal():
    h = ustar_header("vm.ovf", 1234, mtime=1_700_000_000)
    assert len(h) == BLOCK and h[257:265] == b"ustar\x0000"
    ti = tarfile.TarInfo.frombuf(h, "utf-8", "strict")
    assert (ti.name, ti.size, ti.mtime, ti.mode, ti.type) == \
        ("vm.ovf", 1234, 1_700_000_000, 0o600, tarfile.REGTYPE)
    assert h[124:136] == b"%011o\x00" % 1234


@pytest.mark.parametrize("size", [USTAR_SIZE_MAX + 1, 10 << 30, (1 << 40) + 5])
def test_ustar_header_large_size_in_gnu_base256(size):
    """Sizes of 8 GiB and more: POSIX ustar magic, size field in base-256."""
    h = ustar_header("vm-disk0.vmdk", size, mtime=0)
    assert h[257:265] == b"ustar\x0000"  # still ustar, not GNU's "ustar  \0"
    assert h[124] == 0x80 and int.from_bytes(h[125:136], "big") == size
    ti = tarfile.TarInfo.frombuf(h, "utf-8", "strict")  # checksum verified here
    assert ti.size == size
    # tarfile itself refuses to write this as ustar, which is why we do.
    ti = tarfile.TarInfo("x")
    ti.size = size
    with pytest.raises(ValueError):
        ti.tobuf(format=tarfile.USTAR_FORMAT)


def test_ustar_header_refuses_names_it_cannot_hold():
    for name in ("", "a/b", "x" * 101):
        with pytest.raises(ValueError, match="not a plain ustar name"):
            ustar_header(name, 1, mtime=0)
    ustar_header("x" * 100, 1, mtime=0)


def test_ova_writer_reserve_fill_stream_and_holes(tmp_path):
    path = tmp_path / "t.ova"
    path.touch()
    w = OvaWriter(str(path), mtime=1)
    first = w.reserve("a.ovf", 100)
    w.add("a.mf", b"manifest\n")
    m = w.open_member("a-disk0.raw")
    data = b"x" * 1000 + bytes(MIB) + b"y" * 10
    for i in range(0, len(data), 4096):
        m.write(data[i:i + 4096])
    assert m.close() == len(data)
    w.fill(first, b"<Envelope/>\n")
    with pytest.raises(ValueError, match="do not fit"):
        w.fill(first, b"z" * 101)
    end = w.close()
    assert end % RECORD == 0 and path.stat().st_size == end
    with tarfile.open(path) as t:
        members = t.getmembers()
        assert [x.name for x in members] == ["a.ovf", "a.mf", "a-disk0.raw"]
        assert t.extractfile("a.ovf").read() == b"<Envelope/>\n" + b" " * 88
        assert t.extractfile("a.mf").read() == b"manifest\n"
        assert t.extractfile("a-disk0.raw").read() == data
    raw = path.read_bytes()
    for x in members:
        assert raw[x.offset + 257:x.offset + 265] == b"ustar\x0000"


def test_ova_writer_refuses_duplicates_and_overlap(tmp_path):
    path = tmp_path / "t.ova"
    path.touch()
    w = OvaWriter(str(path))
    m = w.open_member("a")
    with pytest.raises(ValueError, match="still open"):
        w.open_member("b")
    m.close()
    with pytest.raises(ValueError, match="appear twice"):
        w.reserve("a", 1)
    w.close()


def test_all_zero():
    assert all_zero(bytes(4096)) and all_zero(memoryview(bytes(MIB)))
    assert not all_zero(bytes(4095))  # too short to be worth a hole
    assert not all_zero(bytes(MIB - 1) + b"\x01")
    assert not all_zero(io.BytesIO(b"\x01" + bytes(8191)).getvalue())
