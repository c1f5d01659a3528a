"""Fault injection on the real command: SIGINT, SIGTERM and SIGKILL at
points of a running export or import, a signal at start-up or right after
the output is in place, and a file system that fills up.

Every run is the real ``scripts/ovfconverter`` in a subprocess on real
data (a 256 MiB dump of incompressible, non-zero bytes, so an export takes
seconds); the checks are what an operator sees: the exit status, one line
on stderr, the output directory's listing, the modes of what is written,
and that a rerun succeeds.  Mocks only for a signal at an exact moment.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_export import SAMPLES, make_export

from ganeti_ovf import cli, staging

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "ovfconverter")
MIB = 1 << 20
BIG_MIB = 256
PREFIX = ".ganeti-ovf-"
INTERRUPTED = "ovfconverter: interrupted; nothing was left behind"


# ------------------------------------------------------------ fixtures

def _big_export(top: Path) -> Path:
    """An export directory whose one dump is BIG_MIB of data (no holes, no
    zeros, incompressible per grain)."""
    d = top / "big"
    d.mkdir()
    cfg = (SAMPLES / "plain" / "config.ini").read_text()
    (d / "config.ini").write_text(cfg.replace("disk0_size = 64", f"disk0_size = {BIG_MIB}"))
    block = os.urandom(MIB)
    with open(d / "b4ff6b36-d2e4-4e71-9f58-5272a4f0488b", "wb") as f:
        for i in range(BIG_MIB):
            f.write(block[i:] + block[:i])
    return d


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    return _big_export(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def ganeti_env(tmp_path_factory) -> dict[str, str]:
    """A Ganeti dir whose OS search path holds 'noop' (no cluster)."""
    from conftest import make_ganeti_dir, make_os_dir

    top = tmp_path_factory.mktemp("ganeti")
    make_os_dir(top / "os", "noop", api="10", scripts=("create", "export", "import", "rename"))
    return {**os.environ, **make_ganeti_dir(top, [str(top / "os")])}


@pytest.fixture(scope="module")
def big_ova(big, tmp_path_factory) -> Path:
    """Our own OVA of the big dump (streamOptimized VMDK, which our own
    reader converts): its import takes a second or more."""
    return _export_ova(big, tmp_path_factory.mktemp("big-ova"))


@pytest.fixture(scope="module")
def big_qcow2_ova(big, tmp_path_factory) -> Path:
    """The same as a qcow2 disk: its import runs qemu-img convert."""
    return _export_ova(big, tmp_path_factory.mktemp("big-qcow2-ova"), "--format", "qcow2")


def _export_ova(big: Path, out: Path, *args: str) -> Path:
    p = subprocess.run([sys.executable, SCRIPT, "export", "--ova", "--external", *args,
                        str(big), "--output-dir", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    return out / "qa-src.ova"


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(p: subprocess.Popen) -> tuple[int, list[str]]:
    _out, err = p.communicate(timeout=300)
    return p.returncode, [ln for ln in err.splitlines() if ln.strip()]


def staged_modes(out: Path) -> list[str]:
    """What is in ``out`` mid-run, checked: only our staging directories,
    mode 0700, holding files of mode 0600.  Returns their names."""
    names = os.listdir(out)
    for name in names:
        st = os.lstat(out / name)
        assert name.startswith(PREFIX), names
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, name
        for dirpath, dirs, files in os.walk(out / name):
            for f in files:
                with_mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, f)).st_mode)
                assert with_mode == 0o600, (f, oct(with_mode))
            for d in dirs:
                assert stat.S_IMODE(os.lstat(os.path.join(dirpath, d)).st_mode) == 0o700
    return names


def wait_for_data(out: Path, proc: subprocess.Popen, bound: float = 60) -> None:
    """Until a staging directory in ``out`` holds a file with data."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        assert proc.poll() is None, "finished before it could be interrupted"
        for dirpath, _dirs, files in os.walk(out):
            if any(os.lstat(os.path.join(dirpath, f)).st_blocks for f in files):
                return
        time.sleep(0.02)
    raise AssertionError("no data was written")


def wait_for_orphans(out: Path, bound: float = 120) -> None:
    """Until no process still names ``out`` (a qemu-img a SIGKILLed import
    left running; see PR_SET_PDEATHSIG elsewhere)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound:
        busy = False
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                busy |= str(out).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
        if not busy:
            return
        time.sleep(0.1)


# ------------------------------------------------------------ SIGINT / SIGTERM

@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_ova_export_leaves_nothing_and_a_rerun_succeeds(big, tmp_path, signame):
    """At 0.3, 1 and 2 s into a compressed OVA export: exit 130, the one
    line, an unchanged output directory; mid-run, only a 0700 staging
    directory holding 0600 files was there."""
    out = tmp_path / "out"
    out.mkdir()
    seen = []
    for delay in (0.3, 1.0, 2.0):
        p = start("export", "--ova", "--compress", str(big), "--output-dir", str(out))
        time.sleep(delay)
        seen += staged_modes(out)
        p.send_signal(getattr(signal, signame))
        code, err = finish(p)
        assert (code, err) == (130, [INTERRUPTED]), delay
        assert os.listdir(out) == [], delay
    assert seen, "the signal never landed while something was being written"
    p = start("export", "--ova", "--compress", str(big), "--output-dir", str(out), "-q")
    code, err = finish(p)
    assert code == 0, err
    assert os.listdir(out) == ["qa-src.ova"]
    assert stat.S_IMODE(os.stat(out / "qa-src.ova").st_mode) == 0o600


def test_interrupted_directory_export_leaves_nothing(big, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p = start("export", "--compress", str(big), "--output-dir", str(out))
    wait_for_data(out, p)
    staged_modes(out)
    p.send_signal(signal.SIGHUP)
    assert finish(p) == (130, [INTERRUPTED])
    assert os.listdir(out) == []


def test_interrupted_import_leaves_nothing(big_ova, tmp_path, ganeti_env):
    out = tmp_path / "out"
    out.mkdir()
    p = start("import", str(big_ova), "-o", "noop", "--output-dir", str(out), env=ganeti_env)
    wait_for_data(out, p)
    staged_modes(out)
    p.send_signal(signal.SIGTERM)
    assert finish(p) == (130, [INTERRUPTED])
    wait_for_orphans(out)
    assert os.listdir(out) == []


def test_signal_at_start_up_gives_one_line_and_no_traceback(big, tmp_path):
    """A Ctrl-C while the modules load (the first ~0.2 s): exit 130, one line.
    Delays count from when the script starts (Python's own start-up before
    it, in which no code of ours runs, is Python's)."""
    out = tmp_path / "out"
    out.mkdir()
    harness = ("import os, signal, sys\nsys.argv = sys.argv[1:]\n"
               "code = compile(open(sys.argv[0]).read(), sys.argv[0], 'exec')\n"
               "os.write(1, b'go\\n')\n"
               "exec(code, {'__name__': '__main__', '__file__': sys.argv[0]})\n")
    for delay in (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.16, 0.2):
        p = subprocess.Popen([sys.executable, "-c", harness, SCRIPT, "export", "--ova",
                              "--compress", str(big), "--output-dir", str(out)],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline() == "go\n"
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        code, err = finish(p)
        assert not any("Traceback" in ln or "KeyboardInterrupt" in ln for ln in err), \
            (delay, err)
        assert (code, err) == (130, [INTERRUPTED]), delay
        assert os.listdir(out) == []


# ------------------------------------------------------------ a signal once it is done

@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_signal_right_after_import_is_published_keeps_success(build, tmp_path, mocker,
                                                             monkeypatch, capsys, signame,
                                                             ganeti_env):
    """The instant the import's output is renamed into place the command has
    succeeded: a signal then is no failure (exit 0, output kept)."""
    from make_fixtures import Appliance, DiskSpec

    pkg, _ = build(Appliance(name="late", disks=[DiskSpec(MIB, "vmdk")]))
    monkeypatch.setenv("GANETI_OVF_GANETI_DIR", ganeti_env["GANETI_OVF_GANETI_DIR"])
    real = os.rename

    def rename_then_signal(src, dst, *a, **kw):
        real(src, dst, *a, **kw)
        if os.path.basename(dst) == "late":
            os.kill(os.getpid(), getattr(signal, signame))

    mocker.patch.object(staging.os, "rename", side_effect=rename_then_signal)
    out = tmp_path / "o"
    code = cli.main(["import", pkg, "-o", "noop", "--output-dir", str(out), "-q"])
    cap = capsys.readouterr()
    assert (code, cap.err) == (0, "")
    assert cap.out.strip() == str(out / "late")
    assert sorted(os.listdir(out / "late")) == ["config.ini", "disk0.raw"]


def test_signal_right_after_ova_export_is_published_keeps_success(tmp_path, mocker, capsys):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    real = os.link

    def link_then_signal(src, dst, *a, **kw):
        real(src, dst, *a, **kw)
        os.kill(os.getpid(), signal.SIGINT)

    mocker.patch.object(staging.os, "link", side_effect=link_then_signal)
    out = tmp_path / "o"
    code = cli.main(["export", "--ova", str(export), "--output-dir", str(out), "-q"])
    assert (code, capsys.readouterr().err) == (0, "")
    assert os.listdir(out) == ["qa-src.ova"]


# ------------------------------------------------------------ SIGKILL

def _leftovers(out: Path) -> list[str]:
    return sorted(n for n in os.listdir(out) if n.startswith(PREFIX))


def test_sigkill_mid_export_is_cleaned_by_the_next_run(big, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    p = start("export", "--ova", "--compress", str(big), "--output-dir", str(out))
    wait_for_data(out, p)
    p.kill()
    p.communicate(timeout=60)
    left = _leftovers(out)
    assert len(left) == 1 and os.listdir(out) == left
    small = make_export(tmp_path, SAMPLES / "plain" / "config.ini", name="small")
    code, err = finish(start("export", "--ova", str(small), "--output-dir", str(out), "-q",
                             "-n", "other"))
    assert code == 0, err
    assert err == [f"ovfconverter: WARNING: {out / left[0]}: removed, left by a run that "
                   "was killed"]
    assert os.listdir(out) == ["other.ova"]


def test_sigkill_mid_import_is_cleaned_by_the_next_run(big_ova, tmp_path, ganeti_env):
    out = tmp_path / "out"
    out.mkdir()
    p = start("import", str(big_ova), "-o", "noop", "--output-dir", str(out), env=ganeti_env)
    wait_for_data(out, p)
    p.kill()
    p.communicate(timeout=60)
    wait_for_orphans(out)
    left = _leftovers(out)
    assert len(left) == 1 and os.listdir(out) == left
    code, err = finish(start("import", str(big_ova), "-o", "noop", "--output-dir", str(out),
                             "-q", env=ganeti_env))
    assert code == 0, err
    assert err == [f"ovfconverter: WARNING: {out / left[0]}: removed, left by a run that "
                   "was killed"]
    assert os.listdir(out) == ["qa-src"]
    assert stat.S_IMODE(os.stat(out / "qa-src").st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in (out / "qa-src").iterdir()} == {0o600}


def test_only_dead_runs_staging_is_removed(tmp_path):
    """A staging directory whose lock a live process holds, one of another
    user, one with another mode, and a link named like ours stay untouched;
    only the dead run's goes."""
    out = tmp_path / "out"
    out.mkdir()

    def mk(name: str, mode: int = 0o700) -> Path:
        d = out / f"{PREFIX}{name}.abcd1234"
        d.mkdir()
        d.chmod(mode)
        (d / "data").write_bytes(b"guest data")
        return d

    live = mk("live")
    foreign = mk("foreign")
    os.chown(foreign, 12345, 12345)
    loose = mk("loose", 0o755)
    dead = mk("dead")
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    (target / "keep").write_text("keep")
    (out / f"{PREFIX}link.abcd1234").symlink_to(target)
    held = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        small = make_export(tmp_path, SAMPLES / "plain" / "config.ini", name="small")
        code, err = finish(start("export", "--ova", str(small), "--output-dir", str(out),
                                 "-q"))
    finally:
        os.close(held)
    assert code == 0, err
    assert err == [f"ovfconverter: WARNING: {dead}: removed, left by a run that was killed"]
    assert sorted(os.listdir(out)) == sorted([live.name, foreign.name, loose.name,
                                              f"{PREFIX}link.abcd1234", "qa-src.ova"])
    for d in (live, foreign, loose):
        assert (d / "data").read_bytes() == b"guest data"
    assert (target / "keep").read_text() == "keep"


# ------------------------------------------------------------ a full file system

@pytest.fixture
def small_fs(tmp_path):
    """A real 16 MiB tmpfs (needs root, as the CI has)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("fmt", ["raw", "vmdk"])
def test_gzip_disk_expanding_past_the_free_space(tmp_path, small_fs, ganeti_env, fmt):
    """A 64 MiB disk that compresses to almost nothing, imported onto 16 MiB:
    one line naming the mount point and the file; nothing left behind.  A
    raw disk fills up while it is decompressed, a VMDK while our reader
    inflates it."""
    export = tmp_path / "src"
    export.mkdir()
    shutil.copy(SAMPLES / "plain" / "config.ini", export / "config.ini")
    dump = export / "b4ff6b36-d2e4-4e71-9f58-5272a4f0488b"
    dump.write_bytes(b"\x01" * (64 * MIB))
    pkgs = tmp_path / "pkgs"
    code, err = finish(start("export", "--ova", "--external", "-f", fmt, "--compress",
                             str(export),
                             "--output-dir", str(pkgs), "-q"))
    assert code == 0, err
    assert os.path.getsize(pkgs / "qa-src.ova") < MIB
    code, err = finish(start("import", str(pkgs / "qa-src.ova"), "-o", "noop",
                             "--output-dir", str(small_fs), "-q", env=ganeti_env))
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"ovfconverter: error: {small_fs}/{PREFIX}qa-src.")
    assert err[0].endswith(": cannot write: no space left on the file system mounted at "
                           f"{small_fs}")
    assert os.listdir(small_fs) == []


@pytest.mark.parametrize("ova", [True, False], ids=["ova", "dir"])
def test_export_running_out_of_space(tmp_path, small_fs, monkeypatch, capsys, ova):
    """The free-space estimate is an upper bound, so only a disk that fills
    up meanwhile hits ENOSPC; the estimate is skipped to get there."""
    from ganeti_ovf import exporter

    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    monkeypatch.setattr(exporter, "check_free_space", lambda *a, **kw: None)
    code = cli.main(["export", str(export), "-f", "raw", "--output-dir", str(small_fs)]
                    + (["--ova"] if ova else []))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"ovfconverter: error: {small_fs}/{PREFIX}qa-src")
    assert err[0].endswith(f"cannot write: no space left on the file system mounted at "
                           f"{small_fs}")
    assert os.listdir(small_fs) == []


def test_older_versions_leftovers_are_named_not_removed(tmp_path):
    """Before staging directories were locked, a killed export left a hidden
    ``.NAME.ova.new-XXXXXXXX`` file: whose it is cannot be told, so it is
    named (a warning) and left for the operator."""
    out = tmp_path / "out"
    out.mkdir()
    old = out / ".qa-src.ova.new-ab_cd123"
    old.write_bytes(b"partial")
    small = make_export(tmp_path, SAMPLES / "plain" / "config.ini", name="small")
    code, err = finish(start("export", "--ova", str(small), "--output-dir", str(out), "-q",
                             "-n", "other"))
    assert code == 0, err
    assert err == [f"ovfconverter: WARNING: {old}: may be left by an interrupted run of an "
                   "older version; remove it if no conversion is running"]
    assert sorted(os.listdir(out)) == [old.name, "other.ova"]


def test_published_package_directory_modes(tmp_path):
    """A package directory is 0700 with 0600 files, like the staging it was."""
    small = make_export(tmp_path, SAMPLES / "plain" / "config.ini", name="small")
    out = tmp_path / "out"
    code, err = finish(start("export", str(small), "--output-dir", str(out), "-q"))
    assert code == 0, err
    pkg = out / "qa-src"
    assert stat.S_IMODE(pkg.stat().st_mode) == 0o700
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in pkg.iterdir()} == {
        "qa-src.ovf": 0o600, "qa-src.mf": 0o600, "qa-src-disk0.vmdk": 0o600}


def test_directory_appearing_at_the_last_moment_is_not_replaced(tmp_path, mocker):
    """An (empty) directory created under the output's name while the export
    ran is not replaced by the final rename, which rename(2) alone would do."""
    from ganeti_ovf.errors import ExportDirError
    from ganeti_ovf.exporter import ExportRequest, export_package

    small = make_export(tmp_path, SAMPLES / "plain" / "config.ini", name="small")
    out = tmp_path / "out"
    out.mkdir()
    real = os.path.lexists

    def appears(path):
        if os.path.basename(path) == "qa-src" and any(
                n.startswith(PREFIX) for n in os.listdir(out)):
            os.makedirs(path, exist_ok=True)  # someone else's, right after the check
            return False
        return real(path)

    mocker.patch.object(staging.os.path, "lexists", side_effect=appears)
    with pytest.raises(ExportDirError, match="appeared while we worked; not replaced"):
        export_package(str(small), str(out), ExportRequest())
    assert os.listdir(out) == ["qa-src"] and os.listdir(out / "qa-src") == []


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def _qemu_img_of(pid: int) -> int:
    """The qemu-img convert (maybe behind its resource-limit trampoline)."""
    for child in _children(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"convert" in argv:
            return child
    raise LookupError


def test_qemu_img_killed_mid_import(big_qcow2_ova, tmp_path, ganeti_env):
    """qemu-img dying under the import (OOM killer, an operator's kill): one
    line naming the disk and the signal, nothing left, and a rerun works."""
    out = tmp_path / "out"
    out.mkdir()
    p = start("import", str(big_qcow2_ova), "-o", "noop", "--output-dir", str(out),
              env=ganeti_env)
    wait_for_data(out, p)
    os.kill(_qemu_img_of(p.pid), signal.SIGKILL)
    code, err = finish(p)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("ovfconverter: error: qa-src-disk0.qcow2: qemu-img convert ")
    assert "signal 9 (SIGKILL)" in err[0] and "Traceback" not in err[0]
    assert os.listdir(out) == []
    code, err = finish(start("import", str(big_qcow2_ova), "-o", "noop", "--output-dir",
                             str(out), "-q", env=ganeti_env))
    assert (code, err) == (0, [])
    assert os.listdir(out) == ["qa-src"]


def test_output_directory_locked_by_another_program_does_not_hang(tmp_path):
    """flock(2) on the output directory by some other program: the export
    waits a few seconds for it at most, then goes on (without clean-up)."""
    small = make_export(tmp_path, SAMPLES / "plain" / "config.ini", name="small")
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{PREFIX}dead.abcd1234").mkdir(mode=0o700)
    held = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        p = start("export", "--ova", str(small), "--output-dir", str(out), "-q")
        _out, err = p.communicate(timeout=60)
    finally:
        os.close(held)
    assert (p.returncode, err) == (0, "")
    assert sorted(os.listdir(out)) == [f"{PREFIX}dead.abcd1234", "qa-src.ova"]


# ------------------------------------------------------------ gnt-backup's working dirs

_HOLD = """
import sys, time
from ganeti_ovf import staging
path, fd = staging.work_dir(sys.argv[1], sys.argv[2])
print(path, flush=True)
time.sleep(60)
"""


def _holder(parent: Path, label: str) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(parent), label],
                         stdout=subprocess.PIPE, text=True)
    return p, Path(p.stdout.readline().strip())


def test_work_dirs_of_killed_runs_go_live_ones_stay(tmp_path):
    """gnt-backup import --ovf and a node's export work in locked 0700
    directories in Ganeti's export dir: a SIGKILLed run's is removed by the
    next run, one whose lock a live process (the job's watcher) holds is
    not."""
    root = tmp_path / "export"
    root.mkdir()
    dead, dead_dir = _holder(root, "import")
    live, live_dir = _holder(root, "import")
    try:
        assert stat.S_IMODE(dead_dir.stat().st_mode) == 0o700
        (dead_dir / "disk0").write_bytes(b"guest data")
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        path, fd = staging.work_dir(str(root), "export")
        try:
            assert not dead_dir.exists()
            assert live_dir.is_dir() and Path(path).is_dir()
            assert sorted(os.listdir(root)) == sorted([live_dir.name, Path(path).name])
        finally:
            shutil.rmtree(path)
            os.close(fd)
    finally:
        live.kill()
        live.wait()



# ------------------------------------------------------------ random faults

_KINDS = {
    "export-ova": lambda big, big_ova: ["export", "--ova", "--compress", str(big)],
    "export-dir": lambda big, big_ova: ["export", "--compress", str(big)],
    "import-ova": lambda big, big_ova: ["import", str(big_ova), "-o", "noop"],
}
_WHOLE = {"export-ova": "qa-src.ova", "export-dir": "qa-src", "import-ova": "qa-src"}


def _wait_for_main(p: subprocess.Popen, bound: float = 60) -> None:
    """Until the command's main() runs: it sets umask 077 right after taking
    the signals over, which /proc shows."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < bound and p.poll() is None:
        try:
            if "Umask:\t0077" in Path(f"/proc/{p.pid}/status").read_text():
                return
        except OSError:
            return
        time.sleep(0.005)


# Seeds whose draws cover each command and each kind of signal (4: export-dir
# SIGHUP, 6: import SIGINT, 7: export-ova SIGTERM, 11: export-ova SIGKILL,
# 17: import SIGKILL); OVF_FAULT_SEEDS=a,b,... draws others.
_SEEDS = [int(s) for s in os.environ.get("OVF_FAULT_SEEDS", "4,6,7,11,17").split(",")]


@pytest.mark.parametrize("seed", _SEEDS)
def test_random_signal_at_a_random_moment(big, big_ova, tmp_path, ganeti_env, seed):
    """One of SIGINT/SIGTERM/SIGHUP/SIGKILL at a random moment (0-3 s) of a
    random one of export --ova, export to a directory and import of an OVA.
    Either the command ended first (exit 0, its output whole) or: exit 130
    with the one line and an empty directory; after SIGKILL the next run
    clears what was left, naming it.  Then a rerun succeeds, whole."""
    import random
    rnd = random.Random(seed)
    kind = rnd.choice(sorted(_KINDS))
    sig = rnd.choice([signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
    delay = rnd.uniform(0.0, 3.0)
    out = tmp_path / "out"
    out.mkdir()
    argv = [*_KINDS[kind](big, big_ova), "--output-dir", str(out), "-q"]
    what = f"seed {seed}: {kind}, {sig.name} at {delay:.2f} s"
    p = start(*argv, env=ganeti_env)
    _wait_for_main(p)  # a signal during Python's own start-up is Python's (see above)
    time.sleep(delay)
    p.send_signal(sig)
    code, err = finish(p)
    wait_for_orphans(out)
    if code == 0:
        assert os.listdir(out) == [_WHOLE[kind]], what
        return
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, what
        left = os.listdir(out)
        assert all(n.startswith(PREFIX) for n in left), (what, left)
    else:
        assert (code, err) == (130, [INTERRUPTED]), what
        assert os.listdir(out) == [], what
        left = []
    code, err = finish(start(*argv, env=ganeti_env))
    assert code == 0, (what, err)
    assert err == [f"ovfconverter: WARNING: {out / n}: removed, left by a run that was killed"
                   for n in left], what
    assert os.listdir(out) == [_WHOLE[kind]], what
