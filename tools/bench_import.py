#!/usr/bin/env python3
"""Benchmark: ``ovfconverter import`` of an OVA against bare qemu-img.

Builds one OVA (a streamOptimized vmdk of SIZE MiB of pattern data with
holes, SHA256 manifest), then times, in the same run:

* baseline: ``qemu-img convert -f vmdk -O raw`` of the same vmdk as a plain
  file (what any import must at least do), and
* ``ovfconverter import`` of the OVA (in place: manifest digests, format
  check, ``qemu-img check``, conversion straight out of the tar),

and prints each as a ratio to the baseline, with peak memory (max RSS of
the child processes).  Ratios, not seconds, are the result: they compare
like with like on whatever machine runs this.

    python3 tools/bench_import.py [--size-mib 512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time


def _timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and max RSS (KiB) of this one command (its own rusage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {p.returncode}")
    return time.perf_counter() - t0, usage.ru_maxrss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-import-")
    try:
        # Built in a child process: the disk's bytes never inflate this one.
        ova = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
             "from make_fixtures import Appliance, DiskSpec, build_package; "
             "print(build_package(Appliance(name='bench', disks=[DiskSpec(int(sys.argv[2]) "
             "<< 20, 'vmdk')]), sys.argv[3], ova=True)[0])",
             os.path.dirname(os.path.abspath(__file__)), str(a.size_mib), work],
            check=True, capture_output=True, text=True).stdout.strip()
        with tarfile.open(ova) as t:
            vmdk = next(m for m in t.getmembers() if m.name.endswith(".vmdk"))
            t.extract(vmdk, work, filter="data") if hasattr(tarfile, "data_filter") \
                else t.extract(vmdk, work)
        plain = os.path.join(work, vmdk.name)
        os_dir = os.path.join(work, "os", "noop")
        os.makedirs(os_dir)
        with open(os.path.join(os_dir, "ganeti_api_version"), "w") as f:
            f.write("10\n")
        for s in ("create", "export", "import", "rename"):
            p = os.path.join(os_dir, s)
            with open(p, "w") as f:
                f.write("#!/bin/sh\nexit 0\n")
            os.chmod(p, 0o755)
        ganeti = os.path.join(work, "ganeti", "ganeti")
        os.makedirs(ganeti)
        with open(os.path.join(ganeti, "__init__.py"), "w"):
            pass
        with open(os.path.join(ganeti, "_constants.py"), "w") as f:
            f.write(f"OS_SEARCH_PATH = [{os.path.dirname(os_dir)!r}]\n"
                    "OS_API_VERSIONS = frozenset([10, 15, 20])\n")
        with open(os.path.join(ganeti, "constants.py"), "w") as f:
            f.write("from ganeti._constants import *\n")
        os.environ["GANETI_OVF_GANETI_DIR"] = os.path.dirname(ganeti)
        conv = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts",
                            "ovfconverter")
        base, ours = [], []
        for i in range(a.repeat):
            out = os.path.join(work, f"base{i}.raw")
            base.append(_timed(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", plain, out]))
            os.unlink(out)
            dest = os.path.join(work, f"exp{i}")
            ours.append(_timed([sys.executable, conv, "import", ova, "-o", "noop",
                                "--output-dir", dest]))
            shutil.rmtree(dest)
        b = min(t for t, _ in base)
        o = min(t for t, _ in ours)
        print(f"disk: {a.size_mib} MiB streamOptimized vmdk in an OVA "
              f"({os.path.getsize(ova) >> 20} MiB), best of {a.repeat}")
        print(f"baseline qemu-img convert: 1.00  ({b:.2f} s)")
        print(f"ovfconverter import (OVA): {o / b:.2f}  ({o:.2f} s; includes manifest "
              "digests, qemu-img info/check/map)")
        print(f"peak RSS: qemu-img convert {max(r for _, r in base) // 1024} MiB, "
              f"ovfconverter import {max(r for _, r in ours) // 1024} MiB "
              "(its qemu-img children not included)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
