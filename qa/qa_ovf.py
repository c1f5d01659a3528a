#!/usr/bin/python3
"""QA of ganeti-ovf against a real Ganeti 3.0 cluster of one or more nodes.

Like Ganeti's own qa/ (ganeti-qa.py + a JSON config naming the cluster's
nodes, instances and templates): plain functions, each docstring the
command under test; ``assert_command`` runs a command and checks its exit
status; state is checked with ``gnt-instance list`` fields and the bytes of
the instance's disks, read on the node that holds them.

Runs on the cluster's master; other nodes are reached with ``ssh root@NODE``
(as Ganeti's QA does).  qa/run.sh builds a throw-away cluster, writes the
config and runs this inside the master node; against an existing (staging)
cluster, write a config like qa/qa-sample.json naming its nodes and run

    /usr/bin/python3 qa/qa_ovf.py --config my-cluster.json [--prefix PREFIX]

on its master, with ganeti-ovf installed on every node (--prefix: where
tools/install.sh put it, same path on every node; default: on PATH).

    qa_ovf.py [--prefix PREFIX] [--config qa/qa-sample.json] [--workdir DIR]
              [--summary FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
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

MIB = 1 << 20
EXPORT_DIR = "/var/lib/ganeti/export"
FILE_DIR = "/srv/ganeti/file-storage"
CFG: dict = {}
SSH = ["ssh", "-oBatchMode=yes", "-oStrictHostKeyChecking=no", "-oUserKnownHostsFile=/dev/null",
       "-oConnectTimeout=10", "-q"]
# sha256 of the first N bytes of a file or device, and how many non-zero
# bytes follow up to M (-1: to its end); run on the node holding it.
_DISK_CHECK = """
import hashlib, sys
path, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
h = hashlib.sha256(); bad = 0
with open(path, "rb") as f:
    left = n
    while left:
        b = f.read(min(left, 1 << 20))
        if not b: break
        h.update(b); left -= len(b)
    left = m - n if m >= 0 else 1 << 62
    while left > 0:
        b = f.read(min(left, 1 << 20))
        if not b: break
        bad += len(b) - b.count(0); left -= len(b)
print(h.hexdigest(), bad)
"""


class QAError(AssertionError):
    pass


def nodes() -> list[str]:
    return CFG["nodes"]


def _env_path() -> str:
    path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return f"{CFG['prefix']}/sbin:{path}" if CFG.get("prefix") else path


def run(cmd: list[str], *, node: str | None = None, check: bool = False,
        input: bytes | None = None) -> subprocess.CompletedProcess:
    """``cmd`` on ``node`` (default: here, the master), our commands first on PATH."""
    if node is None or node == nodes()[0]:
        full = cmd
    else:
        full = [*SSH, f"root@{node}", shlex.join(["env", f"PATH={_env_path()}", *cmd])]
    p = subprocess.run(full, capture_output=True, timeout=600, input=input,
                       env=dict(os.environ, PATH=_env_path()))
    p.stdout = p.stdout.decode("utf-8", "replace")
    p.stderr = p.stderr.decode("utf-8", "replace")
    if check and p.returncode != 0:
        where = f" on {node}" if node else ""
        raise QAError(f"{' '.join(cmd)}{where} exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return p


def assert_command(cmd: list[str], *, fail: bool = False,
                   node: str | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; it must succeed (or, with ``fail``, fail).  A Ganeti
    import that only warns still exits 0, so WARNING lines count as failure."""
    p = run(cmd, node=node)
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
              "tags", "disk_template", "nic.modes", "nic.links", "pnode"]
    out = run(["gnt-instance", "list", "--no-headers", "--units=m", "--separator=|", "-o",
               ",".join(fields), name], check=True).stdout.strip()
    return dict(zip(fields, out.split("|"), strict=True))


def disk_files(name: str) -> list[tuple[str, str]]:
    """(node, path) of each disk of instance ``name``."""
    out = run(["gnt-instance", "activate-disks", name], check=True).stdout
    paths = [tuple(ln.split(":", 2)[::2]) for ln in out.splitlines() if ":disk/" in ln]
    run(["gnt-instance", "deactivate-disks", name], check=True)
    return paths


def disk_digest(node: str, path: str, n: int, m: int | None = None) -> tuple[str, int]:
    """sha256 of the first ``n`` bytes of ``path`` on ``node``, and the
    non-zero bytes between ``n`` and ``m`` (None: the end)."""
    p = run(["/usr/bin/python3", "-c", _DISK_CHECK, path, str(n), str(-1 if m is None else m)],
            node=node, check=True)
    sha, bad = p.stdout.split()
    return sha, int(bad)


def assert_disk_equals(where: tuple[str, str], raw: bytes) -> None:
    """The disk's first bytes are ``raw`` and the rest zeros."""
    node, path = where
    sha, bad = disk_digest(node, path, len(raw))
    if sha != hashlib.sha256(raw).hexdigest():
        raise QAError(f"{node}:{path}: first {len(raw)} bytes differ from the source image")
    if bad:
        raise QAError(f"{node}:{path}: {bad} non-zero bytes after the image")


def assert_same_disks(a: str, b: str) -> None:
    """Instances ``a`` and ``b`` have the same disk bytes (over their Ganeti sizes)."""
    sizes = [int(x) * MIB for x in instance_fields(a)["disk.sizes"].split(",")]
    for (na, pa), (nb, pb), size in zip(disk_files(a), disk_files(b), sizes, strict=True):
        if disk_digest(na, pa, size, size) != disk_digest(nb, pb, size, size):
            raise QAError(f"disk bytes differ: {na}:{pa} vs {nb}:{pb}")


def remove_instance(name: str) -> None:
    run(["gnt-instance", "remove", "-f", name])


# Ours (lib/staging.py) and those of versions before 0.10.
STAGING_PREFIXES = (".ganeti-ovf-", ".ovf-import-", ".ovf-export-")


def staging_left(node: str | None = None) -> list[str]:
    """Our staging entries in the export dir of ``node`` (default: every node)."""
    left = []
    for n in [node] if node else nodes():
        p = run(["sh", "-c", f"ls -A {EXPORT_DIR} 2>/dev/null || true"], node=n, check=True)
        left += [f"{n}:{x}" for x in p.stdout.split() if x.startswith(STAGING_PREFIXES)]
    return left


def instance_exists(name: str) -> bool:
    return run(["gnt-instance", "list", "--no-headers", "-o", "name", name]).returncode == 0


def _import(pkg: str, name: str, *extra: str, fail: bool = False, os_name: str | None = "noop",
            node: str | None = None, template: str = "file"):
    """gnt-backup import --ovf PKG -n NODE (default: master) -t TEMPLATE [-o OS] EXTRA... NAME"""
    needs(template)
    n = node or master()
    os_opt = ["-o", os_name] if os_name and "-o" not in extra else []
    return assert_command(["gnt-backup", "import", "--ovf", pkg, "-n", n, "-t", template,
                           "--no-name-check", "--no-ip-check", *os_opt, *extra, name],
                          fail=fail)


class Skip(Exception):
    """The cluster named in the config cannot run this scenario."""


def needs(template: str) -> None:
    if template not in CFG.get("disk-templates", ["file"]):
        raise Skip(f"disk template {template} is not in the config's disk-templates")


def node(i: int) -> str:
    """The config's i-th node (0: the master); the last one if there are fewer."""
    if len(nodes()) < 2 and i:
        raise Skip("needs a cluster of at least two nodes")
    return nodes()[min(i, len(nodes()) - 1)]


def fetch(node_name: str, path: str, local: Path) -> None:
    """Copy ``path`` on ``node_name`` here (what an operator does with scp)."""
    with open(local, "wb") as f:
        if subprocess.run([*SSH, f"root@{node_name}", shlex.join(["cat", path])], stdout=f,
                          timeout=600).returncode:
            raise QAError(f"cannot fetch {node_name}:{path}")


def exists_on(path: str) -> list[str]:
    """The nodes on which ``path`` exists."""
    return [n for n in nodes() if run(["test", "-e", path], node=n).returncode == 0]


def entries(node_name: str, path: str) -> list[str]:
    p = run(["sh", "-c", f"ls -A {shlex.quote(path)} 2>/dev/null || true"], node=node_name,
            check=True)
    return p.stdout.split()


def assert_nothing_left(name: str, out: str | None = None) -> None:
    """No instance ``name``, no staging and nothing in ``out`` on any node."""
    if instance_exists(name):
        raise QAError(f"instance {name} exists after a failed command")
    if staging_left():
        raise QAError(f"staging left behind: {staging_left()}")
    for n in nodes():
        if out and entries(n, out):
            raise QAError(f"left in {n}:{out}: {entries(n, out)}")


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
    assert_same_disks(src, "qa-rt")


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
    which = run(["sh", "-c", "command -v gnt-backup"], check=True).stdout.strip()
    ours = f"{CFG['prefix']}/sbin/gnt-backup" if CFG.get("prefix") else which
    if which != ours:
        raise QAError(f"gnt-backup on PATH is {which!r}, not {ours!r}")
    if os.path.realpath(ours) == os.path.realpath(real):
        raise QAError(f"gnt-backup on PATH ({which}) is Ganeti's own, not the extension")
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
    assert_same_disks("qa-vbox", "qa-native")
    assert_command([ours, "remove", "qa-vbox"])


# ------------------------------------------------------ several nodes

def _out() -> str:
    return CFG.get("output-dir", "/srv/ganeti/ovf-qa")


def _mkout(*on: str) -> str:
    for n in on:
        run(["mkdir", "-p", _out()], node=n, check=True)
    return _out()


def TestImportToOtherNode(work: Path) -> None:
    """gnt-backup import --ovf PKG -n NODE2 -t file INSTANCE (run on the master)"""
    n2 = node(1)
    app = Appliance(name="other", cpus=1, memory_mib=64,
                    disks=[DiskSpec(12 * MIB + 4096, "vmdk"), DiskSpec(4 * MIB, "qcow2", seed=5)])
    pkg, raws = build_package(app, str(work / "other"), ova=True)
    _import(pkg, "qa-n2", "--net", "0:mac=generate", node=n2)
    f = instance_fields("qa-n2")
    if (f["pnode"], f["disk.sizes"]) != (n2, "13,4"):
        raise QAError(f"qa-n2: primary {f['pnode']!r}, disks {f['disk.sizes']!r}")
    for where, raw in zip(disk_files("qa-n2"), raws, strict=True):
        if where[0] != n2:
            raise QAError(f"qa-n2 disk on {where[0]}, not {n2}")
        assert_disk_equals(where, raw)
    if staging_left():
        raise QAError(f"staging left behind: {staging_left()}")


def TestExportFromMaster(work: Path) -> None:
    """gnt-backup export --ovf --ova --output-dir DIR -n NODE3 INSTANCE (primary NODE2,
    sharedfile; run on the master), then imported back as another instance"""
    n2, n3 = node(1), node(2)
    app = Appliance(name="shared", cpus=2, memory_mib=96,
                    disks=[DiskSpec(8 * MIB, "vmdk", seed=11), DiskSpec(4 * MIB, "raw", seed=4)])
    pkg, _ = build_package(app, str(work / "shared"), ova=True)
    _import(pkg, "qa-sf", "--net", "0:mac=generate", node=n2, template="sharedfile")
    run(["gnt-instance", "add-tags", "qa-sf", "qa:multi"], check=True)
    out = _mkout(*nodes())
    assert_command(["gnt-backup", "export", "--ovf", "--ova", "--output-dir", out, "-n", n3,
                    "qa-sf"])
    ova = f"{out}/qa-sf.ova"
    if exists_on(ova) != [n3]:
        raise QAError(f"{ova} is on {exists_on(ova)}, expected only on {n3}")
    assert_command(["ovfconverter", "verify", ova], node=n3)
    local = work / "qa-sf.ova"
    fetch(n3, ova, local)
    run(["rm", "-f", ova], node=n3, check=True)
    _import(str(local), "qa-sf-back", "--net", "0:mac=generate", "--trust-ganeti-section",
            os_name=None, node=n3)
    a, b = instance_fields("qa-sf"), instance_fields("qa-sf-back")
    for k in ("os", "be/maxmem", "be/minmem", "be/vcpus", "disk.sizes", "tags", "nic.modes",
              "nic.links"):
        if a[k] != b[k]:
            raise QAError(f"{k}: qa-sf has {a[k]!r}, qa-sf-back has {b[k]!r}")
    if (a["pnode"], b["pnode"]) != (n2, n3):
        raise QAError(f"primaries {a['pnode']}, {b['pnode']}")
    assert_same_disks("qa-sf", "qa-sf-back")


def _pattern(n: int, seed: int) -> bytes:
    out, block = bytearray(), hashlib.sha256(bytes([seed])).digest() * 128
    i = 0
    while len(out) < n:
        out += hashlib.sha256(block + i.to_bytes(8, "little")).digest() * 128
        i += 1
    return bytes(out[:n])


def TestExportBlockdevLarger(work: Path) -> None:
    """gnt-backup export --ovf -n MASTER INSTANCE (blockdev, adopted device larger than
    its Ganeti disk by a partial 4 MiB extent), then imported back"""
    needs("blockdev")
    bd = CFG.get("blockdev")
    if not bd:
        raise Skip("no blockdev device in the config")
    bnode, path = bd["node"], bd["path"]
    dev_size = int(run(["blockdev", "--getsize64", path], node=bnode, check=True).stdout)
    run(["dd", f"of={path}", "bs=1M", "conv=notrunc,fsync", "status=none"], node=bnode,
        input=_pattern(dev_size, 9), check=True)
    assert_command(["gnt-instance", "add", "-t", "blockdev", "--disk", f"0:adopt={path}",
                    "-n", bnode, "-o", "noop", "--no-nics", "--no-start", "--no-name-check",
                    "--no-ip-check", "qa-blk"])
    mib = int(instance_fields("qa-blk")["disk.sizes"])
    grow = int(bd.get("grow-loop-mib", 0))
    if grow:  # as LVM rounds up to its extents: the device grows, Ganeti's size stays
        script = ('d=$(readlink -f "$1"); f=$(losetup -n -O BACK-FILE "$d"); '
                  'truncate -s +"$2"M "$f"; losetup -c "$d"; '
                  'head -c "$2"M /dev/zero | tr "\\0" "\\377" | '
                  'dd of="$d" bs=1M seek="$3" conv=notrunc,fsync status=none')
        run(["sh", "-c", script, "sh", path, str(grow), str(dev_size >> 20)], node=bnode,
            check=True)
    dev_size = int(run(["blockdev", "--getsize64", path], node=bnode, check=True).stdout)
    if dev_size <= mib * MIB:
        raise QAError(f"{path} is {dev_size} bytes, not larger than the disk ({mib} MiB)")
    out = work / "blk"
    assert_command(["gnt-backup", "export", "--ovf", "--output-dir", str(out), "-n", master(),
                    "qa-blk"])
    _import(str(out / "qa-blk" / "qa-blk.ovf"), "qa-blk-back", "--trust-ganeti-section",
            os_name=None)
    back = instance_fields("qa-blk-back")
    if back["disk.sizes"] != str(mib):
        raise QAError(f"imported disk is {back['disk.sizes']} MiB, not {mib}")
    assert_same_disks("qa-blk", "qa-blk-back")


def TestExportAllOptions(work: Path) -> None:
    """gnt-backup export --ovf --sign KEY --cert CERT --ovf-version 2.0 --chunk-size 1M
    --manifest sha512 --compress --name NAME --output-dir DIR -n NODE2 INSTANCE;
    ovfconverter verify on NODE2"""
    n2 = node(1)
    key, cert = work / "qa.key", work / "qa.crt"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=ganeti-ovf qa",
         "-days", "2", "-keyout", str(key), "-out", str(cert)], check=True)
    out = _mkout(n2)
    assert_command(["gnt-backup", "export", "--ovf", "--sign", str(key), "--cert", str(cert),
                    "--ovf-version", "2.0", "--chunk-size", "1M", "--manifest", "sha512",
                    "--compress", "--format", "vmdk", "--name", "qa-opts", "--output-dir", out,
                    "-n", n2, "qa-vmw"])
    pkg = f"{out}/qa-opts"
    names = entries(n2, pkg)
    for want in ("qa-opts.ovf", "qa-opts.mf", "qa-opts.cert", "qa-opts-disk0.vmdk.gz.000000000"):
        if want not in names:
            raise QAError(f"{want} not in {n2}:{pkg}: {names}")
    p = assert_command(["ovfconverter", "verify", f"{pkg}/qa-opts.ovf"], node=n2)
    if "cert" not in p.stdout.lower():
        raise QAError(f"verify did not check the certificate: {p.stdout!r}")
    desc = run(["cat", f"{pkg}/qa-opts.ovf"], node=n2, check=True).stdout
    mf = run(["cat", f"{pkg}/qa-opts.mf"], node=n2, check=True).stdout
    if "schemas.dmtf.org/ovf/envelope/2" not in desc or not mf.startswith("SHA512"):
        raise QAError("not an OVF 2.0 package with a SHA512 manifest")
    run(["rm", "-rf", pkg], node=n2, check=True)


def _intrusive() -> None:
    if not CFG.get("intrusive"):
        raise Skip("the config does not allow intrusive scenarios (intrusive: false)")


def TestFailTargetOffline(work: Path) -> None:
    """gnt-backup import/export --ovf -n OFFLINE-NODE (clean error, nothing left anywhere)"""
    _intrusive()
    n = node(len(nodes()) - 1)
    pkg, _ = build_package(Appliance(name="off"), str(work / "off"), ova=True)
    out = _mkout(*nodes())
    run(["gnt-node", "modify", "-O", "yes", n], check=True)
    try:
        _import(pkg, "qa-off", node=n, fail=True)
        assert_nothing_left("qa-off")
        p = assert_command(["gnt-backup", "export", "--ovf", "--ova", "--output-dir", out,
                            "-n", n, "qa-vmw"], fail=True)
        if "offline" not in p.stderr:
            raise QAError(f"unexpected error: {p.stderr!r}")
        assert_nothing_left("qa-off", out)
    finally:
        run(["gnt-node", "modify", "-f", "-O", "no", n], check=True)


def TestFailTargetUnreachable(work: Path) -> None:
    """gnt-backup import/export --ovf -n UNREACHABLE-NODE (clean error, nothing left anywhere)"""
    _intrusive()
    n = node(len(nodes()) - 1)
    ip = run(["gnt-node", "list", "--no-headers", "-o", "pip", n], check=True).stdout.strip()
    pkg, _ = build_package(Appliance(name="unr"), str(work / "unr"), ova=True)
    out = _mkout(*nodes())
    run(["ip", "route", "add", "unreachable", f"{ip}/32"], check=True)
    try:
        _import(pkg, "qa-unr", node=n, fail=True)
        p = assert_command(["gnt-backup", "export", "--ovf", "--ova", "--output-dir", out,
                            "-n", n, "qa-vmw"], fail=True)
        if n not in p.stderr:
            raise QAError(f"the error does not name {n}: {p.stderr!r}")
    finally:
        run(["ip", "route", "del", "unreachable", f"{ip}/32"], check=True)
    assert_nothing_left("qa-unr", out)


def TestFailTargetStorageFull(work: Path) -> None:
    """gnt-backup import --ovf PKG [--submit] -n NODE2 / export --ovf -n NODE2 with NODE2's
    storage full (clean error, nothing left anywhere)"""
    _intrusive()
    n2 = node(1)
    pkg, _ = build_package(Appliance(name="full", disks=[DiskSpec(16 * MIB, "vmdk")]),
                           str(work / "full2"), ova=True)
    run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", FILE_DIR], node=n2, check=True)
    try:
        _import(pkg, "qa-full2", node=n2, fail=True)
        assert_nothing_left("qa-full2")
        # with --submit the detached watcher removes the instance
        p = _import(pkg, "qa-full3", "--submit", node=n2)
        m = re.search(r"JobID: (\d+)", p.stdout + p.stderr)
        if not m:
            raise QAError(f"no job id in {p.stdout!r}")
        run(["gnt-job", "watch", m.group(1)])
        for _ in range(120):
            if not instance_exists("qa-full3"):
                break
            time.sleep(0.5)
        assert_nothing_left("qa-full3")
        left = {"qa-full2", "qa-full3"} & set(entries(n2, FILE_DIR))
        if left:
            raise QAError(f"disk directories {sorted(left)} left in {n2}:{FILE_DIR}")
    finally:
        run(["umount", FILE_DIR], node=n2, check=True)
    out = _mkout(*nodes())
    run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", out], node=n2, check=True)
    try:
        p = assert_command(["gnt-backup", "export", "--ovf", "--format", "raw", "--output-dir",
                            out, "-n", n2, "qa-vmw"], fail=True)
        if "space" not in p.stderr:
            raise QAError(f"unexpected error: {p.stderr!r}")
        assert_nothing_left("qa-full2", out)
    finally:
        run(["umount", out], node=n2, check=True)


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
    ("ovf-import-other-node", TestImportToOtherNode),
    ("ovf-export-from-master", TestExportFromMaster),
    ("ovf-export-blockdev-larger", TestExportBlockdevLarger),
    ("ovf-export-all-options", TestExportAllOptions),
    ("ovf-fail-target-offline", TestFailTargetOffline),
    ("ovf-fail-target-unreachable", TestFailTargetUnreachable),
    ("ovf-fail-target-storage-full", TestFailTargetStorageFull),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefix", default=None, help="where tools/install.sh installed us")
    ap.add_argument("--config", default=str(HERE / "qa-sample.json"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--summary", default=None, help="also write the summary line here")
    a = ap.parse_args()
    cfg = json.loads(Path(a.config).read_text())
    CFG.update(cfg, prefix=a.prefix)
    # Ganeti's QA config style ({"primary": NAME}) or plain names; master first
    CFG["nodes"] = [n["primary"] if isinstance(n, dict) else n for n in cfg.get("nodes", [])]
    if not CFG["nodes"]:
        CFG["nodes"] = [master()]
    elif CFG["nodes"][0] != master():
        print(f"the first node of {a.config} must be the master ({master()})", file=sys.stderr)
        return 2
    templates = ", ".join(cfg.get("disk-templates", ["file"]))
    enabled = cfg["tests"]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ganeti-ovf-qa-"))
    failed = passed = 0
    try:
        for name, fn in TESTS:
            doc = " ".join(fn.__doc__.split())
            if not enabled.get(name, False):
                print(f"SKIP {name}: disabled in {a.config}")
                continue
            t0 = time.monotonic()
            try:
                fn(work)
            except Skip as e:
                print(f"SKIP {name}: {e}")
            except Exception as e:  # noqa: BLE001 - report and go on
                failed += 1
                print(f"FAIL {name} ({time.monotonic() - t0:.1f}s): {doc}\n  {e}")
                if not isinstance(e, QAError):
                    traceback.print_exc()
            else:
                passed += 1
                print(f"PASS {name} ({time.monotonic() - t0:.1f}s): {doc}")
            sys.stdout.flush()
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    line = (f"QA: {passed} passed, {failed} failed on a {len(nodes())}-node cluster "
            f"(templates: {templates})")
    if a.summary:  # qa/run.sh prints it last, after the teardown
        Path(a.summary).write_text(line + "\n")
    else:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
