"""Property tests of the descriptor reader on generated and mutated XML.

Two sources: descriptors generated from OVF's own vocabulary (sections,
items, references, units, properties, configurations, in any nesting and
order), and real descriptors from the shared corpus mutated byte-wise and
with hostile snippets (entity declarations, huge units, property
references, truncation).  Whatever comes in: an Envelope or one of our
own errors (an OvfError, one line), bounded time per example, and the
import planning of what was read is one of those too.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganeti_ovf.descriptor.reader import parse_descriptor
from ganeti_ovf.errors import OvfError
from ganeti_ovf.importer import ImportRequest, plan_config
from ganeti_ovf.model import Envelope

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "ovf" / "corpus"
PER_EXAMPLE = 3.0  # seconds; the largest real descriptor reads in ~50 ms

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
NS = {
    "ovf": OVF1,
    "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
    "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "gnt": "http://ganeti",
}
_TAGS = st.sampled_from([
    "References", "File", "DiskSection", "Disk", "NetworkSection", "Network",
    "VirtualSystem", "VirtualSystemCollection", "VirtualHardwareSection", "Item",
    "StorageItem", "EthernetPortItem", "System", "Info", "Name", "ProductSection",
    "Property", "DeploymentOptionSection", "Configuration", "OperatingSystemSection",
    "EulaSection", "License", "Section", "Content", "rasd:ResourceType",
    "rasd:VirtualQuantity", "rasd:AllocationUnits", "rasd:HostResource",
    "rasd:ElementName", "rasd:InstanceID", "rasd:Connection", "rasd:Address",
    "gnt:GanetiSection", "gnt:Backend", "gnt:Parameters", "gnt:maxmem", "x:Unknown",
])
_ATTRS = st.sampled_from([
    "ovf:id", "ovf:href", "ovf:size", "ovf:chunkSize", "ovf:compression", "ovf:diskId",
    "ovf:fileRef", "ovf:capacity", "ovf:capacityAllocationUnits", "ovf:populatedSize",
    "ovf:parentRef", "ovf:key", "ovf:value", "ovf:bound", "ovf:configuration",
    "ovf:default", "ovf:class", "ovf:instance", "ovf:version", "xsi:type", "id", "href",
])
_VALUES = st.one_of(
    st.sampled_from([
        "f1", "d1", "vm", "a.vmdk", "../x", "/etc/passwd", "ovf:/disk/d1", "ovf:/file/f1",
        "/disk/d1", "3", "4", "10", "17", "0", "-1", "1", "2", "1000000000",
        "18446744073709551617", "byte * 2^20", "byte * 2^999", "MegaBytes", "hertz * 10^6",
        "${p}", "${", "${q}", "gzip", "max", "min", "normal", "true", "ovf:DiskSection_Type",
        "ovf:VirtualSystem_Type", "", " ", "x" * 300,
    ]),
    st.text(max_size=12),
)


def _clean(text: str) -> str:
    """XML 1.0 text: no control characters lxml cannot even be given."""
    ok = "".join(c for c in text if c in "\t\n\r" or (" " <= c < "\ud800")
                 or ("\ue000" <= c <= "\ufffd"))
    return ok.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


@st.composite
def _element(draw, depth: int = 0) -> str:
    tag = draw(_TAGS)
    attrs = draw(st.dictionaries(_ATTRS, _VALUES, max_size=4))
    attr_text = "".join(f' {k}="{_clean(v)}"' for k, v in attrs.items())
    kids = [] if depth >= 3 else draw(st.lists(_element(depth + 1), max_size=3))
    text = _clean(draw(_VALUES)) if not kids or draw(st.booleans()) else ""
    return f"<{tag}{attr_text}>{text}{''.join(kids)}</{tag}>"


@st.composite
def generated_descriptors(draw) -> bytes:
    decl = " ".join(f'xmlns:{p}="{u}"' for p, u in NS.items())
    body = "".join(draw(st.lists(_element(), min_size=0, max_size=4)))
    return (f'<Envelope xmlns="{OVF1}" xmlns:x="urn:x" {decl}>{body}</Envelope>').encode()


def _corpus_descriptors() -> list[Path]:
    index = CORPUS / "index.json"
    if not index.exists():
        return []
    return [CORPUS / e["path"] for e in json.loads(index.read_text())
            if e["kind"] == "descriptor"]


CORPUS_FILES = _corpus_descriptors()

_SNIPPETS = st.sampled_from([
    b'<!DOCTYPE Envelope [<!ENTITY a "b">]>', b"<!ENTITY % p 'x'>", b"&a;", b"]]>",
    b"<![CDATA[<x>]]>", b"byte * 2^999", b"${x}", b"-1", b"0", b"1000000000", b"\x00",
    b"\xff\xfe", b"<", b">", b'"', b"</Envelope>", b"<VirtualSystem>", b"<a>" * 70,
    b'ovf:capacity="0"', b'ovf:href="a"', b"&#0;", b"&#x110000;", b"<?xml version='1.0'?>",
])


@st.composite
def mutated_corpus(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS_FILES)).read_bytes())
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if not data:
            break
        at = draw(st.integers(min_value=0, max_value=len(data) - 1))
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "dup"]))
        if op == "flip":
            data[at] ^= draw(st.integers(min_value=1, max_value=255))
        elif op == "delete":
            del data[at:at + draw(st.integers(min_value=1, max_value=64))]
        elif op == "insert":
            data[at:at] = draw(_SNIPPETS)
        elif op == "truncate":
            del data[at:]
        else:  # repeat a stretch: duplicate ids, sections, items
            n = draw(st.integers(min_value=1, max_value=400))
            data[at:at] = data[at:at + n] * draw(st.integers(min_value=1, max_value=3))
    return bytes(data)


@pytest.fixture(scope="module")
def os_search(tmp_path_factory) -> list[str]:
    from conftest import make_os_dir

    top = tmp_path_factory.mktemp("os")
    make_os_dir(top, "noop", api="10", scripts=("create", "export", "import", "rename"))
    return [str(top)]


def _read_and_plan(data: bytes, os_search: list[str]) -> None:
    """Only an Envelope or one OvfError line, within the time bound."""
    start = time.perf_counter()
    try:
        env = parse_descriptor(data, path="t.ovf")
    except OvfError as e:
        assert "\n" not in str(e) and str(e).startswith("t.ovf: ")
        env = None
    if isinstance(env, Envelope):
        assert all(isinstance(w, str) and "\n" not in w for w in env.warnings)
        req = ImportRequest(os_name="noop", os_search_path=os_search, use_cluster=False,
                            name="fuzz")
        for vs in env.systems[:3]:
            try:
                plan_config(env, vs, req, path="t.ova")
            except OvfError as e:
                assert "\n" not in str(e)
    assert time.perf_counter() - start < PER_EXAMPLE


# OVF_FUZZ_EXAMPLES=5000 for a longer campaign; the default keeps each test ~5 s.
EXAMPLES = int(os.environ.get("OVF_FUZZ_EXAMPLES", "150"))
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_SETTINGS
@given(data=generated_descriptors())
def test_generated_descriptors_read_or_refused(data: bytes, os_search) -> None:
    _read_and_plan(data, os_search)


@pytest.mark.skipif(not CORPUS_FILES, reason="shared OVF corpus not present")
@_SETTINGS
@given(data=mutated_corpus())
def test_mutated_corpus_descriptors_read_or_refused(data: bytes, os_search) -> None:
    _read_and_plan(data, os_search)


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(data=st.binary(max_size=400))
def test_any_bytes_read_or_refused(data: bytes, os_search) -> None:
    _read_and_plan(b"<Envelope" + data, os_search)
    _read_and_plan(data, os_search)
