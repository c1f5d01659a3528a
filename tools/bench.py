#!/usr/bin/env python3
"""Benchmark: ganeti-ovf import and export against the bare qemu-img floors
and upstream Ganeti's ovfconverter, on one deterministic appliance.

The appliance: one disk of SIZE GiB (default 2) holding SIZE*300 MiB of
data in 2 MiB extents spread over it (half text-like, half incompressible),
the rest holes.  It is built once as a raw dump in a Ganeti export
directory, as a streamOptimized VMDK (by qemu-img) and from that as an
``.ovf`` directory and an ``.ova`` (SHA256 manifest).

Every case runs REPEAT times, interleaved (case A, B, C, A, B, C, ...), as a
child process tree of this one.  Per case: wall median, ratio to its
floor's median in the same run, CPU (user+sys of the tree), peak RSS of
the process tree (sampled from /proc), peak extra disk (allocated blocks
under the case's scratch directory, sampled; TMPDIR points there too, so
temporary files count) and the final output (apparent size, and
allocated).  Ratios, not seconds, are the result.  Dirty pages are
flushed before each run (not timed); qemu-img does not fsync its output,
ganeti-ovf does before it renames the package into place (an export's
wall includes that).

    tools/bench [--size GIB] [--repeat N] [--json] [--work DIR] [--no-upstream]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)
MIB = 1 << 20
EXTENT = 2 * MIB
UPSTREAM = "/usr/share/ganeti/3.0/ovfconverter"
UPSTREAM_PATH = "/usr/share/ganeti/default"
SAMPLE_INTERVAL = 0.05


# ------------------------------------------------------------------ appliance

def _text_pool(rng: random.Random, size: int) -> bytes:
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
             for _ in range(3000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=12)) + b" %d\n" % rng.randrange(10**6)
    return bytes(out[:size])


def make_disk(path: str, size: int) -> int:
    """The raw disk: 300 MiB of data per GiB in 2 MiB extents, the rest
    holes; alternate extents text-like (deflates to about half) and
    incompressible.  Extents start 4 KiB-aligned, mostly not on a grain.
    Returns the bytes of data."""
    rng = random.Random(20260)
    pool = _text_pool(rng, 16 * MIB)
    count = max(1, size * 300 // 1024 // EXTENT)
    step = size // count
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(count):
            at = i * step + (i % 7) * 4096
            n = min(EXTENT, size - at)
            if i % 2:
                data = rng.randbytes(n)
            else:
                start = (i * 7919 * 4096) % (len(pool) - EXTENT)
                data = (b"extent %d\n" % i + pool[start:start + n])[:n]
            f.seek(at)
            f.write(data)
    return count * EXTENT


CONFIG = """[export]
version = 0
timestamp = 1795516252
source = 6d4aab4b-3713-4a76-b951-5b6d12a6ed21
os = noop
compression = none

[instance]
name = bench
maxmem = 512
minmem = 512
memory = 512
vcpus = 1
disk_template = file
hypervisor = kvm
tags =
nic0_mac = aa:00:00:f4:09:50
nic0_ip = None
nic0_network = None
nic0_name = None
nic0_link = br0
nic0_mode = bridged
nic0_vlan =
nic_count = 1
disk0_ivname = disk/0
disk0_dump = disk0.raw
disk0_size = {mib}
disk0_name = None
disk_count = 1

[hypervisor]

[backend]
always_failover = False
auto_balance = True
maxmem = 512
minmem = 512
memory = 512
spindle_use = 1
vcpus = 1

[os]

[os_private]
"""


def build(work: str, size: int) -> dict[str, str]:
    """Export dir, vmdk, .ovf dir and .ova of the appliance under ``work``."""
    from make_fixtures import Appliance, DiskSpec, build_descriptor

    exp = os.path.join(work, "export")
    os.makedirs(exp)
    raw = os.path.join(exp, "disk0.raw")
    make_disk(raw, size)
    with open(os.path.join(exp, "config.ini"), "w") as f:
        f.write(CONFIG.format(mib=size // MIB))
    pkgdir = os.path.join(work, "bench")
    os.makedirs(pkgdir)
    vmdk = os.path.join(pkgdir, "bench-disk0.vmdk")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", raw, vmdk], check=True)
    app = Appliance(name="bench", disks=[DiskSpec(size, "vmdk")])
    ovf = build_descriptor(app, [("bench-disk0.vmdk", os.path.getsize(vmdk))])
    with open(os.path.join(pkgdir, "bench.ovf"), "wb") as f:
        f.write(ovf)
    lines = []
    for name in ("bench.ovf", "bench-disk0.vmdk"):
        h = hashlib.sha256()
        with open(os.path.join(pkgdir, name), "rb") as f:
            while block := f.read(MIB):
                h.update(block)
        lines.append(f"SHA256({name})= {h.hexdigest()}\n")
    with open(os.path.join(pkgdir, "bench.mf"), "w") as f:
        f.writelines(lines)
    ova = os.path.join(work, "bench.ova")
    with tarfile.open(ova, "w", format=tarfile.GNU_FORMAT) as t:
        for name in ("bench.ovf", "bench.mf", "bench-disk0.vmdk"):
            t.add(os.path.join(pkgdir, name), arcname=name)
    return {"export": exp, "raw": raw, "vmdk": vmdk, "ovf": os.path.join(pkgdir, "bench.ovf"),
            "ova": ova}


def fake_ganeti(work: str) -> str:
    """An OS search path with 'noop', seen through GANETI_OVF_GANETI_DIR."""
    os_dir = os.path.join(work, "os", "noop")
    os.makedirs(os_dir)
    with open(os.path.join(os_dir, "ganeti_api_version"), "w") as f:
        f.write("10\n")
    for s in ("create", "export", "import", "rename"):
        p = os.path.join(os_dir, s)
        with open(p, "w") as f:
            f.write("#!/bin/sh\nexit 0\n")
        os.chmod(p, 0o755)
    pkg = os.path.join(work, "ganeti", "ganeti")
    os.makedirs(pkg)
    with open(os.path.join(pkg, "__init__.py"), "w"):
        pass
    with open(os.path.join(pkg, "_constants.py"), "w") as f:
        f.write(f"OS_SEARCH_PATH = [{os.path.dirname(os_dir)!r}]\n"
                "OS_API_VERSIONS = frozenset([10, 15, 20])\n")
    with open(os.path.join(pkg, "constants.py"), "w") as f:
        f.write("from ganeti._constants import *\n")
    return os.path.dirname(pkg)


# ------------------------------------------------------------------ measuring

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        tree.setdefault(ppid, []).append(int(name))
    return tree


def _tree_rss(pid: int) -> int:
    tree = _children()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += tree.get(p, [])
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


def _allocated(top: str) -> tuple[int, int]:
    """(allocated, apparent) bytes of the files under ``top``."""
    alloc = size = 0
    if os.path.isfile(top):
        st = os.lstat(top)
        return st.st_blocks * 512, st.st_size
    for d, _, files in os.walk(top):
        for name in files:
            try:
                st = os.lstat(os.path.join(d, name))
            except OSError:
                continue
            alloc += st.st_blocks * 512
            size += st.st_size
    return alloc, size


@dataclass
class Run:
    wall: float
    cpu: float
    rss: int
    disk: int
    final: int
    final_alloc: int


def measure(cmd: list[str], scratch: str, out: str, env: dict[str, str]) -> Run:
    os.makedirs(os.path.join(scratch, "tmp"))
    env = dict(env, TMPDIR=os.path.join(scratch, "tmp"))
    peak = {"rss": 0, "disk": 0}
    done = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            cwd=scratch)

    def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], _tree_rss(proc.pid))
            peak["disk"] = max(peak["disk"], _allocated(scratch)[0])
            done.wait(SAMPLE_INTERVAL)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"exit {proc.returncode}: {last[0][:200]}")
    if not os.path.exists(out):  # upstream's converter exits 0 on errors
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise RuntimeError(f"no output: {last[0][:200]}")
    alloc, size = _allocated(out)
    peak["disk"] = max(peak["disk"], _allocated(scratch)[0])
    return Run(wall, usage.ru_utime + usage.ru_stime, peak["rss"], peak["disk"], size, alloc)


@dataclass
class Case:
    name: str
    floor: str  # name of the floor case it is compared with ("" for a floor)
    cmd: list[str]
    out: str  # relative to scratch: what the final size is taken of
    env: dict[str, str] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)
    error: str = ""


def cases(app: dict[str, str], ganeti_dir: str, upstream: bool) -> list[Case]:
    py = sys.executable
    conv = [py, os.path.join(ROOT, "scripts", "ovfconverter")]
    ours = {"GANETI_OVF_GANETI_DIR": ganeti_dir}
    up = [UPSTREAM_PY, UPSTREAM]
    up_env = {"PYTHONPATH": UPSTREAM_PATH}
    fi, fv, fq = "floor import", "floor export vmdk", "floor export qcow2"
    cfg = os.path.join(app["export"], "config.ini")
    qi = ["qemu-img", "convert", "-f"]
    out = [
        Case(fi, "", qi + ["vmdk", "-O", "raw", app["vmdk"], "out.raw"], "out.raw"),
        Case("import .ovf dir", fi, conv + ["import", app["ovf"], "-o", "noop",
                                            "--output-dir", "out"], "out", ours),
        Case("import .ova", fi, conv + ["import", app["ova"], "-o", "noop",
                                        "--output-dir", "out"], "out", ours),
        Case(fv, "", qi + ["raw", "-O", "vmdk", "-o", "subformat=streamOptimized", app["raw"],
                           "out.vmdk"], "out.vmdk"),
        Case("export vmdk dir", fv, conv + ["export", app["export"], "--output-dir", "out"],
             "out", ours),
        Case("export vmdk .ova", fv, conv + ["export", app["export"], "--ova",
                                             "--output-dir", "out"], "out", ours),
        Case(fq, "", qi + ["raw", "-O", "qcow2", app["raw"], "out.qcow2"], "out.qcow2"),
        Case("export qcow2 dir", fq, conv + ["export", app["export"], "--format", "qcow2",
                                             "--output-dir", "out"], "out", ours),
        Case("export qcow2 .ova", fq, conv + ["export", app["export"], "--format", "qcow2",
                                              "--ova", "--output-dir", "out"], "out", ours),
    ]
    if upstream:
        out[3:3] = [Case("upstream import .ova", fi, up + ["import", app["ova"], "-o", "noop",
                                                           "--output-dir", "out"], "out",
                         up_env)]
        out.append(Case("upstream export vmdk .ova", fv,
                        up + ["export", cfg, "--format", "vmdk", "--ova", "--output-dir",
                              "out"], "out", up_env))
    return out


UPSTREAM_PY = "/usr/bin/python3"


# ------------------------------------------------------------------ report

def summary(cs: list[Case]) -> list[dict]:
    floors = {c.name: statistics.median(r.wall for r in c.runs) for c in cs
              if not c.floor and c.runs}
    rows = []
    for c in cs:
        if not c.runs:
            rows.append({"case": c.name, "error": c.error})
            continue
        wall = statistics.median(r.wall for r in c.runs)
        base = floors.get(c.floor or c.name)
        rows.append({
            "case": c.name, "floor": c.floor or c.name, "runs": len(c.runs),
            "wall_s": round(wall, 2), "ratio": round(wall / base, 2) if base else None,
            "cpu_s": round(statistics.median(r.cpu for r in c.runs), 2),
            "peak_rss_mib": round(max(r.rss for r in c.runs) / MIB),
            "peak_extra_disk_mib": round(max(r.disk for r in c.runs) / MIB),
            "final_mib": round(c.runs[-1].final / MIB),
            "final_alloc_mib": round(c.runs[-1].final_alloc / MIB),
            "error": c.error,
        })
    return rows


def table(rows: list[dict]) -> str:
    head = ("| case | wall (median) | × floor | CPU | peak RSS (tree) | peak extra disk | "
            "final (on disk) |")
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "wall_s" not in r:
            lines.append(f"| {r['case']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['case']} | {r['wall_s']:.2f} s | {r['ratio']:.2f} | {r['cpu_s']:.1f} s | "
            f"{r['peak_rss_mib']} MiB | {r['peak_extra_disk_mib']} MiB | "
            f"{r['final_mib']} MiB ({r['final_alloc_mib']}) |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=float, default=2.0, help="disk size in GiB (default 2)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--work", default=None, help="scratch directory (default: a new one "
                    "under $TMPDIR, removed at the end)")
    ap.add_argument("--no-upstream", action="store_true",
                    help="leave out upstream Ganeti's ovfconverter")
    ap.add_argument("--only", default="", help="run only cases whose name contains this "
                    "(floors always run)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on kill too
    size = int(a.size * 1024) * MIB
    work = tempfile.mkdtemp(prefix="ovf-bench-", dir=a.work)
    upstream = not a.no_upstream and os.path.exists(UPSTREAM)
    try:
        t0 = time.perf_counter()
        app = build(work, size)
        built = time.perf_counter() - t0
        cs = [c for c in cases(app, fake_ganeti(work), upstream)
              if not c.floor or a.only in c.name]
        load = os.getloadavg()
        for i in range(a.repeat):
            for c in cs:
                if c.error:
                    continue
                scratch = os.path.join(work, "run")
                os.makedirs(scratch)
                os.sync()  # no case pays for the previous one's dirty pages
                try:
                    c.runs.append(measure(c.cmd, scratch, os.path.join(scratch, c.out),
                                          dict(os.environ, **c.env)))
                except RuntimeError as e:
                    c.error = str(e)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                if not a.json:
                    print(f"  run {i + 1}/{a.repeat}: {c.name}"
                          + (f" {c.runs[-1].wall:.2f} s" if c.runs and not c.error
                             else f" FAILED {c.error}"), file=sys.stderr)
        rows = summary(cs)
        meta = {"size_gib": a.size, "data_mib": size * 300 // 1024 // EXTENT * 2,
                "vmdk_mib": round(os.path.getsize(app["vmdk"]) / MIB), "repeat": a.repeat,
                "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "build_s": round(built, 1), "upstream": upstream}
        if a.json:
            print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        else:
            print(f"appliance: {a.size:g} GiB disk, {meta['data_mib']} MiB of data, "
                  f"{meta['vmdk_mib']} MiB as streamOptimized VMDK; medians of {a.repeat} "
                  f"interleaved runs; {meta['cpus']} CPUs, load average "
                  f"{meta['load_before'][0]} before, {meta['load_after'][0]} after")
            print(table(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
