"""Every file of the shared OVF corpus: real data nobody here wrote.

Well-formed OVF envelopes and OVAs must be read (``info`` succeeds);
broken or non-OVF files must be refused with one ``OvfError`` line; nothing
may raise anything else.  Exceptions to the rule are listed in
``OVERRIDES`` with the reason.  Skipped when ../shared is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ganeti_ovf import report
from ganeti_ovf.errors import OvfError

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "ovf" / "corpus"
INDEX = CORPUS / "index.json"

# path -> (expected "ok" | "error", why)
OVERRIDES: dict[str, tuple[str, str]] = {}


def _entries():
    if not INDEX.exists():
        return []
    return [e for e in json.loads(INDEX.read_text())
            if e["kind"] in ("descriptor", "archive")]


def _expected(e) -> str:
    if e["path"] in OVERRIDES:
        return OVERRIDES[e["path"]][0]
    if e["kind"] == "archive":
        return "ok"
    return "ok" if e["is_ovf_envelope"] and e["well_formed_xml"] else "error"


ENTRIES = _entries()


@pytest.mark.skipif(not ENTRIES, reason="shared OVF corpus not present")
@pytest.mark.parametrize("entry", ENTRIES, ids=[e["path"] for e in ENTRIES])
def test_corpus_file(entry):
    path = str(CORPUS / entry["path"])
    want = _expected(entry)
    try:
        data = report.package_info(path)
    except OvfError as e:
        line = str(e)
        assert "\n" not in line and line.startswith(path)
        assert want == "error", f"refused: {line}"
        return
    assert want == "ok", "read, but should have been refused"
    assert data["systems"], "no virtual system read"
    text = report.info_text(data)
    assert text and "\n" in text
    json.dumps(data)  # the --json form serialises
