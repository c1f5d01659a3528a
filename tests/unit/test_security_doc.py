"""The threat model in ovfconverter(1) and the README: every defence it
states names the tests that fail when the defence is removed, and the two
documents state the same defences."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "man" / "ovfconverter.rst"
README = ROOT / "README.md"


def _man_section() -> str:
    text = PAGE.read_text()
    m = re.search(r"^SECURITY\n-+\n(.*?)(?=^\S[^\n]*\n-+\n)", text, re.M | re.S)
    assert m, "ovfconverter.rst has no SECURITY section"
    return m.group(1)


def _man_defences() -> list[tuple[str, list[str]]]:
    """(bullet text, test ids) for each bullet of the SECURITY section."""
    out = []
    for m in re.finditer(r"^- (.*?)\n\n  \.\. tests: (.*?)(?=\n\n|\Z)", _man_section(),
                         re.M | re.S):
        out.append((_norm(m.group(1)), m.group(2).split()))
    return out


def _readme_defences() -> list[str]:
    text = README.read_text()
    m = re.search(r"^## Security\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README.md has no '## Security' section"
    return [_norm(b) for b in re.findall(r"^- (.*?)(?=\n- |\n\n|\Z)", m.group(1), re.M | re.S)]


def _norm(text: str) -> str:
    """Same words whatever the markup: reST ``x``/**x** and Markdown `x`/**x**."""
    text = re.sub(r"``|`|\*\*|\\", "", text)
    return " ".join(text.split())


@cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    return frozenset(n.name for n in ast.walk(tree)
                     if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))


def test_section_says_what_is_trusted_and_what_is_not():
    sec = _man_section()
    assert "Trusted:" in sec and "Untrusted:" in sec
    assert "every byte of a package" in sec
    assert len(_man_defences()) >= 15
    # Every bullet carries its tests: none was dropped by the pattern.
    assert len(_man_defences()) == len(re.findall(r"^- ", sec, re.M))


@pytest.mark.parametrize("text,ids", _man_defences(), ids=lambda v: str(v)[:40])
def test_every_defence_names_existing_tests(text, ids):
    assert ids, text
    for ident in ids:
        path, _, name = ident.partition("::")
        f = ROOT / path
        assert f.is_file() and path.startswith("tests/"), ident
        assert name in _test_names(f), f"{ident} (for: {text})"


def test_readme_states_the_same_defences():
    assert _readme_defences() == [t for t, _ in _man_defences()]
