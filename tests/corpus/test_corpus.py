"""Every file of the shared OVF corpus: real data nobody here wrote.

Well-formed OVF envelopes and OVAs must be read (``info`` succeeds);
broken or non-OVF files must be refused with one ``OvfError`` line; nothing
may raise anything else.  Exceptions to the rule are listed in
``OVERRIDES`` with the reason and, for refusals, a piece of the message.
Skipped when ../shared is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ganeti_ovf import report
from ganeti_ovf.errors import OvfError

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "ovf" / "corpus"
INDEX = CORPUS / "index.json"

_XT = "vmware/govmomi/external/ovftool-xmltests/"
_IMP = "vmware/govmomi/external/ImportOvf2014/"
_SEC = "vmware/govmomi/external/security-test-content/ovf/"

_EMPTY_VAPP = ("an empty vApp: VirtualSystemCollection without any VirtualSystem; info "
               "shows what is there (import refuses it)", None)
_NEG_SIZE = ("ovf:size is negative: a size that cannot be true is refused (ovftool's "
             "own test calls it valid and ignores it)", "size '-2' is negative")
_NS_PREFIX = ("undeclared namespace prefix 'ovfstr' on the Strings bundle: not "
              "namespace-well-formed; ovftool tolerates it, we never parse in recover mode",
              "Namespace prefix ovfstr on Strings is not defined")

# path -> (expected "ok" | "error", why, substring of the message for "error")
OVERRIDES: dict[str, tuple[str, str, str | None]] = {
    # -- OVA files that are not an OVA we can read in place
    "ganeti/ovfdata/ova.ova": (
        "error", "a gzip-compressed tar (Ganeti's old ovfconverter extracted it); an OVA is "
        "a plain tar, read in place", "is gzip-compressed"),
    "ganeti/ovfdata/wrong_ova.ova": (
        "error", "Ganeti negative test: an XML descriptor named .ova",
        "not a valid OVA (tar) archive (it is XML"),
    "virtualbox/glance-tests/packages/testserver-no-ovf.ova": (
        "error", "glance negative test: the archive holds no .ovf",
        "no OVF descriptor (.ovf member) in the archive"),
    # -- envelopes without any VirtualSystem: nothing to import (empty vApps: shown)
    "open-ovf/tests/ourOVF.ovf": (
        "error", "pre-1.0 draft (namespace without version, xs:name sections) with sections "
        "only, no VirtualSystem", "no VirtualSystem in the descriptor"),
    _IMP + "empty_vsc.ovf": ("ok", *_EMPTY_VAPP),
    _IMP + "scaleoutVApp.ovf": ("ok", *_EMPTY_VAPP),
    _IMP + "tagBasedPlacementGroupSection/tagBasedPlacementGroup005.ovf": (
        "ok", *_EMPTY_VAPP),
    _IMP + "tagBasedPlacementSection/tagBasedPlacement001.ovf": ("ok", *_EMPTY_VAPP),
    _IMP + "tagBasedPlacementSection/tagBasedPlacement004.ovf": ("ok", *_EMPTY_VAPP),
    _IMP + "tagBasedPlacementSection/tagBasedPlacement005.ovf": ("ok", *_EMPTY_VAPP),
    _IMP + "unknownsections_updated.ovf": ("ok", *_EMPTY_VAPP),
    "vmware/govmomi/external/ovftoolresources/nvapp006.ovf": ("ok", *_EMPTY_VAPP),
    _XT + "Envelope/Neg/invalid_empty_env.ovf": (
        "error", "ovftool negative test: empty Envelope", "no VirtualSystem in the descriptor"),
    _XT + "Envelope/Neg/no_content.ovf": (
        "error", "ovftool negative test: References only", "no VirtualSystem in the descriptor"),
    _XT + "Envelope_1_0/Neg/no_content.ovf": (
        "error", "ovftool negative test: References only", "no VirtualSystem in the descriptor"),
    _XT + "Envelope_1_0/Neg/content_withnovm.ovf": (
        "error", "ovftool negative test: the content element is <UnKnown>",
        "no VirtualSystem in the descriptor"),
    _XT + "Envelope/Neg/invalid_namespace.ovf": (
        "error", "ovftool negative test: xsi bound to a wrong URI, so no Content has a type",
        "no VirtualSystem in the descriptor"),
    _XT + "Envelope_1_0/Neg/invalid_namespace.ovf": (
        "error", "ovftool negative test: Envelope in a made-up namespace",
        "not an OVF descriptor (root element is '{http://nosuchspec.com/ovf/envelope/1}"),
    # -- ambiguous or dangling references: refused, never guessed
    _XT + "DiskSection/Neg/no_diskid.ovf": (
        "error", "ovftool negative test: Disk without ovf:diskId",
        "Disk without ovf:diskId (fileRef 'file1')"),
    _XT + "DiskSection_1_0/Neg/no_diskid.ovf": (
        "error", "ovftool negative test: Disk without ovf:diskId",
        "Disk without ovf:diskId (fileRef 'file1')"),
    _XT + "Envelope/Neg/invalid_no_file_in_ref.ovf": (
        "error", "ovftool negative test: fileRef to an undeclared file",
        "disk 'vmdisk1' refers to file 'file1', which References does not declare"),
    _XT + "Envelope/Neg/invalid_no_ref.ovf": (
        "error", "ovftool negative test: no References at all",
        "disk 'vmdisk1' refers to file 'file1', which References does not declare"),
    _XT + "Envelope_1_0/Neg/invalid_no_file_in_ref.ovf": (
        "error", "ovftool negative test: fileRef to an undeclared file",
        "disk 'vmdisk1' refers to file 'file1', which References does not declare"),
    _XT + "Envelope_1_0/Neg/invalid_no_ref.ovf": (
        "error", "ovftool negative test: no References at all",
        "disk 'vmdisk1' refers to file 'file1', which References does not declare"),
    _XT + "Envelope/Neg/invalid_ref_dup_id.ovf": (
        "error", "ovftool negative test: one file id for two different files",
        "file id 'file1' is declared twice (as '../../../vmdk/dummy.vmdk' and "),
    _XT + "Envelope_1_0/Neg/invalid_ref_no_href.ovf": (
        "error", "ovftool negative test: File without ovf:href",
        "References/File 'file1' has no ovf:href"),
    _XT + "DiskSection_1_0/Neg/dup_filerefs.ovf": (
        "error", "ovftool negative test: one File behind two Disks",
        "file 'file1' is used by two disks, 'vmdisk1' and 'vmdisk2'"),
    _XT + "Envelope/Neg/fileelements_samefile.ovf": (
        "error", "ovftool negative test: two Files with one href",
        "files 'file1' (href 'doesnotexist.vmdk') and 'file2' (href 'doesnotexist.vmdk') "
        "name the same member 'doesnotexist.vmdk'"),
    _XT + "Envelope_1_0/Neg/fileelements_samefile.ovf": (
        "error", "ovftool negative test: two Files with one href",
        "files 'file1' (href 'doesnotexist.vmdk') and 'file2' (href 'doesnotexist.vmdk') "
        "name the same member 'doesnotexist.vmdk'"),
    "ganeti/ovfdata/virtualbox.ovf": (
        "error", "two disk items name one disk with an image: its bytes would be imported "
        "twice", "system 'Ubuntu-freshly-created': two disk items refer to disk 'vmdisk1'"),
    "vmware/govmomi/external/nostalgia-two-disks-same.ovf": (
        "error", "two disk items name one disk with an image: its bytes would be imported "
        "twice", "system 'Nostalgia': two disk items refer to disk 'vmdisk1'"),
    # -- sizes that cannot be true
    _SEC + "negative-size-disk/haoUnOS2VMs.ovf": (
        "error", "VMware security test: ovf:size near -2^63",
        "file 'file1': size '-9223372036854775807' is negative"),
    _SEC + "negative-out-of-bound-disk/haoUnOS2VMs.ovf": (
        "error", "VMware security test: ovf:size below -2^63",
        "file 'file1': size '-9223372036854775809' is negative"),
    _XT + "Envelope/Pos/valid_vmdk_neg_size.ovf": ("error", *_NEG_SIZE),
    "vmware/govmomi/external/ovftoolresources/valid_vmdk_neg_size.ovf": ("error", *_NEG_SIZE),
    "vmware/govmomi/external/OVFToolTemplates/ovftoolresources/valid_vmdk_neg_size.ovf": (
        "error", *_NEG_SIZE),
    # -- not namespace-well-formed (the index agrees; pinned because ovftool reads them)
    "vmware/govmomi/external/ovftoolresources/item_msgid.ovf": ("error", *_NS_PREFIX),
    "vmware/govmomi/external/OVFToolTemplates/ovftoolresources/item_msgid.ovf": (
        "error", *_NS_PREFIX),
    _XT + "VirtualHardware_1_0/Pos/item_msgid_elename.ovf": ("error", *_NS_PREFIX),
    # -- refused although the index or the source says otherwise
    "proxmox/pve-storage/XEE.ovf": (
        "error", "Proxmox's XXE test: the DOCTYPE declares an external entity; entity "
        "declarations are refused outright", "the DOCTYPE declares entities (&external;)"),
    # -- read although the index or the source says otherwise
    "xen/xencenter/sample_app.ovf": (
        "ok", "declares UTF-16 but is 8-bit (XenCenter); read as the UTF-8 it is", None),
    _XT + "Envelope/Neg/invalid_neg_chunk.ovf": (
        "ok", "ovftool negative test: ovf:size 'abcd'; a size is only a cross-check, so it "
        "is a warning (like build-template placeholders)", None),
    _XT + "Envelope_1_0/Neg/invalid_neg_chunk.ovf": (
        "ok", "ovftool negative test: ovf:size 'abcd'; a size is only a cross-check, so it "
        "is a warning (like build-template placeholders)", None),
    _XT + "VirtualHardware_1_0/Neg/maxwith_nonormal.ovf": (
        "ok", "ovftool negative test: a memory item with a Reservation and no "
        "VirtualQuantity; ignored with a warning, the other memory item counts", None),
}

# Warnings the lenient reads above must give (what makes them safe to read).
OVERRIDE_WARNINGS: dict[str, str] = {
    _XT + "Envelope/Neg/invalid_neg_chunk.ovf": "size 'abcd' is not a whole number",
    _XT + "Envelope_1_0/Neg/invalid_neg_chunk.ovf": "size 'abcd' is not a whole number",
    _XT + "VirtualHardware_1_0/Neg/maxwith_nonormal.ovf": "has no VirtualQuantity",
}


def _entries():
    if not INDEX.exists():
        return []
    return [e for e in json.loads(INDEX.read_text())
            if e["kind"] in ("descriptor", "archive")]


def _expected(e) -> tuple[str, str | None]:
    """("ok" | "error", a piece of the expected message or None)."""
    if e["path"] in OVERRIDES:
        want, _why, msg = OVERRIDES[e["path"]]
        return want, msg
    if e["kind"] == "archive":
        return "ok", None
    if not e["well_formed_xml"]:
        return "error", "not well-formed XML"
    if not e["is_ovf_envelope"]:
        return "error", "not an OVF descriptor"
    return "ok", None


ENTRIES = _entries()


def test_overrides_name_corpus_files():
    """A stale override (file renamed or gone) must not pass silently."""
    if not ENTRIES:
        pytest.skip("shared OVF corpus not present")
    paths = {e["path"] for e in ENTRIES}
    assert sorted(set(OVERRIDES) - paths) == []
    for path, (want, why, msg) in OVERRIDES.items():
        assert want in ("ok", "error") and why, path
        assert (msg is not None) == (want == "error"), path


@pytest.mark.skipif(not ENTRIES, reason="shared OVF corpus not present")
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["path"] for e in ENTRIES])
def test_corpus_file(entry):
    path = str(CORPUS / entry["path"])
    want, msg = _expected(entry)
    try:
        data = report.package_info(path)
    except OvfError as e:
        line = str(e)
        assert "\n" not in line and line.startswith(path)
        assert want == "error", f"refused: {line}"
        assert msg is None or msg in line, line
        return
    assert want == "ok", "read, but should have been refused"
    if OVERRIDES.get(entry["path"], (None, None))[1] == _EMPTY_VAPP[0]:
        assert data["systems"] == []
        assert any("holds none" in w for w in data["warnings"]), data["warnings"]
        assert "Virtual systems: none (nothing to import)" in report.info_text(data)
    else:
        assert data["systems"], "no virtual system read"
    assert all(isinstance(w, str) and "\n" not in w for w in data["warnings"])
    if entry["path"] in OVERRIDE_WARNINGS:
        assert any(OVERRIDE_WARNINGS[entry["path"]] in w for w in data["warnings"])
    text = report.info_text(data)
    assert text and "\n" in text
    json.dumps(data)  # the --json form serialises


# -- files with a point of their own -------------------------------------------

def _need(rel: str) -> str:
    p = CORPUS / rel
    if not p.exists():
        pytest.skip(f"{rel} not in the shared corpus")
    return str(p)


def test_external_entity_is_never_resolved():
    """XEE.ovf declares ``<!ENTITY external SYSTEM "file:///proc/self/comm">``
    and uses it as the system's name: refused, and nothing read from that file."""
    path = _need("proxmox/pve-storage/XEE.ovf")
    leaked = Path("/proc/self/comm").read_text().strip()  # what expansion would give
    with pytest.raises(OvfError) as e:
        report.package_info(path)
    assert "the DOCTYPE declares entities (&external;)" in str(e.value)
    assert leaked not in str(e.value).replace(path, "")


def test_virtualbox_manifest_without_descriptor_is_a_warning():
    """VirtualBox 5.0 manifests skip the .ovf: info reads the package, every
    listed digest holds, and the operator is told the descriptor is unprotected."""
    path = _need("virtualbox/vbox-validationkit/packages/tdAppliance1-t3.ova")
    data = report.package_info(path)
    assert data["kind"] == "ova" and data["descriptor"] == "tdAppliance1-t3.ovf"
    m = data["manifest"]
    assert m["problems"] == [] and m["verified"] == ["tdAppliance1-t3-disk1.vmdk.gz"]
    note = "manifest does not list the descriptor 'tdAppliance1-t3.ovf'"
    assert any(note in w for w in m["warnings"])
    assert any(note in w for w in data["warnings"])
    assert note in report.info_text(data)
    problems, checked = report.verify_package(path)
    assert problems == []
    assert any(note in c for c in checked)


def test_chunked_ova_reads():
    path = _need("vmware/vcloud-director/packages/template_with_custom_chunk_size.ova")
    data = report.package_info(path)
    (vs,) = data["systems"]
    (disk,) = vs["disks"]
    assert disk["chunk_size"] and disk["file"].endswith(".vmdk")
    assert report.verify_package(path)[0] == []


def test_ovirt_export_reads_disk_and_cpus():
    """oVirt: trailing-slash namespace, fileRef naming the href, a bare
    HostResource, and CPUs as sockets x cores."""
    path = _need("ovirt/ovirt-engine/vmOvfData2.xml")
    data = report.package_info(path, probe=False)
    (vs,) = data["systems"]
    assert vs["cpus"] == 8 and vs["memory"] == 16 << 30
    (disk,) = vs["disks"]
    assert disk["file"] == ("752b9199-8083-4e60-9be2-b2f13f54790f/"
                            "e562465d-dc03-427f-8cc9-20fc1055424f")
