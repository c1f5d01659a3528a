"""Packaging declarations that a fresh machine relies on.  The builds
themselves run in tools/check-wheel.sh (isolated sdist/wheel) and
qa/deb.sh check (the .deb installed, its diversion checked, purged)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_declares_what_setup_py_imports():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    req = " ".join(data["build-system"]["requires"])
    assert "setuptools" in req and "docutils" in req  # setup.py renders man pages
    assert data["build-system"]["build-backend"] == "setuptools.build_meta"


def test_deb_depends_on_what_a_node_needs():
    control = (ROOT / "debian" / "control").read_text()
    pkg = control.split("\nPackage: ganeti-ovf\n", 1)[1]
    depends = re.search(r"^Depends:(.*?)(?=^\S)", pkg, re.M | re.S).group(1)
    names = {d.strip().split()[0] for d in depends.split(",") if d.strip()}
    assert {"ganeti", "qemu-utils", "python3-lxml", "python3-pyparsing",
            "python3-cryptography"} <= names
    assert "Architecture: all" in pkg


def test_diversion_added_and_removed_symmetrically():
    pre = (ROOT / "debian" / "ganeti-ovf.preinst").read_text()
    post = (ROOT / "debian" / "ganeti-ovf.postrm").read_text()
    args = "--divert /usr/sbin/gnt-backup.distrib /usr/sbin/gnt-backup"
    assert "dpkg-divert --package ganeti-ovf --add --rename" in pre and args in pre
    assert "dpkg-divert --package ganeti-ovf --remove --rename" in post and args in post
    assert re.search(r"^\s+remove\|abort-install\|disappear\)", post, re.M)
    for f in ("ganeti-ovf.preinst", "ganeti-ovf.postrm", "rules"):
        assert "#DEBHELPER#" in (ROOT / "debian" / f).read_text() or f == "rules"
    for f in ("ganeti-ovf.preinst", "ganeti-ovf.postrm"):
        r = subprocess.run(["sh", "-n", str(ROOT / "debian" / f)], capture_output=True)
        assert r.returncode == 0, r.stderr


def test_gnt_backup_extension_execs_ganetis_own_not_the_diverted_name():
    """With /usr/sbin/gnt-backup diverted, pass-through must not go through
    /usr/sbin (that is us): it runs Ganeti's installed file."""
    src = (ROOT / "lib" / "gnt_backup.py").read_text()
    assert '"/usr/share/ganeti/default/gnt-backup"' in src
    assert "/usr/sbin/gnt-backup" not in src
