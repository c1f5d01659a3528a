"""Packages made to hurt: each test is one attack found in review, and what
stops it."""

from __future__ import annotations

import configparser
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
from make_fixtures import Appliance, DiskSpec

from ganeti_ovf import report
from ganeti_ovf.errors import ExportDirError, IntegrityError, PackageError, UnsafeMemberError
from ganeti_ovf.importer import ImportRequest, import_package
from ganeti_ovf.package import open_package

MIB = 1 << 20

GANETI_SECTION = b"""<gnt:GanetiSection xmlns:gnt="http://ganeti">
    <gnt:Version>0</gnt:Version>
    <gnt:OperatingSystem><gnt:Name>noop</gnt:Name>
      <gnt:Parameters><gnt:dangerous>yes</gnt:dangerous></gnt:Parameters>
    </gnt:OperatingSystem>
    <gnt:Hypervisor><gnt:Name>kvm</gnt:Name>
      <gnt:Parameters>
        <gnt:kvm_extra>-drive file=/dev/vda,format=raw,if=virtio</gnt:kvm_extra>
        <gnt:kernel_path>/boot/vmlinuz-host</gnt:kernel_path>
      </gnt:Parameters>
    </gnt:Hypervisor>
    <gnt:Backend><gnt:Parameters><gnt:maxmem>512</gnt:maxmem>
      <gnt:always_failover>True</gnt:always_failover></gnt:Parameters></gnt:Backend>
    <gnt:Network><gnt:Nic ovf:name="n0" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1">
      <gnt:Mode>bridged</gnt:Mode><gnt:Link>br-mgmt</gnt:Link>
      <gnt:MACAddress>aa:00:00:11:22:33</gnt:MACAddress></gnt:Nic></gnt:Network>
    <gnt:Disks><gnt:Disk><gnt:Name>DISKNAME</gnt:Name></gnt:Disk></gnt:Disks>
  </gnt:GanetiSection>
</Envelope>"""


def req(os_path, **kw) -> ImportRequest:
    kw.setdefault("os_name", "noop")
    return ImportRequest(os_search_path=os_path, use_cluster=False, **kw)


def ini(path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser()
    cp.read(os.path.join(path, "config.ini"))
    return cp


def with_ganeti_section(build, disk_name: str = "root") -> str:
    pkg, _ = build(Appliance(name="evil", disks=[DiskSpec(MIB, "raw")], nics=[("N", None)]),
                   ova=False, manifest=None)
    p = Path(pkg)
    p.write_bytes(p.read_bytes().replace(
        b"</Envelope>", GANETI_SECTION.replace(b"DISKNAME", disk_name.encode())))
    return pkg


def test_stranger_cannot_set_hypervisor_os_params_or_bridges(build, tmp_path, os_path):
    pkg = with_ganeti_section(build)
    res = import_package(pkg, str(tmp_path / "o"), req(os_path))
    cp = ini(res.path)
    assert dict(cp["hypervisor"]) == {} and dict(cp["os"]) == {}
    assert "hypervisor" not in cp["instance"]  # chroot/lxc/kvm: the operator's choice
    assert cp["instance"]["nic0_link"] == "None" and cp["instance"]["nic0_mode"] == "None"
    # harmless settings still apply
    assert cp["instance"]["nic0_mac"] == "aa:00:00:11:22:33"
    assert cp["instance"]["maxmem"] == "512" and cp["backend"]["always_failover"] == "True"
    assert cp["instance"]["disk0_name"] == "root"
    w = next(w for w in res.warnings if "Ganeti section" in w)
    assert "OS parameters dangerous" in w and "hypervisor kvm" in w
    assert "hypervisor parameters kernel_path, kvm_extra" in w
    assert "mode/link/network/IP of NIC 0" in w and "--trust-ganeti-section" in w
    # info shows all of it, so the operator can decide
    text = report.info_text(report.package_info(pkg))
    assert "hypervisor parameter kvm_extra = '-drive file=/dev/vda" in text
    assert "NIC 0: mode bridged, link br-mgmt" in text


def test_trusted_section_applies_and_dash_h_replaces(build, tmp_path, os_path):
    pkg = with_ganeti_section(build)
    res = import_package(pkg, str(tmp_path / "o"), req(os_path, trust_ganeti_section=True))
    cp = ini(res.path)
    assert cp["instance"]["hypervisor"] == "kvm"
    assert cp["hypervisor"]["kernel_path"] == "/boot/vmlinuz-host"
    assert cp["os"]["dangerous"] == "yes" and cp["instance"]["nic0_link"] == "br-mgmt"
    res = import_package(pkg, str(tmp_path / "o2"),
                         req(os_path, trust_ganeti_section=True, hypervisor="kvm",
                             hv_params={"acpi": "True"}))
    assert dict(ini(res.path)["hypervisor"]) == {"acpi": "True"}


def test_carriage_return_cannot_inject_config_keys(build, tmp_path, os_path):
    pkg = with_ganeti_section(build, "data&#13;nic0_link = br-mgmt")
    with pytest.raises(ExportDirError, match=r"disk0_name: value 'data\\rnic0_link = br-mgmt' "
                                             "holds a control character"):
        import_package(pkg, str(tmp_path / "o"), req(os_path, no_nics=True))
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_file_swapped_for_a_link_after_opening_is_not_followed(build, tmp_path):
    """What was checked is what is read: members are held open."""
    pkg, raws = build(Appliance(name="swap", disks=[DiskSpec(MIB, "raw")]), ova=False,
                      manifest=None)
    disk = Path(pkg).parent / "swap-disk1.raw"
    secret = tmp_path / "secret"
    secret.write_bytes(b"S" * MIB)
    with open_package(pkg) as p:
        m = p.get("swap-disk1.raw")
        disk.unlink()
        disk.symlink_to(secret)
        assert m.byte_range().read(0, 16) == raws[0][:16]
    with pytest.raises(UnsafeMemberError, match="symbolic link"):
        with open_package(pkg) as p:
            p.get("swap-disk1.raw")


def test_sparse_tar_member_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="sp", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    bad = tmp_path / "sparse.ova"
    with tarfile.open(pkg) as t, tarfile.open(bad, "w", format=tarfile.GNU_FORMAT) as out:
        for m in t.getmembers():
            data = t.extractfile(m).read()
            if m.name.endswith(".raw"):
                m.type = tarfile.GNUTYPE_SPARSE
            out.addfile(m, io.BytesIO(data))
    with pytest.raises(UnsafeMemberError, match=r"member 'sp-disk1.raw' is a sparse tar "
                                                r"member; an OVA holds plain members only"):
        import_package(str(bad), str(tmp_path / "o"), req(os_path))


def test_manifest_must_cover_every_referenced_file(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="cov", disks=[DiskSpec(MIB, "raw")]), ova=False)
    mf = Path(pkg).with_suffix(".mf")
    mf.write_text("".join(ln + "\n" for ln in mf.read_text().splitlines()
                          if "cov.ovf" in ln))
    with pytest.raises(IntegrityError, match=r"manifest does not list 'cov-disk1.raw': its "
                                             "content is not protected"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    problems, _ = report.verify_package(pkg)
    assert any("does not list 'cov-disk1.raw'" in p for p in problems)


def test_certificate_without_manifest_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="nc", disks=[DiskSpec(MIB, "raw")]), ova=False, manifest=None)
    Path(pkg).with_suffix(".cert").write_text("garbage\n")
    with pytest.raises(IntegrityError, match=r"certificate 'nc.cert' but no manifest 'nc.mf'"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


def test_huge_manifest_refused_without_reading_it(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="big", disks=[DiskSpec(MIB, "raw")]), ova=False)
    mf = Path(pkg).with_suffix(".mf")
    with open(mf, "r+b") as f:
        f.truncate(1 << 30)  # sparse: costs nothing on disk, 1 GiB to read
    with pytest.raises(IntegrityError, match=r"manifest 'big.mf' is 1073741824 bytes; refusing"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


def test_chunk_gap_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="gap", disks=[DiskSpec(3 * MIB, "raw")]), manifest=None)
    out = tmp_path / "gap2.ova"
    with tarfile.open(pkg) as t, tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as o:
        for m in t.getmembers():
            data = t.extractfile(m).read()
            if m.name.endswith(".ovf"):
                data = re.sub(rb' ovf:size="\d+"', b"", data).replace(
                    b'ovf:id="file0"', f'ovf:id="file0" ovf:chunkSize="{MIB}"'.encode())
                parts = [(m.name, data)]
            elif m.name.endswith(".raw"):
                parts = [(f"{m.name}.{i:09d}", data[i * MIB:(i + 1) * MIB]) for i in (0, 2)]
            else:
                parts = [(m.name, data)]
            for name, d in parts:
                ti = tarfile.TarInfo(name)
                ti.size = len(d)
                o.addfile(ti, io.BytesIO(d))
    with pytest.raises(PackageError, match=r"lacks chunk gap-disk1.raw.000000001 but has "
                                           r"'gap-disk1.raw.000000002'"):
        import_package(str(out), str(tmp_path / "o"), req(os_path))


def test_lower_maxmem_pulls_minmem_down(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="mem", memory_mib=1024, disks=[DiskSpec(MIB, "raw")]))
    res = import_package(pkg, str(tmp_path / "o"), req(os_path, backend={"maxmem": "512"}))
    inst = ini(res.path)["instance"]
    assert (inst["maxmem"], inst["minmem"]) == ("512", "512")


def test_free_space_checked_before_writing(build, tmp_path, os_path, mocker):
    pkg, _ = build(Appliance(name="fs", disks=[DiskSpec(4 * MIB, "qcow2")]))
    real = os.statvfs

    def tiny(path):
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 1, 1, st.f_files,
                                  st.f_ffree, st.f_favail, st.f_flag, st.f_namemax))

    mocker.patch("os.statvfs", side_effect=tiny)
    with pytest.raises(ExportDirError, match=r"not enough free space: the import needs up to "
                                             r"[\d.]+ MiB, [\d.]+ KiB available"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert not (tmp_path / "o").exists()


def test_declared_raw_that_begins_like_qcow2_is_refused(build, tmp_path, os_path):
    """A raw disk whose guest data starts with a qcow2 header: guessing
    either way gives somebody a different disk, so the import refuses."""
    pkg, _ = build(Appliance(name="amb", disks=[DiskSpec(MIB, "raw")]), ova=False,
                   manifest=None)
    disk = Path(pkg).parent / "amb-disk1.raw"
    import subprocess
    inner = tmp_path / "inner.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(inner), "512K"], check=True)
    data = bytearray(disk.read_bytes())
    data[: inner.stat().st_size] = inner.read_bytes()
    disk.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"is declared raw \(http://www.ganeti.org/raw\) but "
                                        r"begins like a qcow2 image; refusing to guess"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


def test_device_node_in_a_directory_package_is_never_opened(build, tmp_path, os_path):
    import stat as st
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    pkg, _ = build(Appliance(name="dev", disks=[DiskSpec(MIB, "raw")]), ova=False,
                   manifest=None)
    disk = Path(pkg).parent / "dev-disk1.raw"
    disk.unlink()
    os.mknod(disk, st.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
    with pytest.raises(UnsafeMemberError, match=r"file 'dev-disk1.raw' is not a regular file"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


def test_sparse_raw_counts_only_its_data(tmp_path):
    from ganeti_ovf import disks
    from ganeti_ovf.model import ByteRange
    f = tmp_path / "s.raw"
    with open(f, "wb") as h:
        h.truncate(80 << 30)
        h.seek(MIB)
        h.write(b"x" * 4096)
    assert disks.data_bytes(ByteRange(str(f), 0, 80 << 30), "raw", name="s") <= 64 * 1024
    assert disks.data_bytes(ByteRange(str(f), 2 * MIB, 10 * MIB), "raw", name="s") == 0


# -- tar index: every header read, to the end of the archive ---------------------------------


def _tar_member(name: str, body: bytes, typ: bytes = b"0", size: int | None = None) -> bytes:
    """One ustar member; ``size`` (may be negative) is written in GNU base-256."""
    ti = tarfile.TarInfo(name)
    ti.size = len(body)
    hdr = bytearray(ti.tobuf(tarfile.USTAR_FORMAT))
    hdr[156:157] = typ
    if size is not None:
        hdr[124:136] = (b"\xff" if size < 0 else b"\x80") + (size % 256**11).to_bytes(11, "big")
    hdr[148:156] = b" " * 8
    hdr[148:156] = b"%06o\0 " % sum(hdr)
    return bytes(hdr) + body + bytes(-len(body) % 512)


def _members(pkg: str) -> list[tuple[str, bytes]]:
    with tarfile.open(pkg) as t:
        return [(m.name, t.extractfile(m).read()) for m in t]


def test_member_hidden_behind_a_corrupt_header_refused(build, tmp_path, os_path):
    """Python's tarfile stops at the 0xff block and sees the first disk; GNU tar
    extracts the second.  We read to the end marker or refuse, naming the offset."""
    pkg, _ = build(Appliance(name="hid", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    mems = _members(pkg)
    head = b"".join(_tar_member(n, b) for n, b in mems)
    bad = tmp_path / "hidden.ova"
    bad.write_bytes(head + b"\xff" * 512 + _tar_member("hid-disk1.raw", b"X" * MIB)
                    + bytes(1024))
    with pytest.raises(PackageError, match=rf"hidden.ova: not a valid OVA \(tar\) archive: "
                                           rf"unreadable tar header .* at offset {len(head)}$"):
        import_package(str(bad), str(tmp_path / "o"), req(os_path))
    assert not (tmp_path / "o").exists()


def test_lone_zero_block_before_more_members_refused(build, tmp_path):
    pkg, _ = build(Appliance(name="lz", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    mems = _members(pkg)
    head = b"".join(_tar_member(n, b) for n, b in mems)
    bad = tmp_path / "lone.ova"
    bad.write_bytes(head + bytes(512) + _tar_member("lz-disk1.raw", b"X" * 512) + bytes(1024))
    with pytest.raises(PackageError, match=rf"a lone zero block .* at offset {len(head)}$"):
        open_package(str(bad))
    # The end marker, then anything: the archive ends at the marker, as for every tool.
    bad.write_bytes(head + bytes(1024) + b"\xff" * 512)
    with open_package(str(bad)) as p:
        assert p.names() == tuple(n for n, _ in mems)


@pytest.mark.parametrize("typ", [b"0", b"5", b"L", b"K", b"x", b"g"])
def test_negative_tar_size_is_one_line(build, tmp_path, typ):
    """tarfile raised ValueError for these (a negative read length)."""
    pkg, _ = build(Appliance(name="neg", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    mems = _members(pkg)
    bad = tmp_path / "neg.ova"
    first = _tar_member(*mems[0])
    bad.write_bytes(first + _tar_member("n", b"", typ, size=-5 * 512)
                    + b"".join(_tar_member(n, b) for n, b in mems[1:]) + bytes(1024))
    with pytest.raises(PackageError, match=rf"tar header with a negative size \(-2560\) at "
                                           rf"offset {len(first)}$"):
        open_package(str(bad))


@pytest.mark.parametrize("typ", [b"x", b"L"])
def test_huge_metadata_header_refused_without_reading_it(build, tmp_path, typ):
    """tarfile reads a pax/long-name header's data whole: 1 GiB here."""
    pkg, _ = build(Appliance(name="px", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    mems = _members(pkg)
    bad = tmp_path / "pax.ova"
    with open(bad, "wb") as f:
        f.write(_tar_member(*mems[0]) + _tar_member("p", b"", typ, size=1 << 30))
        f.truncate(f.tell() + (1 << 30) + 1024)  # sparse
    with pytest.raises(PackageError, match=r"tar metadata header .* of 1073741824 bytes"):
        open_package(str(bad))


def test_ova_with_two_descriptors_refused(build, tmp_path, os_path):
    """Which one a tool reads differs (first, last, the OVA's name): refuse both."""
    pkg, _ = build(Appliance(name="two", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    mems = _members(pkg)
    other = mems[0][1].replace(b"<ovf:Info>", b"<ovf:Info>other ")
    bad = tmp_path / "two.ova"
    bad.write_bytes(b"".join(_tar_member(n, b) for n, b in mems)
                    + _tar_member("evil.ovf", other) + bytes(1024))
    with pytest.raises(UnsafeMemberError, match=r"two.ova: holds two descriptors, 'two.ovf' "
                                                r"and 'evil.ovf'; an OVA has exactly one$"):
        import_package(str(bad), str(tmp_path / "o"), req(os_path))


def _chunked_dir_package(build, name: str) -> tuple[str, Path]:
    """A directory package whose one disk is stored in two chunks."""
    pkg, _ = build(Appliance(name=name, disks=[DiskSpec(MIB, "raw")]), ova=False,
                   manifest=None)
    root = Path(pkg).parent
    disk = root / f"{name}-disk1.raw"
    raw = disk.read_bytes()
    disk.unlink()
    ovf = Path(pkg)
    ovf.write_bytes(re.sub(rb' ovf:size="\d+"', b"", ovf.read_bytes()).replace(
        b'ovf:id="file0"', f'ovf:id="file0" ovf:chunkSize="{MIB // 2}"'.encode()))
    for i in range(2):
        (root / f"{disk.name}.{i:09d}").write_bytes(raw[i * MIB // 2:(i + 1) * MIB // 2])
    return pkg, root


def test_deep_tree_beside_a_chunked_disk_is_never_walked(build, tmp_path, os_path):
    """Looking for chunks walked the whole tree: RecursionError at 1100 levels."""
    pkg, root = _chunked_dir_package(build, "deep")
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(1100):
            os.mkdir("d", dir_fd=fd)
            fd, old = os.open("d", os.O_RDONLY, dir_fd=fd), fd
            os.close(old)
    finally:
        os.close(fd)
    try:
        problems, _ = report.verify_package(pkg)
        assert problems == []
        res = import_package(pkg, str(tmp_path / "o"), req(os_path))
        assert os.path.getsize(os.path.join(res.path, res.config.disks[0].dump)) == MIB
        (root / "deep-disk1.raw.000000003").write_bytes(b"x")  # a gap is still found
        with pytest.raises(PackageError, match=r"lacks chunk deep-disk1.raw.000000002 but "
                                               r"has 'deep-disk1.raw.000000003'"):
            import_package(pkg, str(tmp_path / "o2"), req(os_path))
    finally:  # pytest's own clean-up recurses (Python 3.11): GNU rm does not
        subprocess.run(["rm", "-rf", "--", str(root / "d")], check=True)


@pytest.mark.parametrize("which", ["disk", "chunk", "descriptor"])
def test_hard_link_in_a_directory_package_refused(build, tmp_path, os_path, which):
    """A hard link (to a root-only file, say) is another name for a file outside."""
    secret = tmp_path / "secret"
    if which == "chunk":
        pkg, root = _chunked_dir_package(build, "hl")
        victim = root / "hl-disk1.raw.000000001"
    else:
        pkg, _ = build(Appliance(name="hl", disks=[DiskSpec(MIB, "raw")]), ova=False,
                       manifest=None)
        victim = Path(pkg) if which == "descriptor" else Path(pkg).parent / "hl-disk1.raw"
    secret.write_bytes(victim.read_bytes())
    victim.unlink()
    os.link(secret, victim)
    with pytest.raises(UnsafeMemberError, match=rf"file '{victim.name}' has 2 hard links; a "
                                                "package file must have only its own name"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert not (tmp_path / "o").exists()


def _pax_member(records: dict[str, str]) -> bytes:
    """A pax extended header ('x') carrying ``records``."""
    data = b""
    for key, value in records.items():
        rec = f" {key}={value}\n".encode()
        n = len(rec) + len(str(len(rec)))
        n += len(str(n)) != len(str(len(rec)))
        data += str(n).encode() + rec
    return _tar_member("PaxHeader", data, b"x")


def _long_member(name: str, typ: bytes = b"L") -> bytes:
    return _tar_member("././@LongLink", name.encode() + b"\0", typ)


@pytest.mark.parametrize("stack, what", [
    ("L_then_x", r"both a pax path and a GNU long-name \('L'\) header"),
    ("x_then_L", r"both a pax path and a GNU long-name \('L'\) header"),
    ("x_then_x", r"a second tar metadata header \('x'\)"),
    ("L_then_L", r"a second tar metadata header \('L'\)"),
    ("K_then_K", r"a second tar metadata header \('K'\)"),
    ("K_and_linkpath", r"both a pax linkpath and a GNU long-name \('K'\) header"),
])
def test_stacked_tar_name_headers_refused(build, tmp_path, os_path, stack, what):
    """GNU 'L' naming evil.ovf, then pax path=pad.bin: tarfile sees a second
    descriptor, GNU tar (and a naive reader) pad.bin.  Tools disagree on which
    of two stacked headers names a member, so the archive is refused, naming
    the offset of the first metadata header."""
    pkg, _ = build(Appliance(name="stk", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    mems = _members(pkg)
    head = b"".join(_tar_member(n, b) for n, b in mems)
    first, second = stack.split("_")[0], stack.split("_")[-1]
    make = {"L": lambda n: _long_member(n), "K": lambda n: _long_member(n, b"K"),
            "x": lambda n: _pax_member({"path": n}),
            "linkpath": lambda n: _pax_member({"linkpath": n})}
    evil = mems[0][1].replace(b"<ovf:Info>", b"<ovf:Info>evil ")
    bad = tmp_path / "stack.ova"
    bad.write_bytes(head + make[first]("evil.ovf") + make[second]("pad.bin")
                    + _tar_member("pad.bin", evil) + bytes(1024))
    # Both kinds: the first metadata header; two of a kind: the second one.
    at = len(head) if first != second else len(head) + len(make[first]("evil.ovf"))
    pat = rf"stack.ova: not a valid OVA \(tar\) archive: {what} .* at offset {at}$"
    with pytest.raises(PackageError, match=pat):
        import_package(str(bad), str(tmp_path / "o"), req(os_path))
    assert not (tmp_path / "o").exists()


def test_pax_global_header_cannot_name_members(build, tmp_path):
    """A pax global header ('g') applies to every later member in pax-aware tools
    and to none in others: one carrying path or size is refused."""
    pkg, _ = build(Appliance(name="glb", disks=[DiskSpec(MIB, "raw")]), manifest=None)
    mems = _members(pkg)
    for key in ("path", "size"):
        glob = _pax_member({key: "evil.ovf" if key == "path" else "0"})
        glob = glob[:156] + b"g" + glob[157:]
        hdr = bytearray(glob[:512])
        hdr[148:156] = b" " * 8
        hdr[148:156] = b"%06o\0 " % sum(hdr)
        bad = tmp_path / "glob.ova"
        bad.write_bytes(bytes(hdr) + glob[512:] + b"".join(_tar_member(n, b) for n, b in mems)
                        + bytes(1024))
        with pytest.raises(PackageError, match=rf"pax global header setting {key} at offset 0$"):
            open_package(str(bad))
