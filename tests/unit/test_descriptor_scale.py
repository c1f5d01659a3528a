"""Descriptor reading takes time linear in its size, and bounded memory.

Issue 10's review found shapes that were quadratic (N empty
VirtualSystems each re-walking the tree, warnings deduplicated in a list,
Files found by href by scanning) and a 60 MiB descriptor of empty elements
taking minutes and gigabytes.  Linear work is checked by counting tag
lookups where that is possible (deterministic) and otherwise by the ratio
of the best of a few timings at N and 4N (linear: ~4; quadratic: ~16);
the element bound by a generous hard limit on a child's time and memory.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ganeti_ovf import report
from ganeti_ovf.descriptor import elements, reader
from ganeti_ovf.descriptor.reader import MAX_MARKUP, parse_descriptor
from ganeti_ovf.descriptor.xmlsafe import MAX_ATTRIBUTES
from ganeti_ovf.errors import DescriptorError
from ganeti_ovf.importer import ImportRequest, choose_system, plan_config

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"


def envelope(body: str) -> bytes:
    return (f'<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}">{body}'
            "</Envelope>").encode()


def empty_systems(n: int) -> bytes:
    """A vApp of ``n`` systems without hardware, plus one Disk."""
    systems = "".join(f'<VirtualSystem ovf:id="v{i}"><Info>x</Info></VirtualSystem>'
                      for i in range(n))
    return envelope('<References><File ovf:id="f1" ovf:href="a.raw"/></References>'
                    '<DiskSection><Info>d</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" '
                    'ovf:capacity="1048576"/></DiskSection>'
                    f'<VirtualSystemCollection ovf:id="c"><Info>c</Info>{systems}'
                    "</VirtualSystemCollection>")


def distinct_warnings(n: int) -> bytes:
    """One system with ``n`` CD-ROM items, each giving its own warning."""
    items = "".join(f"<Item><rasd:ResourceType>15</rasd:ResourceType><rasd:HostResource>"
                    f"iso{i}</rasd:HostResource></Item>" for i in range(n))
    return envelope('<VirtualSystem ovf:id="vm"><Info>x</Info><VirtualHardwareSection>'
                    f"<Info>hw</Info>{items}</VirtualHardwareSection></VirtualSystem>")


def files_by_href(n: int) -> bytes:
    """``n`` Files and ``n`` Disks whose fileRef is the href (as oVirt writes)."""
    files = "".join(f'<File ovf:id="f{i}" ovf:href="g/i{i}"/>' for i in range(n))
    disks = "".join(f'<Disk ovf:diskId="d{i}" ovf:fileRef="g/i{i}"/>' for i in range(n))
    return envelope(f"<References>{files}</References><DiskSection><Info>d</Info>{disks}"
                    '</DiskSection><VirtualSystem ovf:id="vm"><Info>x</Info></VirtualSystem>')


def plan(data: bytes, os_path) -> None:
    """What import does with the descriptor before touching any disk."""
    env = parse_descriptor(data, path="t.ovf")
    req = ImportRequest(os_name="noop", os_search_path=os_path, use_cluster=False, vsys="v1")
    vs = choose_system(env, req.vsys, path="t.ovf")
    plan_config(env, vs, req, path="t.ovf")


def test_empty_systems_are_linear_in_tag_lookups(monkeypatch, os_path):
    """Deterministic: count the reader's tag lookups at N and 4N."""
    calls = 0
    real = elements._qn

    def counting(el):
        nonlocal calls
        calls += 1
        return real(el)

    for module in (elements, reader):
        monkeypatch.setattr(module, "_qn", counting)
    counts = []
    for n in (2000, 8000):
        calls = 0
        plan(empty_systems(n), os_path)
        counts.append(calls)
    assert counts[1] / counts[0] < 5, counts  # quadratic: ~16


def test_8000_empty_systems_read_and_planned_fast(os_path, tmp_path):
    """Was 240 s for info and import; a generous hard bound."""
    pkg = tmp_path / "vapp.ovf"
    pkg.write_bytes(empty_systems(8000))
    (tmp_path / "a.raw").write_bytes(bytes(1 << 20))
    start = time.monotonic()
    data = report.package_info(str(pkg))
    plan(empty_systems(8000), os_path)
    assert len(data["systems"]) == 8000
    assert time.monotonic() - start < 10


def _best_time(fn, data: bytes, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn(data)
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("shape, n", [(distinct_warnings, 7500), (files_by_href, 5000)],
                         ids=["distinct-warnings", "files-by-href"])
def test_shape_is_not_quadratic(shape, n):
    def read(data: bytes) -> None:
        parse_descriptor(data, path="t.ovf")
    small = _best_time(read, shape(n))
    large = _best_time(read, shape(4 * n))
    assert large / small < 8, (small, large)  # linear: ~4; quadratic: ~16


def test_distinct_warnings_are_all_kept_once():
    env = parse_descriptor(distinct_warnings(3) + b"", path="t.ovf")
    assert env.warnings == tuple(f"system 'vm': '?' media 'iso{i}' is not imported"
                                 for i in range(3))
    doubled = distinct_warnings(2).replace(b"iso1", b"iso0")
    assert parse_descriptor(doubled, path="t.ovf").warnings == (
        "system 'vm': '?' media 'iso0' is not imported",)


def test_markup_over_the_bound_is_refused_before_parsing():
    data = envelope("<a/>" * MAX_MARKUP)
    with pytest.raises(DescriptorError) as e:
        parse_descriptor(data, path="t.ovf")
    assert str(e.value) == (f"t.ovf: {MAX_MARKUP + 2} tags; refusing a descriptor of more "
                            f"than {MAX_MARKUP} (real ones have a few thousand)")


CHILD = """
import sys
from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import DescriptorError
n = int(sys.argv[1])
data = (b'<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1">'
        + b"<a/>" * n + b"</Envelope>")
del sys.argv
try:
    parse_descriptor(data, path="big.ovf")
except DescriptorError as e:
    print(e)
"""


def test_60_mib_of_empty_elements_fails_fast_in_bounded_memory(tmp_path):
    """15.7M empty elements under the 64 MiB cap: was 300 s and 4.1 GB."""
    n = 15_700_000
    rss = tmp_path / "rss"
    start = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss), sys.executable, "-c",
                        CHILD, str(n)], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (f"big.ovf: {n + 2} tags; refusing a descriptor of more than "
                                f"{MAX_MARKUP} (real ones have a few thousand)")
    assert elapsed < 10
    # The bytes themselves (60 MiB) and the interpreter: no tree was built.
    assert int(rss.read_text().split()[-1]) < 300 * 1024


def nested_product_sections(depth: int, per: int = 20) -> bytes:
    """``depth`` ProductSections nested in one another, ``per`` Properties in
    each, the innermost one's referenced by the memory item."""
    props = "".join(f'<Property ovf:key="p{i}" ovf:value="{i}"/>' for i in range(per))
    nested = ""
    for d in range(depth):
        nested = f'<ProductSection ovf:class="c{d}"><Info>p</Info>{props}{nested}' \
                 "</ProductSection>"
    return envelope('<VirtualSystem ovf:id="vm"><Info>x</Info>' + nested
                    + "<VirtualHardwareSection><Info>hw</Info><Item><rasd:AllocationUnits>"
                    "byte * 2^20</rasd:AllocationUnits><rasd:ResourceType>4"
                    "</rasd:ResourceType><rasd:VirtualQuantity>${c0.p7}"
                    "</rasd:VirtualQuantity></Item></VirtualHardwareSection>"
                    "</VirtualSystem>")


def test_nested_product_sections_visit_each_property_once(monkeypatch):
    """Finding 7: each ProductSection's subtree was walked for every
    enclosing one (55 levels, 180000 Properties: 96 s).  Deterministic: the
    reader's kind lookups at nesting 10 and 40."""
    calls = 0
    real = elements._kind

    def counting(el):
        nonlocal calls
        calls += 1
        return real(el)

    for module in (elements, reader):
        monkeypatch.setattr(module, "_kind", counting)
    counts = []
    for depth in (10, 40):
        calls = 0
        env = parse_descriptor(nested_product_sections(depth), path="t.ovf")
        assert env.system().memory == 7 << 20
        counts.append(calls)
    assert counts[1] / counts[0] < 6, counts  # linear: ~4; quadratic: ~16


def crowded(n: int) -> bytes:
    """The system's Info element with ``n`` attributes."""
    attrs = " ".join(f'a{i}="{i}"' for i in range(n))
    return envelope(f'<VirtualSystem ovf:id="vm"><Info {attrs}>x</Info></VirtualSystem>')


def test_100000_attributes_on_one_element_fail_fast():
    """Finding 8: libxml2's duplicate-attribute check is quadratic (50 s for
    100000 attributes in 1 MB); refused from the bytes, before parsing."""
    data = crowded(100_000)
    start = time.monotonic()
    with pytest.raises(DescriptorError) as e:
        parse_descriptor(data, path="t.ovf")
    assert time.monotonic() - start < 5
    assert str(e.value) == (f"t.ovf: element <Info> has more than {MAX_ATTRIBUTES} "
                            "attributes; refusing it (real descriptors have at most a few "
                            "dozen)")


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-16-le", "utf-16-be"])
def test_attribute_bound_is_exact_in_each_encoding(encoding):
    """Up to the bound is read (namespace declarations count: the
    Envelope's own are on another element); UTF-16 is scanned too."""
    def encoded(n: int) -> bytes:
        text = crowded(n).decode()
        if encoding != "utf-8":
            text = f'<?xml version="1.0" encoding="{encoding}"?>' + text
        return text.encode(encoding)
    env = parse_descriptor(encoded(MAX_ATTRIBUTES), path="t.ovf")
    assert env.system().system_id == "vm"
    with pytest.raises(DescriptorError, match=f"element <Info> has more than {MAX_ATTRIBUTES} "
                       "attributes"):
        parse_descriptor(encoded(MAX_ATTRIBUTES + 1), path="t.ovf")
