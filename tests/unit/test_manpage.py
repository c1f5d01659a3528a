"""The man page and the real parser stay in sync (as Ganeti's TestManpages)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ganeti_ovf import cli

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "ovfconverter.rst"
sys.path.insert(0, str(ROOT / "tools"))


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = cli.build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _long_opts(p: argparse.ArgumentParser) -> set[str]:
    return {s for a in p._actions for s in a.option_strings if s.startswith("--")} - {"--help"}


def _section(text: str, title: str) -> str:
    m = re.search(rf"^{title}\n~+\n(.*?)(?=^\S[^\n]*\n[~-]+\n|\Z)", text, re.M | re.S)
    assert m, title
    return m.group(1)


def test_every_command_has_its_section():
    text = PAGE.read_text()
    for name in _subparsers():
        assert re.search(rf"^{name.upper()}\n~+\n\n\|? ?\*\*{name}\*\*", text, re.M), name


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_options_documented_both_ways(command):
    text = PAGE.read_text()
    sec = _section(text, command.upper()).split("Example::")[0]
    common = {"--debug", "--verbose", "--quiet"}
    in_parser = _long_opts(_subparsers()[command]) - common
    in_page = set(re.findall(r"(?<![\w-])\\?(--[a-z][a-z0-9-]*)", sec))
    in_page = {o.lstrip("\\") for o in in_page} - common
    assert in_parser == in_page


def test_exit_status_matches_cli():
    sec = PAGE.read_text().split("EXIT STATUS\n-----------\n", 1)[1].split("\nSEE ALSO", 1)[0]
    documented = {int(n) for n in re.findall(r"^(\d+)$", sec, re.M)}
    codes = {cli.EXIT_SUCCESS, cli.EXIT_INTERRUPTED} | {c for _, c in cli.EXIT_CODES}
    assert documented == codes


def test_renders_without_warnings(tmp_path):
    pytest.importorskip("docutils")
    import build_man
    made = build_man.build_all(str(tmp_path), "1.0")
    assert [Path(p).name for p in made] == sorted(Path(p).name for p in made)
    page = (tmp_path / "ovfconverter.1").read_text()
    assert page.startswith(".\\\"") or ".TH" in page
    assert '.TH "OVFCONVERTER" 1 "" "1.0" "Ganeti"' in page
    if subprocess.run(["which", "man"], capture_output=True).returncode == 0:
        r = subprocess.run(["man", "--warnings", "-l", str(tmp_path / "ovfconverter.1")],
                           capture_output=True, text=True, env={"MANWIDTH": "80", "PATH":
                                                                 "/usr/bin:/bin"})
        assert r.returncode == 0
        assert "warning" not in r.stderr.lower()
