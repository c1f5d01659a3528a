"""Import of real packages built with qemu-img: disk bytes and config.ini."""

from __future__ import annotations

import configparser
import gzip
import hashlib
import os
import re
import tarfile
from pathlib import Path

import pytest
from make_fixtures import Appliance, DiskSpec, build_descriptor

from ganeti_ovf import report
from ganeti_ovf.errors import (
    DescriptorError,
    DiskImageError,
    IntegrityError,
    OsNameError,
    PackageError,
    UnsafeMemberError,
    UsageError,
)
from ganeti_ovf.importer import ImportRequest, import_package

MIB = 1 << 20


def ini(path: str | Path) -> configparser.ConfigParser:
    """config.ini read the way Ganeti reads it (interpolating parser)."""
    cp = configparser.ConfigParser()
    cp.read(os.path.join(path, "config.ini"))
    return cp


def dump_bytes(export: str, cp: configparser.ConfigParser, i: int) -> bytes:
    with open(os.path.join(export, cp["instance"][f"disk{i}_dump"]), "rb") as f:
        return f.read()


def req(os_path, **kw) -> ImportRequest:
    kw.setdefault("os_name", "noop")
    return ImportRequest(os_search_path=os_path, use_cluster=False, **kw)


FORMATS = ["vmdk", "vmdk-sparse", "qcow2", "vdi", "vhdx", "raw"]


@pytest.mark.parametrize("ova", [True, False], ids=["ova", "ovf-dir"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_import_each_format_bytes_equal(build, tmp_path, os_path, fmt, ova):
    app = Appliance(name="vm1", disks=[DiskSpec(3 * MIB + 4096, fmt)])
    pkg, raws = build(app, ova=ova)
    res = import_package(pkg, str(tmp_path / "export"), req(os_path))
    assert res.path == str(tmp_path / "export" / "vm1")
    cp = ini(res.path)
    data = dump_bytes(res.path, cp, 0)
    # vhdx/vdi round sizes up to their block size; the extra is zeros.
    assert data[: len(raws[0])] == raws[0]
    assert data[len(raws[0]):].count(0) == len(data) - len(raws[0])
    # 3 MiB + 4 KiB rounds UP to 4 MiB, never down.
    assert cp["instance"]["disk0_size"] == "4"
    assert os.listdir(tmp_path / "export") == ["vm1"]


def test_config_ini_key_by_key(build, tmp_path, os_path):
    app = Appliance(name="web01", cpus=3, memory_mib=768,
                    disks=[DiskSpec(2 * MIB, "vmdk"), DiskSpec(1 * MIB, "qcow2", seed=5)],
                    nics=[("VM Network", "00:50:56:AA:BB:01"), ("Backend", None),
                          ("VM Network", None)])
    pkg, _ = build(app)
    res = import_package(pkg, str(tmp_path / "x"), req(os_path, tags=("web", "env:prod")))
    cp = ini(res.path)
    assert cp.sections() == ["export", "instance", "hypervisor", "backend", "os", "os_private"]
    ex = dict(cp["export"])
    assert ex["version"] == "0" and ex["os"] == "noop" and ex["compression"] == "none"
    assert ex["source"] == "web01.ova" and ex["timestamp"].isdigit()
    inst = dict(cp["instance"])
    assert inst["name"] == "web01"
    assert (inst["maxmem"], inst["minmem"], inst["memory"], inst["vcpus"]) == (
        "768", "768", "768", "3")
    assert "disk_template" not in inst and "hypervisor" not in inst  # Ganeti's defaults
    assert inst["tags"] == "web env:prod"
    # NICs are counted by adapters (3), not by networks (2).
    assert inst["nic_count"] == "3"
    assert inst["nic0_mac"] == "00:50:56:aa:bb:01"
    assert inst["nic1_mac"] == "generate" and inst["nic2_mac"] == "generate"
    assert inst["nic0_mode"] == "None" and inst["nic0_link"] == "None"
    assert inst["nic0_network"] == "None" and inst["nic0_ip"] == "None"
    assert not any(v == "auto" for v in inst.values())
    assert inst["disk_count"] == "2"
    assert (inst["disk0_size"], inst["disk1_size"]) == ("2", "1")
    assert inst["disk0_ivname"] == "disk/0" and inst["disk1_ivname"] == "disk/1"
    assert dict(cp["backend"]) == {"maxmem": "768", "minmem": "768", "vcpus": "3",
                                   "memory": "768"}
    assert dict(cp["hypervisor"]) == {} and dict(cp["os"]) == {}
    # Dumps and directory are private, like Ganeti's own exports.
    assert os.stat(res.path).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(res.path, "config.ini")).st_mode & 0o777 == 0o600
    for i in range(2):
        assert os.stat(os.path.join(res.path, f"disk{i}.raw")).st_mode & 0o777 == 0o600


def test_command_line_overrides(build, tmp_path, os_path):
    pkg, raws = build(Appliance(name="base", disks=[DiskSpec(2 * MIB, "vmdk")]))
    r = req(os_path, name="other", os_name="image+minimal", os_params={"pct": "50%"},
            disk_template="file", disk_sizes={0: 10 * MIB, 1: 3 * MIB},
            backend={"maxmem": "1024", "minmem": "512", "vcpus": "4"},
            hypervisor="kvm", hv_params={"kernel_path": ""},
            nics=[{"mac": "generate", "link": "br0", "mode": "bridged"}])
    res = import_package(pkg, str(tmp_path / "out"), r)
    cp = ini(res.path)  # the interpolating parser must read '50%' back
    inst = cp["instance"]
    assert inst["name"] == "other" and cp["export"]["os"] == "image+minimal"
    assert cp["os"]["pct"] == "50%"
    assert inst["disk_template"] == "file" and inst["hypervisor"] == "kvm"
    assert (inst["disk0_size"], inst["disk1_size"]) == ("10", "3")
    assert "disk1_dump" not in inst  # a new blank disk: Ganeti creates it empty
    assert dump_bytes(res.path, cp, 0)[: len(raws[0])] == raws[0]
    assert (inst["maxmem"], inst["minmem"], inst["vcpus"]) == ("1024", "512", "4")
    assert cp["hypervisor"]["kernel_path"] == ""
    assert (inst["nic_count"], inst["nic0_link"], inst["nic0_mode"]) == ("1", "br0", "bridged")


def test_disk_size_smaller_than_image_is_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="v", disks=[DiskSpec(4 * MIB, "qcow2")]))
    with pytest.raises(DiskImageError, match="more than the disk size"):
        import_package(pkg, str(tmp_path / "o"), req(os_path, disk_sizes={0: 1 * MIB}))
    assert not (tmp_path / "o").exists() or os.listdir(tmp_path / "o") == []


def test_blank_disk_from_capacity(build, tmp_path, os_path):
    """A disk with capacity but no file becomes a Ganeti disk without a dump
    (Ganeti creates it empty): nothing is written, however large."""
    app = Appliance(name="v", disks=[DiskSpec(1 * MIB, "vmdk"),
                                     DiskSpec(5 << 40, blank=True, capacity_units="byte * 2^20")])
    pkg, _ = build(app)
    res = import_package(pkg, str(tmp_path / "o"), req(os_path))
    cp = ini(res.path)
    assert cp["instance"]["disk1_size"] == str(5 << 20)
    assert "disk1_dump" not in cp["instance"] and cp["instance"]["disk_count"] == "2"
    assert sorted(os.listdir(res.path)) == ["config.ini", "disk0.raw"]


def test_diskless_template_drops_disks(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="v"))
    res = import_package(pkg, str(tmp_path / "o"), req(os_path, disk_template="diskless"))
    cp = ini(res.path)
    assert cp["instance"]["disk_count"] == "0"
    assert sorted(os.listdir(res.path)) == ["config.ini"]
    assert any("not imported" in w for w in res.warnings)


@pytest.mark.parametrize("style", ["ovf2", "ovf09", "virtualbox"])
def test_other_ovf_versions(build, tmp_path, os_path, style):
    app = Appliance(name=f"s-{style}", style=style, cpus=1, memory_mib=64,
                    disks=[DiskSpec(2 * MIB, "vdi" if style == "virtualbox" else "vmdk")],
                    nics=[("NAT", "08:00:27:00:00:01")])
    pkg, raws = build(app, ova=False)
    res = import_package(pkg, str(tmp_path / "o"), req(os_path))
    cp = ini(res.path)
    assert cp["instance"]["maxmem"] == "64" and cp["instance"]["vcpus"] == "1"
    assert cp["instance"]["nic0_mac"] == "08:00:27:00:00:01"
    assert dump_bytes(res.path, cp, 0) == raws[0]


@pytest.mark.parametrize("units,mib", [("MegaBytes", 300), ("byte", 300), ("byte * 2^30", 2048)])
def test_memory_units(build, tmp_path, os_path, units, mib):
    app = Appliance(name="m", memory_mib=mib if units != "byte * 2^30" else 2, memory_units=units,
                    disks=[DiskSpec(MIB, "raw")])
    if units == "byte * 2^30":
        # two units of 2^30 bytes
        pkg, _ = build(app)
    else:
        pkg, _ = build(app)
    res = import_package(pkg, str(tmp_path / "o"), req(os_path))
    want = str(mib if units != "byte * 2^30" else 2048)
    assert ini(res.path)["instance"]["maxmem"] == want


def test_unusable_declared_values_refused_unless_overridden(build, tmp_path, os_path):
    """Zero vCPUs, zero memory and an absurd capacity unit: refused one at a
    time, naming the option; with every override given, imported as asked."""
    pkg, _ = build(Appliance(name="bad", cpus=0, memory_mib=0,
                             disks=[DiskSpec(2 * MIB, "qcow2")]))
    data = report.package_info(pkg)  # info still shows the package, and what is wrong
    (vs,) = data["systems"]
    assert (vs["cpus"], vs["memory"]) == (None, None)
    assert "system 'bad': CPU count '0' is not a positive whole number; import needs " \
           "-B vcpus=N" in data["warnings"]
    assert any("import needs -B maxmem=SIZE" in w for w in data["warnings"])
    out = tmp_path / "export"
    out.mkdir()
    with pytest.raises(DescriptorError, match=r"memory '0' \(byte \* 2\^20\) is zero; "
                                              r"give it with -B maxmem=SIZE$"):
        import_package(pkg, str(out), req(os_path))
    with pytest.raises(DescriptorError, match=r"CPU count '0' is not a positive whole "
                                              r"number; give it with -B vcpus=N$"):
        import_package(pkg, str(out), req(os_path, backend={"maxmem": "128"}))
    assert os.listdir(out) == []
    res = import_package(pkg, str(out), req(os_path, backend={"maxmem": "128", "vcpus": "2"}))
    inst = ini(res.path)["instance"]
    assert (inst["maxmem"], inst["vcpus"]) == ("128", "2")


def test_absurd_capacity_refused_unless_size_given(build, tmp_path, os_path):
    pkg, raws = build(Appliance(name="cap", disks=[DiskSpec(2 * MIB, "raw")]), ova=False)
    ovf = Path(pkg)
    xml = ovf.read_bytes()
    xml = re.sub(rb'ovf:capacity="\d+"', b'ovf:capacity="1" '
                 b'ovf:capacityAllocationUnits="byte * 2^999"', xml)
    ovf.write_bytes(xml)
    mf = ovf.with_suffix(".mf")
    if mf.exists():
        mf.unlink()
    out = tmp_path / "export"
    with pytest.raises(DescriptorError, match=r"disk 'vmdisk0': capacity '1' not usable "
                                              r"\(oversized allocation unit 'byte \* 2\^999'\); "
                                              r"give its size with --disk 0:size=SIZE$"):
        import_package(pkg, str(out), req(os_path))
    res = import_package(pkg, str(out), req(os_path, disk_sizes={0: 4 * MIB}))
    cp = ini(res.path)
    assert cp["instance"]["disk0_size"] == "4"
    assert dump_bytes(res.path, cp, 0)[: len(raws[0])] == raws[0]


def test_ganeti_section_gives_os(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="g", ganeti_os="image+default"))
    res = import_package(pkg, str(tmp_path / "o"), req(os_path, os_name=None))
    assert ini(res.path)["export"]["os"] == "image+default"


def test_unknown_os_lists_valid_and_leaves_nothing(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="u"))
    out = tmp_path / "o"
    with pytest.raises(OsNameError) as ei:
        import_package(pkg, str(out), req(os_path, os_name="windows"))
    assert "unknown OS 'windows'" in str(ei.value)
    assert "image+default" in str(ei.value) and "noop" in str(ei.value)
    assert not out.exists() or os.listdir(out) == []


def test_missing_os(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="u"))
    with pytest.raises(OsNameError, match="no OS given"):
        import_package(pkg, str(tmp_path / "o"), req(os_path, os_name=None))


def test_tampered_manifest_refused_before_writing(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="t"), ova=False)
    mf = Path(pkg).with_suffix(".mf")
    text = mf.read_text()
    mf.write_text(re.sub(r"= ([0-9a-f])", lambda m: "= " + ("0" if m.group(1) != "0" else "1"),
                         text, count=2))
    out = tmp_path / "o"
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        import_package(pkg, str(out), req(os_path))
    assert not out.exists()
    # --no-verify is the operator's explicit choice
    res = import_package(pkg, str(out), req(os_path, verify=False))
    assert os.path.isdir(res.path)


def test_manifest_lists_missing_file(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="t"), ova=False)
    mf = Path(pkg).with_suffix(".mf")
    mf.write_text(mf.read_text() + "SHA256(ghost.vmdk)= " + "0" * 64 + "\n")
    with pytest.raises(IntegrityError, match="'ghost.vmdk', which is not in the package"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


def test_existing_output_is_not_replaced(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="dup"))
    (tmp_path / "o" / "dup").mkdir(parents=True)
    (tmp_path / "o" / "dup" / "keep").write_text("x")
    with pytest.raises(Exception, match="already exists"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert (tmp_path / "o" / "dup" / "keep").read_text() == "x"


def test_interrupt_during_conversion_leaves_nothing(build, tmp_path, os_path, mocker):
    """Ctrl-C at the worst moment: a disk half converted."""
    pkg, _ = build(Appliance(name="i", disks=[DiskSpec(MIB, "vmdk"), DiskSpec(MIB, "qcow2")]))
    from ganeti_ovf import disks

    real = disks.convert_to_raw
    calls = []

    def convert_then_interrupt(*a, **kw):
        real(*a, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    mocker.patch.object(disks, "convert_to_raw", side_effect=convert_then_interrupt)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        import_package(pkg, str(out), req(os_path))
    assert os.listdir(out) == []


def test_multiple_systems_need_vsys(tmp_path, os_path):
    d = tmp_path / "coll"
    d.mkdir()
    xml = build_descriptor(Appliance(name="a", disks=[]), [])
    from lxml import etree
    root = etree.fromstring(xml)
    ns = root.nsmap[None]
    vs = root.find(f"{{{ns}}}VirtualSystem")
    coll = etree.SubElement(root, f"{{{ns}}}VirtualSystemCollection")
    coll.set(f"{{{ns}}}id", "coll")
    root.remove(vs)
    coll.append(vs)
    import copy
    vs2 = copy.deepcopy(vs)
    vs2.set(f"{{{ns}}}id", "b")
    vs2.find(f"{{{ns}}}Name").text = "b"
    coll.append(vs2)
    (d / "c.ovf").write_bytes(etree.tostring(root))
    with pytest.raises(UsageError, match=r"2 virtual systems \('a', 'b'\); choose one with --vsys"):
        import_package(str(d / "c.ovf"), str(tmp_path / "o"), req(os_path))
    res = import_package(str(d / "c.ovf"), str(tmp_path / "o"),
                         req(os_path, vsys="b", disk_sizes={0: MIB}))
    assert ini(res.path)["instance"]["name"] == "b"


def _rewrite_ova(src: str, dst: str, edit) -> None:
    """Copy an OVA member by member through ``edit(name, data) -> [(name, data)]``."""
    with tarfile.open(src) as t, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as out:
        for m in t.getmembers():
            for name, data in edit(m.name, t.extractfile(m).read()):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                import io
                out.addfile(ti, io.BytesIO(data))


def _edit_descriptor(xml: bytes, **attrs) -> bytes:
    """Add attributes to file0; its ovf:size goes (the bytes change)."""
    xml = re.sub(rb' ovf:size="\d+"', b"", xml)
    for k, v in attrs.items():
        xml = xml.replace(b'ovf:id="file0"', f'ovf:id="file0" ovf:{k}="{v}"'.encode(), 1)
    return xml


def test_gzip_compressed_disk(build, tmp_path, os_path):
    pkg, raws = build(Appliance(name="gz", disks=[DiskSpec(3 * MIB, "vmdk")]), manifest=None)
    out_ova = str(tmp_path / "gz2.ova")

    def edit(name, data):
        if name.endswith(".ovf"):
            return [(name, _edit_descriptor(data, compression="gzip"))]
        if name.endswith(".vmdk"):
            return [(name, gzip.compress(data))]
        return [(name, data)]

    _rewrite_ova(pkg, out_ova, edit)
    res = import_package(out_ova, str(tmp_path / "o"), req(os_path))
    cp = ini(res.path)
    assert dump_bytes(res.path, cp, 0) == raws[0]
    assert sorted(os.listdir(res.path)) == ["config.ini", "disk0.raw"]  # no leftovers


@pytest.mark.parametrize("fmt", ["raw", "vmdk"])
def test_chunked_disk(build, tmp_path, os_path, fmt):
    pkg, raws = build(Appliance(name="ch", disks=[DiskSpec(3 * MIB + 512, fmt)]), manifest=None)
    out_ova = str(tmp_path / "ch2.ova")
    chunk = MIB

    def edit(name, data):
        if name.endswith(".ovf"):
            data = re.sub(rb'ovf:size="\d+"', b"", data)
            return [(name, _edit_descriptor(data, chunkSize=str(chunk)))]
        if name.endswith(f".{fmt}"):
            return [(f"{name}.{i:09d}", data[o:o + chunk])
                    for i, o in enumerate(range(0, len(data), chunk))]
        return [(name, data)]

    _rewrite_ova(pkg, out_ova, edit)
    res = import_package(out_ova, str(tmp_path / "o"), req(os_path))
    assert dump_bytes(res.path, ini(res.path), 0)[: len(raws[0])] == raws[0]


def test_gzip_bomb_is_bounded(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="bomb", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    out_ova = str(tmp_path / "bomb2.ova")

    def edit(name, data):
        if name.endswith(".ovf"):
            return [(name, _edit_descriptor(data, compression="gzip"))]
        if name.endswith(".raw"):
            return [(name, gzip.compress(bytes(200 * MIB)))]
        return [(name, data)]

    _rewrite_ova(pkg, out_ova, edit)
    with pytest.raises(PackageError, match="expands beyond"):
        import_package(out_ova, str(tmp_path / "o"), req(os_path))
    assert os.listdir(tmp_path / "o") == []


def test_backing_file_image_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="bk", disks=[DiskSpec(MIB, "qcow2")]), ova=False, manifest=None)
    img = Path(pkg).parent / "bk-disk1.qcow2"
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"S" * MIB)
    img.unlink()
    import subprocess
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", str(secret), "-F", "raw",
                    str(img)], check=True, capture_output=True)
    desc = Path(pkg)
    desc.write_bytes(re.sub(rb' ovf:size="\d+"', b"", desc.read_bytes()))
    with pytest.raises(DiskImageError, match="backing file"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


@pytest.mark.parametrize("href", ["../../etc/passwd", "/etc/passwd", "http://example.com/x.vmdk",
                                  "file:///etc/passwd"])
def test_unsafe_references_refused(build, tmp_path, os_path, href):
    pkg, _ = build(Appliance(name="e"), ova=False, manifest=None)
    p = Path(pkg)
    p.write_bytes(re.sub(rb'ovf:href="[^"]+"', f'ovf:href="{href}"'.encode(), p.read_bytes()))
    with pytest.raises(UnsafeMemberError):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


def test_symlinked_disk_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="l", disks=[DiskSpec(MIB, "raw")]), ova=False, manifest=None)
    img = Path(pkg).parent / "l-disk1.raw"
    img.unlink()
    img.symlink_to("/etc/passwd")
    with pytest.raises(UnsafeMemberError, match="symbolic link"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


@pytest.mark.parametrize("kind", ["symlink", "dotdot", "duplicate", "absolute"])
def test_unsafe_ova_members_refused(build, tmp_path, os_path, kind):
    pkg, _ = build(Appliance(name="m"), manifest=None)
    bad = str(tmp_path / f"{kind}.ova")
    with tarfile.open(pkg) as t, tarfile.open(bad, "w", format=tarfile.GNU_FORMAT) as out:
        for m in t.getmembers():
            out.addfile(m, t.extractfile(m))
        if kind == "symlink":
            ti = tarfile.TarInfo("evil.vmdk")
            ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/shadow"
            out.addfile(ti)
        elif kind == "duplicate":
            m = t.getmembers()[1]
            out.addfile(m, t.extractfile(m))
        else:
            ti = tarfile.TarInfo("../x" if kind == "dotdot" else "/tmp/x")
            ti.size = 1
            import io
            out.addfile(ti, io.BytesIO(b"x"))
    with pytest.raises(UnsafeMemberError):
        import_package(bad, str(tmp_path / "o"), req(os_path))


def test_ova_is_not_extracted(build, tmp_path, os_path, mocker):
    """Disks are converted straight out of the tar: no member is extracted."""
    pkg, raws = build(Appliance(name="n", disks=[DiskSpec(2 * MIB, "vmdk")]))
    spy = mocker.spy(tarfile.TarFile, "extractfile")
    ext = mocker.spy(tarfile.TarFile, "extractall")
    res = import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert spy.call_count == 0 and ext.call_count == 0
    assert dump_bytes(res.path, ini(res.path), 0) == raws[0]
    assert hashlib.sha256(raws[0]).hexdigest()  # sanity: content exists


def _self_signed(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "appliance vendor")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_signed_package_verified_and_shown(build, tmp_path, os_path):
    from ganeti_ovf import integrity, report

    pkg, raws = build(Appliance(name="signed", disks=[DiskSpec(MIB, "vmdk")]), ova=False)
    mf = Path(pkg).with_suffix(".mf")
    key_pem, cert_pem = _self_signed(tmp_path)
    cert = integrity.sign_manifest(mf.name, mf.read_bytes(), key_pem, cert_pem)
    Path(pkg).with_suffix(".cert").write_bytes(cert)
    info = report.package_info(pkg)
    assert info["certificate"]["subject"] == "CN=appliance vendor"
    assert info["certificate"]["self_signed"] is True
    res = import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert dump_bytes(res.path, ini(res.path), 0) == raws[0]
    # A manifest changed after signing (digest of a re-made disk updated too)
    # no longer matches the signature.
    mf.write_bytes(mf.read_bytes().replace(b"SHA256(signed.ovf)", b"SHA256(signed.ovf) "))
    with pytest.raises(IntegrityError, match=r"SHA256 signature of 'signed.mf' does not verify"):
        import_package(pkg, str(tmp_path / "o2"), req(os_path))
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("cap", [
    b'ovf:capacity="1" ovf:capacityAllocationUnits="byte * 2^60"',
    b'ovf:capacity="4611686018427387904"',
    b'ovf:capacity="65" ovf:capacityAllocationUnits="byte * 2^40"',
], ids=["1EiB-units", "2^62", "65TiB"])
def test_populated_capacity_over_64tib_refused(build, tmp_path, os_path, cap):
    """A disk with an image may not declare more than the 64 TiB bound images
    and blank disks have: shown as unusable by info, refused by import
    before anything is written, and the operator's --disk size is bounded
    the same way."""
    pkg, raws = build(Appliance(name="big", disks=[DiskSpec(2 * MIB, "raw")]), ova=False,
                      manifest=None)
    ovf = Path(pkg)
    ovf.write_bytes(re.sub(rb'ovf:capacity="\d+"', cap, ovf.read_bytes()))
    data = report.package_info(pkg)
    assert any("more than the 64 TiB a disk may have; import needs --disk N:size=SIZE" in w
               for w in data["warnings"]), data["warnings"]
    out = tmp_path / "export"
    with pytest.raises(DescriptorError, match=r"disk 'vmdisk0': capacity '\d+' .*is \d+ "
                                              r"bytes, more than the 64 TiB a disk may have; "
                                              r"give its size with --disk 0:size=SIZE$"):
        import_package(pkg, str(out), req(os_path))
    assert not out.exists() or os.listdir(out) == []
    with pytest.raises(DiskImageError, match=r"'--disk 0:size=' claims a virtual size of "
                                             r"71468255805440 bytes .*more than 64.0 TiB"):
        import_package(pkg, str(out), req(os_path, disk_sizes={0: 65 << 40}))
    assert not out.exists() or os.listdir(out) == []
    res = import_package(pkg, str(out), req(os_path, disk_sizes={0: 4 * MIB}))
    cp = ini(res.path)
    assert cp["instance"]["disk0_size"] == "4"
    assert dump_bytes(res.path, cp, 0)[: len(raws[0])] == raws[0]
