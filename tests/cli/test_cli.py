"""``ovfconverter`` as an operator runs it: a subprocess, its exit status,
its output, and exactly one stderr line per failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from make_fixtures import Appliance, DiskSpec

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ovfconverter"), *args],
                          capture_output=True, text=True, env=env, timeout=120)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


@pytest.fixture
def fake_ganeti(tmp_path, os_path):
    """A Ganeti dir whose OS search path is the test's OS dir (no cluster)."""
    from conftest import make_ganeti_dir

    return make_ganeti_dir(tmp_path, os_path)


def test_import_success_prints_path(build, tmp_path, fake_ganeti):
    pkg, _ = build(Appliance(name="cli1", disks=[DiskSpec(MIB, "vmdk")]))
    p = run("import", pkg, "-o", "noop", env_extra=fake_ganeti)
    assert p.returncode == 0, p.stderr
    out = tmp_path / "exports" / "cli1"  # default: Ganeti's export dir
    assert p.stdout.strip() == str(out)
    assert (out / "config.ini").is_file()


def test_upstream_style_options_after_file(build, tmp_path, fake_ganeti):
    pkg, _ = build(Appliance(name="cli2", disks=[DiskSpec(MIB, "raw")]))
    out = tmp_path / "o"
    p = run("import", pkg, "--os-type=noop", "-n", "renamed", "-t", "file", "--disk", "0:size=2G",
            "-B", "maxmem=1G,vcpus=2", "-H", "kvm:kernel_path=", "--net", "0:mac=generate,link=br0",
            "--tags", "a,b", "--output-dir", str(out), "-v", env_extra=fake_ganeti)
    assert p.returncode == 0, p.stderr
    ini = (out / "renamed" / "config.ini").read_text()
    for line in ("disk0_size = 2048", "maxmem = 1024", "vcpus = 2", "hypervisor = kvm",
                 "kernel_path = ", "nic0_link = br0", "tags = a b", "disk_template = file"):
        assert line in ini, line
    assert "disk 0:" in p.stderr  # -v tells what is done


@pytest.mark.parametrize("args,code,needle", [
    (["import"], 2, "the following arguments are required: PACKAGE"),
    (["import", "X.ova", "--disk", "a:size=1G"], 2, "--disk a: the index must be a number"),
    (["import", "X.ova", "--disk", "0:size=lots"], 2, "invalid size 'lots'"),
    (["import", "X.ova", "--net", "0:mac=generate", "--no-nics"], 2, "exclude each other"),
    (["import", "X.ova", "--net", "1:link=br0"], 2, "without gaps"),
    (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
])
def test_usage_errors(args, code, needle, fake_ganeti):
    p = run(*args, env_extra=fake_ganeti)
    assert p.returncode == code
    assert needle in one_error_line(p)


def test_missing_package(tmp_path, fake_ganeti):
    p = run("import", str(tmp_path / "nope.ova"), "-o", "noop", env_extra=fake_ganeti)
    assert p.returncode == 1
    assert one_error_line(p) == (f"ovfconverter: error: {tmp_path / 'nope.ova'}: cannot open: "
                                 "No such file or directory")


def test_unknown_os_one_line_lists_valid(build, tmp_path, fake_ganeti):
    pkg, _ = build(Appliance(name="c3"))
    p = run("import", pkg, "-o", "windows", "--output-dir", str(tmp_path / "o"),
            env_extra=fake_ganeti)
    assert p.returncode == 1
    assert one_error_line(p) == (f"ovfconverter: error: {pkg}: unknown OS 'windows'; valid OS "
                                 "names: image+default, image+minimal, noop")
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")


def test_tampered_package_exit_3_and_debug_traceback(build, tmp_path, fake_ganeti):
    pkg, _ = build(Appliance(name="c4", disks=[DiskSpec(MIB, "raw")]), ova=False)
    disk = Path(pkg).parent / "c4-disk1.raw"
    data = bytearray(disk.read_bytes())
    data[100] ^= 0xFF
    disk.write_bytes(bytes(data))
    p = run("import", pkg, "-o", "noop", "--output-dir", str(tmp_path / "o"),
            env_extra=fake_ganeti)
    assert p.returncode == 3
    assert "digest of 'c4-disk1.raw' does not match the manifest" in one_error_line(p)
    p = run("import", pkg, "-o", "noop", "--output-dir", str(tmp_path / "o"), "--debug",
            env_extra=fake_ganeti)
    assert p.returncode == 3 and "Traceback" in p.stderr
    p = run("verify", pkg, env_extra=fake_ganeti)
    assert p.returncode == 3
    assert "does not match the manifest" in p.stderr


def test_info_json(build, fake_ganeti):
    pkg, _ = build(Appliance(name="c5", cpus=4, memory_mib=512,
                             disks=[DiskSpec(2 * MIB, "qcow2")],
                             nics=[("A", "00:11:22:33:44:55"), ("A", None)]))
    p = run("info", "--json", pkg, env_extra=fake_ganeti)
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    vs = d["systems"][0]
    assert (vs["cpus"], vs["memory"]) == (4, 512 * MIB)
    assert vs["disks"][0]["format"] == "qcow2" and vs["disks"][0]["virtual_size"] == 2 * MIB
    assert [n["mac"] for n in vs["nics"]] == ["00:11:22:33:44:55", None]
    assert d["manifest"]["algorithms"] == ["SHA256"] and not d["manifest"]["problems"]
    text = run("info", pkg, env_extra=fake_ganeti).stdout
    assert "CPUs: 4" in text and "Memory: 512 MiB" in text
    assert "Manifest: c5.mf (SHA256): OK" in text


def test_verify_ok_and_json(build, fake_ganeti):
    pkg, _ = build(Appliance(name="c6"))
    p = run("verify", pkg, env_extra=fake_ganeti)
    assert p.returncode == 0 and "ok: manifest c6.mf: 2 digest(s) match" in p.stdout
    d = json.loads(run("verify", "--json", pkg, env_extra=fake_ganeti).stdout)
    assert d["ok"] is True and d["problems"] == []


def test_verify_collects_every_problem(build, tmp_path, fake_ganeti):
    pkg, _ = build(Appliance(name="c7", disks=[DiskSpec(MIB, "raw"), DiskSpec(MIB, "raw", seed=3)]),
                   ova=False)
    d = Path(pkg).parent
    (d / "c7-disk1.raw").write_bytes(b"x" * 10)  # wrong size and digest
    (d / "c7-disk2.raw").unlink()  # missing
    p = run("verify", "--json", pkg, env_extra=fake_ganeti)
    assert p.returncode == 3
    problems = json.loads(p.stdout)["problems"]
    assert any("'c7-disk1.raw' is 10 bytes" in x for x in problems)
    assert any("c7-disk2.raw" in x and "not in the package" in x for x in problems)
    assert any("SHA256 digest of 'c7-disk1.raw'" in x for x in problems)


def test_os_list(fake_ganeti):
    p = run("os-list", env_extra=fake_ganeti)
    assert p.returncode == 0 and p.stdout.split() == ["image+default", "image+minimal", "noop"]
    assert json.loads(run("os-list", "--json", env_extra=fake_ganeti).stdout) == [
        "image+default", "image+minimal", "noop"]


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_mid_conversion_leaves_nothing(build, tmp_path, fake_ganeti, mocker, signame,
                                             capsys, monkeypatch):
    """kill, a dropped ssh session or Ctrl-C while a disk is half converted:
    exit 130 and no output at all."""
    import signal

    from ganeti_ovf import cli, disks

    pkg, _ = build(Appliance(name="c8", disks=[DiskSpec(MIB, "raw"), DiskSpec(MIB, "vmdk")]))
    real = disks.convert_to_raw

    def convert_then_signal(*a, **kw):
        real(*a, **kw)
        os.kill(os.getpid(), getattr(signal, signame))

    mocker.patch.object(disks, "convert_to_raw", side_effect=convert_then_signal)
    for k, v in fake_ganeti.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "o"
    code = cli.main(["import", pkg, "-o", "noop", "--output-dir", str(out)])
    assert code == 130
    assert os.listdir(out) == []
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ovfconverter: interrupted; nothing was left behind"]
