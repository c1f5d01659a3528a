"""What an operator sees: progress on a real terminal (a pty), the summary
line, ``--json`` and ``-q`` for import and export, usage hints, and the
small defects of issue 11, each run as the operator runs it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from make_fixtures import Appliance, DiskSpec

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ovfconverter"
MIB = 1 << 20
STATUS = re.compile(r"\r\x1b\[Kdisk (\d) (\S+): +(\d+)% [\d.]+ \w+/[\d.]+ \w+ [\d.]+ \w+/s "
                    r"ETA \d+:\d\d")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def run_on_tty(*args: str, columns: int = 0) -> tuple[int, str, str]:
    """Run with stderr (and stdin) on a new pseudo-terminal, stdout on a pipe:
    (exit status, what the terminal got, stdout)."""
    master, slave = pty.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "GANETI_OVF_PROGRESS_INTERVAL": "0.01", "TERM": "xterm"}
    p = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdin=slave,
                         stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            elif p.poll() is not None:
                break
        out = p.stdout.read().decode()
        p.wait(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return p.returncode, seen.decode("utf-8", "replace"), out


@pytest.fixture(scope="module")
def big_package(tmp_path_factory) -> Path:
    """A directory package with one disk big enough to be watched converting."""
    import make_fixtures
    out = tmp_path_factory.mktemp("pkg")
    path, _ = make_fixtures.build_package(
        Appliance(name="watch", disks=[DiskSpec(48 * MIB, "vmdk"), DiskSpec(2 * MIB, "qcow2")]),
        str(out), ova=False)
    return Path(path)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_progress_on_a_terminal(big_package, tmp_path):
    code, tty, out = run_on_tty("import", str(big_package), "-o", "noop",
                                "--output-dir", str(tmp_path))
    assert code == 0, tty
    assert out == f"{tmp_path / 'watch'}\n"  # stdout stays the path alone
    shown = STATUS.findall(tty)
    assert shown, tty
    assert {d for d, _, _ in shown} == {"0"} or {d for d, _, _ in shown} == {"0", "1"}
    # Both disks convert at once; each status names its own disk.
    assert {(d, name) for d, name, _ in shown} <= {("0", "watch-disk1.vmdk"),
                                                   ("1", "watch-disk2.qcow2")}
    assert any(d == "0" for d, _, _ in shown)
    percents = [int(p) for d, _, p in shown if d == "0"]
    assert percents == sorted(percents) and percents[-1] < 100
    assert re.search(r"disk 0 watch-disk1\.vmdk: [\d.]+ MiB in [\d.]+ s \([\d.]+ \w+/s\)\r\n",
                     tty)
    assert re.search(r"disk 1 watch-disk2\.qcow2: .* in [\d.]+ s", tty)
    last = tty.rstrip("\r\n").rsplit("\r\n", 1)[-1]
    assert re.fullmatch(rf"ovfconverter: imported 'watch' into {re.escape(str(tmp_path))}"
                        r"/watch: 2 disks, 50\.0 MiB virtual, [\d.]+ \w+ written, in "
                        r"[\d.]+ s", last), last


def test_status_line_fits_a_narrow_terminal(big_package, tmp_path):
    """A wrapped status line could not be redrawn in place: it is cut to
    the terminal's width."""
    code, tty, _ = run_on_tty("import", str(big_package), "-o", "noop",
                              "--output-dir", str(tmp_path), columns=40)
    assert code == 0, tty
    drawn = [seg for seg in tty.split("\r\x1b[K") if seg and "\n" not in seg]
    assert drawn and all(len(seg) <= 39 for seg in drawn), drawn
    assert any(seg.startswith("disk 0 watch-disk1.vmdk:") for seg in drawn)


def test_quiet_on_a_terminal_shows_nothing(big_package, tmp_path):
    code, tty, out = run_on_tty("import", str(big_package), "-o", "noop", "-q",
                                "--output-dir", str(tmp_path))
    assert code == 0, tty
    assert tty == ""
    assert out.strip() == str(tmp_path / "watch")


def test_no_terminal_no_progress_but_summary(big_package, tmp_path):
    p = run("import", str(big_package), "-o", "noop", "--output-dir", str(tmp_path / "i"))
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr and "%" not in p.stderr and "ETA" not in p.stderr
    assert p.stderr.count("\n") == 1
    assert p.stderr.startswith("ovfconverter: imported 'watch' into ")
    os.chdir(tmp_path)
    e = run("export", str(tmp_path / "i" / "watch"), "--ova", "--output-dir", str(tmp_path))
    assert e.returncode == 0, e.stderr
    assert re.fullmatch(rf"ovfconverter: exported OVA {re.escape(str(tmp_path))}/watch\.ova: "
                        r"4 files, [\d.]+ \w+, in [\d.]+ s\n", e.stderr), e.stderr


def test_import_and_export_json(big_package, tmp_path):
    p = run("import", str(big_package), "-o", "noop", "--json", "-q",
            "--output-dir", str(tmp_path))
    assert p.returncode == 0 and p.stderr == "", p.stderr
    res = json.loads(p.stdout)
    dest = tmp_path / "watch"
    assert res["path"] == str(dest) and res["name"] == "watch" and res["os"] == "noop"
    assert res["config"] == str(dest / "config.ini")
    assert [d["dump"] for d in res["disks"]] == [str(dest / "disk0.raw"), str(dest / "disk1.raw")]
    assert [d["size"] for d in res["disks"]] == [48 * MIB, 2 * MIB]
    for d in res["disks"]:
        assert d["written"] == os.stat(d["dump"]).st_blocks * 512 > 0
    src = big_package.parent
    assert res["package_digests"] == {
        name: "SHA256:" + sha256(src / name)
        for name in ("watch.ovf", "watch-disk1.vmdk", "watch-disk2.qcow2")}
    assert res["seconds"] > 0

    e = run("export", str(dest), "--json", "-q", "--output-dir", str(tmp_path / "out"))
    assert e.returncode == 0 and e.stderr == "", e.stderr
    exp = json.loads(e.stdout)
    pkg = tmp_path / "out" / "watch"
    assert exp["path"] == str(pkg) and exp["ova"] is False
    assert [f["name"] for f in exp["files"]] == ["watch.ovf", "watch.mf", "watch-disk0.vmdk",
                                                 "watch-disk1.vmdk"]
    for f in exp["files"]:
        assert f["size"] == (pkg / f["name"]).stat().st_size
        if f["name"] != "watch.mf":
            assert f["digest"] == "SHA256:" + sha256(pkg / f["name"])
    assert exp["size"] == sum(f["size"] for f in exp["files"])
    assert [d["index"] for d in exp["disks"]] == [0, 1]


# -- the small defects ----------------------------------------------------------

@pytest.mark.parametrize("args,hint", [
    (["import"], "(see 'ovfconverter import --help')"),
    (["export", "x", "--format", "vdi"], "(see 'ovfconverter export --help')"),
    (["bogus"], "(see 'ovfconverter --help')"),
    (["import", "x.ova", "--disk", "a:size=1G"], "(see 'ovfconverter import --help')"),
])
def test_usage_errors_hint_at_help(args, hint):
    p = run(*args)
    assert p.returncode == 2
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ovfconverter: error: ")
    assert lines[0].endswith(hint)


def test_failures_give_no_help_hint(tmp_path):
    p = run("info", str(tmp_path / "missing.ova"))
    assert p.returncode == 1 and "--help" not in p.stderr


def test_verify_of_a_missing_file_is_an_error_like_info(tmp_path):
    missing = tmp_path / "missing.ova"
    info, verify = run("info", str(missing)), run("verify", str(missing))
    assert verify.returncode == info.returncode == 1  # not 3: nothing was verified
    assert verify.stderr == info.stderr == (
        f"ovfconverter: error: {missing}: cannot open: No such file or directory\n")
    j = run("verify", "--json", str(missing))
    assert j.returncode == 1 and j.stdout == ""


EMPTY_VAPP = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
          xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References/>
  <NetworkSection><Info>networks</Info>
    <Network ovf:name="LAN"><Description>the office</Description></Network>
  </NetworkSection>
  <VirtualSystemCollection ovf:id="shop">
    <Info>a vApp shell</Info>
  </VirtualSystemCollection>
</Envelope>
"""


def test_info_shows_an_empty_collection_import_refuses_it(tmp_path):
    ovf = tmp_path / "shop.ovf"
    ovf.write_text(EMPTY_VAPP)
    p = run("info", str(ovf))
    assert p.returncode == 0, p.stderr
    assert "Network: LAN - the office" in p.stdout
    assert "Virtual systems: none (nothing to import)" in p.stdout
    assert "VirtualSystemCollection 'shop' holds none" in p.stdout
    j = json.loads(run("info", "--json", str(ovf)).stdout)
    assert j["systems"] == [] and j["networks"][0]["name"] == "LAN"
    i = run("import", str(ovf), "-o", "noop", "--output-dir", str(tmp_path / "o"))
    assert i.returncode == 1
    assert i.stderr == (f"ovfconverter: error: {ovf}: no VirtualSystem in the descriptor "
                        "(VirtualSystemCollection 'shop' holds none); nothing to import\n")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    empty = tmp_path / "empty.ovf"  # no collection either: still not a descriptor to show
    empty.write_text(EMPTY_VAPP.split("  <VirtualSystemCollection")[0] + "</Envelope>\n")
    assert run("info", str(empty)).returncode == 1


def test_man_page_synopsis_has_no_literal_markup(tmp_path):
    pytest.importorskip("docutils")
    sys.path.insert(0, str(ROOT / "tools"))
    import build_man
    for page in build_man.build_all(str(tmp_path), "1"):
        text = Path(page).read_text()
        synopsis = [ln for ln in text.splitlines() if not ln.startswith(".")]
        stray = [ln for ln in synopsis if re.search(r"(?<!\\)\*\w|\w\*(?!\w)", ln)]
        assert stray == [], stray
    text = (tmp_path / "ovfconverter.1").read_text()
    assert r"[\-\-disk \fIN\fP:size=\fIsize\fP]" in text


@pytest.mark.parametrize("fail", [False, True], ids=["success", "failure"])
def test_demo_removes_its_work_dir(tmp_path, fail):
    """tools/demo.sh (without the cluster part) leaves nothing in TMPDIR,
    whether it ends well or fails half-way (a qemu-img that fails)."""
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "SKIP_SETUP": "1",
           "DEMO_CLUSTER": "0"}
    (tmp_path / "tmp").mkdir()
    if fail:
        fake = tmp_path / "bin" / "qemu-img"
        fake.parent.mkdir()
        fake.write_text("#!/bin/sh\necho 'qemu-img: broken on purpose' >&2\nexit 1\n")
        fake.chmod(0o755)
        env["PATH"] = f"{fake.parent}:{env['PATH']}"
    p = subprocess.run(["bash", str(ROOT / "tools" / "demo.sh")], capture_output=True,
                       text=True, env=env, timeout=300)
    assert f"== building an appliance in {tmp_path / 'tmp'}/ganeti-ovf-demo." in p.stdout
    if fail:
        assert p.returncode != 0
    else:
        assert p.returncode == 0, p.stdout + p.stderr
        assert "== ovfconverter verify" in p.stdout and "config.ini" in p.stdout
    assert list((tmp_path / "tmp").iterdir()) == []


def test_no_stray_files_in_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    names = tracked.stdout.split()
    assert "ext.data" not in names
    big = [n for n in names if (ROOT / n).is_file() and (ROOT / n).stat().st_size > 1 * MIB]
    assert big == []


def test_shared_skips_say_why(tmp_path):
    """Without ../shared, the summary names it: a copy of the project's test
    layout beside no shared/ runs the corpus tests."""
    proj = tmp_path / "proj"
    (proj / "tests" / "corpus").mkdir(parents=True)
    (proj / "tools").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", proj / "tests")
    shutil.copy(ROOT / "tests" / "corpus" / "test_corpus.py", proj / "tests" / "corpus")
    shutil.copy(ROOT / "tools" / "make_fixtures.py", proj / "tools")
    shutil.copy(ROOT / "pyproject.toml", proj)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/corpus"], cwd=proj, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"SKIPPED \[\d+\] .*shared", r.stdout), r.stdout
    assert re.search(r"\d+ skipped: \.\./shared \(.*\) is absent", r.stdout), r.stdout


def test_export_json_in_the_current_directory(big_package, tmp_path):
    """The default output dir (.) gives relative paths; --json still reads
    the package it wrote."""
    assert run("import", str(big_package), "-o", "noop", "-q",
               "--output-dir", str(tmp_path)).returncode == 0
    (tmp_path / "cwd").mkdir()
    p = subprocess.run([sys.executable, str(SCRIPT), "export", str(tmp_path / "watch"),
                        "--json", "-f", "raw"], cwd=tmp_path / "cwd", capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["path"] == "./watch" and res["descriptor"] == "./watch/watch.ovf"
    assert {f["name"]: f["size"] for f in res["files"]}["watch-disk0.raw"] == 48 * MIB
