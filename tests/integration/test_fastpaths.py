"""The fast paths of export and import against real qemu-img: our own
streamOptimized VMDK writer, the sparse-I/O module, and their edge sizes
(not a multiple of the 64 KiB grain or of 512 bytes, all holes, all data).
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ganeti_ovf import qcow2writer, sparse, vmdkwriter
from ganeti_ovf.errors import DiskImageError

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

MIB = 1 << 20
GRAIN = vmdkwriter.GRAIN


def make_raw(path: Path, size: int, *, full: bool = False, seed: int = 9) -> Path:
    """A raw disk: holes with random and text extents, or data everywhere."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        if full:
            f.write(rng.randbytes(size // 2) + b"text line\n" * ((size - size // 2) // 10))
            f.write(b"!" * (size - f.tell()))
            return path
        for off in (0, 70_000, 5 * MIB + 3, size - 1000):
            if 0 <= off < size:
                f.seek(off)
                n = min(200_000, size - off)
                f.write((rng.randbytes(n // 2) + b"0123456789" * n)[:n])
        f.seek(40 * MIB)
        if size > 40 * MIB + GRAIN:  # a run of zeros that is data, not a hole
            f.write(bytes(3 * GRAIN))
    return path


def write_vmdk(src: Path, dest: Path, size: int | None = None, **kw) -> int:
    size = os.path.getsize(src) if size is None else size
    fd = sparse.open_source(str(src), size, src.name)
    try:
        with open(dest, "wb") as out:
            return vmdkwriter.write_stream_optimized(fd, size, out.write,
                                                     extent_name=dest.name, label=src.name,
                                                     **kw)
    finally:
        os.close(fd)


def back_to_raw(vmdk: Path, tmp: Path) -> bytes:
    out = tmp / (vmdk.name + ".back")
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(out)],
                   check=True)
    return out.read_bytes()


@pytest.mark.parametrize("size", [
    MIB, 3 * MIB + 1000, 64 * MIB + 512, 45 * MIB + 7, GRAIN - 1, 512, 1,
], ids=lambda s: f"{s}B")
def test_vmdk_round_trip_is_byte_equal(tmp_path, size):
    src = make_raw(tmp_path / "d.raw", size)
    vmdk = tmp_path / "d.vmdk"
    n = write_vmdk(src, vmdk)
    assert n == vmdk.stat().st_size and n % 512 == 0
    assert n <= vmdkwriter.stored_bound(size)
    check = subprocess.run(["qemu-img", "check", "-f", "vmdk", str(vmdk)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    back = back_to_raw(vmdk, tmp_path)
    data = src.read_bytes()
    # qemu rounds the capacity up to whole sectors, as for any raw image.
    assert len(back) == -(-size // 512) * 512
    assert back[:size] == data and not any(back[size:])


def test_vmdk_fully_populated_and_compare(tmp_path):
    src = make_raw(tmp_path / "full.raw", 5 * MIB + 4096, full=True)
    vmdk = tmp_path / "full.vmdk"
    write_vmdk(src, vmdk, workers=2)
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(src), str(vmdk)],
                   check=True, capture_output=True)


def test_vmdk_layout_is_a_stream(tmp_path):
    """Header says GD_AT_END; grains, then tables, directory, footer, EOS."""
    src = make_raw(tmp_path / "d.raw", 70 * MIB)
    vmdk = tmp_path / "d.vmdk"
    write_vmdk(src, vmdk)
    d = vmdk.read_bytes()
    assert d[:4] == b"KDMV"
    magic, version, flags, cap, grain, doff, dsize, gtes, _rgd, gd, over = \
        struct.unpack_from("<IIIQQQQIQQQ", d)
    assert (version, flags, grain, gtes, gd) == (3, 0x30001, 128, 512, 2**64 - 1)
    assert cap == 70 * MIB // 512 and over == 128
    desc = d[doff * 512:(doff + dsize) * 512].rstrip(b"\0").decode()
    assert 'createType="streamOptimized"' in desc
    assert f'RW {cap} SPARSE "d.vmdk"' in desc
    assert 'ddb.adapterType = "lsilogic"' in desc and "ddb.virtualHWVersion" in desc
    # the tail: footer marker + footer (gd set), then the end-of-stream marker
    assert d[-512:] == bytes(512)
    footer = d[-1024:-512]
    assert footer[:4] == b"KDMV"
    gd_off = struct.unpack_from("<Q", footer, 56)[0]
    assert gd_off != 2**64 - 1
    assert struct.unpack_from("<QII", d, (gd_off - 1) * 512) == (1, 0, 2)  # GD marker
    # three tables (70 MiB / 32 MiB), each after its grains; 32-64 MiB holds
    # only written zeros, which are left out: no table at all
    directory = struct.unpack_from("<3I", d, gd_off * 512)
    assert directory[0] and directory[2] > directory[0] and directory[1] == 0


def test_vmdk_all_holes_is_tiny(tmp_path):
    src = tmp_path / "empty.raw"
    with open(src, "wb") as f:
        f.truncate(10 * MIB)
    vmdk = tmp_path / "empty.vmdk"
    assert write_vmdk(src, vmdk) < 128 * 1024
    assert back_to_raw(vmdk, tmp_path) == bytes(10 * MIB)


def test_vmdk_reads_only_up_to_the_disk_size(tmp_path):
    src = make_raw(tmp_path / "d.raw", 8 * MIB, full=True)
    vmdk = tmp_path / "d.vmdk"
    write_vmdk(src, vmdk, size=3 * MIB)
    assert back_to_raw(vmdk, tmp_path) == src.read_bytes()[:3 * MIB]


def test_source_smaller_than_the_disk_is_an_error(tmp_path):
    src = make_raw(tmp_path / "d.raw", MIB)
    with pytest.raises(DiskImageError, match=f"is {MIB} bytes, smaller than the disk size "
                                             f"{2 * MIB}"):
        sparse.open_source(str(src), 2 * MIB, "d.raw")


def test_sparse_readers_see_the_same_bytes(tmp_path):
    size = 9 * MIB + 333
    src = make_raw(tmp_path / "d.raw", size)
    fd = os.open(src, os.O_RDONLY)
    try:
        joined = b"".join(sparse.blocks(fd, size, "d.raw", bufsize=300_000))
        windows = list(sparse.data_windows(fd, size, MIB))
        extents = list(sparse.data_extents(fd, 0, size))
    finally:
        os.close(fd)
    data = src.read_bytes()
    assert joined == data
    assert windows == sorted(set(windows)) and all(w % MIB == 0 for w in windows)
    for w in range(0, size, MIB):  # every window left out is zeros
        if w not in windows:
            assert not any(data[w:w + MIB])
    assert sparse.allocated(str(src)) == sum(n for _, n in extents)
    if sparse.allocated(str(src)) < size:  # the file system keeps holes
        assert len(windows) < -(-size // MIB)


def test_sparse_file_writes_zero_runs_as_holes(tmp_path):
    out = sparse.SparseFile(str(tmp_path / "o"))
    out.write(b"x" * 4096)
    out.write(bytes(MIB))
    out.write(b"y" * 100)
    assert out.close() == 4096 + MIB + 100
    data = (tmp_path / "o").read_bytes()
    assert data == b"x" * 4096 + bytes(MIB) + b"y" * 100
    st = os.stat(tmp_path / "o")
    if sparse.allocated(str(tmp_path / "o")) < st.st_size:
        assert st.st_blocks * 512 < MIB


def write_qcow2(src: Path, dest: Path, size: int | None = None) -> int:
    size = os.path.getsize(src) if size is None else size
    fd = sparse.open_source(str(src), size, src.name)
    try:
        with open(dest, "wb") as out:
            return qcow2writer.write_qcow2(fd, size, out.write, label=src.name)
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [
    MIB, 3 * MIB + 1000, 600 * MIB + 512, 45 * MIB + 7, GRAIN - 1, 1,
], ids=lambda s: f"{s}B")
@pytest.mark.parametrize("full", [False, True], ids=["sparse", "full"])
def test_qcow2_round_trip_is_byte_equal(tmp_path, size, full):
    if full and size > 64 * MIB:
        pytest.skip("a fully populated 600 MiB disk is slow and adds nothing")
    src = make_raw(tmp_path / "d.raw", size, full=full)
    img = tmp_path / "d.qcow2"
    n = write_qcow2(src, img)
    assert n == img.stat().st_size and n <= qcow2writer.stored_bound(size)
    check = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(img)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(img), str(back)],
                   check=True)
    got, data = back.read_bytes(), src.read_bytes()
    assert len(got) == -(-size // 512) * 512
    assert got[:size] == data and not any(got[size:])


# ------------------------------------------------------------------ import

def _import_req(os_path, **kw):
    from ganeti_ovf.importer import ImportRequest
    return ImportRequest(os_search_path=os_path, use_cluster=False, os_name="noop", **kw)


@pytest.mark.parametrize("ova", [False, True], ids=["dir", "ova"])
def test_several_disks_convert_in_parallel_byte_equal(build, tmp_path, os_path, ova):
    from make_fixtures import Appliance, DiskSpec

    from ganeti_ovf.importer import import_package
    app = Appliance(name="par", disks=[DiskSpec(3 * MIB + 512, "vmdk", seed=1),
                                       DiskSpec(2 * MIB, "qcow2", seed=2),
                                       DiskSpec(MIB + 4096, "raw", seed=3),
                                       DiskSpec(5 * MIB, "vmdk", seed=4)])
    pkg, raws = build(app, ova=ova)
    res = import_package(pkg, str(tmp_path / "out"), _import_req(os_path))
    for i, raw in enumerate(raws):
        got = (Path(res.path) / f"disk{i}.raw").read_bytes()
        assert got[:len(raw)] == raw and not any(got[len(raw):])


def test_tampered_disk_found_while_converting_leaves_nothing(build, tmp_path, os_path, mocker):
    """A raw disk with one byte changed converts fine; its digest, taken at
    the same time, stops the import before anything is published."""
    from make_fixtures import Appliance, DiskSpec

    from ganeti_ovf import disks as diskmod
    from ganeti_ovf.errors import IntegrityError
    from ganeti_ovf.importer import import_package
    pkg, _ = build(Appliance(name="tam", disks=[DiskSpec(2 * MIB, "vmdk"),
                                               DiskSpec(2 * MIB, "raw", seed=5)]), ova=False)
    disk = Path(pkg).parent / "tam-disk2.raw"
    data = bytearray(disk.read_bytes())
    data[1000] ^= 0xFF
    disk.write_bytes(bytes(data))
    convert = mocker.spy(diskmod, "convert_to_raw")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match="digest of 'tam-disk2.raw' does not match"):
        import_package(pkg, str(out), _import_req(os_path))
    assert convert.call_count == 2  # converted, then refused: no second pass
    assert os.listdir(out) == []


# ------------------------------------------------------------------ export

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "ganeti-export" / "plain" / "config.ini"
UPSTREAM = "/usr/share/ganeti/3.0/ovfconverter"


def _export_dir(tmp_path: Path, *, full: bool = False) -> Path:
    """The plain sample (one 64 MiB disk) with a dump of our own."""
    from ganeti_ovf.exportdir import read_config
    d = tmp_path / "exp"
    d.mkdir()
    shutil.copy(SAMPLE, d / "config.ini")
    cfg = read_config(str(d / "config.ini"))
    make_raw(d / cfg.disks[0].dump, cfg.disks[0].size, full=full)
    return d


@pytest.mark.parametrize("fmt", ["vmdk", "qcow2", "raw"])
@pytest.mark.parametrize("layout", ["dir", "ova", "ova+gzip+chunks"])
def test_export_then_import_is_byte_equal(tmp_path, os_path, fmt, layout):
    from ganeti_ovf.exporter import ExportRequest, export_package
    from ganeti_ovf.importer import import_package
    exp = _export_dir(tmp_path, full=fmt == "qcow2")
    dump = next(p for p in exp.iterdir() if p.name != "config.ini")
    req = ExportRequest(disk_format=fmt, ova=layout != "dir",
                        compress="gzip" in layout,
                        chunk_size=4 * MIB if "chunks" in layout else None)
    res = export_package(str(exp), str(tmp_path / "out"), req)
    back = import_package(res.path if req.ova else res.descriptor, str(tmp_path / "in"),
                          _import_req(os_path))
    assert (Path(back.path) / "disk0.raw").read_bytes() == dump.read_bytes()


@pytest.mark.skipif(not os.path.exists(UPSTREAM), reason="needs upstream Ganeti's converter")
@pytest.mark.parametrize("fmt", ["vmdk", "qcow2"])
def test_export_read_by_upstream_converter(tmp_path, fmt):
    from ganeti_ovf.exporter import ExportRequest, export_package
    exp = _export_dir(tmp_path)
    dump = next(p for p in exp.iterdir() if p.name != "config.ini")
    res = export_package(str(exp), str(tmp_path / "out"),
                         ExportRequest(disk_format=fmt, ova=True, manifest="SHA1"))
    subprocess.run(["/usr/bin/python3", UPSTREAM, "import", res.path, "-o", "noop",
                    "--output-dir", str(tmp_path / "up")], check=True, capture_output=True,
                   env={"PYTHONPATH": "/usr/share/ganeti/default", "PATH": os.environ["PATH"],
                        "TMPDIR": str(tmp_path)})
    got = list((tmp_path / "up").glob("*/*.raw"))  # upstream exits 0 on errors: look
    assert len(got) == 1 and got[0].read_bytes() == dump.read_bytes()


def test_instance_disk_larger_than_its_size_is_read_up_to_it(tmp_path, os_path):
    from ganeti_ovf.exportdir import read_config
    from ganeti_ovf.exporter import ExportRequest, export_config
    from ganeti_ovf.importer import import_package
    cfg = read_config(str(SAMPLE))
    size = cfg.disks[0].size
    lv = make_raw(tmp_path / "lv", size + 4 * MIB, full=True)  # rounded up to extents
    res = export_config(cfg, [str(lv)], str(tmp_path / "out"), ExportRequest(ova=True))
    back = import_package(res.path, str(tmp_path / "in"), _import_req(os_path))
    assert (Path(back.path) / "disk0.raw").read_bytes() == lv.read_bytes()[:size]
    small = make_raw(tmp_path / "small", size - 512)
    with pytest.raises(Exception, match=f"is {size - 512} bytes, smaller than the disk size "
                                        f"{size}"):
        export_config(cfg, [str(small)], str(tmp_path / "out2"), ExportRequest(ova=True))
    assert not (tmp_path / "out2").exists() or os.listdir(tmp_path / "out2") == []


def test_interrupt_stops_parallel_conversions_at_once(build, tmp_path, os_path, monkeypatch):
    """Ctrl-C while two disks convert on worker threads: their qemu-img
    processes are stopped, not waited for, and nothing is left."""
    import signal
    import threading
    import time

    from make_fixtures import Appliance, DiskSpec

    from ganeti_ovf import disks as diskmod
    from ganeti_ovf.importer import import_package
    slow = tmp_path / "qemu-img"
    slow.write_text("#!/bin/sh\n[ \"$1\" = convert ] && exec sleep 120\n"
                    "exec /usr/bin/qemu-img \"$@\"\n")
    slow.chmod(0o755)
    pkg, _ = build(Appliance(name="ci", disks=[DiskSpec(MIB, "vmdk"), DiskSpec(MIB, "qcow2")]))
    monkeypatch.setattr(diskmod, "QEMU_IMG", str(slow))
    out = tmp_path / "out"
    out.mkdir()
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            import_package(pkg, str(out), _import_req(os_path))
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 30
    assert os.listdir(out) == []
