"""The manifests we write are exactly their lines: no padding, a final
newline (virt-v2v warns about a padded last line), in every layout."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from test_export import SAMPLES, make_export, make_signer

from ganeti_ovf import report
from ganeti_ovf.exporter import ExportRequest, export_package

MIB = 1 << 20


def _exact_lines(mf: bytes) -> None:
    assert mf.endswith(b"\n") and b"  " not in mf and b"\0" not in mf
    assert all(line.startswith(b"SHA256(") for line in mf.split(b"\n")[:-1])


@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "chunked"])
def test_ova_manifest_is_exactly_its_lines(tmp_path, chunked):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    key, cert = make_signer(tmp_path, "ec")
    res = export_package(str(export), str(tmp_path / "out"),
                         ExportRequest(ova=True, sign_key=key, sign_cert=cert,
                                       chunk_size=MIB if chunked else None))
    with tarfile.open(res.path) as t:
        names = t.getnames()
        mf = t.extractfile("qa-multi.mf").read()
    _exact_lines(mf)
    assert len(mf.split(b"\n")) - 1 == len(names) - 2  # every member but .mf/.cert
    # DSP0243: the manifest and certificate right after the descriptor, or
    # both at the end (a chunked export knows its chunk count only then).
    tail = ["qa-multi.mf", "qa-multi.cert"]
    assert names[0] == "qa-multi.ovf"
    assert (names[-2:] if chunked else names[1:3]) == tail
    assert tuple(names) == res.files
    problems, checked = report.verify_package(res.path)
    assert problems == [] and any("signature over the manifest holds" in c for c in checked)


def test_directory_manifest_is_exactly_its_lines(tmp_path):
    export = make_export(tmp_path, SAMPLES / "multi" / "config.ini")
    res = export_package(str(export), str(tmp_path / "out"), ExportRequest(chunk_size=MIB))
    _exact_lines(Path(res.descriptor).with_suffix(".mf").read_bytes())
