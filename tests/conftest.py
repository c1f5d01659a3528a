"""Shared fixtures: real packages built with qemu-img, a real OS search path."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "tools"))

import make_fixtures  # noqa: E402


def make_ganeti_dir(top: Path, os_search_path: list[str]) -> dict[str, str]:
    """A stand-in for Ganeti's installed modules (its constants only: OS
    search path, export dir) where no cluster is needed; the environment
    that points ganeti-ovf at it."""
    g = top / "ganeti"
    (g / "ganeti").mkdir(parents=True)
    (g / "ganeti" / "__init__.py").write_text("")
    (g / "ganeti" / "_constants.py").write_text(
        f"OS_SEARCH_PATH = {list(os_search_path)!r}\nEXPORT_DIR = {str(top / 'exports')!r}\n"
        "OS_API_VERSIONS = frozenset([10, 15, 20])\nRELEASE_VERSION = '3.0.2'\n")
    (g / "ganeti" / "constants.py").write_text("from ganeti._constants import *\n")
    return {"GANETI_OVF_GANETI_DIR": str(g)}


def make_os_dir(top: Path, name: str, api: str = "20", variants: list[str] | None = None,
                scripts=("create", "export", "import", "rename", "verify")) -> Path:
    """A Ganeti OS definition directory, as ganeti-os-noop installs one."""
    d = top / name
    d.mkdir(parents=True)
    (d / "ganeti_api_version").write_text(api + "\n")
    for s in scripts:
        p = d / s
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    if variants is not None:
        (d / "variants.list").write_text("".join(v + "\n" for v in variants))
    if int(api) >= 20:
        (d / "parameters.list").write_text("pct a percentage\n")
    return d


@pytest.fixture
def os_path(tmp_path: Path) -> list[str]:
    """An OS search path holding 'noop' and 'image+default' (variants)."""
    top = tmp_path / "os"
    make_os_dir(top, "noop", api="10", scripts=("create", "export", "import", "rename"))
    make_os_dir(top, "image", api="20", variants=["default", "minimal"])
    return [str(top)]


@pytest.fixture
def build(tmp_path: Path):
    """build(app, ova=True) -> (package path, raw disk contents)."""
    def _build(app: make_fixtures.Appliance, *, ova: bool = True, manifest="SHA256",
               outdir: Path | None = None):
        out = outdir or tmp_path / "pkgs"
        return make_fixtures.build_package(app, str(out), ova=ova, manifest=manifest)
    return _build


def read(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pytest_terminal_summary(terminalreporter) -> None:
    """Say once, in the summary, why tests were skipped for want of
    ../shared (reference data beside the project, not part of it)."""
    skipped = terminalreporter.stats.get("skipped", [])
    n = sum(1 for r in skipped if "shared" in str(getattr(r, "longrepr", "")))
    if n and not SHARED.is_dir():
        terminalreporter.write_line(
            f"{n} skipped: ../shared ({SHARED}) is absent; those tests read its OVF corpus "
            "and Ganeti samples (reference data beside the project)")
