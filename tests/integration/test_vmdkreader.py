"""Compressed (streamOptimized) VMDKs read by us: the same disk as qemu-img
reads, in time bounded by the file, and every lie of the layout refused.

Images are made by real qemu-img and by our own writer, then patched where a
hostile producer would; qemu-img's own conversion is the reference."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from make_fixtures import Appliance, DiskSpec
from test_hostile_disks import package, replace_disk, req, run_import, vmdk_header

from ganeti_ovf import disks as diskmod
from ganeti_ovf import report, vmdkreader, vmdkwriter
from ganeti_ovf.errors import DiskImageError
from ganeti_ovf.importer import import_package
from ganeti_ovf.model import ByteRange

MIB = 1 << 20
TIB = 1 << 40
GRAIN = vmdkwriter.GRAIN
SHARED = Path(__file__).resolve().parents[3] / "shared" / "ovf" / "corpus"


def whole(p: Path) -> ByteRange:
    return ByteRange(str(p), 0, p.stat().st_size)


def digest(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def raw_with(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces:
            f.seek(off)
            f.write(data)
    return path


def ours_vmdk(raw: Path, dest: Path, capacity: int | None = None) -> Path:
    """Our writer's streamOptimized image of ``raw``, declaring ``capacity``
    (bytes past the raw file's end are holes: nothing is stored for them)."""
    fd = os.open(raw, os.O_RDONLY)
    try:
        with open(dest, "wb") as out:
            vmdkwriter.write_stream_optimized(fd, capacity or raw.stat().st_size, out.write,
                                              extent_name=dest.name, label=raw.name)
    finally:
        os.close(fd)
    return dest


def qemu_vmdk(raw: Path, dest: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", str(raw), str(dest)], check=True)
    return dest


def qemu_raw(img: Path, dest: Path) -> Path:
    subprocess.run(["qemu-img", "convert", "-q", "-f", "vmdk", "-O", "raw", str(img),
                    str(dest)], check=True)
    return dest


def ours_raw(img: Path, dest: Path, **kw) -> Path:
    layout = vmdkreader.scan(whole(img), name=img.name)
    vmdkreader.convert(whole(img), layout, str(dest), name=img.name, **kw)
    return dest


def sample(tmp_path: Path, size: int = 10 * MIB + 1536) -> Path:
    rnd = os.urandom(300_000)
    return raw_with(tmp_path / "in.raw", size, [
        (0, rnd[:70_000]), (3 * MIB + 100, b"x" * 200_000), (5 * MIB, bytes(GRAIN)),
        (size - 5000, rnd[:5000]), (7 * MIB, rnd)])


# --- the same disk as qemu-img ---------------------------------------------


@pytest.mark.parametrize("producer", [qemu_vmdk, ours_vmdk], ids=["qemu", "ours"])
@pytest.mark.parametrize("size", [512, GRAIN, 10 * MIB + 1536, 40 * MIB + 7 * 512])
def test_same_disk_as_qemu_img(tmp_path, producer, size):
    raw = sample(tmp_path, size) if size > 8 * MIB else raw_with(
        tmp_path / "in.raw", size, [(0, os.urandom(min(size, 3000)))])
    img = producer(raw, tmp_path / "d.vmdk")
    mine, ref = ours_raw(img, tmp_path / "o.raw"), qemu_raw(img, tmp_path / "q.raw")
    assert mine.stat().st_size == ref.stat().st_size == size
    assert digest(mine) == digest(ref) == digest(raw)
    assert mine.stat().st_mode & 0o777 == 0o600
    # Zero blocks stay holes, as in qemu-img's output.
    assert mine.stat().st_blocks <= ref.stat().st_blocks + 8


def test_threads_do_not_change_the_disk(tmp_path):
    img = ours_vmdk(sample(tmp_path, 24 * MIB), tmp_path / "d.vmdk")
    one = ours_raw(img, tmp_path / "one.raw", workers=1)
    many = ours_raw(img, tmp_path / "many.raw", workers=4)
    assert digest(one) == digest(many) == digest(tmp_path / "in.raw")


def test_layout_counts_what_map_counts(tmp_path):
    img = qemu_vmdk(sample(tmp_path), tmp_path / "d.vmdk")
    fmt, info = diskmod.inspect(whole(img), name="d.vmdk")
    assert fmt == "vmdk" and info.stream is not None
    mapped = subprocess.run(["qemu-img", "map", "-f", "vmdk", "--output=json", str(img)],
                            capture_output=True, text=True, check=True).stdout
    data = sum(e["length"] for e in json.loads(mapped) if e["data"])
    assert diskmod.data_bytes(whole(img), fmt, name="d.vmdk", info=info) == data


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/ovf/corpus")
@pytest.mark.parametrize("ova,member", [
    ("virtualbox/vbox-validationkit/packages/tdAppliance1-t3.ova", None),
    ("ganeti/ovfdata/ova.ova", "new_disk.vmdk"),
])
def test_producers_images_read_as_qemu_reads_them(tmp_path, ova, member):
    subprocess.run(["tar", "xf", str(SHARED / ova), "-C", str(tmp_path)], check=True)
    for gz in tmp_path.glob("*.gz"):
        subprocess.run(["gunzip", str(gz)], check=True)
    img = tmp_path / member if member else next(tmp_path.glob("*.vmdk"))
    mine, ref = ours_raw(img, tmp_path / "o.raw"), qemu_raw(img, tmp_path / "q")
    assert mine.stat().st_size == ref.stat().st_size
    # Sparse-aware and byte-exact (both are mostly holes, 1 and 8 GiB).
    subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", str(mine),
                    str(ref)], check=True)


def test_zeroed_grain_entries(tmp_path):
    """A GTE of 1 is a zeroed grain when the header's flag says so; without
    the flag it points at sector 1 (the descriptor), which no grain is."""
    img = ours_vmdk(raw_with(tmp_path / "in.raw", 4 * MIB, [(0, b"a" * GRAIN),
                                                           (GRAIN, b"b" * GRAIN)]),
                    tmp_path / "d.vmdk")
    patch_gte(img, 0, 1)
    with pytest.raises(DiskImageError, match=r"marker at sector 1 says LBA \d+, but the grain "
                       r"table puts it at 0"):
        vmdkreader.scan(whole(img), name="d.vmdk")
    set_flags(img, vmdkreader.FLAG_ZERO_GRAIN)
    out = ours_raw(img, tmp_path / "o.raw")
    assert digest(out) == digest(qemu_raw(img, tmp_path / "q.raw"))
    assert out.read_bytes()[:2 * GRAIN] == bytes(GRAIN) + b"b" * GRAIN


# --- time and space follow the file, not the claim ---------------------------


def test_terabytes_claimed_in_two_mib_import_in_seconds(build, tmp_path, os_path):
    """8 TiB declared (an honest empty disk: streamOptimized stores no
    tables for empty space) in a 2 MiB file: qemu-img 7.2 walks 2^27
    grains for ``map`` alone (33 s here); we read the 1 MiB grain
    directory and the 16 grains there are."""
    data = os.urandom(MIB)
    img = ours_vmdk(raw_with(tmp_path / "in.raw", MIB, [(0, data)]), tmp_path / "big.vmdk",
                    8 * TIB)
    assert img.stat().st_size < 3 * MIB
    ovf, disk = package(build, "big", "vmdk", MIB)
    replace_disk(ovf, disk, img, capacity=8 * TIB)
    res, took, peak = run_import(ovf, tmp_path / "o", os_path, timeout=60)
    assert res.returncode == 0 and took < 15, (res.stderr, took)
    assert peak < 200 * 1024, peak  # qemu-img info's; no qemu-img map or convert ran
    dump = next((tmp_path / "o").glob("*/disk0.raw"))
    assert dump.stat().st_size == 8 * TIB
    assert dump.stat().st_blocks * 512 < 4 * MIB
    with open(dump, "rb") as f:
        assert f.read(MIB) == data


def test_64_tib_claim_verifies_in_seconds(tmp_path):
    img = ours_vmdk(raw_with(tmp_path / "in.raw", MIB, [(0, b"z" * MIB)]),
                    tmp_path / "huge.vmdk", 64 * TIB)
    t0 = time.monotonic()
    fmt, info = diskmod.inspect(whole(img), name="huge.vmdk")
    assert info.virtual_size == 64 * TIB and info.stream is not None
    assert diskmod.data_bytes(whole(img), fmt, name="huge.vmdk", info=info) == MIB
    assert time.monotonic() - t0 < 5


# --- lies of the layout ------------------------------------------------------


def footer_header(img: Path) -> vmdkreader.Header:
    h = vmdkreader.read_header(whole(img), name=img.name)
    assert h is not None
    return h


def gd_pos(img: Path, table: int) -> int:
    return footer_header(img).gd_offset * 512 + table * 4


def gte_pos(img: Path, grain: int) -> int:
    h = footer_header(img)
    with open(img, "rb") as f:
        f.seek(gd_pos(img, grain // h.gtes))
        (gt,) = struct.unpack("<I", f.read(4))
    return gt * 512 + (grain % h.gtes) * 4


def read_u32(img: Path, pos: int) -> int:
    with open(img, "rb") as f:
        f.seek(pos)
        return struct.unpack("<I", f.read(4))[0]


def write_at(img: Path, pos: int, data: bytes) -> None:
    with open(img, "r+b") as f:
        f.seek(pos)
        f.write(data)


def patch_gte(img: Path, grain: int, value: int) -> None:
    write_at(img, gte_pos(img, grain), struct.pack("<I", value))


def set_flags(img: Path, flags: int) -> None:
    """Or ``flags`` into the header the reader uses (the footer's)."""
    pos = img.stat().st_size - 1024 + 8
    write_at(img, pos, struct.pack("<I", read_u32(img, pos) | flags))


def grain_at(img: Path, grain: int) -> int:
    return read_u32(img, gte_pos(img, grain)) * 512


def two_tables(tmp_path: Path) -> Path:
    """Grains 0, 1 (random, stored) and one in the second grain table."""
    rnd = os.urandom(2 * GRAIN)
    return ours_vmdk(raw_with(tmp_path / "in.raw", 40 * MIB,
                              [(0, rnd), (33 * MIB, b"c" * GRAIN)]), tmp_path / "d.vmdk")


def lie_marker_lba(img: Path) -> None:
    write_at(img, grain_at(img, 1), struct.pack("<Q", 0))


def lie_shared_grain(img: Path) -> None:
    patch_gte(img, 1, grain_at(img, 0) // 512)


def lie_grains_swapped(img: Path) -> None:
    """Stored in reverse order, markers agreeing with the tables."""
    a, b = grain_at(img, 0) // 512, grain_at(img, 1) // 512
    patch_gte(img, 0, b)
    patch_gte(img, 1, a)
    write_at(img, b * 512, struct.pack("<Q", 0))
    write_at(img, a * 512, struct.pack("<Q", 128))


def lie_grain_beyond_end(img: Path) -> None:
    patch_gte(img, 1, img.stat().st_size // 512 + 10)


def lie_table_beyond_end(img: Path) -> None:
    write_at(img, gd_pos(img, 1), struct.pack("<I", img.stat().st_size // 512 + 10))


def lie_shared_table(img: Path) -> None:
    write_at(img, gd_pos(img, 1), struct.pack("<I", read_u32(img, gd_pos(img, 0))))


def lie_compressed_size(img: Path) -> None:
    """More than the two grains qemu reads from the marker on."""
    write_at(img, grain_at(img, 0) + 8, struct.pack("<I", 2 * GRAIN - 11))


def lie_size_covers_next(img: Path) -> None:
    """Grain 0's marker claims the bytes of grain 1 too: a reader that
    follows markers would never see grain 1."""
    start, nxt = grain_at(img, 0), grain_at(img, 1)
    write_at(img, start + 8, struct.pack("<I", nxt - start + 100))


def lie_garbage_stream(img: Path) -> None:
    write_at(img, grain_at(img, 0) + 12, b"\xff" * 64)


def _record(img: Path, grain: int, payload: bytes) -> None:
    write_at(img, grain_at(img, grain) + 8, struct.pack("<I", len(payload)) + payload)


def lie_inflates_too_much(img: Path) -> None:
    _record(img, 0, zlib.compress(bytes(2 * GRAIN)))


def lie_inflates_too_little(img: Path) -> None:
    _record(img, 0, zlib.compress(b"x" * 1000))


def lie_truncated_stream(img: Path) -> None:
    _record(img, 0, zlib.compress(os.urandom(GRAIN))[:5000])


def lie_footer(img: Path) -> None:
    write_at(img, img.stat().st_size - 512 + 12, struct.pack("<I", 7))


def lie_small_tables(img: Path) -> None:
    write_at(img, img.stat().st_size - 1024 + 44, struct.pack("<I", 1))


def lie_huge_grains(img: Path) -> None:
    write_at(img, img.stat().st_size - 1024 + 20, struct.pack("<Q", 256))


@pytest.mark.parametrize("lie,message", [
    (lie_marker_lba, r"marker at sector \d+ says LBA 0, but the grain table puts it at 128"),
    (lie_shared_grain, r"grain 1 at sector \d+ is not after the previous grain"),
    (lie_grains_swapped, r"grain 1 at sector \d+ is not after the previous grain"),
    (lie_grain_beyond_end, r"grain 1 at sector \d+ is beyond the end of the image"),
    (lie_table_beyond_end, r"grain table 1 at sector \d+ starts beyond the end of the image"),
    (lie_shared_table, r"grain table 1 at sector \d+ starts before the end of the previous"),
    (lie_compressed_size, r"grain 0 at sector \d+ claims 131061 compressed bytes, more than"),
    (lie_size_covers_next, r"grain 1 at sector \d+ lies inside the previous grain's"),
    (lie_garbage_stream, r"grain 0 at sector \d+ does not inflate"),
    (lie_inflates_too_much, r"grain 0 at sector \d+ inflates to more than its 65536 bytes"),
    (lie_inflates_too_little, r"grain 0 at sector \d+ inflates to 1000 bytes, not its 65536"),
    (lie_truncated_stream, r"grain 0 at sector \d+ is truncated"),
    (lie_footer, r"VMDK footer is invalid"),
    (lie_huge_grains, r"compressed VMDK grain size of 256 sectors is more than 128"),
    (lie_small_tables, r"compressed VMDK has 1 entries per grain table; only 512"),
], ids=lambda v: getattr(v, "__name__", "msg"))
def test_lies_refused_in_one_line(tmp_path, lie, message):
    img = two_tables(tmp_path)
    lie(img)
    dest = tmp_path / "o.raw"
    with pytest.raises(DiskImageError, match=message) as err:
        fmt, info = diskmod.inspect(whole(img), name="d.vmdk")
        diskmod.convert_to_raw(whole(img), fmt, str(dest), name="d.vmdk", inspected=info)
    assert "\n" not in str(err.value)
    assert not dest.exists()  # a partial disk is removed


def test_verify_reports_layout_lies(build, tmp_path):
    """verify shares the inspection: a marker's lie is found without
    converting."""
    ovf, disk = package(build, "lying", "vmdk", MIB)
    img = two_tables(tmp_path)
    lie_marker_lba(img)
    replace_disk(ovf, disk, img, capacity=40 * MIB)
    problems, _ = report.verify_package(str(ovf))
    assert any("says LBA 0, but the grain table puts it at 128" in p for p in problems), \
        problems


def test_compressed_flag_without_compression_keeps_hosted_rules(tmp_path):
    """qemu decides "compressed" by compressAlgorithm, not by the flag: a
    hosted sparse header with the flag set still needs its grain tables."""
    cap = 1 << 37  # 64 TiB
    img = vmdk_header(tmp_path / "f.vmdk", cap, 128, 21, 21 * 512 + (8 << 20) + 512)
    with open(img, "r+b") as f:
        f.seek(8)
        flags = struct.unpack("<I", f.read(4))[0] | (1 << 16)
        f.seek(8)
        f.write(struct.pack("<I", flags))
    with pytest.raises(DiskImageError, match=r"grain tables alone take 4294967296 bytes"):
        diskmod.inspect(whole(img), name="f.vmdk")


def test_footer_of_a_hosted_sparse_header_is_the_one_checked(tmp_path):
    """GD_AT_END makes qemu take the footer's header: its claim is held to
    the same rules as one in front."""
    cap = 1 << 37
    img = vmdk_header(tmp_path / "h.vmdk", cap, 128, 21, 21 * 512 + (8 << 20) + 512)
    head = bytearray(img.read_bytes()[:512])
    struct.pack_into("<Q", head, 56, vmdkreader.GD_AT_END)
    footer = bytearray(img.read_bytes()[:512])
    marker = struct.pack("<QII", 0, 0, 3).ljust(512, b"\0")
    eos = bytes(512)
    write_at(img, 0, bytes(head))
    with open(img, "ab") as f:
        f.write(marker + bytes(footer) + eos)
    with pytest.raises(DiskImageError, match=r"grain tables alone take 4294967296 bytes"):
        diskmod.inspect(whole(img), name="h.vmdk")


def test_full_disk_names_the_file_system(tmp_path, mocker):
    """ENOSPC cannot be made real here without a small file system; the
    failing pwrite is mocked, the image and the rest are real."""
    img = ours_vmdk(sample(tmp_path), tmp_path / "d.vmdk")
    layout = vmdkreader.scan(whole(img), name="d.vmdk")
    mocker.patch("ganeti_ovf.vmdkreader.os.pwrite",
                 side_effect=OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    with pytest.raises(DiskImageError, match=r"no space left on the file system mounted at /"):
        vmdkreader.convert(whole(img), layout, str(tmp_path / "o.raw"), name="d.vmdk")


def test_import_of_a_stream_optimized_ova_converts_by_our_reader(build, tmp_path, os_path,
                                                                  mocker):
    """The importer's path: no qemu-img map, check or convert for the disk."""
    pkg, raws = build(Appliance(name="so", disks=[DiskSpec(8 * MIB, "vmdk")]))
    ran = mocker.spy(diskmod.qemuimg, "run")
    result = import_package(pkg, str(tmp_path / "o"), req(os_path))
    subs = [c.args[1][0] for c in ran.call_args_list]
    assert subs == ["info"], subs
    assert (Path(result.path) / "disk0.raw").read_bytes() == raws[0]


def test_disk_larger_than_the_file_system_allows(tmp_path):
    """20 TiB declared: ext4 (16 TiB files) refuses the dump, which ends in
    one line naming it and leaves nothing; a file system that takes it
    gets the whole disk."""
    img = ours_vmdk(raw_with(tmp_path / "in.raw", MIB, [(0, b"q" * MIB)]),
                    tmp_path / "d.vmdk", 20 * TIB)
    fmt, info = diskmod.inspect(whole(img), name="d.vmdk")
    dest = tmp_path / "o.raw"
    try:
        diskmod.convert_to_raw(whole(img), fmt, str(dest), name="d.vmdk", inspected=info)
    except DiskImageError as e:
        assert str(e) == f"{dest}: cannot write: {os.strerror(errno.EFBIG)}"
        assert not dest.exists()
    else:
        assert dest.stat().st_size == 20 * TIB
