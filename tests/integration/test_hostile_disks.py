"""Hostile disk images: sizes that lie, formats that lie, qemu-img that must
stay bounded and die with us.  Real qemu-img and real crafted images; the
bounds are measured on the child processes."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from make_fixtures import Appliance, DiskSpec

from ganeti_ovf import disks as diskmod
from ganeti_ovf import report
from ganeti_ovf.errors import DescriptorError, DiskImageError, IntegrityError
from ganeti_ovf.importer import ImportRequest, import_package
from ganeti_ovf.model import ByteRange

MIB = 1 << 20
GIB = 1 << 30
PB = 1 << 50
OVFCONVERTER = str(Path(__file__).resolve().parents[2] / "scripts" / "ovfconverter")
VMDK_SO = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def req(os_path, **kw) -> ImportRequest:
    kw.setdefault("os_name", "noop")
    return ImportRequest(os_search_path=os_path, use_cluster=False, **kw)


def package(build, name: str, fmt: str = "raw", size: int = MIB) -> tuple[Path, Path]:
    """A directory package without manifest: (descriptor, its disk file)."""
    pkg, _ = build(Appliance(name=name, disks=[DiskSpec(size, fmt)]), ova=False, manifest=None)
    ovf = Path(pkg)
    disk = next(p for p in ovf.parent.iterdir() if p.suffix != ".ovf")
    return ovf, disk


def replace_disk(ovf: Path, disk: Path, content: Path | bytes, *, capacity: int | None = None,
                 fmt_uri: str | None = None, drop_format: bool = False) -> None:
    """Put ``content`` in place of the disk and fix the descriptor's size
    (and optionally its capacity and ovf:format)."""
    data = content if isinstance(content, bytes) else content.read_bytes()
    old = disk.stat().st_size
    disk.write_bytes(data)
    text = ovf.read_text()
    text = text.replace(f'ovf:size="{old}"', f'ovf:size="{len(data)}"')
    if capacity is not None:
        start = text.index('ovf:capacity="') + len('ovf:capacity="')
        text = text[:start] + str(capacity) + text[text.index('"', start):]
    start = text.index('ovf:format="')
    end = text.index('"', start + len('ovf:format="')) + 1
    if drop_format:
        text = text[:start] + text[end:]
    elif fmt_uri is not None:
        text = text[:start] + f'ovf:format="{fmt_uri}"' + text[end:]
    ovf.write_text(text)


def cli_env(os_path: list[str], top: Path) -> dict[str, str]:
    """The environment of an ovfconverter child: a Ganeti dir whose OS
    search path is the test's (no cluster), as tests/cli does."""
    g = top / "ganeti"
    (g / "ganeti").mkdir(parents=True, exist_ok=True)
    (g / "ganeti" / "__init__.py").write_text("")
    (g / "ganeti" / "_constants.py").write_text(
        f"OS_SEARCH_PATH = {os_path!r}\nEXPORT_DIR = {str(top / 'exports')!r}\n"
        "OS_API_VERSIONS = frozenset([10, 15, 20])\nRELEASE_VERSION = '3.0.2'\n")
    (g / "ganeti" / "constants.py").write_text("from ganeti._constants import *\n")
    return dict(os.environ, GANETI_OVF_GANETI_DIR=str(g))


def run_import(ovf: Path, out: Path, os_path: list[str], timeout: float = 10) -> tuple[
        subprocess.CompletedProcess[str], float, int]:
    """ovfconverter import in a child process of its own (so that
    RUSAGE_CHILDREN measures it and its qemu-img runs alone): (result,
    seconds, peak RSS in KiB of the largest descendant)."""
    out.mkdir(exist_ok=True)
    code = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code, sys.executable, OVFCONVERTER, "import",
                          str(ovf), "-o", "noop", "--output-dir", str(out)],
                         capture_output=True, text=True, timeout=timeout,
                         env=cli_env(os_path, out.parent), check=False)
    took = time.monotonic() - start
    return res, took, int(res.stdout.split()[-1])


def vmdk_header(path: Path, capacity: int, grain: int, gd_offset: int, total: int) -> Path:
    """A qemu-made monolithicSparse VMDK, its header patched: capacity and
    grain size (sectors), grain directory offset, file length."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o",
                    "subformat=monolithicSparse", str(path), "1M"], check=True)
    with open(path, "r+b") as f:
        head = bytearray(f.read(512 * 21))
        struct.pack_into("<QQ", head, 12, capacity, grain)
        struct.pack_into("<QQ", head, 48, 0, gd_offset)  # no redundant directory
        head = head.replace(b"RW 2048 SPARSE", b"RW %d SPARSE" % capacity)
        f.seek(0)
        f.write(head)
        f.truncate(total)
    return path


# --- sizes that lie ------------------------------------------------------


def test_blank_petabyte_disk_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="blank", disks=[DiskSpec(PB, blank=True)]), ova=False,
                   manifest=None)
    with pytest.raises(DescriptorError, match=r"disk 'vmdisk0': capacity '1125899906842624' "
                       r"\(byte\) is 1125899906842624 bytes, more than the 64 TiB a disk may "
                       r"have; give its size with --disk 0:size=SIZE"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert not any((tmp_path / "o").iterdir()) if (tmp_path / "o").exists() else True


def test_header_petabyte_descriptor_16mib_refused_before_check(build, tmp_path, os_path,
                                                                mocker):
    """The virtual size is held against the declared capacity right after
    ``info``: no ``check`` or ``map`` walks a petabyte of metadata."""
    ovf, disk = package(build, "peta", "qcow2", 16 * MIB)
    img = tmp_path / "peta.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), str(PB)], check=True)
    replace_disk(ovf, disk, img)
    check = mocker.spy(diskmod, "check_image")
    mapped = mocker.spy(diskmod, "data_bytes")
    with pytest.raises(DiskImageError, match=r"image 'peta-disk1.qcow2' holds "
                       r"1125899906842624 bytes, more than the disk size 16777216"):
        import_package(str(ovf), str(tmp_path / "o"), req(os_path))
    assert check.call_count == 0 and mapped.call_count == 0
    problems, _ = report.verify_package(str(ovf))
    assert any("more than the disk size 16777216" in p for p in problems)


def test_header_beyond_any_hypervisor_refused_even_if_declared(build, tmp_path, os_path,
                                                                mocker):
    ovf, disk = package(build, "peta2", "qcow2", 16 * MIB)
    img = tmp_path / "peta.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), str(PB)], check=True)
    replace_disk(ovf, disk, img, capacity=PB)
    check = mocker.spy(diskmod, "check_image")
    # Declared: refused from the descriptor (over the same 64 TiB bound).
    with pytest.raises(DescriptorError, match=r"capacity '1125899906842624' \(byte\) is "
                       r"1125899906842624 bytes, more than the 64 TiB a disk may have"):
        import_package(str(ovf), str(tmp_path / "o"), req(os_path))
    # Not declared (size from the image): refused from the header.
    text = ovf.read_text()
    ovf.write_text(text.replace(f'ovf:capacity="{PB}"', ""))
    with pytest.raises(DiskImageError, match=r"image 'peta2-disk1.qcow2' claims a virtual "
                       r"size of 1125899906842624 bytes .*more than 64.0 TiB"):
        import_package(str(ovf), str(tmp_path / "o"), req(os_path))
    assert check.call_count == 0


def test_vmdk_one_sector_grains_fail_fast(build, tmp_path, os_path):
    """Finding 4: 1-sector grains make qemu-img convert work per sector
    (minutes of CPU for a 32 GiB claim in a 0.5 MiB file)."""
    ovf, disk = package(build, "grain", "vmdk-sparse", MIB)
    cap = 1 << 26  # sectors: 32 GiB
    img = vmdk_header(tmp_path / "g.vmdk", cap, 1, 21, 21 * 512 + cap // 512 * 4)
    replace_disk(ovf, disk, img, capacity=cap * 512)
    res, took, peak = run_import(ovf, tmp_path / "o", os_path)
    assert res.returncode != 0 and took < 10, (res.stderr, took)
    assert "VMDK grain size of 1 sectors is not a power of 2 of at least 8" in res.stderr
    assert peak < 200 * 1024, peak
    assert not list((tmp_path / "o").iterdir())


def test_vmdk_grain_directory_beyond_end_refused(tmp_path):
    cap = 1 << 29  # sectors: 256 GiB; its directory needs 32 KiB
    img = vmdk_header(tmp_path / "gd.vmdk", cap, 128, 21, 22 * 512)
    with pytest.raises(DiskImageError, match=r"VMDK grain directory for 536870912 sectors ends "
                       r"at byte 43520, beyond the end of the image \(11264 bytes\)"):
        diskmod.inspect(ByteRange(str(img), 0, img.stat().st_size), name="gd.vmdk")


def test_vmdk_without_room_for_its_grain_tables_fails_fast(tmp_path):
    """64 TiB of honest 64 KiB grains in an 8 MiB file: the directory fits,
    the 4 GiB of grain tables a hosted sparse extent holds do not; refused
    from the header before qemu-img walks 2^30 grains (minutes)."""
    cap = 1 << 37  # sectors: 64 TiB
    img = vmdk_header(tmp_path / "gt.vmdk", cap, 128, 21, 21 * 512 + (8 << 20) + 512)
    t0 = time.monotonic()
    with pytest.raises(DiskImageError, match=r"VMDK header claims 137438953472 sectors, whose "
                       r"grain tables alone take 4294967296 bytes, more than the image holds "
                       r"\(8399872 bytes\)"):
        diskmod.inspect(ByteRange(str(img), 0, img.stat().st_size), name="gt.vmdk")
    assert time.monotonic() - t0 < 5


# --- formats that lie ----------------------------------------------------


def test_random_bytes_declared_stream_optimized_refused(build, tmp_path, os_path):
    ovf, disk = package(build, "conf", "vmdk", MIB)
    replace_disk(ovf, disk, os.urandom(MIB))
    with pytest.raises(DiskImageError, match=r"image 'conf-disk1.vmdk' is declared vmdk "
                       r"\(http://www.vmware.com/interfaces/specifications/vmdk.html"
                       r"#streamOptimized\) but its content is no image header \(raw bytes\)"):
        import_package(str(ovf), str(tmp_path / "o"), req(os_path))
    problems, _ = report.verify_package(str(ovf))
    assert any("is declared vmdk" in p for p in problems)


def test_qcow2_declared_vmdk_refused(build, tmp_path, os_path):
    ovf, disk = package(build, "conf2", "qcow2", MIB)
    replace_disk(ovf, disk, disk.read_bytes(), fmt_uri=VMDK_SO)
    with pytest.raises(DiskImageError, match=r"is declared vmdk .* but its content is a qcow2 "
                       r"image"):
        import_package(str(ovf), str(tmp_path / "o"), req(os_path))


def test_tolerated_near_misses_import(build, tmp_path, os_path):
    """Another VMDK subformat than declared, or no ovf:format: content decides."""
    ovf, disk = package(build, "near", "vmdk-sparse", MIB)
    replace_disk(ovf, disk, disk.read_bytes(), fmt_uri=VMDK_SO)
    import_package(str(ovf), str(tmp_path / "o1"), req(os_path))
    ovf2, disk2 = package(build, "nofmt", "qcow2", MIB)
    replace_disk(ovf2, disk2, disk2.read_bytes(), drop_format=True)
    import_package(str(ovf2), str(tmp_path / "o2"), req(os_path))


# --- qemu-img bounded and tied to us -------------------------------------


def alternating_qcow2(path: Path, virtual: int) -> Path:
    """Finding 3: a qcow2 of 512-byte clusters whose L2 entries alternate
    zero / data (all data entries share one host cluster): a few MiB that
    make ``qemu-img map`` print one JSON extent per cluster."""
    cs, per_l2 = 512, 64
    nl2 = virtual // cs // per_l2
    l1_clusters = -(-nl2 * 8 // cs)
    l1, data = 3, 3 + l1_clusters
    head = bytearray(cs)
    struct.pack_into(">4sIQIIQIIQQIIQQQQII", head, 0, b"QFI\xfb", 3, 0, 0, 9, virtual, 0,
                     nl2, l1 * cs, cs, 1, 0, 0, 0, 0, 0, 4, 104)
    refcounts = bytearray(cs)
    struct.pack_into(">Q", refcounts, 0, 2 * cs)
    l1_table = bytearray(l1_clusters * cs)
    for i in range(nl2):
        struct.pack_into(">Q", l1_table, i * 8, (data + 1 + i) * cs)
    l2 = (struct.pack(">Q", data * cs) + struct.pack(">Q", 1)) * (per_l2 // 2)
    with open(path, "wb") as f:
        f.write(head + refcounts + bytes(cs) + l1_table + b"\x55" * cs)
        f.write(l2 * nl2)
    return path


def test_map_output_is_streamed(tmp_path):
    """A million extents: our own peak RSS stays far below what holding
    qemu-img map's 100 MB answer took."""
    img = alternating_qcow2(tmp_path / "alt.qcow2", 512 * MIB)
    code = (
        "import sys\n"
        "from ganeti_ovf import disks\n"
        "from ganeti_ovf.model import ByteRange\n"
        "p = sys.argv[1]\n"
        "import os\n"
        "n = disks.data_bytes(ByteRange(p, 0, os.path.getsize(p)), 'qcow2', name='alt')\n"
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM:')][0]\n"
        "print(n, hwm.split()[1])\n"
    )
    # VmHWM, not RUSAGE_SELF: Linux carries the parent's peak into an
    # exec'd child's ru_maxrss, and pytest itself may be large.
    res = subprocess.run([sys.executable, "-c", code, str(img)], capture_output=True,
                         text=True, timeout=60, check=True)
    total, rss_kib = map(int, res.stdout.split())
    assert total == 256 * MIB
    assert rss_kib < 200 * 1024, rss_kib


def _qemu_children(*markers: str) -> list[int]:
    """Pids of running qemu-img processes whose arguments hold every marker."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-img") and all(
                any(m.encode() in a for a in argv) for m in markers):
            pids.append(int(pid))
    return pids


def test_sigkill_takes_qemu_img_convert_with_it(build, tmp_path, os_path):
    """Finding 10: qemu-img convert must not outlive a SIGKILLed import."""
    ovf, disk = package(build, "slowkill", "raw", MIB)
    with open(disk, "r+b") as f:  # data, no holes: a copy of a second or so
        for _ in range(512):
            f.write(b"\x01" * MIB)
    text = ovf.read_text()
    ovf.write_text(text.replace(f'ovf:size="{MIB}"', f'ovf:size="{512 * MIB}"')
                   .replace(f'ovf:capacity="{MIB}"', f'ovf:capacity="{512 * MIB}"'))
    out = tmp_path / "o"
    out.mkdir()
    env = cli_env(os_path, tmp_path)
    proc = subprocess.Popen([sys.executable, OVFCONVERTER, "import", str(ovf), "-o", "noop",
                             "--output-dir", str(out), "-q"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = str(out)
    try:
        deadline = time.monotonic() + 30
        while not _qemu_children(marker, "convert"):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "qemu-img convert never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        time.sleep(0.2)  # the kernel kills it as we exit; a zombie has no cmdline
        assert _qemu_children(marker) == []
    finally:
        for pid in _qemu_children(marker):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_check_of_small_cluster_qcow2_is_reliable(tmp_path):
    """Under the address-space limit, qemu-img's I/O threads must not each
    reserve a malloc arena: without MALLOC_ARENA_MAX this honest image's
    check aborted in about half the runs."""
    raw = tmp_path / "r.raw"
    raw.write_bytes(os.urandom(48 * MIB))
    img = tmp_path / "c512.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "-o",
                    "cluster_size=512", str(raw), str(img)], check=True)
    src = ByteRange(str(img), 0, img.stat().st_size)
    for _ in range(12):
        diskmod.check_image(src, "qcow2", name="c512.qcow2")


# --- one inspection, shared ----------------------------------------------


def test_conversion_takes_the_inspection(build, tmp_path, os_path, mocker):
    """import inspects each image once; the conversion does not re-run
    qemu-img info or check on it."""
    ovf, _ = package(build, "once", "qcow2", MIB)
    info = mocker.spy(diskmod, "image_info")
    check = mocker.spy(diskmod, "check_image")
    import_package(str(ovf), str(tmp_path / "o"), req(os_path))
    assert info.call_count == 1 and check.call_count == 1


def test_verify_uses_the_same_inspection(build, tmp_path):
    """verify reports what import refuses, from the same checks: here a
    blank disk beyond the size bound and a format that lies."""
    pkg, _ = build(Appliance(name="vb", disks=[DiskSpec(PB, blank=True)]), ova=False,
                   manifest=None)
    problems, _ = report.verify_package(pkg)
    assert any("disk 'vmdisk0': capacity '1125899906842624' (byte) is 1125899906842624 "
               "bytes, more than the 64 TiB a disk may have" in p for p in problems)


@pytest.mark.parametrize("uri, fmt", [
    (VMDK_SO, "vmdk"),
    ("http://www.vmware.com/specifications/vmdk.html#sparse", "vmdk"),
    ("http://www.vmware.com/interfaces/specifications/vmdk.html#monolithicSparse", "vmdk"),
    ("http://www.gnome.org/~markmc/qcow-image-format.html", "qcow2"),
    ("http://www.ganeti.org/raw", "raw"),
    ("http://example.com/whatever#raw", "raw"),
    ("http://www.microsoft.com/technet/virtualserver/downloads/vhdspec.mspx", "vpc"),
    ("http://example.com/unknown", None),
    ("", None),
])
def test_declared_format_spellings(uri, fmt):
    from ganeti_ovf import diskformats
    assert diskformats.declared_format(uri) == fmt


@pytest.mark.parametrize("case", ["blank", "header"])
def test_petabyte_claims_fail_fast_and_small(build, tmp_path, os_path, case):
    """The issue's two resource cases through the real command: each fails
    in well under 10 s, with every process of it under 200 MiB."""
    if case == "blank":
        pkg, _ = build(Appliance(name="pb", disks=[DiskSpec(PB, blank=True)]), ova=False,
                       manifest=None)
        ovf = Path(pkg)
    else:
        ovf, disk = package(build, "pb", "qcow2", 16 * MIB)
        img = tmp_path / "peta.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(img), str(PB)],
                       check=True)
        replace_disk(ovf, disk, img)
    res, took, peak = run_import(ovf, tmp_path / "o", os_path)
    assert res.returncode != 0 and took < 10, (res.stderr, took)
    assert "1125899906842624" in res.stderr and "Traceback" not in res.stderr
    assert peak < 200 * 1024, peak
    assert not list((tmp_path / "o").iterdir())


def test_info_shows_a_format_that_lies(build):
    pkg, _ = build(Appliance(name="infol", disks=[DiskSpec(MIB, "vmdk")]), ova=False,
                   manifest=None)
    ovf = Path(pkg)
    disk = ovf.parent / "infol-disk1.vmdk"
    replace_disk(ovf, disk, os.urandom(MIB))
    text = report.info_text(report.package_info(str(ovf)))
    assert "PROBLEM: image 'infol-disk1.vmdk' is declared vmdk" in text


def test_finding4_vmdk_in_a_small_ova_fails_fast(build, tmp_path, os_path):
    """The review's case as it came: a 1 KiB-header monolithicSparse VMDK
    (2^29 sectors, 1-sector grains, grain directory beyond the end) in an
    OVA of a few KiB."""
    import io
    import tarfile
    pkg, _ = build(Appliance(name="f4", disks=[DiskSpec(MIB, "vmdk-sparse")]), manifest=None)
    cap = 1 << 29
    img = vmdk_header(tmp_path / "f4.vmdk", cap, 1, 21, 22 * 512).read_bytes()
    members = {}
    with tarfile.open(pkg) as tar:
        for m in tar.getmembers():
            members[m.name] = tar.extractfile(m).read()
    disk_name = next(n for n in members if n.endswith(".vmdk"))
    ovf_name = next(n for n in members if n.endswith(".ovf"))
    text = members[ovf_name].decode()
    start = text.index('ovf:size="') + len('ovf:size="')
    text = text[:start] + str(len(img)) + text[text.index('"', start):]
    start = text.index('ovf:capacity="') + len('ovf:capacity="')
    text = text[:start] + str(cap * 512) + text[text.index('"', start):]
    members[ovf_name], members[disk_name] = text.encode(), img
    ova = tmp_path / "f4.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in (ovf_name, disk_name):
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    assert ova.stat().st_size < 32 * 1024
    res, took, peak = run_import(ova, tmp_path / "o", os_path)
    assert res.returncode != 0 and took < 10, (res.stderr, took)
    assert "VMDK grain size of 1 sectors" in res.stderr, res.stderr
    assert peak < 200 * 1024, peak


def test_verify_and_import_share_one_package_inspection(build, tmp_path, os_path, mocker):
    """Both commands establish what they know through inspect_package, and
    import converts from its result."""
    from ganeti_ovf import importer, inspection
    assert report.inspect_package is importer.inspect_package is inspection.inspect_package
    ovf, _ = build(Appliance(name="one", disks=[DiskSpec(MIB, "qcow2")]), ova=False)
    seen = mocker.spy(report, "inspect_package")
    problems, _ = report.verify_package(str(ovf))
    assert problems == [] and seen.call_count == 1
    spy = mocker.spy(importer, "inspect_package")
    res = import_package(str(ovf), str(tmp_path / "o"), req(os_path))
    assert spy.call_count == 1
    found = spy.spy_return
    assert found.check is not None and found.check.deferred  # digests taken while converting
    assert [d.fmt for d in found.disks] == ["qcow2"]
    assert res.config.disks[0].size == found.disks[0].size


def test_damaged_image_is_explained_by_its_digest(build, tmp_path, os_path):
    """An image damaged after the package was made fails its inspection;
    the digest mismatch, the better explanation, is what the operator sees."""
    pkg, _ = build(Appliance(name="dmg", disks=[DiskSpec(2 * MIB, "qcow2")]), ova=False)
    disk = next(Path(pkg).parent.glob("dmg-disk1.*"))
    data = bytearray(disk.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"  # qcow2 version: qemu-img info refuses it
    disk.write_bytes(bytes(data))
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(IntegrityError, match=r"digest of 'dmg-disk1\.qcow2' does not match"):
        import_package(pkg, str(out), req(os_path))
    assert os.listdir(out) == []
