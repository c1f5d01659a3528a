"""The node-side export of ``gnt-backup export --ovf`` and its relay to the
``-n`` node, run as the master runs them (``run_pipeline``), here with both
"nodes" being this machine (no SSH): a real conversion on the primary, the
stream into ``receive`` on the target, the package verified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_export import make_signer
from test_export_device_size import DISK_MIB, MIB, _device_image, _row

from ganeti_ovf import nodecmd, report
from ganeti_ovf.errors import ClusterError
from ganeti_ovf.exporter import ExportRequest
from ganeti_ovf.gnt_export import run_pipeline

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/python3"),
                                reason="node side runs on /usr/bin/python3")


class _Cli:
    """Ganeti's cli.ToStdout/ToStderr, recorded."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.err: list[str] = []

    def ToStdout(self, fmt, *a):  # noqa: N802 - Ganeti's name
        self.out.append(fmt % a)

    def ToStderr(self, fmt, *a):  # noqa: N802
        self.err.append(fmt % a)


def _signing(tmp_path: Path) -> dict:
    key, cert = make_signer(tmp_path)
    return {"key": Path(key).read_text(), "cert": Path(cert).read_text()}


@pytest.mark.parametrize("ova", [False, True])
def test_export_relayed_to_target(tmp_path: Path, ova: bool):
    dev = tmp_path / "disk0"
    disk = _device_image(dev, 2 * MIB)  # larger than Ganeti's size, as LVM's
    staging_root, out = tmp_path / "staging", tmp_path / "target"
    out.mkdir()
    req = ExportRequest(name="pkg", disk_format="raw", ova=ova, ovf_version="2.0",
                        manifest="sha512", chunk_size=MIB)
    data = nodecmd.request_json(_row("web"), [str(dev)], req, None, _signing(tmp_path))
    data = data[:-1] + f', "staging_root": "{staging_root}"}}'.encode()
    dest = out / ("pkg.ova" if ova else "pkg")
    cli = _Cli()
    path = run_pipeline(cli, [("node1", nodecmd.helper_argv("export")),
                              ("node2", nodecmd.helper_argv("receive", str(dest),
                                                            *(["--ova"] if ova else [])))],
                        data)
    assert path == str(dest)
    problems, checked = report.verify_package(path if ova else str(dest / "pkg.ovf"))
    assert not problems and any("certificate" in c or "signature" in c for c in checked), checked
    assert os.listdir(staging_root) == [] and sorted(os.listdir(out)) == [dest.name]
    if not ova:
        chunks = sorted(dest.glob("pkg-disk0.raw.*"))
        assert len(chunks) == DISK_MIB
        assert b"".join(c.read_bytes() for c in chunks) == disk
        assert (dest / "pkg.cert").exists() and (dest / "pkg.mf").read_text().startswith(
            "SHA512")
    assert any(line.startswith("node1: disk 0") for line in cli.out), cli.out


def test_export_into_output_dir_on_the_primary(tmp_path: Path):
    dev = tmp_path / "disk0"
    _device_image(dev, 0)
    req = ExportRequest(disk_format="vmdk", ova=True)
    data = nodecmd.request_json(_row("db"), [str(dev)], req, str(tmp_path))
    path = run_pipeline(_Cli(), [("node1", nodecmd.helper_argv("export"))], data)
    assert path == str(tmp_path / "db.ova")
    assert report.verify_package(path)[0] == []


def test_failure_on_the_primary_leaves_nothing_on_the_target(tmp_path: Path):
    dev = tmp_path / "disk0"
    dev.write_bytes(b"\0" * (DISK_MIB * MIB - 4096))  # smaller than Ganeti's size
    out = tmp_path / "target"
    out.mkdir()
    staging_root = tmp_path / "staging"
    data = nodecmd.request_json(_row("bad"), [str(dev)], ExportRequest(ova=True), None)
    data = data[:-1] + f', "staging_root": "{staging_root}"}}'.encode()
    with pytest.raises(ClusterError) as e:
        run_pipeline(_Cli(), [("node1", nodecmd.helper_argv("export")),
                              ("node2", nodecmd.helper_argv("receive", str(out / "bad.ova"),
                                                            "--ova"))], data)
    assert "smaller than the disk size" in str(e.value)
    assert os.listdir(out) == [] and os.listdir(staging_root) == []


def test_receive_refuses_a_stream_cut_short(tmp_path: Path):
    """A tar stream that ends at a member boundary without the end marker."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        info = tarfile.TarInfo("pkg.ovf")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    buf.seek(0)
    with pytest.raises(ClusterError, match="ended early"):
        nodecmd._receive(str(tmp_path / "pkg"), False, buf)
    assert os.listdir(tmp_path) == []


def test_failure_on_the_target_is_the_one_reported(tmp_path: Path):
    """The primary loses its reader; the error shown is the target's."""
    dev = tmp_path / "disk0"
    _device_image(dev, 0)
    staging_root = tmp_path / "staging"
    data = nodecmd.request_json(_row("tgt"), [str(dev)], ExportRequest(disk_format="raw"), None)
    data = data[:-1] + f', "staging_root": "{staging_root}"}}'.encode()
    target = ["sh", "-c", "exec 0<&-; echo 'node2: No space left on device' >&2; exit 1"]
    with pytest.raises(ClusterError, match="^node2: No space left on device$"):
        run_pipeline(_Cli(), [("node1", nodecmd.helper_argv("export")), ("node2", target)],
                     data)
    assert os.listdir(staging_root) == []


def test_signing_key_lives_in_a_locked_staging_dir(tmp_path: Path, monkeypatch):
    """The node's copy of the signing key is written into a locked 0700
    working directory of the export directory (not /tmp): one a SIGKILL
    left is removed by the next run as stale staging; after the run it is
    gone."""
    root = tmp_path / "exports"
    seen = {}

    def export_with(data):
        key = Path(data["request"]["sign_key"])
        seen.update(key=key, mode=key.stat().st_mode & 0o777,
                    dir_mode=key.parent.stat().st_mode & 0o777, text=key.read_text())
        return 0

    monkeypatch.setattr(nodecmd, "_export_with", export_with)
    signing = _signing(tmp_path)
    assert nodecmd._export({"request": {}, "signing": signing,
                            "staging_root": str(root)}) == 0
    assert seen["key"].parent.parent == root and seen["key"].parent.name.startswith(
        ".ganeti-ovf-sign.")
    assert (seen["mode"], seen["dir_mode"], seen["text"]) == (0o600, 0o700, signing["key"])
    assert os.listdir(root) == []
