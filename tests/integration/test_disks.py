"""disks.py against the real qemu-img, on real images of a few MiB.

Images are made here with ``qemu-img`` from seeded random data; packages are
real ustar tars.  The only stand-ins are small shell scripts in place of
qemu-img, for what a real qemu-img will not do on demand (die by a signal,
hang, be missing).
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import random
import re
import shutil
import struct
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from ganeti_ovf import disks, qemuimg
from ganeti_ovf.errors import DiskImageError
from ganeti_ovf.model import ByteRange

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

MIB = 1 << 20
SIZE = 4 * MIB

# name -> (qemu-img -O format, -o options, what detect_format must say)
FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "raw": ("raw", (), "raw"),
    "qcow2": ("qcow2", (), "qcow2"),
    "qcow2-v2": ("qcow2", ("-o", "compat=0.10"), "qcow2"),
    "qed": ("qed", (), "qed"),
    "vmdk-sparse": ("vmdk", (), "vmdk"),
    "vmdk-stream": ("vmdk", ("-o", "subformat=streamOptimized"), "vmdk"),
    "vdi": ("vdi", (), "vdi"),
    "vdi-static": ("vdi", ("-o", "static=on"), "vdi"),
    "vhdx": ("vhdx", (), "vhdx"),
    "vpc": ("vpc", (), "vpc"),
    "vpc-fixed": ("vpc", ("-o", "subformat=fixed"), "vpc"),
}


def qemu_img(*args: str) -> subprocess.CompletedProcess[str]:
    # Creating LUKS images benchmarks PBKDF on the CPU; on a busy machine
    # qemu sometimes says "Unable to get accurate CPU usage": try again.
    for _ in range(5):
        p = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)
        if p.returncode == 0 or "accurate CPU usage" not in p.stderr:
            break
    p.check_returncode()
    return p


def data(size: int = SIZE, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def whole(path: os.PathLike[str] | str) -> ByteRange:
    return ByteRange(str(path), 0, os.path.getsize(path))


def read(path: os.PathLike[str] | str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def make_image(directory: Path, name: str, raw: bytes) -> Path:
    """``name`` (a FORMATS key) made by qemu-img from ``raw``."""
    fmt, opts, _ = FORMATS[name]
    src = directory / f"{name}.src"
    src.write_bytes(raw)
    out = directory / f"{name}.img"
    qemu_img("convert", "-f", "raw", "-O", fmt, *opts, str(src), str(out))
    src.unlink()
    return out


def assert_disk(out: Path, raw: bytes) -> None:
    """``out`` holds ``raw``, then only zeros (VHD rounds up to CHS geometry)."""
    got = read(out)
    assert got[: len(raw)] == raw
    assert got[len(raw) :].count(0) == len(got) - len(raw)
    assert len(got) - len(raw) < MIB


def one_line(err: pytest.ExceptionInfo[DiskImageError], name: str) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "json:" not in msg
    assert msg.startswith(f"{name}: ")
    return msg


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    return {name: make_image(d, name, data()) for name in FORMATS}


@pytest.fixture(scope="module")
def ova(tmp_path_factory: pytest.TempPathFactory, images: dict[str, Path]):
    """A ustar OVA holding every image, each followed by a 0xAA sentinel member."""
    d = tmp_path_factory.mktemp("ova")
    sentinel = d / "sentinel"
    sentinel.write_bytes(b"\xaa" * 65536)
    path = d / "vm.ova"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        desc = d / "vm.ovf"
        desc.write_bytes(b"<Envelope/>\n")
        tar.add(desc, "vm.ovf")
        for name, img in images.items():
            tar.add(img, f"{name}.img")
            tar.add(sentinel, f"{name}.after")
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    return path, members


# --- detect_format ------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_detect_format(images: dict[str, Path], name: str) -> None:
    assert disks.detect_format(whole(images[name]), name="d") == FORMATS[name][2]


@pytest.mark.parametrize("name", FORMATS)
def test_detect_format_inside_ova(ova, name: str) -> None:
    path, members = ova
    m = members[f"{name}.img"]
    src = ByteRange(str(path), m.offset_data, m.size)
    assert disks.detect_format(src, name=m.name) == FORMATS[name][2]


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentSparse"])
def test_vmdk_text_descriptor_refused(tmp_path: Path, subformat: str) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(data(MIB))
    out = tmp_path / "disk1.vmdk"
    qemu_img(
        "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", str(src), str(out)
    )
    with pytest.raises(DiskImageError) as err:
        disks.detect_format(whole(out), name="disk1.vmdk")
    assert one_line(err, "disk1.vmdk") == (
        f"disk1.vmdk: is a VMDK text descriptor (createType {subformat!r}) whose data is in "
        "separate extent files; ship one monolithicSparse or streamOptimized VMDK instead"
    )


def test_vmdk_descriptor_with_extent_is_refused_by_check_safe_too(tmp_path: Path) -> None:
    """Should a descriptor get past detection, info reports the foreign extent."""
    src = tmp_path / "src.raw"
    src.write_bytes(data(MIB))
    out = tmp_path / "disk1.vmdk"
    qemu_img(
        "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat", str(src), str(out)
    )
    info = disks.image_info(whole(out), "vmdk", name="disk1.vmdk")
    assert info.create_type == "monolithicFlat"
    assert [os.path.basename(e) for e in info.extents] == ["disk1-flat.vmdk"]
    with pytest.raises(
        DiskImageError,
        match=r"^disk1\.vmdk: VMDK extent '.*disk1-flat\.vmdk' "
        r"is a separate file; only single-file VMDKs are accepted$",
    ):
        disks.check_safe(info, name="disk1.vmdk")


def _evil_vmdk(tmp_path: Path, target: Path) -> Path:
    """A sparse VMDK (KDMV) with capacity 0 whose embedded descriptor names ``target``."""
    src = tmp_path / "src.raw"
    src.write_bytes(data(MIB))
    good = tmp_path / "good.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", str(src), str(good))
    b = bytearray(read(good))
    desc_sector = struct.unpack_from("<Q", b, 28)[0]
    struct.pack_into("<Q", b, 12, 0)  # capacity 0
    desc = (
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        f'createType="monolithicFlat"\n\nRW 2048 FLAT "{target}" 0\n'
    ).encode()
    b[desc_sector * 512 : desc_sector * 512 + len(desc) + 1] = desc + b"\0"
    evil = tmp_path / "evil.vmdk"
    evil.write_bytes(b)
    return evil


def test_sparse_vmdk_with_embedded_descriptor_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"SECRET!!" * (MIB // 8))
    evil = _evil_vmdk(tmp_path, secret)
    # Why: left to itself, qemu-img copies the host file named in the header.
    leaked = tmp_path / "leaked.raw"
    qemu_img("convert", "-f", "vmdk", "-O", "raw", str(evil), str(leaked))
    assert read(leaked)[:MIB] == read(secret)
    with pytest.raises(DiskImageError) as err:
        disks.detect_format(whole(evil), name="evil.vmdk")
    assert one_line(err, "evil.vmdk") == (
        "evil.vmdk: sparse VMDK with capacity 0 defers to an embedded descriptor whose "
        "extents are separate files; not accepted"
    )


def test_differencing_vdi_and_vhd_refused(images: dict[str, Path], tmp_path: Path) -> None:
    vdi = bytearray(read(images["vdi"]))
    struct.pack_into("<I", vdi, 0x4C, 4)  # image type: diff
    (tmp_path / "d.vdi").write_bytes(vdi)
    with pytest.raises(
        DiskImageError,
        match=r"^d\.vdi: VDI image type 4 \(undo/differencing\) "
        r"needs its parent image; not accepted$",
    ):
        disks.detect_format(whole(tmp_path / "d.vdi"), name="d.vdi")
    vhd = bytearray(read(images["vpc"]))
    struct.pack_into(">I", vhd, 60, 4)  # disk type: differencing
    (tmp_path / "d.vhd").write_bytes(vhd)
    with pytest.raises(
        DiskImageError,
        match=r"^d\.vhd: differencing VHD needs its parent "
        r"image; not accepted$",
    ):
        disks.detect_format(whole(tmp_path / "d.vhd"), name="d.vhd")


def _qemu_made(tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / "x.img"
    qemu_img("create", "-q", *args[:-1], str(out), args[-1])
    return read(out)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda t: _qemu_made(
                t, "-f", "luks", "--object", "secret,id=s0,data=pw",
                "-o", "key-secret=s0,iter-time=50", "4M",
            ),
            "LUKS image: encrypted; we have no key for it",
        ),
        (
            lambda t: _qemu_made(t, "-f", "qcow", "4M"),
            "qcow version 1 (legacy) images are not accepted",
        ),
        (lambda t: _qemu_made(t, "-f", "parallels", "4M"), "Parallels image: format not accepted"),
        (lambda t: b"Bochs Virtual HD Image\0" + bytes(1000), "Bochs image: format not accepted"),
        (
            lambda t: b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop\n" + bytes(1000),
            "cloop image: format not accepted",
        ),
        (lambda t: data(8192) + b"koly" + bytes(508), "DMG image: format not accepted"),
        (
            lambda t: b"COWD" + bytes(2044),
            "VMDK3 (COWD) image: an ESX redo log whose parent is not in the package",
        ),
        (
            lambda t: gzip.compress(data(8192)),
            "gzip image: compressed; declare ovf:compression or unpack it first",
        ),
        (lambda t: lzma.compress(bytes(8192)), "xz image: compressed; unpack it first"),
    ],
    ids=["luks", "qcow1", "parallels", "bochs", "cloop", "dmg", "cowd", "gzip", "xz"],
)
def test_refused_magic(tmp_path: Path, make, message: str) -> None:
    img = tmp_path / "disk1.img"
    img.write_bytes(make(tmp_path))
    with pytest.raises(DiskImageError) as err:
        disks.detect_format(whole(img), name="disk1.img")
    assert one_line(err, "disk1.img") == f"disk1.img: {message}"


def test_empty_image_refused(tmp_path: Path) -> None:
    (tmp_path / "e.img").write_bytes(b"")
    with pytest.raises(DiskImageError, match=r"^e\.img: image is empty$"):
        disks.detect_format(whole(tmp_path / "e.img"), name="e.img")
    with pytest.raises(DiskImageError, match=r"^e\.img: image is empty$"):
        disks.image_info(whole(tmp_path / "e.img"), "raw", name="e.img")


# --- safety: nothing outside the image is opened -------------------------


class FifoWatch:
    """Tells whether anyone opened a FIFO for reading.

    A writer blocks in open() until a reader arrives, so the thread is still
    blocked exactly when nobody opened the FIFO.  It keeps its end open, so
    a reader's later blocking open() cannot hang either.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        self.opened.set()
        self._done.wait(60)
        os.close(fd)

    def was_opened(self) -> bool:
        return self.opened.wait(0.5)

    def close(self) -> None:
        self._done.set()
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)  # releases a blocked writer
        self._thread.join(10)
        os.close(fd)


def _fifo_overlay(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A qcow2 whose backing file (or data file) is then replaced by a FIFO."""
    other = tmp_path / ("base.qcow2" if kind == "backing" else "ext.data")
    img = tmp_path / "disk1.qcow2"
    if kind == "backing":
        qemu_img("create", "-q", "-f", "qcow2", str(other), "4M")
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(other), "-F", "qcow2", str(img))
    else:
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={other}", str(img), "4M")
    other.unlink()
    os.mkfifo(other)
    return img, other


@pytest.mark.parametrize("kind", ["backing", "data_file"])
def test_external_file_never_opened(tmp_path: Path, kind: str) -> None:
    img, fifo = _fifo_overlay(tmp_path, kind)
    src = whole(img)
    watch = FifoWatch(fifo)
    try:
        assert disks.detect_format(src, name="disk1.qcow2") == "qcow2"
        info = disks.image_info(src, "qcow2", name="disk1.qcow2")
        if kind == "backing":
            assert info.backing_file == str(fifo)
            # Even qemu-img convert itself, given our json: name, leaves it alone.
            qemu_img(
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                disks.json_filename(src, "qcow2"),
                str(tmp_path / "direct.raw"),
            )
            assert read(tmp_path / "direct.raw") == bytes(SIZE)
        else:
            assert info.data_file == str(fifo)
        with pytest.raises(DiskImageError) as err:
            disks.convert_to_raw(src, "qcow2", str(tmp_path / "out.raw"), name="disk1.qcow2")
        what = "a backing file" if kind == "backing" else "an external data file"
        assert one_line(err, "disk1.qcow2") == (
            f"disk1.qcow2: qcow2 image has {what} {str(fifo)!r}; only self-contained images "
            "are accepted"
        )
        assert not watch.was_opened()
    finally:
        watch.close()


@pytest.mark.parametrize("kind", ["backing", "data_file"])
def test_fifo_watch_sees_a_plain_convert(tmp_path: Path, kind: str) -> None:
    """Control for the test above: without our guards qemu-img opens the FIFO."""
    img, fifo = _fifo_overlay(tmp_path, kind)
    watch = FifoWatch(fifo)
    try:
        subprocess.run(
            [
                "qemu-img",
                "convert",
                "-f",
                "qcow2",
                "-O",
                "raw",
                str(img),
                str(tmp_path / "out.raw"),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert watch.was_opened()
    finally:
        watch.close()


def test_missing_backing_file_is_reported_not_opened(tmp_path: Path) -> None:
    img = tmp_path / "disk1.qcow2"
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        "/nonexistent/base.qcow2",
        "-F",
        "qcow2",
        str(img),
        "4M",
    )
    info = disks.image_info(whole(img), "qcow2", name="disk1.qcow2")
    assert info.backing_file == "/nonexistent/base.qcow2"
    with pytest.raises(
        DiskImageError,
        match=r"^disk1\.qcow2: qcow2 image has a backing file "
        r"'/nonexistent/base\.qcow2'; only self-contained images are accepted$",
    ):
        disks.check_safe(info, name="disk1.qcow2")


@pytest.mark.parametrize("fmt", ["qcow2", "qed", "vmdk"])
def test_backing_file_refused(tmp_path: Path, fmt: str) -> None:
    base = tmp_path / f"base.{fmt}"
    qemu_img("create", "-q", "-f", fmt, str(base), "4M")
    img = tmp_path / f"disk1.{fmt}"
    qemu_img("create", "-q", "-f", fmt, "-b", str(base), "-F", fmt, str(img), "4M")
    info = disks.image_info(whole(img), disks.detect_format(whole(img)), name=img.name)
    with pytest.raises(DiskImageError) as err:
        disks.check_safe(info, name=img.name)
    assert one_line(err, img.name) == (
        f"{img.name}: {fmt} image has a backing file {str(base)!r}; only self-contained images "
        "are accepted"
    )


def test_data_file_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "disk1.qcow2"
    # qemu-img creates a relative data file beside the image's path as it
    # resolves it: run where tmp_path is, so it lands there, not in the tree.
    monkeypatch.chdir(tmp_path)
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=ext.data", str(img), "4M")
    assert (tmp_path / "ext.data").exists()
    info = disks.image_info(whole(img), "qcow2", name="disk1.qcow2")
    assert info.data_file == "ext.data"
    with pytest.raises(
        DiskImageError,
        match=r"^disk1\.qcow2: qcow2 image has an external data "
        r"file 'ext\.data'; only self-contained images are accepted$",
    ):
        disks.check_safe(info, name="disk1.qcow2")


def test_encrypted_qcow2_refused(tmp_path: Path) -> None:
    img = tmp_path / "disk1.qcow2"
    qemu_img(
        "create",
        "-q",
        "-f",
        "qcow2",
        "--object",
        "secret,id=s0,data=pw",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=50",
        str(img),
        "4M",
    )
    info = disks.image_info(whole(img), "qcow2", name="disk1.qcow2")
    assert info.encrypted
    with pytest.raises(
        DiskImageError,
        match=r"^disk1\.qcow2: qcow2 image is encrypted; "
        r"not accepted$",
    ):
        disks.check_safe(info, name="disk1.qcow2")


def test_corrupt_qcow2_refused(images: dict[str, Path], tmp_path: Path) -> None:
    b = bytearray(read(images["qcow2"]))
    struct.pack_into(">Q", b, 72, struct.unpack_from(">Q", b, 72)[0] | 2)  # incompat: corrupt
    img = tmp_path / "disk1.qcow2"
    img.write_bytes(b)
    info = disks.image_info(whole(img), "qcow2", name="disk1.qcow2")
    assert info.corrupt
    with pytest.raises(DiskImageError, match=r"^disk1\.qcow2: qcow2 image is marked corrupt$"):
        disks.check_safe(info, name="disk1.qcow2")


def test_vmdk_delta_refused() -> None:
    info = disks.ImageInfo(format="vmdk", virtual_size=SIZE, parent_cid=0x1234ABCD)
    with pytest.raises(
        DiskImageError,
        match=r"^d\.vmdk: VMDK is a delta disk \(parentCID "
        r"0x1234abcd\) whose parent is not in the package$",
    ):
        disks.check_safe(info, name="d.vmdk")


# --- image_info ---------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_image_info(images: dict[str, Path], name: str) -> None:
    fmt = FORMATS[name][2]
    info = disks.image_info(whole(images[name]), fmt, name=name)
    assert info.format == fmt
    assert SIZE <= info.virtual_size < SIZE + MIB
    assert info.actual_size is not None and info.actual_size > 0
    assert info.backing_file is None and info.data_file is None
    assert not info.corrupt and not info.encrypted
    if fmt == "vmdk":
        stream = name == "vmdk-stream"
        assert info.create_type == ("streamOptimized" if stream else "monolithicSparse")
        assert len(info.extents) == 1
    disks.check_safe(info, name=name)


def test_image_info_inside_ova_has_no_actual_size(ova) -> None:
    path, members = ova
    m = members["vmdk-stream.img"]
    info = disks.image_info(ByteRange(str(path), m.offset_data, m.size), "vmdk", name=m.name)
    assert info.virtual_size == SIZE and info.actual_size is None
    assert info.create_type == "streamOptimized"
    disks.check_safe(info, name=m.name)  # its one extent is the member itself


def test_image_info_wrong_format_message(images: dict[str, Path]) -> None:
    with pytest.raises(DiskImageError) as err:
        disks.image_info(whole(images["raw"]), "qcow2", name="disk1.img")
    assert one_line(err, "disk1.img") == (
        "disk1.img: qemu-img info exited with code 1: Could not open 'disk1.img': "
        "Image is not in qcow2 format"
    )


@pytest.mark.parametrize("fmt", ["nbd", "vvfat", "file", "qcow", ""])
def test_unaccepted_format_never_reaches_qemu(images: dict[str, Path], fmt: str) -> None:
    with pytest.raises(
        DiskImageError,
        match=rf"^d: disk format {re.escape(repr(fmt))} is not "
        "accepted$",
    ):
        disks.image_info(whole(images["raw"]), fmt, name="d")


def test_json_filename(tmp_path: Path) -> None:
    f = tmp_path / "a b'\"é.ova"
    f.write_bytes(bytes(8192))
    spec = disks.json_filename(ByteRange(str(f), 1536, 4096), "vmdk")
    assert spec.startswith("json:")
    assert json.loads(spec[5:]) == {
        "driver": "vmdk",
        "read-only": True,
        "backing": None,
        "file": {
            "driver": "raw",
            "offset": 1536,
            "size": 4096,
            "file": {"driver": "file", "filename": str(f)},
        },
    }
    assert json.loads(disks.json_filename(whole(f), "raw")[5:])["file"] == {
        "driver": "file",
        "filename": str(f),
    }
    assert disks.image_info(ByteRange(str(f), 1536, 4096), "raw").virtual_size == 4096


def test_json_filename_refuses_bad_ranges(tmp_path: Path) -> None:
    f = tmp_path / "vm.ova"
    f.write_bytes(bytes(8192))
    with pytest.raises(
        DiskImageError,
        match=r"byte range 4096\+8192 runs past the end of "
        r".*vm\.ova' \(8192 bytes\)$",
    ):
        disks.json_filename(ByteRange(str(f), 4096, 8192), "raw")
    with pytest.raises(
        DiskImageError,
        match=r"byte range 1\+100 of .* cannot be read in place "
        r"\(qemu needs whole 512-byte sectors\)$",
    ):
        disks.json_filename(ByteRange(str(f), 1, 100), "raw")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DiskImageError, match=r"fifo' is not a regular file$"):
        disks.json_filename(ByteRange(str(tmp_path / "fifo"), 0, 512), "raw")
    bad = os.fsdecode(bytes(tmp_path) + b"/\xff.img")
    Path(bad).write_bytes(bytes(512))
    with pytest.raises(DiskImageError, match=r"is not valid UTF-8$"):
        disks.json_filename(whole(bad), "raw")


# --- convert_to_raw -----------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_convert_to_raw(images: dict[str, Path], tmp_path: Path, name: str) -> None:
    src = whole(images[name])
    out = tmp_path / "out.raw"
    disks.convert_to_raw(src, disks.detect_format(src), str(out), name=name)
    assert_disk(out, data())


@pytest.mark.parametrize("name", FORMATS)
def test_convert_to_raw_inside_ova(ova, tmp_path: Path, name: str) -> None:
    path, members = ova
    m = members[f"{name}.img"]
    src = ByteRange(str(path), m.offset_data, m.size)
    out = tmp_path / "out.raw"
    disks.convert_to_raw(src, disks.detect_format(src, name=m.name), str(out), name=m.name)
    assert_disk(out, data())


@pytest.mark.parametrize("name", [n for n in FORMATS if n != "raw"])
def test_range_cut_short_fails_cleanly(ova, tmp_path: Path, name: str) -> None:
    """Reads past a range's end come back as zeros, so a cut image must be caught."""
    path, members = ova
    m = members[f"{name}.img"]
    src = ByteRange(str(path), m.offset_data, m.size // 2 // 512 * 512)
    with pytest.raises(DiskImageError) as err:
        # The format as detected on the whole member: a fixed VHD cut short
        # has lost its footer and would look raw (the capacity check catches it).
        disks.convert_to_raw(src, FORMATS[name][2], str(tmp_path / "out.raw"), name=m.name)
    one_line(err, m.name)


def test_check_image_messages(ova, tmp_path: Path) -> None:
    path, members = ova
    m = members["qcow2.img"]
    with pytest.raises(DiskImageError) as err:
        disks.check_image(ByteRange(str(path), m.offset_data, 2 * MIB), "qcow2", name=m.name)
    assert re.fullmatch(
        r"qcow2\.img: image check failed \(truncated or damaged\?\): qemu-img check exited "
        r"with code 2: ERROR: counting reference for region exceeding the end of the file by "
        r"one cluster or more: offset 0x[0-9a-f]+ size 0x10000",
        one_line(err, m.name),
    )
    m = members["vdi.img"]
    with pytest.raises(
        DiskImageError,
        match=r"^vdi\.img: VDI image is truncated: its header "
        r"needs 4195328 bytes, it has 2097152$",
    ):
        disks.check_image(ByteRange(str(path), m.offset_data, 2 * MIB), "vdi", name=m.name)


def test_raw_range_is_a_hard_bound(ova, tmp_path: Path) -> None:
    """Nothing past the range reaches the output, even the very next member."""
    path, members = ova
    m = members["raw.img"]
    assert members["raw.after"].offset_data == m.offset_data + m.size + 512  # header between
    src = ByteRange(str(path), m.offset_data, m.size - 4096)
    out = tmp_path / "out.raw"
    disks.convert_to_raw(src, "raw", str(out), name=m.name)
    assert read(out) == data()[: m.size - 4096]


def test_unaligned_member_reads_only_its_padding(tmp_path: Path) -> None:
    """qemu wants whole sectors; a member's last sector is its own tar padding."""
    img = tmp_path / "disk1.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(img), "4M")
    assert img.stat().st_size % 512  # qemu-img create leaves a ragged end
    ova = tmp_path / "vm.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(img, "disk1.qcow2")
    with tarfile.open(ova) as tar:
        m = tar.getmember("disk1.qcow2")
    src = ByteRange(str(ova), m.offset_data, m.size)
    assert (
        json.loads(disks.json_filename(src, "qcow2")[5:])["file"]["size"] == -(-m.size // 512) * 512
    )
    out = tmp_path / "out.raw"
    disks.convert_to_raw(src, disks.detect_format(src), str(out), name="disk1.qcow2")
    assert read(out) == bytes(SIZE)


def _mostly_zero() -> bytes:
    return data(MIB) + bytes(7 * MIB)


@pytest.mark.parametrize("fmt", ["qcow2", "raw-in-ova"])
def test_output_is_sparse(tmp_path: Path, fmt: str) -> None:
    raw = tmp_path / "src.raw"
    raw.write_bytes(_mostly_zero())
    if fmt == "qcow2":
        img = tmp_path / "disk1.qcow2"
        qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(img))
        src = whole(img)
    else:
        img = tmp_path / "vm.ova"
        with tarfile.open(img, "w", format=tarfile.USTAR_FORMAT) as tar:
            tar.add(raw, "disk1.img")
        with tarfile.open(img) as tar:
            m = tar.getmember("disk1.img")
        src = ByteRange(str(img), m.offset_data, m.size)
    out = tmp_path / "out.raw"
    disks.convert_to_raw(src, disks.detect_format(src), str(out), name="disk1")
    assert read(out) == _mostly_zero()
    st = out.stat()
    assert st.st_size == 8 * MIB
    assert st.st_blocks * 512 <= MIB + 64 * 1024


# --- create_blank -------------------------------------------------------


def test_create_blank(tmp_path: Path) -> None:
    out = tmp_path / "blank.raw"
    disks.create_blank(str(out), 8 * MIB)
    st = out.stat()
    assert st.st_size == 8 * MIB
    assert st.st_blocks * 512 <= 4096  # qemu writes the first block for alignment probing
    assert read(out) == bytes(8 * MIB)
    assert disks.detect_format(whole(out)) == "raw"
    assert disks.virtual_size(str(out), "raw") == 8 * MIB


@pytest.mark.parametrize("size", [0, -512, 1000, True])
def test_create_blank_bad_size(tmp_path: Path, size: int) -> None:
    with pytest.raises(
        DiskImageError,
        match=rf"^blank\.raw: blank disk size {size!r} is not a "
        r"positive multiple of 512$",
    ):
        disks.create_blank(str(tmp_path / "blank.raw"), size)
    assert not (tmp_path / "blank.raw").exists()


# --- export side ---------------------------------------------------------


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2", "vmdk"])
def test_convert_from_raw(tmp_path: Path, out_fmt: str) -> None:
    raw = tmp_path / "disk0"
    raw.write_bytes(_mostly_zero())
    out = tmp_path / f"disk0.{out_fmt}"
    disks.convert_from_raw(str(raw), str(out), out_fmt, name="disk0")
    assert disks.detect_format(whole(out)) == out_fmt
    assert disks.virtual_size(str(out), out_fmt) == 8 * MIB
    info = json.loads(qemu_img("info", "-f", out_fmt, "--output=json", str(out)).stdout)
    if out_fmt == "vmdk":
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
        assert disks.image_info(whole(out), "vmdk").create_type == "streamOptimized"
    if out_fmt == "qcow2":
        assert info["format-specific"]["data"]["compat"] == "1.1"
    if out_fmt != "raw":
        qemu_img("check", "-f", out_fmt, str(out))
        disks.check_image(whole(out), out_fmt, name=out.name)
    back = tmp_path / "back.raw"
    disks.convert_to_raw(whole(out), out_fmt, str(back), name=out.name)
    assert read(back) == _mostly_zero()


def test_convert_from_raw_never_probes(images: dict[str, Path], tmp_path: Path) -> None:
    """A guest may write a qcow2 header into its disk; it stays data."""
    raw = tmp_path / "disk0"
    shutil.copyfile(images["qcow2"], raw)
    out = tmp_path / "out.raw"
    disks.convert_from_raw(str(raw), str(out), "raw", name="disk0")
    assert read(out) == read(raw) + bytes(-len(read(raw)) % 512)


def test_convert_from_raw_bad_format(tmp_path: Path) -> None:
    (tmp_path / "disk0").write_bytes(bytes(512))
    with pytest.raises(
        DiskImageError,
        match=r"^disk0: output format 'vdi' is not one of qcow2, "
        r"raw, vmdk$",
    ):
        disks.convert_from_raw(str(tmp_path / "disk0"), str(tmp_path / "o"), "vdi", name="disk0")


def test_virtual_size_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        DiskImageError,
        match=r"^nope\.vmdk: cannot read '.*nope\.vmdk': No such "
        r"file or directory$",
    ):
        disks.virtual_size(str(tmp_path / "nope.vmdk"), "vmdk")


# --- running qemu-img: failures as one line ----------------------------


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """fake_qemu(script) points disks.QEMU_IMG at a shell script."""

    def _fake(body: str) -> None:
        p = tmp_path / "fake-qemu-img"
        p.write_text("#!/bin/sh\n" + body + "\n")
        p.chmod(0o755)
        monkeypatch.setattr(disks, "QEMU_IMG", str(p))

    return _fake


def test_qemu_img_missing(images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disks, "QEMU_IMG", "/nonexistent/qemu-img")
    with pytest.raises(DiskImageError) as err:
        disks.image_info(whole(images["raw"]), "raw", name="disk1.img")
    assert one_line(err, "disk1.img") == (
        "disk1.img: qemu-img is not installed (install package qemu-utils; looked for "
        "'/nonexistent/qemu-img')"
    )


def test_killed_by_signal(images: dict[str, Path], fake_qemu) -> None:
    fake_qemu("kill -KILL $$")
    with pytest.raises(
        DiskImageError,
        match=r"^disk1\.img: qemu-img info was killed by signal 9 "
        r"\(SIGKILL\)$",
    ):
        disks.image_info(whole(images["raw"]), "raw", name="disk1.img")


def test_last_stderr_line_with_image_name(images: dict[str, Path], fake_qemu) -> None:
    fake_qemu(
        "for a; do last=$a; done\n"
        'echo "qemu-img: some warning" >&2\n'
        """echo "qemu-img: Could not open '$last': Input/output error" >&2\n"""
        "echo >&2\nexit 1"
    )
    with pytest.raises(DiskImageError) as err:
        disks.image_info(whole(images["raw"]), "raw", name="disk1.img")
    assert one_line(err, "disk1.img") == (
        "disk1.img: qemu-img info exited with code 1: Could not open 'disk1.img': "
        "Input/output error"
    )


def test_info_runs_under_limits(images: dict[str, Path], fake_qemu) -> None:
    fake_qemu('echo "limits cpu=$(ulimit -t) as=$(ulimit -v) lang=$LC_ALL" >&2; exit 1')
    with pytest.raises(
        DiskImageError,
        match=r"^d: qemu-img info exited with code 1: "
        r"limits cpu=30 as=1048576 lang=C$",
    ):
        disks.image_info(whole(images["raw"]), "raw", name="d")


def test_cpu_limit_kills(
    images: dict[str, Path], fake_qemu, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disks, "_INFO_LIMITS", disks._Limits(1 << 30, 1, 60))
    fake_qemu("while :; do :; done")
    with pytest.raises(
        DiskImageError,
        match=r"^d: qemu-img info was killed by signal 24 "
        r"\(SIGXCPU\): CPU time limit of 1 s exceeded$",
    ):
        disks.image_info(whole(images["raw"]), "raw", name="d")


def test_wall_clock_timeout(
    images: dict[str, Path], fake_qemu, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(disks, "_INFO_LIMITS", disks._Limits(wall_seconds=1))
    fake_qemu("exec sleep 30")
    with pytest.raises(DiskImageError, match=r"^d: qemu-img info did not finish within 1 s$"):
        disks.image_info(whole(images["raw"]), "raw", name="d")


def test_no_json(images: dict[str, Path], fake_qemu) -> None:
    fake_qemu("echo 'image: x'")
    with pytest.raises(DiskImageError, match=r"^d: qemu-img info printed no JSON$"):
        disks.image_info(whole(images["raw"]), "raw", name="d")


def test_info_output_is_bounded(images: dict[str, Path], fake_qemu) -> None:
    fake_qemu(f"head -c {qemuimg.MAX_OUTPUT + 4096} /dev/zero")
    with pytest.raises(DiskImageError, match=r"^d: qemu-img info printed more than 16777216 "
                                             r"bytes$"):
        disks.image_info(whole(images["raw"]), "raw", name="d")


def test_convert_runs_under_limits_scaled_by_size(images: dict[str, Path], fake_qemu,
                                                  tmp_path: Path) -> None:
    """Every qemu-img call is bounded; convert's CPU grows with the virtual
    size from a floor (16 MiB/s), its address space is capped too."""
    fake_qemu('echo "limits cpu=$(ulimit -t) as=$(ulimit -v)" >&2; exit 1')
    info = disks.ImageInfo(format="raw", virtual_size=64 << 30)
    with pytest.raises(DiskImageError, match=r"^d: qemu-img convert exited with code 1: "
                                             r"limits cpu=4396 as=4194304$"):
        disks.convert_to_raw(whole(images["raw"]), "raw", str(tmp_path / "o"), name="d",
                             inspected=info)
    with pytest.raises(DiskImageError, match=r"qemu-img create exited with code 1: "
                                             r"limits cpu=30 as=1048576$"):
        disks.create_blank(str(tmp_path / "b"), 1 << 20)
    with pytest.raises(DiskImageError, match=r"qemu-img convert exited with code 1: "
                                             r"limits cpu=300 as=4194304$"):
        disks.convert_from_raw(str(images["raw"]), str(tmp_path / "e"), "qcow2", name="d")


def test_blank_beyond_the_bound_refused(tmp_path: Path) -> None:
    with pytest.raises(DiskImageError, match=r"blank disk 'b' claims a virtual size of "
                                             r"1125899906842624 bytes"):
        disks.create_blank(str(tmp_path / "b"), 1 << 50)
    assert not (tmp_path / "b").exists()


def test_stderr_is_bounded_and_quoted(images: dict[str, Path], fake_qemu) -> None:
    """A flood on stderr is drained in bounded memory; the first ERROR line
    and the last line are still what the operator sees."""
    fake_qemu('echo "ERROR first" >&2; head -c 50000000 /dev/zero | tr "\\0" x >&2; '
              'echo >&2; echo "qemu-img: the end" >&2; exit 1')
    with pytest.raises(DiskImageError, match=r"^d: qemu-img info exited with code 1: "
                                             r"the end$"):
        disks.image_info(whole(images["raw"]), "raw", name="d")
    with pytest.raises(DiskImageError, match=r"qemu-img check exited with code 1: ERROR first"):
        disks.check_image(whole(images["qcow2"]), "qcow2", name="d")


def test_format_table_is_consistent() -> None:
    """Each export format declares itself by its own URI, and every driver
    in the table is one this qemu-img supports."""
    from ganeti_ovf import diskformats
    for alias in diskformats.EXPORT_ALIASES:
        row = diskformats.by_name(alias)
        assert diskformats.declared_format(row.uris[0]) == row.name
        assert diskformats.EXPORT_FORMATS[row.name] == row.write_options
    supported = qemu_img("--help").stdout.split("Supported formats:")[1].split()
    assert diskformats.ACCEPTED_FORMATS <= set(supported)


def test_check_and_map_run_under_limits(images: dict[str, Path], fake_qemu) -> None:
    fake_qemu('echo "limits cpu=$(ulimit -t) as=$(ulimit -v)" >&2; exit 1')
    with pytest.raises(DiskImageError, match=r"qemu-img check exited with code 1: "
                                             r"limits cpu=600 as=1048576$"):
        disks.check_image(whole(images["qcow2"]), "qcow2", name="d")
    with pytest.raises(DiskImageError, match=r"qemu-img map exited with code 1: "
                                             r"limits cpu=600 as=1048576$"):
        disks.data_bytes(whole(images["qcow2"]), "qcow2", name="d")
