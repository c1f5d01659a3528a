"""integrity against real artefacts: the shared OVF corpus and openssl.

Corpus tests skip when ``../shared`` (next to the repository) is absent;
the expected outcome of every manifest and certificate is checked in here,
so a changed corpus shows up as a failure.  The openssl tests skip without
an ``openssl`` binary.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ganeti_ovf.errors import IntegrityError
from ganeti_ovf.integrity import (
    digest_file,
    parse_certificate_file,
    parse_manifest,
    sign_manifest,
    verify_certificate,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
CORPUS = SHARED / "ovf" / "corpus"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} is absent")

VBOX = "virtualbox/vbox-validationkit/tdAppliance1-{0}-ova/tdAppliance1-{0}.mf"
OVFTOOL = (
    "vmware/virtualbox-repo/vbox-validationkit/"
    "tdAppliance1-{0}-ovftool-4.1.0-ova/tdAppliance1-{0}-ovftool-4.1.0.mf"
)

# path: (number of entries, algorithms used)
MANIFESTS = {
    "cisco-cot/cot/input.mf": (4, {"SHA1"}),
    "ganeti/ovfdata/ganeti.mf": (2, {"SHA1"}),
    "open-ovf/tests/ourOVF.mf": (3, {"SHA1"}),
    "virtualbox/cot/ubuntu.2.0.mf": (2, {"SHA256"}),
    # VirtualBox 5.0: space padded, no final newline, and only the disks
    # are listed (not the .ovf).
    VBOX.format("t3"): (1, {"SHA256"}),
    VBOX.format("t4"): (2, {"SHA256"}),
    VBOX.format("t6"): (1, {"SHA1"}),
    VBOX.format("t7-bad-instance"): (3, {"SHA1"}),
    # coreutils ``sha1sum --tag`` style: "SHA1 (f) = h".
    "vmware/govmomi/vapi-testdata/ttylinux-pc_i486-16.1.mf": (2, {"SHA1"}),
    "vmware/vcloud-director/vapp_with_3_vms-ova/descriptor.mf": (4, {"SHA1"}),
    OVFTOOL.format("t2"): (2, {"SHA1"}),
    OVFTOOL.format("t4"): (3, {"SHA256"}),
    OVFTOOL.format("t6"): (2, {"SHA1"}),
}

# Manifest entries whose file is in the corpus next to the manifest.
LISTED_FILES_PRESENT = [
    ("cisco-cot/cot/input.mf", "input.ovf"),
    ("ganeti/ovfdata/ganeti.mf", "ganeti.ovf"),
    ("open-ovf/tests/ourOVF.mf", "ourOVF.ovf"),
    ("virtualbox/cot/ubuntu.2.0.mf", "ubuntu.2.0.ovf"),
    (VBOX.format("t7-bad-instance"), "tdAppliance1-t7-bad-instance.ovf"),
    (VBOX.format("t7-bad-instance"), "readme.txt"),
    (
        "vmware/govmomi/vapi-testdata/ttylinux-pc_i486-16.1.mf",
        "ttylinux-pc_i486-16.1.ovf",
    ),
    ("vmware/vcloud-director/vapp_with_3_vms-ova/descriptor.mf", "descriptor.ovf"),
    (OVFTOOL.format("t2"), "tdAppliance1-t2-ovftool-4.1.0.ovf"),
    (OVFTOOL.format("t4"), "tdAppliance1-t4-ovftool-4.1.0.ovf"),
    (OVFTOOL.format("t6"), "tdAppliance1-t6-ovftool-4.1.0.ovf"),
]

OPEN_OVF = "open-ovf/tests/ourOVF"
VBOX_T4 = "virtualbox/vbox-validationkit/tdAppliance1-t4-ova/tdAppliance1-t4"


def corpus_bytes(rel: str) -> bytes:
    return (CORPUS / rel).read_bytes()


# ---------------------------------------------------------------------------
# Manifests


@needs_corpus
def test_table_covers_every_manifest_in_the_corpus():
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.mf")}
    index = json.loads((CORPUS / "index.json").read_text())
    indexed = {e["path"] for e in index if e["kind"] == "manifest"}
    assert on_disk == indexed == set(MANIFESTS)


@needs_corpus
@pytest.mark.parametrize("rel", sorted(MANIFESTS))
def test_corpus_manifest_parses(rel):
    count, algorithms = MANIFESTS[rel]
    manifest = parse_manifest(corpus_bytes(rel), path=rel)
    assert len(manifest) == count
    assert {e.algorithm for e in manifest} == algorithms
    assert all(e.digest == e.digest.lower() for e in manifest)


@needs_corpus
@pytest.mark.parametrize(("rel", "filename"), LISTED_FILES_PRESENT)
def test_corpus_manifest_digest_matches_file(rel, filename):
    entry = parse_manifest(corpus_bytes(rel)).lookup(filename)
    assert entry is not None
    path = CORPUS / rel
    assert digest_file(path.parent / filename, entry.algorithm) == entry.digest


@needs_corpus
def test_manifest_inside_ova_checks_member_in_place():
    ova = CORPUS / "virtualbox/vbox-validationkit/packages/tdAppliance1-t3.ova"
    with tarfile.open(ova) as tar:
        members = {m.name: m for m in tar.getmembers()}
        mf = tar.extractfile(members["tdAppliance1-t3.mf"]).read()
    assert mf == corpus_bytes(VBOX.format("t3"))
    (entry,) = parse_manifest(mf).entries
    disk = members[entry.filename]
    got = digest_file(ova, entry.algorithm, disk.offset_data, disk.size, chunk=100)
    assert got == entry.digest
    # One byte more or less is another digest.
    assert digest_file(ova, "SHA256", disk.offset_data, disk.size - 1) != entry.digest


# ---------------------------------------------------------------------------
# Certificates: both corpus .cert files verify against their manifest.


@needs_corpus
def test_table_covers_every_certificate_in_the_corpus():
    on_disk = {p.relative_to(CORPUS).as_posix() for p in CORPUS.rglob("*.cert")}
    assert on_disk == {OPEN_OVF + ".cert", VBOX_T4 + ".cert"}


@needs_corpus
def test_open_ovf_certificate_verifies():
    # IBM Open-OVF mkovf: `openssl dgst -sha1 -sign`, 512-bit RSA, 2008.
    info = verify_certificate(
        corpus_bytes(OPEN_OVF + ".cert"),
        "ourOVF.mf",
        corpus_bytes(OPEN_OVF + ".mf"),
        path="ourOVF.cert",
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )
    subject = "CN=www.scott.mosers.us,L=Plymouth,ST=Michigan,C=US"
    assert info.subject == info.issuer == subject
    assert info.algorithm == "SHA1"
    assert info.key == "RSA-512"
    assert info.self_signed is True
    assert info.expired is True
    assert info.not_yet_valid is False
    assert info.not_before == datetime(2008, 9, 3, 1, 56, 39, tzinfo=UTC)
    assert info.not_after == datetime(2009, 9, 3, 1, 56, 39, tzinfo=UTC)
    assert info.fingerprint_sha256 == (
        "ce97590f9830b4141d2e1a0c29197ae00d7128258843a7f59f8cf5e7cf711855"
    )


@needs_corpus
def test_virtualbox_certificate_verifies_over_the_padded_manifest():
    # VirtualBox 5.0 signs the manifest exactly as stored: 302 bytes, of
    # which the last 94 are space padding.  The .cert itself is padded to
    # 100 KiB with spaces.
    cert = corpus_bytes(VBOX_T4 + ".cert")
    mf = corpus_bytes(VBOX_T4 + ".mf")
    assert len(mf) == 302
    assert len(cert) == 102400
    info = verify_certificate(cert, "tdAppliance1-t4.mf", mf, now=datetime(2025, 1, 1, tzinfo=UTC))
    subject = "CN=beispiel.example.org,O=Beispiel GmbH,L=For Instance,ST=Example,C=DE"
    assert info.subject == info.issuer == subject
    assert info.algorithm == "SHA1"
    assert info.key == "RSA-1024"
    assert (info.self_signed, info.expired, info.not_yet_valid) == (True, False, False)
    assert info.not_before == datetime(2016, 2, 1, 1, 45, 27, tzinfo=UTC)
    assert info.not_after == datetime(2046, 1, 24, 1, 45, 27, tzinfo=UTC)
    assert info.fingerprint_sha256 == (
        "5fb8eef19acf9fa0a99240b017f74a93142406e1b4562b9b1fd21069363f536e"
    )
    # The padding is covered: the manifest without it does not verify.
    message = (
        "t4.cert: SHA1 signature of 'tdAppliance1-t4.mf' does not verify with the"
        " key of 'CN=beispiel.example.org,O=Beispiel GmbH,L=For Instance,"
        "ST=Example,C=DE'"
    )
    for other in (mf.rstrip(b" "), mf.rstrip(), mf + b" "):
        with pytest.raises(IntegrityError) as err:
            verify_certificate(cert, "tdAppliance1-t4.mf", other, path="t4.cert")
        assert str(err.value) == message


@needs_corpus
def test_corpus_certificates_are_not_interchangeable():
    with pytest.raises(IntegrityError) as err:
        verify_certificate(
            corpus_bytes(OPEN_OVF + ".cert"),
            "tdAppliance1-t4.mf",
            corpus_bytes(VBOX_T4 + ".mf"),
        )
    assert str(err.value) == "signature is for 'ourOVF.mf', not 'tdAppliance1-t4.mf'"
    # Same name, other manifest: the signature does not hold.
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_certificate(
            corpus_bytes(OPEN_OVF + ".cert"),
            "ourOVF.mf",
            corpus_bytes(VBOX_T4 + ".mf"),
        )


@needs_corpus
def test_corpus_certificate_files_parse():
    parsed = parse_certificate_file(corpus_bytes(VBOX_T4 + ".cert"))
    assert (parsed.algorithm, parsed.manifest_name) == ("SHA1", "tdAppliance1-t4.mf")
    assert len(parsed.signature) == 128
    assert len(parsed.certificates) == 1
    parsed = parse_certificate_file(corpus_bytes(OPEN_OVF + ".cert"))
    assert (parsed.algorithm, parsed.manifest_name) == ("SHA1", "ourOVF.mf")
    assert len(parsed.signature) == 64


# ---------------------------------------------------------------------------
# openssl: the recipe vendors follow by hand, and the reverse check.

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
MANIFEST = b"SHA256(pkg.ovf)= " + b"ab" * 32 + b"\n"


def _key_and_cert(kind: str):
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openssl interop")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key, key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _openssl(*args: str | Path) -> bytes:
    return subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True).stdout


@needs_openssl
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_openssl_signature_verifies(tmp_path, kind):
    _, key_pem, cert_pem = _key_and_cert(kind)
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "pkg.mf").write_bytes(MANIFEST)
    signature = _openssl("dgst", "-sha256", "-sign", tmp_path / "key.pem", tmp_path / "pkg.mf")
    cert_file = f"SHA256(pkg.mf)= {signature.hex()}\n".encode() + cert_pem
    assert verify_certificate(cert_file, "pkg.mf", MANIFEST).algorithm == "SHA256"


@needs_openssl
def test_openssl_hex_output_line_is_not_an_ovf_line(tmp_path):
    # `openssl dgst -hex -sign` names the key type too; ovftool and
    # VirtualBox read only "SHA256(...)=", and so do we.
    _, key_pem, cert_pem = _key_and_cert("rsa")
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "pkg.mf").write_bytes(MANIFEST)
    line = _openssl("dgst", "-sha256", "-hex", "-sign", tmp_path / "key.pem", tmp_path / "pkg.mf")
    algorithm = line.split(b"(", 1)[0].decode()
    assert algorithm.startswith("RSA-")
    with pytest.raises(IntegrityError) as err:
        verify_certificate(line + cert_pem, "pkg.mf", MANIFEST)
    assert str(err.value) == f"line 1: unknown digest algorithm {algorithm!r}"


@needs_openssl
@pytest.mark.parametrize("kind", ["rsa", "ec"])
@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_our_signature_verifies_with_openssl(tmp_path, kind, algorithm):
    key, key_pem, cert_pem = _key_and_cert(kind)
    cert_file = sign_manifest("pkg.mf", MANIFEST, key_pem, cert_pem, algorithm)
    (tmp_path / "pkg.mf").write_bytes(MANIFEST)
    (tmp_path / "sig.bin").write_bytes(parse_certificate_file(cert_file).signature)
    (tmp_path / "pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    out = _openssl(
        "dgst",
        f"-{algorithm.lower()}",
        "-verify",
        tmp_path / "pub.pem",
        "-signature",
        tmp_path / "sig.bin",
        tmp_path / "pkg.mf",
    )
    assert out.strip() == b"Verified OK"
