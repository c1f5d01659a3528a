"""What a manifest must be for import and verify to trust it: empty ones,
and one member listed under several spellings."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from make_fixtures import Appliance, DiskSpec

from ganeti_ovf import integrity, report
from ganeti_ovf.errors import IntegrityError
from ganeti_ovf.importer import ImportRequest, import_package

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def req(os_path) -> ImportRequest:
    return ImportRequest(os_name="noop", os_search_path=os_path, use_cluster=False)


def _signature(manifest: bytes) -> bytes:
    """A real .cert over ``manifest`` (self-signed EC key made here)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return integrity.sign_manifest("e.mf", manifest, key_pem,
                                   cert.public_bytes(serialization.Encoding.PEM))


def test_unsigned_empty_manifest_is_treated_as_none(build, tmp_path, os_path, caplog):
    """ovftool 4.0 writes such manifests and VirtualBox imports them."""
    pkg, _ = build(Appliance(name="e", disks=[DiskSpec(MIB, "raw")]), ova=False)
    Path(pkg).with_suffix(".mf").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert any("manifest 'e.mf' lists no files; nothing is protected, as without one"
               in r.getMessage() for r in caplog.records)
    problems, checked = report.verify_package(pkg)
    assert problems == []
    assert any("lists no files" in c for c in checked)


def test_unsigned_empty_manifest_imports_from_the_command_line(build, tmp_path, os_path):
    """The import's outcome (digests of the package) reads the manifest again."""
    pkg, _ = build(Appliance(name="e", disks=[DiskSpec(MIB, "raw")]))  # an OVA
    bare = tmp_path / "bare.ova"
    with tarfile.open(pkg) as t, tarfile.open(bare, "w", format=tarfile.USTAR_FORMAT) as o:
        for m in t.getmembers():
            data = b"" if m.name.endswith(".mf") else t.extractfile(m).read()
            m.size = len(data)
            o.addfile(m, io.BytesIO(data))
    g = tmp_path / "ganeti" / "ganeti"
    g.mkdir(parents=True)
    (g / "__init__.py").write_text("")
    (g / "constants.py").write_text(
        f"OS_SEARCH_PATH = {os_path!r}\nEXPORT_DIR = {str(tmp_path / 'exports')!r}\n"
        "OS_API_VERSIONS = frozenset([10, 15, 20])\nRELEASE_VERSION = '3.0.2'\n")
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "ovfconverter"), "import",
                        str(bare), "-o", "noop", "--output-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "GANETI_OVF_GANETI_DIR": str(g.parent)})
    assert p.returncode == 0, p.stderr
    assert "lists no files; nothing is protected, as without one" in p.stderr
    assert (tmp_path / "out" / "e" / "config.ini").is_file()


def test_signed_empty_manifest_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="e", disks=[DiskSpec(MIB, "raw")]), ova=False)
    Path(pkg).with_suffix(".mf").write_bytes(b"\n")
    Path(pkg).with_suffix(".cert").write_bytes(_signature(b"\n"))
    with pytest.raises(IntegrityError, match=r"e.ovf: manifest 'e.mf' lists no files, yet "
                                             r"certificate 'e.cert' signs it"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert not (tmp_path / "o").exists()
    problems, _ = report.verify_package(pkg)
    assert any("lists no files, yet certificate" in p for p in problems)


def _spellings(name: str, n: int) -> list[str]:
    """``name``, ``./name``, ``.\\name``, ``././name``...: n spellings of one name."""
    out = []
    for k in range(1, n + 1):
        tokens = []
        while k > 1:  # the binary digits of k after the leading 1
            tokens.append("./" if k % 2 else ".\\")
            k //= 2
        out.append("".join(tokens) + name)
    return out


def test_two_spellings_of_one_member_refused(build, tmp_path, os_path):
    pkg, _ = build(Appliance(name="sp", disks=[DiskSpec(MIB, "raw")]), ova=False)
    mf = Path(pkg).with_suffix(".mf")
    text = mf.read_text()
    line = next(ln for ln in text.splitlines() if "sp-disk1.raw" in ln)
    mf.write_text(text + line.replace("(sp-disk1.raw)", "(./sp-disk1.raw)") + "\n")
    with pytest.raises(IntegrityError, match=r"manifest lists 'sp-disk1.raw' twice, as "
                                             r"'sp-disk1.raw' and './sp-disk1.raw'$"):
        import_package(pkg, str(tmp_path / "o"), req(os_path))


def test_thousands_of_spellings_hash_the_member_once(build, tmp_path):
    """Each spelling used to hash the 4 MiB disk again (34 s for verify)."""
    pkg, raws = build(Appliance(name="many", disks=[DiskSpec(4 * MIB, "raw")]), ova=False)
    mf = Path(pkg).with_suffix(".mf")
    digest = hashlib.sha256(raws[0]).hexdigest()
    names = _spellings("many-disk1.raw", 3000)
    assert len(set(names)) == 3000
    mf.write_text(mf.read_text() + "".join(f"SHA256({n})= {digest}\n" for n in names[1:]))
    start = time.monotonic()
    problems, _ = report.verify_package(pkg)
    assert time.monotonic() - start < 10
    assert len([p for p in problems if "twice" in p]) == 2999


def _upper_case_manifest(build, ova: bool) -> str:
    """A package whose manifest is stored as ``u.MF`` and whose disk was then
    changed: the manifest no longer matches, were it read."""
    pkg, _ = build(Appliance(name="u", disks=[DiskSpec(MIB, "raw")]), ova=False)
    d = Path(pkg).parent
    (d / "u.mf").rename(d / "u.MF")
    with open(d / "u-disk1.raw", "r+b") as f:
        f.write(b"tampered")
    if not ova:
        return pkg
    out = d.parent / "u.ova"
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as t:
        for name in ("u.ovf", "u.MF", "u-disk1.raw"):
            t.add(d / name, arcname=name)
    return str(out)


@pytest.mark.parametrize("ova", [True, False])
def test_manifest_differing_only_in_case_is_not_silently_ignored(build, tmp_path, os_path,
                                                                  caplog, ova):
    """DSP0243 names the manifest ``<stem>.mf``; ``u.MF`` is not it and is not
    used.  Import warns (dropping the manifest altogether would import the same
    package); verify says so; --require-signature refuses the package."""
    pkg = _upper_case_manifest(build, ova)
    warning = ("manifest-like member 'u.MF' does not match the descriptor's name 'u.mf' and "
               "is not used: its digests or signature are NOT checked")
    with caplog.at_level(logging.WARNING):
        import_package(pkg, str(tmp_path / "o"), req(os_path))
    assert [r.getMessage() for r in caplog.records if "u.MF" in r.getMessage()] == [
        f"{pkg}: {warning}"]
    problems, checked, _ = report.verify_report(pkg)
    assert f"no manifest; {warning}" in checked
    if ova:  # an OVA's member the descriptor does not reference is a problem anyway
        assert problems == ["member 'u.MF' is not referenced by the descriptor"]
    else:
        assert problems == []
    r = ImportRequest(os_name="noop", os_search_path=os_path, use_cluster=False,
                      require_signature=True)
    with pytest.raises(IntegrityError, match=r"the package is not signed .* "
                                             r"--require-signature is given$"):
        import_package(pkg, str(tmp_path / "o2"), r)
    assert not (tmp_path / "o2").exists()
