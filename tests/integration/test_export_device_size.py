"""An instance disk larger than the size Ganeti records (LVM rounds volumes
up to its 4 MiB extents; an adopted block device is often larger) is read
up to Ganeti's size; a smaller one is an error naming both sizes.

Real files, real qemu-img, and (as root, where loop devices work) a real
block device."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ganeti_ovf.errors import ExportDirError
from ganeti_ovf.exporter import ExportRequest, export_config
from ganeti_ovf.gnt_export import instance_config

MIB = 1 << 20
DISK_MIB = 4


def _row(name: str) -> dict:
    return {
        "name": name, "os": "noop", "pnode": "node1", "oper_state": False,
        "admin_state": "down", "disks_active": False, "disk_template": "blockdev",
        "hypervisor": "fake", "be/maxmem": 128, "be/minmem": 128, "be/vcpus": 1,
        "custom_beparams": {}, "custom_hvparams": {}, "custom_osparams": {}, "tags": [],
        "disk.sizes": [DISK_MIB], "disk.names": [None], "nic.macs": [], "nic.ips": [],
        "nic.modes": [], "nic.links": [], "nic.networks": [], "nic.names": [], "nic.vlans": [],
    }


def _device_image(path: Path, extra: int) -> bytes:
    """DISK_MIB of pattern, then ``extra`` bytes of 0xff beyond the disk."""
    disk = bytes((i * 7 + i // 4096) % 251 for i in range(DISK_MIB * MIB))
    path.write_bytes(disk + b"\xff" * extra)
    return disk


def _read_back(pkg: Path, name: str, fmt: str) -> bytes:
    disk = pkg / f"{name}-disk0.{fmt}"
    if fmt == "raw":
        return disk.read_bytes()
    out = pkg.parent / f"{name}.back.raw"
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", str(disk), str(out)],
                   check=True)
    return out.read_bytes()


@pytest.mark.parametrize("fmt", ["raw", "vmdk", "qcow2"])
def test_larger_device_is_read_up_to_ganetis_size(tmp_path: Path, fmt: str):
    dev = tmp_path / "dev.img"
    disk = _device_image(dev, 2 * MIB + 4096)  # a partial 4 MiB extent beyond
    res = export_config(instance_config(_row("big")), [str(dev)], str(tmp_path),
                        ExportRequest(disk_format=fmt))
    assert _read_back(Path(res.path), "big", fmt) == disk


def test_larger_device_chunked_and_compressed(tmp_path: Path):
    dev = tmp_path / "dev.img"
    disk = _device_image(dev, 3 * MIB)
    res = export_config(instance_config(_row("ch")), [str(dev)], str(tmp_path),
                        ExportRequest(disk_format="raw", chunk_size=MIB))
    chunks = sorted(Path(res.path).glob("ch-disk0.raw.*"))
    assert len(chunks) == DISK_MIB
    assert b"".join(c.read_bytes() for c in chunks) == disk


def test_smaller_device_names_both_sizes(tmp_path: Path):
    dev = tmp_path / "dev.img"
    dev.write_bytes(b"\0" * (DISK_MIB * MIB - 512))
    with pytest.raises(ExportDirError) as e:
        export_config(instance_config(_row("small")), [str(dev)], str(tmp_path / "out"),
                      ExportRequest())
    msg = str(e.value)
    assert str(DISK_MIB * MIB - 512) in msg and str(DISK_MIB * MIB) in msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("losetup"),
                    reason="loop devices need root and losetup")
@pytest.mark.parametrize("fmt", ["raw", "vmdk"])
def test_larger_loop_device(tmp_path: Path, fmt: str):
    img = tmp_path / "backing.img"
    disk = _device_image(img, 2 * MIB)
    p = subprocess.run(["losetup", "-f", "--show", str(img)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"no loop device: {p.stderr.strip()}")
    dev = p.stdout.strip()
    try:
        res = export_config(instance_config(_row("loop")), [dev], str(tmp_path),
                            ExportRequest(disk_format=fmt))
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    assert _read_back(Path(res.path), "loop", fmt) == disk
