"""Values a package declares but that cannot be used (issue 10).

A CPU count, memory size or disk capacity that is zero, negative, not a
number, in absurd units or beyond what Ganeti's hypervisors run: ``info``
still reads the package (and says what is wrong), but import refuses it,
naming the value and the option that overrides it, instead of silently
giving the instance Ganeti's defaults.  Given that option, import
proceeds.  A value the package simply leaves out is no problem.
"""

from __future__ import annotations

import pytest

from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DescriptorError
from ganeti_ovf.importer import ImportRequest, plan_config
from ganeti_ovf.model import MAX_VCPUS

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
MIB = 1 << 20


def descriptor(*items: str, disk: str = 'ovf:capacity="1" '
               'ovf:capacityAllocationUnits="byte * 2^30"', props: str = "") -> bytes:
    product = (f"<ProductSection><Info>p</Info>{props}</ProductSection>" if props else "")
    return (f'<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}">'
            '<References><File ovf:id="f1" ovf:href="a.vmdk"/></References>'
            f'<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" {disk}/>'
            '</DiskSection><VirtualSystem ovf:id="vm"><Info>x</Info>'
            f"{product}<VirtualHardwareSection><Info>hw</Info>{''.join(items)}"
            "<Item><rasd:ResourceType>17</rasd:ResourceType>"
            "<rasd:HostResource>ovf:/disk/d1</rasd:HostResource></Item>"
            "</VirtualHardwareSection></VirtualSystem></Envelope>").encode()


def cpu(q: str) -> str:
    return (f"<Item><rasd:ResourceType>3</rasd:ResourceType>"
            f"<rasd:VirtualQuantity>{q}</rasd:VirtualQuantity></Item>")


def mem(q: str, unit: str = "byte * 2^20") -> str:
    return (f"<Item><rasd:ResourceType>4</rasd:ResourceType><rasd:AllocationUnits>{unit}"
            f"</rasd:AllocationUnits><rasd:VirtualQuantity>{q}</rasd:VirtualQuantity></Item>")


CPU1, MEM64 = cpu("1"), mem("64")


def plan(data: bytes, os_path, **kw):
    env = parse_descriptor(data, path="t.ovf")
    req = ImportRequest(os_name="noop", os_search_path=os_path, use_cluster=False, **kw)
    return plan_config(env, env.system(), req, path="vm.ova")


CPUS = [
    ("0", "CPU count '0' is not a positive whole number"),
    ("-2", "CPU count '-2' is not a positive whole number"),
    ("two", "CPU count 'two' is not a positive whole number"),
    ("1000000000", f"CPU count '1000000000' is more than any Ganeti hypervisor runs "
     f"({MAX_VCPUS})"),
    (str(MAX_VCPUS + 1), f"CPU count '{MAX_VCPUS + 1}' is more than any Ganeti hypervisor "
     f"runs ({MAX_VCPUS})"),
    ("${nope}", "CPU count '${nope}' not usable (unknown property 'nope')"),
]

MEMORY = [
    (("0",), "memory '0' (byte * 2^20) is zero"),
    (("-1",), "memory '-1' not usable (negative quantity '-1')"),
    (("lots",), "memory 'lots' not usable (non-numeric quantity 'lots')"),
    (("1", "byte * 2^999"), "memory '1' not usable (oversized allocation unit "
     "'byte * 2^999')"),
    (("1", "byte * 2^53"), "memory '1' (byte * 2^53) is more than any Ganeti hypervisor "
     "gives a guest (4 PiB)"),
    (("1", "hertz"), "memory '1' not usable (non-byte allocation unit 'hertz')"),
]

CAPACITY = [
    ('ovf:capacity="0"', "capacity '0' is zero"),
    ('ovf:capacity="-5"', "capacity '-5' not usable (negative quantity '-5')"),
    ('ovf:capacity="big"', "capacity 'big' not usable (non-numeric quantity 'big')"),
    ('ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^999"',
     "capacity '1' not usable (oversized allocation unit 'byte * 2^999')"),
    ('ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^63"',
     "capacity '1' (byte * 2^63) is more than a disk image can hold (2^63 bytes)"),
]


@pytest.mark.parametrize("q, problem", CPUS)
def test_unusable_cpu_count_is_shown_and_refused(q, problem, os_path):
    data = descriptor(cpu(q), MEM64)
    env = parse_descriptor(data, path="t.ovf")
    vs = env.system()
    assert (vs.cpus, vs.cpus_problem) == (None, problem)
    assert f"system 'vm': {problem}; import needs -B vcpus=N" in env.warnings
    with pytest.raises(DescriptorError) as e:
        plan(data, os_path)
    assert str(e.value) == f"vm.ova: system 'vm': {problem}; give it with -B vcpus=N"
    cfg, _plan, _w = plan(data, os_path, backend={"vcpus": "4"})
    assert cfg.backend["vcpus"] == "4" and cfg.backend["maxmem"] == "64"


@pytest.mark.parametrize("args, problem", MEMORY)
def test_unusable_memory_is_shown_and_refused(args, problem, os_path):
    data = descriptor(CPU1, mem(*args))
    env = parse_descriptor(data, path="t.ovf")
    vs = env.system()
    assert (vs.memory, vs.memory_problem) == (None, problem)
    assert f"system 'vm': {problem}; import needs -B maxmem=SIZE" in env.warnings
    with pytest.raises(DescriptorError) as e:
        plan(data, os_path)
    assert str(e.value) == f"vm.ova: system 'vm': {problem}; give it with -B maxmem=SIZE"
    for given in ({"maxmem": "512"}, {"memory": "512"}):
        cfg, _plan, _w = plan(data, os_path, backend=given)
        assert (cfg.backend["maxmem"], cfg.backend["vcpus"]) == ("512", "1")


@pytest.mark.parametrize("disk, problem", CAPACITY)
def test_unusable_capacity_is_shown_and_refused(disk, problem, os_path):
    data = descriptor(CPU1, MEM64, disk=disk)
    env = parse_descriptor(data, path="t.ovf")
    (d,) = env.system().disks
    assert (d.capacity, d.capacity_problem) == (None, problem)
    assert f"disk 'd1': {problem}; import needs --disk N:size=SIZE" in env.warnings
    with pytest.raises(DescriptorError) as e:
        plan(data, os_path)
    assert str(e.value) == f"vm.ova: disk 'd1': {problem}; give its size with --disk 0:size=SIZE"
    _cfg, disks, _w = plan(data, os_path, disk_sizes={0: 2 << 30})
    assert [(src.disk_id, size) for src, size in disks] == [("d1", 2 << 30)]


def test_largest_usable_values_are_read(os_path):
    data = descriptor(cpu(str(MAX_VCPUS)), mem("4", "byte * 2^50"))
    cfg, _plan, _w = plan(data, os_path)
    assert cfg.backend["vcpus"] == str(MAX_VCPUS)
    assert cfg.backend["maxmem"] == str(4 << 30)  # MiB


def test_unusable_first_item_is_not_skipped_for_a_later_one(os_path):
    """Two memory items, the first unusable: what the package asked for is
    unclear; import refuses rather than take the second."""
    data = descriptor(CPU1, mem("0"), mem("128"))
    env = parse_descriptor(data, path="t.ovf")
    assert env.system().memory_problem == "memory '0' (byte * 2^20) is zero"
    assert "system 'vm': 2 memory items disagree (0, 134217728); using the first" in env.warnings
    with pytest.raises(DescriptorError):
        plan(data, os_path)


def mem_both(q: str, alloc: str, vq: str) -> str:
    """A memory item giving both unit elements (OVF 1.x and 2.x producers)."""
    return (f"<Item><rasd:AllocationUnits>{alloc}</rasd:AllocationUnits>"
            f"<rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>{q}"
            f"</rasd:VirtualQuantity><rasd:VirtualQuantityUnits>{vq}"
            "</rasd:VirtualQuantityUnits></Item>")


@pytest.mark.parametrize("alloc, vq, problem", [
    ("byte * 2^20", "byte * 2^30", "memory '4' not usable (AllocationUnits 'byte * 2^20' "
     "and VirtualQuantityUnits 'byte * 2^30' disagree)"),
    ("byte * 2^30", "MegaBytes", "memory '4' not usable (AllocationUnits 'byte * 2^30' "
     "and VirtualQuantityUnits 'MegaBytes' disagree)"),
    ("byte * 2^20", "hertz", "memory '4' not usable (non-byte allocation unit 'hertz')"),
])
def test_memory_units_that_disagree_are_shown_and_refused(alloc, vq, problem, os_path):
    """4 MiB or 4 GiB? The package's ask is unknown: not guessed, refused
    by name, and -B maxmem= gives it."""
    data = descriptor(CPU1, mem_both("4", alloc, vq))
    vs = parse_descriptor(data, path="t.ovf").system()
    assert (vs.memory, vs.memory_problem) == (None, problem)
    with pytest.raises(DescriptorError) as e:
        plan(data, os_path)
    assert str(e.value) == f"vm.ova: system 'vm': {problem}; give it with -B maxmem=SIZE"
    cfg, _plan, _w = plan(data, os_path, backend={"maxmem": "512"})
    assert cfg.backend["maxmem"] == "512"


@pytest.mark.parametrize("alloc, vq", [
    ("byte * 2^20", "byte * 2^20"),  # ovftool's own test data
    ("byte * 2^20", "MegaBytes"),  # two spellings, one multiplier
    ("byte*1024*1024", "byte * 2 ^ 20"),
])
def test_memory_units_that_agree_are_read(alloc, vq, os_path):
    data = descriptor(CPU1, mem_both("4", alloc, vq))
    vs = parse_descriptor(data, path="t.ovf").system()
    assert (vs.memory, vs.memory_problem) == (4 * MIB, None)
    cfg, _plan, _w = plan(data, os_path)
    assert cfg.backend["maxmem"] == "4"


def test_cpu_units_are_not_compared(os_path):
    """A CPU item's AllocationUnits is its speed (hertz * 10^6), its
    VirtualQuantityUnits the count: they differ by nature (ovftool)."""
    item = ("<Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>"
            "<rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2"
            "</rasd:VirtualQuantity><rasd:VirtualQuantityUnits>count"
            "</rasd:VirtualQuantityUnits></Item>")
    cfg, _plan, _w = plan(descriptor(item, MEM64), os_path)
    assert cfg.backend["vcpus"] == "2"


def test_ganeti_section_value_makes_the_declared_one_irrelevant(os_path):
    data = descriptor(CPU1, mem("0")).replace(
        b'<VirtualSystem ovf:id="vm">',
        b'<VirtualSystem ovf:id="vm"><gnt:GanetiSection xmlns:gnt="http://ganeti">'
        b"<gnt:Backend><gnt:Parameters><gnt:maxmem>256</gnt:maxmem></gnt:Parameters>"
        b"</gnt:Backend></gnt:GanetiSection>")
    cfg, _plan, _w = plan(data, os_path)
    assert cfg.backend["maxmem"] == "256"


def test_omitted_values_keep_ganeti_defaults(os_path):
    """No CPU or memory item, no capacity: nothing refused, nothing said
    about overrides; Ganeti's defaults apply and the image gives the size."""
    data = descriptor(disk="")
    env = parse_descriptor(data, path="t.ovf")
    vs = env.system()
    assert (vs.cpus, vs.cpus_problem, vs.memory, vs.memory_problem) == (None,) * 4
    assert (vs.disks[0].capacity, vs.disks[0].capacity_problem) == (None, None)
    assert not any("import needs" in w for w in env.warnings)
    cfg, disks, _w = plan(data, os_path)
    assert "vcpus" not in cfg.backend and "maxmem" not in cfg.backend
    assert [size for _src, size in disks] == [0]  # taken from the image


def test_item_without_quantity_is_omitted_not_unusable(os_path):
    """An item that only sets a Reservation (ovftool's own test data) does
    not count as a declared value."""
    data = descriptor(CPU1, "<Item><rasd:ResourceType>4</rasd:ResourceType>"
                      "<rasd:Reservation>64</rasd:Reservation></Item>")
    cfg, _plan, _w = plan(data, os_path)
    assert "maxmem" not in cfg.backend


def _with_ganeti_backend(params: str) -> bytes:
    return descriptor(CPU1, MEM64).replace(
        b'<VirtualSystem ovf:id="vm">',
        b'<VirtualSystem ovf:id="vm"><gnt:GanetiSection xmlns:gnt="http://ganeti">'
        b"<gnt:Backend><gnt:Parameters>" + params.encode()
        + b"</gnt:Parameters></gnt:Backend></gnt:GanetiSection>")


@pytest.mark.parametrize("params, key, shown, limit, option", [
    ("<gnt:vcpus>1000000000</gnt:vcpus>", "vcpus", "'1000000000'", MAX_VCPUS, "-B vcpus=N"),
    ("<gnt:vcpus>0</gnt:vcpus>", "vcpus", "'0'", MAX_VCPUS, "-B vcpus=N"),
    ("<gnt:maxmem>-1</gnt:maxmem>", "maxmem", "'-1'", 1 << 32, "-B maxmem=SIZE"),
    ("<gnt:maxmem>lots</gnt:maxmem>", "maxmem", "'lots'", 1 << 32, "-B maxmem=SIZE"),
    ("<gnt:maxmem>512</gnt:maxmem><gnt:minmem>99999999999999999999999</gnt:minmem>",
     "minmem", "'99999999999999999999999'", 1 << 32, "-B minmem=SIZE"),
])
def test_ganeti_section_sizes_are_bounded_too(params, key, shown, limit, option, os_path):
    data = _with_ganeti_backend(params)
    with pytest.raises(DescriptorError) as e:
        plan(data, os_path)
    assert str(e.value) == (f"vm.ova: system 'vm': the package's Ganeti section sets {key} "
                            f"{shown}, not a whole number from 1 to {limit}; give it with "
                            f"{option}")
    given = {"memory": "256"} if key != "vcpus" else {key: "2"}
    cfg, _plan, _w = plan(data, os_path, backend=given)
    assert cfg.backend[key] == given.get(key, "256")


def test_ganeti_section_sizes_in_bounds_are_used(os_path):
    data = _with_ganeti_backend("<gnt:vcpus>4</gnt:vcpus><gnt:maxmem>2048</gnt:maxmem>"
                                "<gnt:minmem>1024</gnt:minmem>")
    cfg, _plan, _w = plan(data, os_path)
    assert (cfg.backend["vcpus"], cfg.backend["maxmem"], cfg.backend["minmem"]) == (
        "4", "2048", "1024")
