"""Export of real Ganeti export directories to OVF/OVA, with real qemu-img.

The config.ini files are the ones gnt-backup wrote on a Ganeti 3.0 cluster
(tests/data/ganeti-export/, copied from shared/ganeti/sample-export/); the
dumps are made here: pattern bytes of exactly disk<N>_size MiB, as the noop
OS's export script (dd) writes them.
"""

from __future__ import annotations

import configparser
import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import types
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from ganeti_ovf import cli, report, sparse, vmdkwriter
from ganeti_ovf import disks as diskmod
from ganeti_ovf.errors import DiskImageError, ExportDirError, PackageError, UsageError
from ganeti_ovf.exportdir import read_config
from ganeti_ovf.exporter import ExportRequest, export_package, is_dump8_stream
from ganeti_ovf.importer import ImportRequest, import_package
from ganeti_ovf.model import ByteRange

MIB = 1 << 20
DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = DATA / "ganeti-export"
SCHEMAS = DATA / "schemas"
SHARED_SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "ganeti" / \
    "sample-export"
SCHEMA_SETS = {"1.0": ["ganeti/ganeti-ovf-1.x.xsd", "ganeti/ganeti-ovf-1.0.xsd"],
               "2.0": ["ganeti/ganeti-ovf-2.x.xsd"]}
DMTF_SETS = {"1.0": ["ovf-1.x/dsp8023_1.1.1.xsd", "ovf-1.0/ovf-envelope.xsd"],
             "2.0": ["ovf-2.x/dsp8023_2.0.1.xsd"]}
QEMU_FMT = {"vmdk": "vmdk", "qcow2": "qcow2", "raw": "raw"}


# ------------------------------------------------------------ helpers

def pattern(size: int, seed: int) -> bytes:
    """Incompressible blocks with every fourth 64 KiB block zero (a hole)."""
    out = bytearray(size)
    for k, off in enumerate(range(0, size, 65536)):
        if k % 4 != 3:
            n = min(65536, size - off)
            out[off:off + n] = hashlib.shake_256(f"{seed}:{k}".encode()).digest(n)
    return bytes(out)


def make_export(tmp_path: Path, config: Path, *, name: str = "src", sparse: bool = True) -> Path:
    """An export directory: the sample's config.ini plus its dumps."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(config, d / "config.ini")
    cfg = read_config(str(d / "config.ini"))
    for i, disk in enumerate(cfg.disks):
        if disk.dump is None:
            continue
        data = pattern(disk.size, seed=i + 1)
        with open(d / disk.dump, "wb") as f:
            for off in range(0, len(data), 65536):
                block = data[off:off + 65536]
                if sparse and block.count(0) == len(block):
                    f.seek(len(block), os.SEEK_CUR)
                else:
                    f.write(block)
            f.truncate(len(data))
    return d


def dumps(export: Path) -> list[bytes]:
    cfg = read_config(str(export / "config.ini"))
    return [(export / d.dump).read_bytes() for d in cfg.disks]


class _LocalOnly(etree.Resolver):
    def resolve(self, url, pubid, context):
        if url and url.split(":", 1)[0].lower() in ("http", "https", "ftp"):
            raise OSError(f"schema import needs the network: {url}")
        return None


_schemas: dict[str, etree.XMLSchema] = {}


def schema_errors(rel: str, data: bytes) -> list[str]:
    if rel not in _schemas:
        parser = etree.XMLParser(no_network=True, resolve_entities=False)
        parser.resolvers.add(_LocalOnly())
        _schemas[rel] = etree.XMLSchema(etree.parse(str(SCHEMAS / rel), parser))
    s = _schemas[rel]
    s.validate(etree.fromstring(data))
    return [f"line {e.line}: {e.message}" for e in s.error_log]


def descriptor_bytes(result) -> bytes:
    if result.path.endswith(".ova"):
        with tarfile.open(result.path) as t:
            return t.extractfile(result.descriptor).read()
    return Path(result.descriptor).read_bytes()


def package_file(result, name: str, tmp_path: Path) -> Path:
    """A file of the package as a real file (OVA members are extracted)."""
    if not result.path.endswith(".ova"):
        return Path(result.path) / name
    out = tmp_path / "members" / name
    out.parent.mkdir(exist_ok=True)
    with tarfile.open(result.path) as t:
        out.write_bytes(t.extractfile(name).read())
    return out


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False)


def ini(path: str | Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read(os.path.join(path, "config.ini"))
    return cp


def import_back(pkg: str, tmp_path: Path, os_path: list[str], *, trust: bool = True):
    """Import our own export back; trusted, as an operator does with packages
    they made (the untrusted default is tested in test_untrusted_round_trip)."""
    return import_package(pkg, str(tmp_path / "imported"),
                          ImportRequest(os_search_path=os_path, use_cluster=False,
                                        trust_ganeti_section=trust))


def make_signer(tmp_path: Path, kind: str = "rsa") -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa" \
        else ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ganeti-ovf test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    k, c = tmp_path / f"{kind}.key", tmp_path / f"{kind}.crt"
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(k), str(c)


def leftovers(out: Path) -> list[str]:
    return sorted(os.listdir(out)) if out.exists() else []


# ------------------------------------------------------------ the real samples

@pytest.mark.parametrize("sample", ["plain", "multi", "kvm"])
def test_real_samples_export_and_validate(tmp_path, sample):
    """The config.ini files gnt-backup wrote, each to a valid OVA."""
    export = make_export(tmp_path, SAMPLES / sample / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(ova=True))
    cfg = read_config(str(export / "config.ini"))
    assert res.path == str(tmp_path / "out" / f"{cfg.name}.ova")
    for rel in SCHEMA_SETS["1.0"]:
        assert schema_errors(rel, descriptor_bytes(res)) == []
    problems, _ = report.verify_package(res.path)
    assert problems == []


@pytest.mark.parametrize("config", [
    pytest.param(p, id=str(p.parent.relative_to(SHARED_SAMPLES)))
    for p in sorted(SHARED_SAMPLES.glob("**/config.ini"))
] if SHARED_SAMPLES.is_dir() else [
    pytest.param(None, marks=pytest.mark.skip(reason="shared/ganeti/sample-export is absent"))])
def test_shared_samples_export(tmp_path, config):
    """The same, straight from shared/ganeti/sample-export (when present)."""
    export = make_export(tmp_path, config)
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest())
    assert report.verify_package(res.descriptor)[0] == []


# ------------------------------------------------------------ formats and validity

@pytest.mark.parametrize("ova", [False, True], ids=["dir", "ova"])
@pytest.mark.parametrize("fmt", ["vmdk", "qcow2", "raw"])
def test_each_format_qemu_img_check_and_compare(tmp_path, fmt, ova):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"),
                         ExportRequest(disk_format=fmt, ova=ova))
    cfg = read_config(str(export / "config.ini"))
    names = [f"qa-multi-disk{i}.{fmt}" for i in range(2)]
    assert list(res.files) == ["qa-multi.ovf", "qa-multi.mf", *names]
    for i, name in enumerate(names):
        f = package_file(res, name, tmp_path)
        assert diskmod.detect_format(ByteRange(str(f), 0, f.stat().st_size)) == fmt
        if fmt != "raw":
            r = qemu_img("check", "-f", QEMU_FMT[fmt], str(f))
            assert r.returncode == 0, r.stdout + r.stderr
        r = qemu_img("compare", "-f", QEMU_FMT[fmt], "-F", "raw", str(f),
                     str(export / cfg.disks[i].dump))
        assert r.returncode == 0, r.stdout + r.stderr
        if fmt == "vmdk":
            info = qemu_img("info", "--output=json", "-f", "vmdk", str(f)).stdout
            assert '"create-type": "streamOptimized"' in info
    assert report.verify_package(res.path if ova else res.descriptor)[0] == []


@pytest.mark.parametrize("version", ["1.0", "2.0"])
@pytest.mark.parametrize("external", [False, True], ids=["ganeti", "external"])
def test_descriptor_validates_against_its_schema(tmp_path, version, external):
    export = make_export(tmp_path, SAMPLES / "kvm" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"),
                         ExportRequest(ovf_version=version, external=external))
    data = descriptor_bytes(res)
    sets = DMTF_SETS[version] if external else SCHEMA_SETS[version]
    for rel in sets:
        assert schema_errors(rel, data) == [], rel
    assert (b"GanetiSection" in data) is not external
    root = etree.fromstring(data)
    want = "http://schemas.dmtf.org/ovf/envelope/" + version[0]
    assert etree.QName(root).namespace == want


def test_external_package_imports_with_an_os(tmp_path, os_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(external=True))
    imp = import_package(res.descriptor, str(tmp_path / "imp"),
                         ImportRequest(os_name="noop", os_search_path=os_path,
                                       use_cluster=False))
    cp = ini(imp.path)
    assert cp["instance"]["maxmem"] == "128" and cp["instance"]["vcpus"] == "1"
    assert cp["instance"]["nic0_mac"] == "aa:00:00:f4:09:50"


# ------------------------------------------------------------ OVA layout

def test_ova_layout_ustar_order_and_signature(tmp_path, os_path):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    key, cert = make_signer(tmp_path)
    res = export_package(str(export), str(tmp_path / "out"),
                         ExportRequest(ova=True, sign_key=key, sign_cert=cert,
                                       manifest="sha512"))
    raw = Path(res.path).read_bytes()
    with tarfile.open(res.path) as t:
        members = t.getmembers()
    names = [m.name for m in members]
    assert names == ["qa-multi.ovf", "qa-multi.mf", "qa-multi.cert",
                     "qa-multi-disk0.vmdk", "qa-multi-disk1.vmdk"]
    assert len(set(names)) == len(names)
    for m in members:
        assert raw[m.offset + 257:m.offset + 265] == b"ustar\x0000", m.name  # POSIX, not GNU
        assert m.isreg() and m.pax_headers == {}
    # Files in References order.
    root = etree.fromstring(descriptor_bytes(res))
    hrefs = [f.get("{http://schemas.dmtf.org/ovf/envelope/1}href")
             for f in root.iter("{http://schemas.dmtf.org/ovf/envelope/1}File")]
    assert names[3:] == hrefs
    # Manifest: every other member, SHA512, descriptor first.
    with tarfile.open(res.path) as t:
        mf = t.extractfile("qa-multi.mf").read().decode()
        for m in members:
            if m.name.endswith((".mf", ".cert")):
                continue
            digest = hashlib.sha512(t.extractfile(m).read()).hexdigest()
            assert f"SHA512({m.name})= {digest}\n" in mf
    assert mf.startswith("SHA512(qa-multi.ovf)= ")
    problems, checked = report.verify_package(res.path)
    assert problems == [] and any("signature over the manifest holds" in c for c in checked)
    imported = import_back(res.path, tmp_path, os_path)
    assert (Path(imported.path) / "config.ini").exists()


def test_ova_of_raw_is_sparse_and_streams_without_temporary_files(tmp_path, mocker):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    dump = next(p for p in export.iterdir() if p.name != "config.ini")
    convert = mocker.spy(diskmod, "convert_from_raw")
    res = export_package(str(export), str(tmp_path / "out"),
                         ExportRequest(ova=True, disk_format="raw"))
    assert convert.call_count == 0  # raw is streamed from the dump itself
    st = os.stat(res.path)
    if dump.stat().st_blocks * 512 < dump.stat().st_size:  # the file system keeps holes
        assert st.st_blocks * 512 < st.st_size
    with tarfile.open(res.path) as t:
        assert t.extractfile("qa-src-disk0.raw").read() == dump.read_bytes()
    assert leftovers(tmp_path / "out") == ["qa-src.ova"]


# ------------------------------------------------------------ read back by our importer

@pytest.mark.parametrize("ova", [False, True], ids=["dir", "ova"])
@pytest.mark.parametrize("variant", ["chunked", "compressed", "chunked+compressed", "signed-ec",
                                     "qcow2+compressed"])
def test_packages_read_back_by_importer(tmp_path, os_path, variant, ova):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    kw: dict = {"ova": ova}
    if "chunked" in variant:
        kw["chunk_size"] = MIB
    if "compressed" in variant:
        kw["compress"] = True
    if "qcow2" in variant:
        kw["disk_format"] = "qcow2"
    if "signed" in variant:
        kw["sign_key"], kw["sign_cert"] = make_signer(tmp_path, "ec")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(**kw))
    if "chunked" in variant:
        assert "qa-multi-disk0.vmdk" + (".gz" if "compressed" in variant else "") + \
            ".000000001" in res.files
    problems, checked = report.verify_package(res.path if ova else res.descriptor)
    assert problems == [], problems
    imp = import_back(res.path if ova else res.descriptor, tmp_path, os_path)
    cp = ini(imp.path)
    for i, want in enumerate(dumps(export)):
        got = (Path(imp.path) / cp["instance"][f"disk{i}_dump"]).read_bytes()
        assert got == want
    if "compressed" in variant:
        root = etree.fromstring(descriptor_bytes(res))
        files = list(root.iter("{http://schemas.dmtf.org/ovf/envelope/1}File"))
        assert all(f.get("{http://schemas.dmtf.org/ovf/envelope/1}compression") == "gzip"
                   for f in files)


def test_chunk_sizes_are_declared_and_exact(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"),
                         ExportRequest(disk_format="raw", chunk_size=5 * MIB))
    pkg = Path(res.path)
    chunks = sorted(p for p in pkg.iterdir() if ".raw." in p.name)
    assert [p.name[-9:] for p in chunks] == [f"{i:09d}" for i in range(13)]
    assert {p.stat().st_size for p in chunks[:-1]} == {5 * MIB}
    assert chunks[-1].stat().st_size == 64 * MIB - 12 * 5 * MIB
    root = etree.fromstring(descriptor_bytes(res))
    f = next(root.iter("{http://schemas.dmtf.org/ovf/envelope/1}File"))
    ns = "{http://schemas.dmtf.org/ovf/envelope/1}"
    assert (f.get(ns + "chunkSize"), f.get(ns + "size")) == (str(5 * MIB), str(64 * MIB))


def test_compressed_file_is_plain_gzip(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"),
                         ExportRequest(disk_format="raw", compress=True))
    gz = Path(res.path) / "qa-src-disk0.raw.gz"
    assert gzip.decompress(gz.read_bytes()) == dumps(export)[0]


# ------------------------------------------------------------ round trip

def test_round_trip_keeps_config_and_bytes(tmp_path, os_path):
    """Ganeti export -> OVF -> import: the same config.ini values and disks."""
    src = (SAMPLES / "multi" / "config.ini").read_text()
    kvm = configparser.ConfigParser(interpolation=None)
    kvm.read(SAMPLES / "kvm" / "config.ini")
    hv = "".join(f"{k} = {v}\n" for k, v in kvm["hypervisor"].items())
    src = src.replace("hypervisor = fake", "hypervisor = kvm")
    src = src.replace("[hypervisor]\n", "[hypervisor]\n" + hv)
    src = src.replace("[os]\n", "[os]\nfilesystem = ext4\nvariant = 50%%\n")
    src = src.replace("[os_private]\n", "[os_private]\nroot_password = s3cret-Value\n")
    cfgfile = tmp_path / "config.ini"
    cfgfile.write_text(src)
    export = make_export(tmp_path, cfgfile)
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(ova=True))
    assert any("root_password" in w for w in res.warnings)
    with open(res.path, "rb") as f:
        assert b"s3cret-Value" not in f.read()  # [os_private] never leaves the node
    imp = import_back(res.path, tmp_path, os_path)
    a, b = ini(export), ini(imp.path)
    for key in ("name", "maxmem", "minmem", "vcpus", "tags", "disk_template", "hypervisor",
                "nic_count", "disk_count"):
        assert b["instance"][key] == a["instance"][key], key
    for i in range(2):
        for key in ("mac", "mode", "link", "ip", "name", "network"):
            assert b["instance"][f"nic{i}_{key}"] == a["instance"][f"nic{i}_{key}"]
        for key in ("size", "name"):
            assert b["instance"][f"disk{i}_{key}"] == a["instance"][f"disk{i}_{key}"]
    assert b["export"]["os"] == a["export"]["os"]
    assert dict(b["hypervisor"]) == dict(a["hypervisor"]) and len(b["hypervisor"]) > 50
    assert dict(b["os"]) == dict(a["os"]) == {"filesystem": "ext4", "variant": "50%"}
    assert dict(b["os_private"]) == {}
    for key in ("always_failover", "auto_balance", "maxmem", "minmem", "spindle_use", "vcpus"):
        assert b["backend"][key] == a["backend"][key], key
    for i, want in enumerate(dumps(export)):
        assert (Path(imp.path) / b["instance"][f"disk{i}_dump"]).read_bytes() == want


def test_old_export_with_memory(tmp_path, os_path):
    """A Ganeti 2.x-era config.ini: `memory`, [backend] with memory."""
    (tmp_path / "old.ini").write_text(
        "[export]\nversion = 0\ntimestamp = 1300000000\nsource = node1\nos = noop\n"
        "compression = none\n\n[instance]\nname = old1\nmemory = 512\nvcpus = 2\n"
        "disk_template = plain\nhypervisor = xen-pvm\ntags = a b\n"
        "nic0_mac = aa:00:00:11:22:33\nnic0_ip = None\nnic0_mode = bridged\n"
        "nic0_link = xen-br0\nnic_count = 1\ndisk0_ivname = disk/0\n"
        "disk0_dump = 5f3c.disk0_data.snap\ndisk0_size = 8\ndisk_count = 1\n\n"
        "[hypervisor]\nkernel_path = /boot/vmlinuz-2.6-xenU\nroot_path = None\n\n"
        "[backend]\nmemory = 512\nvcpus = 2\nauto_balance = True\n\n[os]\n")
    export = make_export(tmp_path, tmp_path / "old.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest())
    imp = import_back(res.descriptor, tmp_path, os_path)
    cp = ini(imp.path)
    assert (cp["instance"]["maxmem"], cp["instance"]["minmem"]) == ("512", "512")
    assert cp["hypervisor"]["root_path"] == "None"  # a value Ganeti wrote, kept verbatim
    assert cp["instance"]["nic0_link"] == "xen-br0"


def test_disk_without_dump_is_a_blank_disk(tmp_path, os_path):
    src = (SAMPLES / "multi" / "config.ini").read_text()
    src = src.replace("disk1_dump = 978dce39-a364-40eb-9c9a-2eeabf4f4505\n", "")
    (tmp_path / "c.ini").write_text(src)
    export = make_export(tmp_path, tmp_path / "c.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(ova=True))
    assert res.files[-1] == "qa-multi-disk0.vmdk"
    assert any("disk 1 has no dump; exported as a blank disk of 8 MiB" in w
               for w in res.warnings)
    imp = import_back(res.path, tmp_path, os_path)
    cp = ini(imp.path)
    assert cp["instance"]["disk1_size"] == "8"
    # Blank again on the way in: no dump, Ganeti creates the disk empty.
    assert "disk1_dump" not in cp["instance"]
    assert sorted(os.listdir(imp.path)) == ["config.ini", "disk0.raw"]


# ------------------------------------------------------------ refused dumps

def test_dump8_stream_is_refused_naming_the_os(tmp_path):
    src = (SAMPLES / "plain" / "config.ini").read_text().replace("os = noop",
                                                                 "os = debootstrap+default")
    (tmp_path / "c.ini").write_text(src)
    export = make_export(tmp_path, tmp_path / "c.ini")
    dump = export / read_config(str(export / "config.ini")).disks[0].dump
    header = bytearray(1024)
    header[0:4] = (1).to_bytes(4, "little")  # c_type TS_TAPE
    header[24:28] = (60012).to_bytes(4, "little")  # c_magic NFS_MAGIC
    dump.write_bytes(bytes(header) + b"\x01" * (5 * MIB))
    assert is_dump8_stream(bytes(header))
    with pytest.raises(ExportDirError, match=re.escape(
            f"{export / 'config.ini'}: disk0_dump {dump.name!r} is a dump(8) file-system "
            "stream, not a raw disk image: the export script of OS 'debootstrap+default' "
            "writes dump(8) (as debootstrap's does)")):
        export_package(str(export), str(tmp_path / "out"), ExportRequest())
    assert leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("magic", [60011, 60012, 19540119])
def test_dump8_header_recognised(order, magic):
    head = struct.pack(order + "6i", 1, 0, 0, 1, 0, 2) + struct.pack(order + "i", magic)
    assert is_dump8_stream(head + bytes(1000))
    assert not is_dump8_stream(struct.pack(order + "6i", 2, 0, 0, 1, 0, 2) +
                               struct.pack(order + "i", magic))  # not a TS_TAPE record
    assert not is_dump8_stream(bytes(1024)) and not is_dump8_stream(head[:20])


def test_wrong_size_dump_is_refused(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    dump = export / read_config(str(export / "config.ini")).disks[0].dump
    with open(dump, "r+b") as f:
        f.truncate(64 * MIB - 4096)
    with pytest.raises(ExportDirError, match=re.escape(
            f"disk0_dump {dump.name!r} is {64 * MIB - 4096} bytes, not disk0_size 64 MiB "
            f"({64 * MIB} bytes), so it is not a raw disk image: the export script of OS "
            "'noop' wrote something else")):
        export_package(str(export / "config.ini"), str(tmp_path / "out"), ExportRequest())


def test_dump_of_exact_size_that_looks_like_an_image_is_raw(tmp_path, caplog, monkeypatch):
    """A guest's disk may begin with gzip or qcow2 magic: at exactly the
    disk's size the dump is the raw disk; it is exported as such, with a
    warning, and never probed."""
    import logging
    # cli.main (run in-process by other tests) stops propagation to the root
    monkeypatch.setattr(logging.getLogger("ganeti_ovf"), "propagate", True)
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    dump = export / read_config(str(export / "config.ini")).disks[0].dump
    with open(dump, "r+b") as f:
        f.write(b"QFI\xfb\x00\x00\x00\x03")  # a qcow2 header inside the guest's disk
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(disk_format="qcow2"))
    assert any("begins like a qcow2 image; exported as the raw disk it is" in r.getMessage()
               for r in caplog.records)
    out = Path(res.path) / res.files[-1]
    back = tmp_path / "back.raw"
    diskmod.convert_to_raw(ByteRange(str(out), 0, out.stat().st_size), "qcow2", str(back),
                           name="back")
    assert back.read_bytes() == dump.read_bytes()
    # As a raw file it would be read back as the inner qcow2: refused.
    with pytest.raises(UsageError, match=r"disk 0 begins like a qcow2 image; as a raw file it "
                                         r"would be misread: use --format vmdk or qcow2"):
        export_package(str(export), str(tmp_path / "out2"), ExportRequest(disk_format="raw"))


@pytest.mark.parametrize("dump", ["../escape", "sub/dir", "..", "link"])
def test_dump_outside_the_export_directory_is_refused(tmp_path, dump):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    cfg = export / "config.ini"
    old = read_config(str(cfg)).disks[0].dump
    if dump == "link":
        (export / "link").symlink_to(export / old)
    cfg.write_text(cfg.read_text().replace(old, dump))
    what = "is a symbolic link" if dump == "link" else "is not a file name inside"
    with pytest.raises(ExportDirError, match=re.escape(f"disk0_dump {dump!r} {what}")):
        export_package(str(export), str(tmp_path / "out"), ExportRequest())


# ------------------------------------------------------------ atomicity and space

@pytest.mark.parametrize("ova", [False, True], ids=["dir", "ova"])
def test_ctrl_c_during_second_conversion_leaves_nothing(tmp_path, mocker, ova):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    real = vmdkwriter.write_stream_optimized
    calls = []

    def encode(fd, size, write, **kw):
        calls.append(size)
        if len(calls) == 2:  # half way through the second disk's bytes
            write(b"x" * 4096)
            raise KeyboardInterrupt
        return real(fd, size, write, **kw)

    mocker.patch.object(vmdkwriter, "write_stream_optimized", side_effect=encode)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_package(str(export), str(out), ExportRequest(ova=ova))
    assert len(calls) == 2
    assert leftovers(out) == []


@pytest.mark.parametrize("fmt", ["vmdk", "qcow2", "raw"])
def test_read_failure_leaves_nothing_and_no_qemu_img_runs(tmp_path, monkeypatch, mocker, fmt):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    monkeypatch.setattr(diskmod, "QEMU_IMG", "/bin/false")  # export never needs it
    ok = export_package(str(export), str(tmp_path / "ok"),
                        ExportRequest(ova=True, compress=True, disk_format=fmt))
    assert os.path.getsize(ok.path) > 0
    real = sparse.read_exact
    reads = []

    def read(*a, **kw):
        reads.append(a)
        if len(reads) == 2:
            raise DiskImageError("ended at 1048576 bytes while being read", "disk1")
        return real(*a, **kw)

    mocker.patch.object(sparse, "read_exact", side_effect=read)
    out = tmp_path / "out"
    with pytest.raises(DiskImageError, match="while being read"):
        export_package(str(export), str(out), ExportRequest(ova=True, compress=True,
                                                            disk_format=fmt))
    assert leftovers(out) == []


def test_not_enough_space_is_a_clear_error(tmp_path, mocker):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    out = tmp_path / "out"
    out.mkdir()
    mocker.patch("os.statvfs", return_value=types.SimpleNamespace(f_bavail=256, f_frsize=4096))
    with pytest.raises(PackageError, match=re.escape(
            f"{out}: not enough free space: the package needs up to ")) as e:
        export_package(str(export), str(out), ExportRequest(ova=True))
    assert str(e.value).endswith(", 1.0 MiB available")
    assert leftovers(out) == []


def test_existing_package_is_not_replaced(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    out = tmp_path / "out"
    out.mkdir()
    (out / "qa-src.ova").write_text("keep me")
    with pytest.raises(PackageError, match="already exists"):
        export_package(str(export), str(out), ExportRequest(ova=True))
    assert (out / "qa-src.ova").read_text() == "keep me"


# ------------------------------------------------------------ requests and the CLI

def test_name_option_and_usage_errors(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(name="web-1"))
    assert sorted(os.listdir(res.path)) == ["web-1-disk0.vmdk", "web-1.mf", "web-1.ovf"]
    with pytest.raises(UsageError, match="--name: instance name 'a/b' is not a valid"):
        export_package(str(export), str(tmp_path / "o2"), ExportRequest(name="a/b"))
    with pytest.raises(UsageError, match="--sign KEY and --cert CERT go together"):
        export_package(str(export), str(tmp_path / "o2"), ExportRequest(sign_key="k"))
    with pytest.raises(UsageError, match="chunk size 4096 is below the minimum"):
        export_package(str(export), str(tmp_path / "o2"), ExportRequest(chunk_size=4096))
    with pytest.raises(UsageError, match="longer than the 100 bytes an OVA"):
        export_package(str(export), str(tmp_path / "o2"),
                       ExportRequest(ova=True, name="n" * 90))
    assert leftovers(tmp_path / "o2") == []


def test_cli_export(tmp_path, capsys):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    out = tmp_path / "out"
    rc = cli.main(["export", str(export), "-f", "cow", "--ova", "--output-dir", str(out),
                   "--manifest", "sha1", "--ovf-version", "2.0"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert cap.out.strip() == str(out / "qa-src.ova")
    assert "--format cow: qemu-img no longer writes cow images; writing qcow2" in cap.err
    with tarfile.open(out / "qa-src.ova") as t:
        assert t.getnames() == ["qa-src.ovf", "qa-src.mf", "qa-src-disk0.qcow2"]
        assert t.extractfile("qa-src.mf").read().startswith(b"SHA1(qa-src.ovf)= ")
    rc = cli.main(["export", str(export), "--sign", "key.pem", "--output-dir", str(out)])
    assert rc == 2
    assert capsys.readouterr().err.strip() == \
        "ovfconverter: error: --sign KEY and --cert CERT go together " \
        "(see 'ovfconverter export --help')"


def test_default_output_dir_is_the_current_directory(tmp_path, monkeypatch, capsys):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.main(["export", str(export / "config.ini"), "--external"]) == 0
    assert sorted(os.listdir(work / "qa-src")) == ["qa-src-disk0.vmdk", "qa-src.mf",
                                                  "qa-src.ovf"]


# ------------------------------------------------------------ upstream Ganeti's reader

UPSTREAM = Path("/usr/share/ganeti/default/ganeti/ovf.py")


@pytest.mark.skipif(not UPSTREAM.exists() or not Path("/usr/bin/python3").exists(),
                    reason="Ganeti (upstream ovf.py) is not installed")
def test_upstream_ganeti_reader_finds_our_section(tmp_path):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest())
    code = ("import sys, json\nfrom ganeti import ovf\n"
            "r = ovf.OVFReader(sys.argv[1])\n"
            "print(json.dumps([r.GetOSData(), r.GetHypervisorData(), r.GetNetworkData(),"
            " r.GetBackendData(), r.GetTagsData(), r.GetDiskTemplate(),"
            " r.GetInstanceName(), r.GetDisksNames(), r.GetVersionData()]))\n")
    env = {"PYTHONPATH": "/usr/share/ganeti/default", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(["/usr/bin/python3", "-c", code, os.path.abspath(res.descriptor)],
                         capture_output=True, text=True, env=env, check=False)
    if run.returncode != 0 and "No module named" in run.stderr:
        pytest.skip(f"upstream ovf.py does not import here: {run.stderr.splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    osd, hv, net, be, tags, tmpl, name, disks, version = json.loads(run.stdout)
    assert osd == {"os_name": "noop"} and hv == {"hypervisor_name": "fake"}
    assert (net["nic_count"], net["nic0_mode"], net["nic0_link"], net["nic0_mac"]) == \
        ("2", "bridged", "gnt0", "aa:00:00:52:5e:3b")
    assert net["nic1_ip"] == "10.77.0.50"
    assert be == {"vcpus": "2", "memory": "256", "auto_balance": "True"}
    assert (tags, tmpl, name, version) == ("env:test web", "file", "qa-multi", "0")
    assert disks == [["qa-multi-disk0.vmdk", None], ["qa-multi-disk1.vmdk", None]]


def test_runs_on_debian_python(tmp_path):
    """The code also runs on the node's own /usr/bin/python3 (Debian 12)."""
    if not Path("/usr/bin/python3").exists() or sys.executable == "/usr/bin/python3":
        pytest.skip("no separate /usr/bin/python3")
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    lib = tmp_path / "pylib"
    lib.mkdir()
    (lib / "ganeti_ovf").symlink_to(Path(__file__).resolve().parents[2] / "lib")
    run = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; from ganeti_ovf.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "export", str(export), "--ova", "--compress",
         "--chunk-size", "16M", "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={"PYTHONPATH": str(lib), "PATH": "/usr/bin:/bin"},
        check=False)
    if run.returncode != 0 and "No module named" in run.stderr:
        pytest.skip(f"Debian's python3 lacks a dependency: {run.stderr.splitlines()[-1]}")
    assert run.returncode == 0, run.stderr
    assert report.verify_package(str(tmp_path / "out" / "qa-src.ova"))[0] == []


def test_untrusted_round_trip_drops_host_reaching_settings(tmp_path, os_path):
    """Without --trust-ganeti-section a package cannot set hypervisor or OS
    parameters or pick bridges; sizes, MACs, tags and names still apply."""
    export = make_export(tmp_path, SAMPLES / "kvm" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(ova=True))
    imp = import_back(res.path, tmp_path, os_path, trust=False)
    cp = ini(imp.path)
    src = read_config(str(export / "config.ini"))
    assert dict(cp["hypervisor"]) == {} and dict(cp["os"]) == {}
    assert "hypervisor" not in cp["instance"]  # the cluster's default, not the package's
    assert cp["instance"]["nic0_mac"] == src.nics[0].mac
    assert cp["instance"]["nic0_link"] == "None" and cp["instance"]["nic0_mode"] == "None"
    assert cp["instance"]["maxmem"] == src.backend["maxmem"]
    assert any("hypervisor parameters" in w and "--trust-ganeti-section" in w
               for w in imp.warnings)
