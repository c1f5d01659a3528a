"""The descriptor reader on small hand-written descriptors.

One point each: the dialects real producers write (0.9, no namespace,
oVirt, VirtualBox's .xsd namespaces, unqualified attributes, encodings),
the choices the reader makes (configuration, bounds, properties, order),
Ganeti's own section, and the XML hazards it must refuse or defuse.
Errors are pinned whole, as the operator sees them.
"""

from __future__ import annotations

import resource

import pytest

from ganeti_ovf.descriptor.reader import MAX_DEPTH, parse_descriptor
from ganeti_ovf.errors import DescriptorError
from ganeti_ovf.model import GanetiNic

MIB = 1 << 20
GIB = 1 << 30
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def envelope(body: str, *, ovf: str = OVF1, rasd: str = RASD, head: str = "") -> bytes:
    return (f'{head}<Envelope xmlns="{ovf}" xmlns:ovf="{ovf}" xmlns:rasd="{rasd}" '
            f'xmlns:vssd="{VSSD}" xmlns:xsi="{XSI}" xmlns:gnt="http://ganeti">'
            f"{body}</Envelope>").encode()


def item(rtype: int, *fields: str, attrs: str = "") -> str:
    inner = "".join(f"<rasd:{f.split('=', 1)[0]}>{f.split('=', 1)[1]}"
                    f"</rasd:{f.split('=', 1)[0]}>" for f in fields)
    return f"<Item{attrs}><rasd:ResourceType>{rtype}</rasd:ResourceType>{inner}</Item>"


def system(*items: str, sid: str = "vm", extra: str = "") -> str:
    return (f'<VirtualSystem ovf:id="{sid}"><Info>x</Info><Name>{sid}</Name>{extra}'
            f"<VirtualHardwareSection><Info>hw</Info>{''.join(items)}"
            "</VirtualHardwareSection></VirtualSystem>")


ONE_DISK = ('<References><File ovf:id="f1" ovf:href="a.vmdk" ovf:size="512"/></References>'
            '<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" '
            'ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^30"/></DiskSection>')
CPU2 = item(3, "VirtualQuantity=2")
MEM512 = item(4, "AllocationUnits=byte * 2^20", "VirtualQuantity=512")
DISK1 = item(17, "HostResource=ovf:/disk/d1")


def read(data: bytes, **kw):
    return parse_descriptor(data, path="t.ovf", **kw)


def refused(data: bytes, message: str, **kw) -> None:
    with pytest.raises(DescriptorError) as e:
        read(data, **kw)
    assert str(e.value) == message


# -- dialects ---------------------------------------------------------------------

def test_ovf_09_section_xsi_type():
    data = b"""<?xml version="1.0"?>
<ovf:Envelope xmlns:ovf="http://www.vmware.com/schema/ovf/1/envelope"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    ovf:version="0.9">
  <References><File ovf:id="file1" ovf:href="disk1.vmdk" ovf:size="100"/></References>
  <Section xsi:type="ovf:DiskSection_Type"><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="1073741824"/></Section>
  <Section xsi:type="ovf:NetworkSection_Type"><Info>nets</Info>
    <Network ovf:name="VM Network"/></Section>
  <Content xsi:type="ovf:VirtualSystem_Type" ovf:id="old">
    <Info>0.9</Info>
    <Section xsi:type="ovf:VirtualHardwareSection_Type"><Info>hw</Info>
      <Item><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:ResourceType>17</rasd:ResourceType>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource></Item>
      <Item><rasd:ResourceType>10</rasd:ResourceType>
        <rasd:Connection>VM Network</rasd:Connection></Item>
    </Section>
  </Content>
</ovf:Envelope>"""
    env = read(data)
    assert env.version == "0.9"
    vs = env.system()
    assert (vs.system_id, vs.cpus, vs.memory) == ("old", 1, 256 * MIB)
    assert [d.disk_id for d in vs.disks] == ["vmdisk1"]
    assert vs.disks[0].capacity == GIB and vs.disks[0].file_ref.href == "disk1.vmdk"
    assert [n.name for n in env.networks] == ["VM Network"]
    assert env.warnings == ()


def test_envelope_in_no_namespace():
    data = (b'<Envelope><References><File id="f1" href="a.vmdk"/></References>'
            b'<DiskSection><Disk diskId="d1" fileRef="f1" capacity="2048"/></DiskSection>'
            b'<VirtualSystem id="bare"><VirtualHardwareSection>'
            b"<Item><ResourceType>3</ResourceType><VirtualQuantity>2</VirtualQuantity></Item>"
            b"<Item><ResourceType>17</ResourceType><HostResource>ovf:/disk/d1</HostResource>"
            b"</Item></VirtualHardwareSection></VirtualSystem></Envelope>")
    vs = read(data).system()
    assert (vs.system_id, vs.cpus) == ("bare", 2)
    assert vs.disks[0].capacity == 2048 and vs.disks[0].file_ref.href == "a.vmdk"


def test_ovirt_trailing_slash_namespace():
    env = read(envelope(ONE_DISK + system(CPU2, MEM512, DISK1), ovf=OVF1 + "/"))
    assert env.version == "1.x"
    vs = env.system()
    assert (vs.cpus, vs.memory, len(vs.disks)) == (2, 512 * MIB, 1)


def test_xsd_suffixed_cim_namespaces():
    """VirtualBox's OVF 2.0 export writes ``.../CIM_ResourceAllocationSettingData.xsd``."""
    vs = read(envelope(system(CPU2, MEM512), rasd=RASD + ".xsd")).system()
    assert (vs.cpus, vs.memory) == (2, 512 * MIB)


def test_unqualified_attributes():
    body = ('<References><File id="f1" href="a.vmdk" size="7"/></References>'
            '<DiskSection><Info>d</Info><Disk diskId="d1" fileRef="f1" capacity="1" '
            'capacityAllocationUnits="byte * 2^20"/></DiskSection>'
            '<VirtualSystem id="u"><Info>x</Info><VirtualHardwareSection><Info>h</Info>'
            f"{DISK1}</VirtualHardwareSection></VirtualSystem>")
    env = read(envelope(body))
    assert env.files[0].size == 7
    assert env.system().system_id == "u" and env.system().disks[0].capacity == MIB


def test_utf16_with_bom():
    doc = envelope(system(CPU2).replace("<Name>vm</Name>", "<Name>Größe</Name>"),
                   head='<?xml version="1.0" encoding="UTF-16"?>\n').decode()
    data = doc.encode("utf-16")  # BOM first
    assert data[:2] in (b"\xff\xfe", b"\xfe\xff")
    vs = read(data).system()
    assert (vs.name, vs.cpus) == ("Größe", 2)


def test_utf16_declared_but_8_bit():
    """XenCenter declares UTF-16 and writes 8-bit text; it means UTF-8."""
    data = envelope(system(CPU2).replace("<Name>vm</Name>", "<Name>café</Name>"),
                    head='<?xml version="1.0" encoding="utf-16"?>\r\n')
    vs = read(data).system()
    assert (vs.name, vs.cpus) == ("café", 2)


# -- choices --------------------------------------------------------------------------

DEPLOY = ('<DeploymentOptionSection><Info>sizes</Info>'
          '<Configuration ovf:id="small"><Label>S</Label></Configuration>'
          '<Configuration ovf:id="large" ovf:default="true"><Label>L</Label></Configuration>'
          '<Configuration ovf:id="huge"><Label>H</Label></Configuration>'
          "</DeploymentOptionSection>")
PROFILED = DEPLOY + system(
    item(3, "VirtualQuantity=1"),                                    # every configuration
    item(3, "VirtualQuantity=4", attrs=' ovf:configuration="large huge"'),
    item(4, "AllocationUnits=byte * 2^20", "VirtualQuantity=1024",
         attrs=' ovf:configuration="small"'),
    item(4, "AllocationUnits=byte * 2^20", "VirtualQuantity=8192",
         attrs=' ovf:configuration="large"'),
    item(10, "Connection=net", attrs=' ovf:configuration="huge"'),
)


def test_deployment_option_default():
    env = read(envelope(PROFILED))
    assert env.configuration == "large"
    assert env.configurations == ("large", "small", "huge")
    vs = env.system()
    assert (vs.cpus, vs.memory, vs.nics) == (4, 8192 * MIB, ())
    assert env.warnings == ()


def test_deployment_option_explicit():
    env = read(envelope(PROFILED), configuration="small")
    assert env.configuration == "small" and env.configurations[0] == "small"
    vs = env.system()
    assert (vs.cpus, vs.memory, vs.nics) == (1, 1024 * MIB, ())  # items of others left out
    huge = read(envelope(PROFILED), configuration="huge").system()
    assert (huge.cpus, huge.memory, len(huge.nics)) == (4, None, 1)


def test_deployment_option_unknown():
    refused(envelope(PROFILED),
            "t.ovf: no deployment configuration 'tiny'; the package offers small, large, huge",
            configuration="tiny")
    refused(envelope(system(CPU2)),
            "t.ovf: no deployment configuration 'tiny'; the package offers none",
            configuration="tiny")


def test_bound_min_max_items_are_ignored():
    vs = read(envelope(system(
        item(4, "AllocationUnits=byte * 2^20", "VirtualQuantity=128", attrs=' ovf:bound="min"'),
        MEM512,
        item(4, "AllocationUnits=byte * 2^20", "VirtualQuantity=4096", attrs=' ovf:bound="max"'),
        item(3, "VirtualQuantity=16", attrs=' ovf:bound="max"'),
    ))).system()
    assert (vs.memory, vs.cpus) == (512 * MIB, None)


def test_capacity_from_product_property_default():
    body = ('<References><File ovf:id="f1" ovf:href="a.vmdk"/></References>'
            '<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" '
            'ovf:capacity="${disk.size}" ovf:capacityAllocationUnits="byte * 2^30"/>'
            "</DiskSection>"
            + system(DISK1, extra='<ProductSection><Info>p</Info><Product>App</Product>'
                     '<Property ovf:key="disk.size" ovf:type="uint32" ovf:value="20"/>'
                     "</ProductSection>"))
    env = read(envelope(body))
    assert env.system().disks[0].capacity == 20 * GIB
    assert env.system().products[0].properties == {"disk.size": "20"}


def test_placeholder_capacity_and_size_are_warnings():
    """Build templates (open-vmdk) leave placeholders: read, and say so."""
    body = ('<References><File ovf:id="f1" ovf:href="a.vmdk" ovf:size="@@SIZE@@"/>'
            '</References><DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" '
            'ovf:capacity="@@CAP@@"/></DiskSection>' + system(DISK1))
    env = read(envelope(body))
    assert env.files[0].size is None and env.system().disks[0].capacity is None
    assert env.warnings == (
        "file 'f1': size '@@SIZE@@' is not a whole number; ignored",
        "disk 'd1': capacity '@@CAP@@' not usable (non-numeric quantity '@@CAP@@'); import "
        "needs --disk N:size=SIZE",
    )
    assert env.system().disks[0].capacity_problem == (
        "capacity '@@CAP@@' not usable (non-numeric quantity '@@CAP@@')")


def test_nics_are_counted_by_adapters_not_networks():
    body = ('<NetworkSection><Info>n</Info><Network ovf:name="lan"/></NetworkSection>'
            + system(item(10, "Connection=lan", "ResourceSubType=E1000",
                          "Address=00:50:56:00:00:01"),
                     item(10, "Connection=lan", "ResourceSubType=VmxNet3")))
    env = read(envelope(body))
    assert len(env.networks) == 1
    nics = env.system().nics
    assert [(n.network, n.model, n.mac) for n in nics] == [
        ("lan", "E1000", "00:50:56:00:00:01"), ("lan", "VmxNet3", None)]


def test_disk_order_is_item_order():
    body = ('<References><File ovf:id="f1" ovf:href="a.vmdk"/><File ovf:id="f2" '
            'ovf:href="b.vmdk"/></References><DiskSection><Info>d</Info>'
            '<Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="1"/>'
            '<Disk ovf:diskId="d2" ovf:fileRef="f2" ovf:capacity="2"/></DiskSection>'
            + system(item(17, "HostResource=ovf:/disk/d2"), item(17, "HostResource=/disk/d1")))
    env = read(envelope(body))
    assert [d.disk_id for d in env.disks] == ["d1", "d2"]  # declaration order
    assert [d.disk_id for d in env.system().disks] == ["d2", "d1"]  # attachment order


def test_file_host_resource():
    body = ('<References><File ovf:id="boot" ovf:href="boot.img" ovf:size="1024"/>'
            "</References>" + system(item(17, "HostResource=ovf:/file/boot")))
    (disk,) = read(envelope(body)).system().disks
    assert (disk.disk_id, disk.capacity, disk.file_ref.href) == ("boot", None, "boot.img")


def test_host_resource_spellings():
    """ovf://disk/ID (open-ovf, VMware) and oVirt's bare file href."""
    vs = read(envelope(ONE_DISK + system(item(17, "HostResource=ovf://disk/d1")))).system()
    assert [d.disk_id for d in vs.disks] == ["d1"]
    ovirt = ('<References><File ovf:id="img" ovf:href="group/img"/></References>'
             '<Section xsi:type="ovf:DiskSection_Type"><Info>d</Info>'
             '<Disk ovf:diskId="img" ovf:fileRef="group/img" ovf:parentRef=""/></Section>'
             + system(item(17, "HostResource=group/img"),
                      item(3, "num_of_sockets=2", "cpu_per_socket=4")))
    env = read(envelope(ovirt, ovf=OVF1 + "/"))
    (disk,) = env.system().disks
    assert (disk.file_ref.file_id, disk.parent_ref) == ("img", None)
    assert env.system().cpus == 8
    assert env.warnings == ()


GANETI_SECTION = """
  <gnt:GanetiSection>
    <gnt:Version>0</gnt:Version>
    <gnt:AutoBalance>False</gnt:AutoBalance>
    <gnt:Tags></gnt:Tags>
    <gnt:DiskTemplate>plain</gnt:DiskTemplate>
    <gnt:OperatingSystem>
      <gnt:Name>lenny-image</gnt:Name>
    </gnt:OperatingSystem>
    <gnt:Network>
      <gnt:Nic ovf:name="routed">
        <gnt:Mode>bridged</gnt:Mode>
        <gnt:MACAddress>aa:00:00:d8:2c:1e</gnt:MACAddress>
        <gnt:IPAddress>none</gnt:IPAddress>
        <gnt:Link>xen-br0</gnt:Link>
      </gnt:Nic>
    </gnt:Network>
    <gnt:Hypervisor>
      <gnt:Name>xen-pvm</gnt:Name>
      <gnt:Parameters>
        <gnt:root-path>/dev/sda</gnt:root-path>
        <gnt:kernel_args>ro</gnt:kernel_args>
      </gnt:Parameters>
    </gnt:Hypervisor>
  </gnt:GanetiSection>"""


def test_ganeti_section_upstream_format():
    """As upstream ovfconverter writes it (test/data/ovfdata/ganeti.ovf):
    a child of Envelope, applying to the system."""
    vs = read(envelope(GANETI_SECTION + system(CPU2, MEM512))).system()
    g = vs.ganeti
    assert (g.version, g.auto_balance, g.disk_template) == ("0", "False", "plain")
    assert (g.os_name, g.os_params, g.tags) == ("lenny-image", {}, ())
    assert (g.hypervisor, g.hv_params) == ("xen-pvm", {"root-path": "/dev/sda",
                                                       "kernel_args": "ro"})
    assert g.nics == (GanetiNic(mode="bridged", link="xen-br0", mac="aa:00:00:d8:2c:1e"),)


def test_ganeti_section_in_system_wins():
    inner = GANETI_SECTION.replace("plain", "drbd")
    body = GANETI_SECTION + system(CPU2, extra=inner)
    assert read(envelope(body)).system().ganeti.disk_template == "drbd"


# -- refusals, pinned ----------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ('<References><File ovf:id="f1" ovf:href="a"/><File ovf:id="f1" ovf:href="b"/>'
     "</References>" + system(),
     "file id 'f1' is declared twice (as 'a' and 'b')"),
    ('<References><File ovf:id="f1"/></References>' + system(),
     "References/File 'f1' has no ovf:href"),
    ('<References><File ovf:id="f1" ovf:href="a" ovf:size="-2"/></References>' + system(),
     "file 'f1': size '-2' is negative"),
    ('<References><File ovf:id="f1" ovf:href="a" ovf:chunkSize="-1"/></References>'
     + system(), "file 'f1': chunkSize '-1' is negative"),
    ('<References><File ovf:id="f1" ovf:href="a" ovf:chunkSize="0"/></References>'
     + system(), "file 'f1': chunkSize is 0"),
    ('<References><File ovf:id="f1" ovf:href="a" ovf:chunkSize="lots"/></References>'
     + system(), "file 'f1': chunkSize 'lots' is not a whole number"),
    ('<DiskSection><Info>d</Info><Disk ovf:fileRef="f1"/></DiskSection>' + system(),
     "Disk without ovf:diskId (fileRef 'f1')"),
    ('<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f9"/></DiskSection>'
     + system(), "disk 'd1' refers to file 'f9', which References does not declare"),
    (ONE_DISK + '<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:capacity="5"/>'
     "</DiskSection>" + system(), "disk id 'd1' is declared twice, differently"),
    (ONE_DISK + system(item(17, "HostResource=ovf:/disk/d7")),
     "system 'vm': disk item refers to disk 'd7', which DiskSection does not declare"),
    (ONE_DISK + system(item(17, "HostResource=ovf:/file/f7")),
     "system 'vm': disk item refers to file 'f7', which References does not declare"),
    (ONE_DISK + system(item(17, "HostResource=nfs://server/d1")),
     "system 'vm': disk HostResource 'nfs://server/d1' is neither ovf:/disk/ID nor "
     "ovf:/file/ID"),
    ("<References/>", "no VirtualSystem in the descriptor"),
    ('<References><File ovf:id="f1" ovf:href="a"/><File ovf:id="f2" ovf:href="a"/>'
     "</References>" + system(),
     "files 'f1' (href 'a') and 'f2' (href 'a') name the same member 'a'"),
    (ONE_DISK + '<DiskSection><Info>d</Info><Disk ovf:diskId="d2" ovf:fileRef="f1" '
     'ovf:capacity="2"/></DiskSection>' + system(DISK1),
     "file 'f1' is used by two disks, 'd1' and 'd2'"),
    ('<References><File ovf:id="f1" ovf:href="a"/></References><DiskSection><Info>d</Info>'
     '<Disk ovf:diskId="d1" ovf:fileRef="f1"/><Disk ovf:diskId="d2" ovf:fileRef="a"/>'
     "</DiskSection>" + system(),
     "file 'f1' is used by two disks, 'd1' and 'd2'"),
])
def test_refusals(body, message):
    refused(envelope(body), f"t.ovf: {message}")


def test_empty_collection_is_read_with_a_warning():
    """An empty vApp (VMware's and DMTF's examples) is shown by info; only
    import needs a system (importer.choose_system refuses it)."""
    env = read(envelope('<VirtualSystemCollection ovf:id="vapp"><Info>x</Info>'
                        '</VirtualSystemCollection>'))
    assert env.systems == ()
    assert "no VirtualSystem in the descriptor (VirtualSystemCollection 'vapp' holds none)" \
        in env.warnings


def test_not_ovf_and_not_xml():
    refused(b"<html><body>502 Bad Gateway</body></html>",
            "t.ovf: not an OVF descriptor (root element is 'html', not Envelope)")
    refused(b"<Envelope><References></Envelope>",
            "t.ovf: not well-formed XML: Opening and ending tag mismatch: References line 1 "
            "and Envelope, line 1, column 34")


def test_long_hostile_values_are_cut_short():
    with pytest.raises(DescriptorError) as e:
        read(envelope(f'<References><File ovf:id="f1" ovf:href="a" ovf:chunkSize="{"x" * 5000}"/>'
                      "</References>" + system()))
    line = str(e.value)
    assert len(line) < 200 and line.endswith("... (5000 characters) is not a whole number")


# -- warnings instead of refusals ---------------------------------------------------

def test_lenient_reads_are_reported():
    body = ('<References><File ovf:id="f1" ovf:href="a.vmdk"/></References>'
            '<References><File ovf:id="f1" ovf:href="a.vmdk"/></References>'
            + system(item(4, "VirtualQuantity=64"),  # no AllocationUnits
                     item(4, "Reservation=1024", "AllocationUnits=MB")))
    env = read(envelope(body))
    assert env.system().memory == 64 * MIB
    assert env.warnings == (
        "2 References sections; read as one",
        "file id 'f1' is declared twice, identically",
        "system 'vm': memory has no AllocationUnits; read as MiB",
        "system 'vm': memory item '?' has no VirtualQuantity; ignored",
    )


def test_clean_descriptor_has_no_warnings():
    env = read(envelope(ONE_DISK + system(CPU2, MEM512, DISK1)))
    assert env.warnings == ()


# -- XML hazards ------------------------------------------------------------------

@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 300, 90_000])
def test_depth_bomb_is_refused(depth):
    """Deeper than we allow, and deeper than libxml2 allows: one message."""
    data = envelope("<a>" * depth + "</a>" * depth)
    refused(data, f"t.ovf: XML nested deeper than {MAX_DEPTH} levels")


def _laughs(levels: int) -> bytes:
    decl = '<!ENTITY lol0 "lol">' + "".join(
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels + 1))
    return envelope(system(CPU2).replace("<Name>vm</Name>", f"<Name>x&lol{levels};y</Name>"),
                    head=f'<?xml version="1.0"?>\n<!DOCTYPE Envelope [{decl}]>\n')


_REFUSED_ENTITIES = "entity declarations are refused (a package has no use for them)"


def test_billion_laughs_is_refused_before_parsing():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused(_laughs(10),  # 10^10 "lol"s if expanded
            f"t.ovf: the DOCTYPE declares entities (&lol0;); {_REFUSED_ENTITIES}")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024


@pytest.mark.parametrize("subset, name", [
    ('<!ENTITY lol "lol">', "&lol;"),
    ('<!ENTITY % p "x">', "%p;"),
    # Expanded inside the DTD by libxml2 even without resolve_entities:
    # refused before the parser sees it (here it would be a syntax error).
    ('<!ENTITY % p "<!ELEMENT"> %p;', "%p;"),
    ('<!ENTITY ext SYSTEM "file:///etc/passwd">', "&ext;"),
    ('<!NOTATION n SYSTEM "x"><!ENTITY pic SYSTEM "x" NDATA n>', "&pic;"),
])
def test_entity_declarations_are_refused(subset, name):
    doc = envelope(system(CPU2), head=f"<!DOCTYPE Envelope [{subset}]>\n")
    refused(doc, f"t.ovf: the DOCTYPE declares entities ({name}); {_REFUSED_ENTITIES}")


@pytest.mark.parametrize("encoding, name", [("utf-16", ""), ("utf-32", " (&a;)")])
def test_entity_declarations_are_refused_in_any_encoding(encoding, name):
    """UTF-16 is caught by the scan before parsing; anything the scan does
    not read (UTF-32) by the check of the parsed DOCTYPE."""
    text = (f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n'
            '<!DOCTYPE Envelope [<!ENTITY a "b">]>\n'
            + envelope(system(CPU2)).decode().replace("<Name>vm</Name>", "<Name>&a;</Name>"))
    refused(text.encode(encoding),
            f"t.ovf: the DOCTYPE declares entities{name}; {_REFUSED_ENTITIES}")


def test_plain_doctype_is_read():
    for head in ("<!DOCTYPE Envelope>\n", '<!DOCTYPE Envelope SYSTEM "ovf.dtd">\n',
                 "<!DOCTYPE Envelope [<!ELEMENT Envelope ANY>]>\n"):
        env = read(envelope(system(CPU2), head=head))
        assert env.system().cpus == 2 and env.warnings == ()


def test_undeclared_entity_is_left_out_not_expanded():
    """With an (unloaded) external subset libxml2 lets an undeclared
    reference through: it stays a reference, left out, and said so."""
    doc = envelope(system(CPU2).replace("<Name>vm</Name>", "<Name>x&lol1;y</Name>"),
                   head='<!DOCTYPE Envelope SYSTEM "ovf.dtd">\n')
    env = read(doc)
    vs = env.system()
    assert vs.name == "xy" and vs.cpus == 2
    assert env.warnings == ("entity reference(s) &lol1; not expanded; left out of the text",)


def test_external_entity_is_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-42")
    head = (f'<?xml version="1.0"?>\n<!DOCTYPE Envelope [<!ENTITY leak SYSTEM '
            f'"file://{secret}"><!ENTITY net SYSTEM "http://192.0.2.1/x">]>\n')
    doc = envelope(system(CPU2).replace("<Name>vm</Name>", "<Name>&leak;&net;</Name>"),
                   head=head)
    with pytest.raises(DescriptorError) as e:
        read(doc)
    assert "TOP-SECRET-42" not in str(e.value)
    assert str(e.value) == f"t.ovf: the DOCTYPE declares entities (&leak;); {_REFUSED_ENTITIES}"


@pytest.mark.parametrize("other", ["./a.vmdk", "a.vmdk/", ".\\a.vmdk", "a%2Evmdk",
                                   "x/../a.vmdk"])
def test_two_files_naming_one_member_refused(other):
    """Hrefs are compared as the package looks them up (normalised, then
    percent-decoded), not as strings: which File's size and compression
    describe the member could not be told.  (An href leaving the package
    is compared as written, and refused by the package later.)"""
    body = (f'<References><File ovf:id="f1" ovf:href="a.vmdk"/>'
            f'<File ovf:id="f2" ovf:href="{other}"/></References>' + system())
    if ".." in other:
        read(envelope(body))
        return
    refused(envelope(body), f"t.ovf: files 'f1' (href 'a.vmdk') and 'f2' (href "
            f"{other!r}) name the same member 'a.vmdk'")


@pytest.mark.parametrize("body, message", [
    ('<References><File ovf:id="f1" ovf:href="a"/><File ovf:id="f1 " ovf:href="b"/>'
     '</References><DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1 "/>'
     "</DiskSection>" + system(),
     "file ids 'f1' and 'f1 ' differ only in white space; a reference to either is "
     "ambiguous"),
    ('<References><File ovf:id="f1" ovf:href="a"/><File ovf:id="f2" ovf:href="b"/>'
     '</References><DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1"/>'
     '<Disk ovf:diskId=" d1" ovf:fileRef="f2"/></DiskSection>' + system(),
     "disk ids 'd1' and ' d1' differ only in white space; a reference to either is "
     "ambiguous"),
    (ONE_DISK + system(DISK1, DISK1), "system 'vm': two disk items refer to disk 'd1'"),
    ('<References><File ovf:id="f1" ovf:href="a"/></References>'
     + system(item(17, "HostResource=ovf:/file/f1"), item(17, "HostResource=ovf:/file/f1")),
     "system 'vm': two disk items refer to disk 'f1'"),
], ids=["file-ids", "disk-ids", "two-items", "two-file-items"])
def test_ambiguous_references_refused(body, message):
    """References are read stripped, so ids equal once stripped are
    ambiguous; two disk items naming one disk would import its bytes twice."""
    refused(envelope(body), f"t.ovf: {message}")
