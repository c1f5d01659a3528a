#!/usr/bin/python3
"""QA of ganeti-ovf against a real Ganeti 3.0 cluster (see qa/run.sh).

Plain functions, as in Ganeti's own qa/: each docstring is the command
under test; ``assert_command`` runs a command (inside the cluster's
network namespace) and checks its exit status; state is checked with
``gnt-instance list`` fields and the bytes of the instance's disk files.
Which tests run is read from a JSON file (qa/qa-sample.json).

    qa_ovf.py --prefix PREFIX [--config qa/qa-sample.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tools"))

from make_fixtures import Appliance, DiskSpec, build_package  # noqa: E402

NS = "ovfqa"
MIB = 1 << 20
EXPORT_DIR = "/var/lib/ganeti/export"
CFG: dict = {}


class QAError(AssertionError):
    pass


def run(cmd: list[str], *, check: bool = False) -> subprocess.CompletedProcess:
    full = ["ip", "netns", "exec", NS, *cmd]
    p = subprocess.run(full, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, PATH=f"{CFG['prefix']}/sbin:" + os.environ["PATH"]))
    if check and p.returncode != 0:
        raise QAError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return p


def assert_command(cmd: list[str], *, fail: bool = False) -> subprocess.CompletedProcess:
    """Run ``cmd``; it must succeed (or, with ``fail``, fail).  A Ganeti
    import that only warns still exits 0, so WARNING lines count as failure."""
    p = run(cmd)
    warned = re.search(r"^.*WARNING.*$", p.stdout + p.stderr, re.M)
    ok = p.returncode == 0 and not warned
    if ok == fail:
        what = "succeeded" if ok else f"failed ({p.returncode})"
        raise QAError(f"{' '.join(cmd)} {what}, expected {'failure' if fail else 'success'}:\n"
                      f"{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    return p


def master() -> str:
    return run(["gnt-cluster", "getmaster"], check=True).stdout.strip()


def instance_fields(name: str) -> dict[str, str]:
    fields = ["name", "os", "be/maxmem", "be/minmem", "be/vcpus", "nic.macs", "disk.sizes",
              "tags", "disk_template", "nic.modes", "nic.links"]
    out = run(["gnt-instance", "list", "--no-headers", "--units=m", "--separator=|", "-o",
               ",".join(fields), name], check=True).stdout.strip()
    return dict(zip(fields, out.split("|"), strict=True))


def disk_files(name: str) -> list[str]:
    out = run(["gnt-instance", "activate-disks", name], check=True).stdout
    paths = [ln.split(":", 2)[2] for ln in out.splitlines() if ":disk/" in ln]
    run(["gnt-instance", "deactivate-disks", name], check=True)
    return paths


def assert_disk_equals(path: str, raw: bytes) -> None:
    with open(path, "rb") as f:
        head = f.read(len(raw))
        if hashlib.sha256(head).digest() != hashlib.sha256(raw).digest():
            raise QAError(f"{path}: first {len(raw)} bytes differ from the source image")
        while block := f.read(MIB):
            if block.count(0) != len(block):
                raise QAError(f"{path}: non-zero bytes after the image")


def remove_instance(name: str) -> None:
    run(["gnt-instance", "remove", "-f", name])


def staging_left() -> list[str]:
    if not os.path.isdir(EXPORT_DIR):
        return []
    return [n for n in os.listdir(EXPORT_DIR) if n.startswith(".ovf-")]


def instance_exists(name: str) -> bool:
    return run(["gnt-instance", "list", "--no-headers", "-o", "name", name]).returncode == 0


def _import(pkg: str, name: str, *extra: str, fail: bool = False, os_name: str | None = "noop"):
    """gnt-backup import --ovf PKG -n MASTER -t file [-o OS] EXTRA... NAME"""
    n = master()
    os_opt = ["-o", os_name] if os_name and "-o" not in extra else []
    return assert_command(["gnt-backup", "import", "--ovf", pkg, "-n", n, "-t", "file",
                           "--no-name-check", "--no-ip-check", *os_opt, *extra, name],
                          fail=fail)


# ---------------------------------------------------------------- scenarios

def TestImportVmwareOva(work: Path) -> None:
    """gnt-backup import --ovf vmware.ova -n NODE -t file INSTANCE"""
    app = Appliance(name="vmw-appliance", cpus=2, memory_mib=192,
                    disks=[DiskSpec(24 * MIB + 4096, "vmdk"), DiskSpec(6 * MIB, "vmdk", seed=7)],
                    nics=[("VM Network", "00:50:56:3a:00:01"), ("Backend", "00:50:56:3a:00:02")])
    pkg, raws = build_package(app, str(work / "vmw"), ova=True, manifest="SHA256")
    _import(pkg, "qa-vmw")
    f = instance_fields("qa-vmw")
    want = {"os": "noop", "be/maxmem": "192", "be/vcpus": "2",
            "nic.macs": "00:50:56:3a:00:01,00:50:56:3a:00:02", "disk.sizes": "25,6",
            "disk_template": "file"}
    for k, v in want.items():
        if f[k] != v:
            raise QAError(f"qa-vmw {k} = {f[k]!r}, expected {v!r}")
    for path, raw in zip(disk_files("qa-vmw"), raws, strict=True):
        assert_disk_equals(path, raw)
    if staging_left():  # removed by gnt-backup itself once the job has ended
        raise QAError(f"staging left behind: {staging_left()}")


def TestImportVirtualBoxDir(work: Path) -> None:
    """gnt-backup import --ovf vbox/appliance.ovf -o noop -n NODE -t file INSTANCE"""
    app = Appliance(name="vbox-appliance", cpus=1, memory_mib=64, style="virtualbox",
                    disks=[DiskSpec(8 * MIB, "vdi"), DiskSpec(4 * MIB, "qcow2", seed=3)],
                    nics=[("NAT", "08:00:27:12:34:56")])
    pkg, raws = build_package(app, str(work / "vbox"), ova=False, manifest="SHA1")
    _import(pkg, "qa-vbox", "-o", "noop", "--tags", "from-vbox")
    f = instance_fields("qa-vbox")
    if (f["be/maxmem"], f["be/vcpus"], f["nic.macs"], f["tags"]) != (
            "64", "1", "08:00:27:12:34:56", "from-vbox"):
        raise QAError(f"qa-vbox fields {f}")
    for path, raw in zip(disk_files("qa-vbox"), raws, strict=True):
        assert_disk_equals(path, raw)


def TestExportOvaRoundTrip(work: Path) -> None:
    """gnt-backup export --ovf --ova -n NODE INSTANCE; gnt-backup import --ovf INSTANCE.ova"""
    n = master()
    src = "qa-vmw"
    run(["gnt-instance", "add-tags", src, "qa:roundtrip"], check=True)
    out = work / "exported"
    assert_command(["gnt-backup", "export", "--ovf", "--ova", "--output-dir", str(out),
                    "-n", n, src])
    ova = out / f"{src}.ova"
    if not ova.is_file():
        raise QAError(f"{ova} not written")
    with tarfile.open(ova) as t:
        names = t.getnames()
    if not names[0].endswith(".ovf"):
        raise QAError(f"first OVA member is {names[0]!r}, not the descriptor")
    # The OS comes from the package's Ganeti section: no -o; our own
    # package, so its NIC placement and parameters are trusted.
    _import(str(ova), "qa-rt", "--net", "0:mac=generate", "--net", "1:mac=generate",
            "--trust-ganeti-section", os_name=None)
    a, b = instance_fields(src), instance_fields("qa-rt")
    for k in ("os", "be/maxmem", "be/minmem", "be/vcpus", "disk.sizes", "tags",
              "nic.modes", "nic.links"):
        if a[k] != b[k]:
            raise QAError(f"{k}: {src} has {a[k]!r}, qa-rt has {b[k]!r}")
    if len(b["nic.macs"].split(",")) != 2:
        raise QAError(f"qa-rt NICs {b['nic.macs']!r}")
    for pa, pb in zip(disk_files(src), disk_files("qa-rt"), strict=True):
        if _sha(pa) != _sha(pb):
            raise QAError(f"disk bytes differ: {pa} vs {pb}")


def TestExportRefusesRunning(work: Path) -> None:
    """gnt-backup export --ovf -n NODE RUNNING-INSTANCE (fails: disks in use)"""
    n = master()
    run(["gnt-instance", "startup", "qa-rt"], check=True)
    try:
        p = assert_command(["gnt-backup", "export", "--ovf", "--output-dir", str(work / "r"),
                            "-n", n, "qa-rt"], fail=True)
        if "is running; shut it down first" not in p.stderr:
            raise QAError(f"unexpected error: {p.stderr!r}")
        if (work / "r").exists() and os.listdir(work / "r"):
            raise QAError("a package was written for a running instance")
    finally:
        run(["gnt-instance", "shutdown", "--timeout=0", "qa-rt"], check=True)


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MIB):
            h.update(block)
    return h.hexdigest()


def TestFailUnknownOs(work: Path) -> None:
    """gnt-backup import --ovf plain.ova -o windows ... (fails, lists valid OSes)"""
    pkg, _ = build_package(Appliance(name="plain"), str(work / "plain"), ova=True)
    p = _import(pkg, "qa-bad-os", "-o", "windows", fail=True)
    if "unknown OS 'windows'" not in p.stderr or "noop" not in p.stderr:
        raise QAError(f"unexpected error: {p.stderr!r}")
    if instance_exists("qa-bad-os") or staging_left():
        raise QAError("instance or staging left after a failed import")


def TestFailTamperedManifest(work: Path) -> None:
    """gnt-backup import --ovf tampered.ova ... (fails on the manifest)"""
    pkg, _ = build_package(Appliance(name="tamper"), str(work / "tamper"), ova=False)
    disk = Path(pkg).parent / "tamper-disk1.vmdk"
    data = bytearray(disk.read_bytes())
    data[-600] ^= 0x01
    disk.write_bytes(bytes(data))
    p = _import(pkg, "qa-tamper", fail=True)
    if "does not match the manifest" not in p.stderr:
        raise QAError(f"unexpected error: {p.stderr!r}")
    if instance_exists("qa-tamper") or staging_left():
        raise QAError("instance or staging left after a failed import")


def TestFailStagingFull(work: Path) -> None:
    """gnt-backup import --ovf big.ova ... with a full export dir (fails, cleans up)"""
    pkg, _ = build_package(Appliance(name="big", disks=[DiskSpec(16 * MIB, "vmdk")]),
                           str(work / "big"), ova=True)
    os.makedirs(EXPORT_DIR, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", EXPORT_DIR], check=True)
    try:
        p = _import(pkg, "qa-full", fail=True)
        if "No space left on device" not in p.stderr and "space" not in p.stderr:
            raise QAError(f"unexpected error: {p.stderr!r}")
        if os.listdir(EXPORT_DIR):
            raise QAError(f"left in the export dir: {os.listdir(EXPORT_DIR)}")
    finally:
        subprocess.run(["umount", EXPORT_DIR], check=True)
    if instance_exists("qa-full"):
        raise QAError("instance created by a failed import")


def TestSubmitCleansUp(work: Path) -> None:
    """gnt-backup import --ovf pkg.ova --submit ... (staging removed once the job ends)"""
    pkg, raws = build_package(Appliance(name="sub", disks=[DiskSpec(4 * MIB, "qcow2")]),
                              str(work / "sub"), ova=True)
    p = _import(pkg, "qa-submit", "--submit")
    m = re.search(r"JobID: (\d+)", p.stdout + p.stderr)
    if not m:
        raise QAError(f"no job id in {p.stdout!r}")
    run(["gnt-job", "watch", m.group(1)])
    for _ in range(100):
        if not staging_left():
            break
        time.sleep(0.1)
    else:
        raise QAError(f"staging not removed after the job: {staging_left()}")
    assert_disk_equals(disk_files("qa-submit")[0], raws[0])


def TestPassThrough(work: Path) -> None:
    """gnt-backup list / export / import without --ovf behave as Ganeti's own"""
    n = master()
    real = "/usr/share/ganeti/default/gnt-backup"
    ours = f"{CFG['prefix']}/sbin/gnt-backup"
    which = run(["sh", "-c", "command -v gnt-backup"], check=True).stdout.strip()
    if which != ours:
        raise QAError(f"gnt-backup on PATH is {which!r}, not {ours!r}")
    assert_command([ours, "export", "-n", n, "qa-vbox"])
    for args in (["list"], ["list", "--no-headers"], ["import", "--help"], ["bogus"]):
        a, b = run([ours, *args]), run([real, *args])
        if args == ["import", "--help"]:
            if a.returncode != b.returncode or "--ovf" not in a.stdout:
                raise QAError("import --help: --ovf not shown")
            continue
        if (a.returncode, a.stdout, a.stderr) != (b.returncode, b.stdout, b.stderr):
            raise QAError(f"gnt-backup {' '.join(args)} differs:\n{a}\n{b}")
    assert_command([ours, "import", "-n", n, "--src-node", n, "--src-dir",
                    f"{EXPORT_DIR}/qa-vbox", "-t", "file", "--net", "0:mac=generate",
                    "--no-name-check", "--no-ip-check", "qa-native"])
    for pa, pb in zip(disk_files("qa-vbox"), disk_files("qa-native"), strict=True):
        if _sha(pa) != _sha(pb):
            raise QAError("plain export/import changed the disk bytes")
    assert_command([ours, "remove", "qa-vbox"])


TESTS = [
    ("ovf-import-vmware-ova", TestImportVmwareOva),
    ("ovf-import-virtualbox-dir", TestImportVirtualBoxDir),
    ("ovf-export-ova-roundtrip", TestExportOvaRoundTrip),
    ("ovf-export-refuses-running", TestExportRefusesRunning),
    ("ovf-fail-unknown-os", TestFailUnknownOs),
    ("ovf-fail-tampered-manifest", TestFailTamperedManifest),
    ("ovf-fail-staging-full", TestFailStagingFull),
    ("ovf-submit-cleanup", TestSubmitCleansUp),
    ("pass-through", TestPassThrough),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", required=True, help="where tools/install.sh installed us")
    ap.add_argument("--config", default=str(HERE / "qa-sample.json"))
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    CFG["prefix"] = a.prefix
    enabled = json.loads(Path(a.config).read_text())["tests"]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ganeti-ovf-qa-"))
    failed = passed = 0
    try:
        for name, fn in TESTS:
            if not enabled.get(name, False):
                print(f"SKIP {name}")
                continue
            t0 = time.monotonic()
            try:
                fn(work)
            except Exception as e:  # noqa: BLE001 - report and go on
                failed += 1
                print(f"FAIL {name} ({time.monotonic() - t0:.1f}s): {fn.__doc__}\n  {e}")
                if not isinstance(e, QAError):
                    traceback.print_exc()
            else:
                passed += 1
                print(f"PASS {name} ({time.monotonic() - t0:.1f}s): {fn.__doc__}")
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"qa: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
