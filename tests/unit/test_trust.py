"""Trust decisions on package signers (lib/trust.py), with real certificates
made here by ``cryptography``: a throwaway root CA, an intermediate, a leaf,
and forgeries (a "VMware, Inc." certificate naming a real DigiCert root of
the system's CA store as its issuer, but signed by a throwaway key)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ganeti_ovf import trust
from ganeti_ovf.errors import IntegrityError, UsageError
from ganeti_ovf.integrity import sign_manifest, verify_certificate

NOW = datetime.now(UTC).replace(microsecond=0)
MANIFEST = b"SHA256(pkg.ovf)= " + b"0" * 64 + b"\n"


def name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def rsa_key(bits: int = 2048):
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make(key, subject: x509.Name, *, issuer: x509.Name | None = None, issuer_key=None,
         ca: bool | None = None, path_length: int | None = None, days: tuple[int, int] = (-1, 30),
         key_usage: dict | None = None, eku: list | None = None, digest=hashes.SHA256(),
         extra: list | None = None) -> x509.Certificate:
    """A certificate for ``key``; self-signed unless ``issuer_key``."""
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer or subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW + timedelta(days=days[0]))
         .not_valid_after(NOW + timedelta(days=days[1])))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), True)
    if key_usage is not None:
        flags = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                     crl_sign=False, encipher_only=False, decipher_only=False)
        flags.update(key_usage)
        b = b.add_extension(x509.KeyUsage(**flags), True)
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), False)
    for ext, critical in extra or ():
        b = b.add_extension(ext, critical)
    signing = issuer_key if issuer_key is not None else key
    if isinstance(signing, ed25519.Ed25519PrivateKey):
        digest = None
    return b.sign(signing, digest)


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def cert_file(key, *certs: x509.Certificate) -> bytes:
    """A real .cert file: ``key`` signs MANIFEST; the signer's certificate
    first, then what the publisher carries."""
    keypem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    return sign_manifest("pkg.mf", MANIFEST, keypem, pem(*certs))


@pytest.fixture(scope="module")
def pki():
    """root CA -> intermediate CA -> code-signing leaf, all RSA-2048."""
    root_key, int_key, leaf_key = rsa_key(), rsa_key(), rsa_key()
    root = make(root_key, name("Test Root CA", "Test"), ca=True,
                key_usage=dict(key_cert_sign=True, crl_sign=True))
    inter = make(int_key, name("Test Intermediate CA", "Test"), issuer=root.subject,
                 issuer_key=root_key, ca=True, path_length=0,
                 key_usage=dict(key_cert_sign=True))
    leaf = make(leaf_key, name("Appliance Publisher", "Publisher Ltd"), issuer=inter.subject,
                issuer_key=int_key, ca=False, key_usage=dict(digital_signature=True),
                eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    return dict(root_key=root_key, int_key=int_key, leaf_key=leaf_key, root=root, inter=inter,
                leaf=leaf)


def store_of(tmp_path: Path, *certs: x509.Certificate, bundle: bool = False) -> trust.TrustStore:
    f = tmp_path / f"anchors-{len(list(tmp_path.iterdir()))}.pem"
    f.write_bytes(pem(*certs))
    if bundle:
        return trust.load_store((), str(f))
    return trust.load_store([str(f)], system=False)


def verdict(data: bytes, store: trust.TrustStore, **kw) -> trust.Verdict:
    return trust.check_signer(data, store, path="pkg.cert", **kw)


# --------------------------------------------------------------- forged names

def _digicert_root() -> x509.Certificate:
    bundle = trust.default_bundle()
    if bundle is None:
        pytest.skip("no system CA bundle here")
    roots = [a.cert for a in trust.load_store().anchors
             if a.cert.subject.rfc4514_string().startswith("CN=DigiCert Global Root CA")]
    if not roots:
        pytest.skip("the system CA bundle has no DigiCert Global Root CA")
    return roots[0]


def test_forged_vmware_signer_naming_a_real_system_root_is_not_trusted():
    """The review's case: subject 'VMware, Inc.', issuer the exact name of a
    CA in the system store, signed by a throwaway key.  Names match, so the
    signature check is what refuses it."""
    root = _digicert_root()
    key = rsa_key()
    forged = make(key, name("VMware, Inc.", "VMware, Inc."), issuer=root.subject,
                  issuer_key=rsa_key(), ca=False, eku=[ExtendedKeyUsageOID.CODE_SIGNING])
    v = verdict(cert_file(key, forged), trust.load_store())
    assert not v.trusted
    assert v.reason == (f"the signature of {forged.subject.rfc4514_string()} by "
                        f"{root.subject.rfc4514_string()} does not verify")
    assert v.line("pkg.cert").startswith(
        r"pkg.cert: signer CN=VMware\, Inc.,O=VMware\, Inc. does not chain to a trusted "
        "certificate (the signature of")
    assert v.line("pkg.cert").endswith(
        "; the signature proves only that the manifest is unchanged since someone with that "
        "key signed it)")


def test_forged_signer_with_invented_issuer_is_not_trusted():
    key = rsa_key()
    forged = make(key, name("VMware, Inc."), issuer=name("DigiCert EV Code Signing CA (SHA2)"),
                  issuer_key=rsa_key())
    v = verdict(cert_file(key, forged), trust.load_store())
    assert not v.trusted
    assert v.reason == ("no trusted certificate issued it "
                        "(issuer CN=DigiCert EV Code Signing CA (SHA2))")


def test_self_signed_signer_is_not_trusted_by_the_system_store():
    key = rsa_key()
    own = make(key, name("VMware, Inc."))
    assert not verdict(cert_file(key, own), trust.load_store()).trusted


def test_no_anchors_at_all(tmp_path):
    key = rsa_key()
    v = verdict(cert_file(key, make(key, name("x"))), trust.TrustStore())
    assert not v.trusted and "no trusted certificates are configured" in v.reason


# --------------------------------------------------------------- chains that hold

def test_chain_through_carried_intermediate_to_trusted_root(pki, tmp_path):
    data = cert_file(pki["leaf_key"], pki["leaf"], pki["inter"])
    v = verdict(data, store_of(tmp_path, pki["root"]))
    assert v.trusted, v.reason
    assert v.anchor == "CN=Test Root CA,O=Test"
    assert v.chain == ("CN=Appliance Publisher,O=Publisher Ltd",
                       "CN=Test Intermediate CA,O=Test", "CN=Test Root CA,O=Test")
    assert v.line("pkg.cert") == (
        "pkg.cert: signer CN=Appliance Publisher,O=Publisher Ltd chains to the trusted "
        "certificate CN=Test Root CA,O=Test via CN=Test Intermediate CA,O=Test "
        f"({v.source})")
    assert v.source.startswith("--trusted-cert ")


def test_chain_to_a_ca_bundle(pki, tmp_path):
    data = cert_file(pki["leaf_key"], pki["leaf"], pki["inter"])
    v = verdict(data, store_of(tmp_path, pki["root"], bundle=True))
    assert v.trusted and v.source.startswith("CA bundle ")


def test_intermediate_trusted_directly(pki, tmp_path):
    v = verdict(cert_file(pki["leaf_key"], pki["leaf"]), store_of(tmp_path, pki["inter"]))
    assert v.trusted and v.anchor == "CN=Test Intermediate CA,O=Test"


def test_missing_intermediate_is_not_fetched(pki, tmp_path):
    v = verdict(cert_file(pki["leaf_key"], pki["leaf"]), store_of(tmp_path, pki["root"]))
    assert not v.trusted
    assert v.reason == "no trusted certificate issued it (issuer CN=Test Intermediate CA,O=Test)"
    unknown_root = rsa_key()
    other = make(unknown_root, name("Other Root"), ca=True)
    v = verdict(cert_file(pki["leaf_key"], pki["leaf"], pki["inter"]), store_of(tmp_path, other))
    assert v.reason == ("no trusted certificate issued CN=Test Intermediate CA,O=Test "
                        "(issuer CN=Test Root CA,O=Test)")


def test_signer_trusted_directly_same_der_or_same_key_and_subject(tmp_path):
    """A self-signed publisher certificate given with --trusted-cert (a
    leaf, no CA) is trusted as the signer: the same DER, or a re-issue with
    the same subject and key."""
    key = rsa_key()
    own = make(key, name("VMware, Inc."))
    v = verdict(cert_file(key, own), store_of(tmp_path, own))
    assert v.trusted and v.chain == (r"CN=VMware\, Inc.",)
    assert v.line("pkg.cert").startswith(r"pkg.cert: signer CN=VMware\, Inc. is the trusted "
                                         "certificate (--trusted-cert ")
    reissued = make(key, name("VMware, Inc."))
    assert reissued.serial_number != own.serial_number
    assert verdict(cert_file(key, reissued), store_of(tmp_path, own)).trusted
    other_key = rsa_key()
    same_name = make(other_key, name("VMware, Inc."))
    assert not verdict(cert_file(other_key, same_name), store_of(tmp_path, own)).trusted
    same_key = make(key, name("Someone Else"))  # the pinned key, another name: not that cert
    assert not verdict(cert_file(key, same_key), store_of(tmp_path, own)).trusted


def test_directly_trusted_only_from_trusted_cert_not_from_the_bundle(tmp_path):
    """A leaf in a CA bundle is no CA: it does not vouch for itself."""
    key = rsa_key()
    own = make(key, name("Publisher"))
    v = verdict(cert_file(key, own), store_of(tmp_path, own, bundle=True))
    assert not v.trusted and "is not a CA certificate" in v.reason


@pytest.mark.parametrize("kind", ["ec", "ed25519"])
def test_ec_and_ed25519_chains(kind, tmp_path):
    new = (lambda: ec.generate_private_key(ec.SECP384R1())) if kind == "ec" \
        else ed25519.Ed25519PrivateKey.generate
    root_key, leaf_key = new(), ec.generate_private_key(ec.SECP256R1())
    root = make(root_key, name(f"{kind} root"), ca=True, digest=hashes.SHA384())
    leaf = make(leaf_key, name("leaf"), issuer=root.subject, issuer_key=root_key)
    assert verdict(cert_file(leaf_key, leaf), store_of(tmp_path, root)).trusted


# --------------------------------------------------------------- chains that break

def test_issuer_without_ca_flag_is_refused(pki, tmp_path):
    not_ca = make(pki["int_key"], pki["inter"].subject, issuer=pki["root"].subject,
                  issuer_key=pki["root_key"], ca=False)
    for extension in (None, False):  # no basicConstraints, or CA=false
        if extension is None:
            not_ca = make(pki["int_key"], pki["inter"].subject, issuer=pki["root"].subject,
                          issuer_key=pki["root_key"])
        v = verdict(cert_file(pki["leaf_key"], pki["leaf"], not_ca),
                    store_of(tmp_path, pki["root"]))
        assert not v.trusted
        assert v.reason == ("CN=Test Intermediate CA,O=Test is not a CA certificate "
                            "(basicConstraints CA=true)")


def test_trusted_leaf_cannot_issue(tmp_path):
    """A --trusted-cert leaf is trusted as a signer, not as an issuer."""
    pub_key, other_key = rsa_key(), rsa_key()
    pub = make(pub_key, name("Publisher"), ca=False)
    child = make(other_key, name("Someone"), issuer=pub.subject, issuer_key=pub_key)
    v = verdict(cert_file(other_key, child), store_of(tmp_path, pub))
    assert not v.trusted and "CN=Publisher is not a CA certificate" in v.reason


def test_issuer_key_usage_without_cert_sign(pki, tmp_path):
    inter = make(pki["int_key"], pki["inter"].subject, issuer=pki["root"].subject,
                 issuer_key=pki["root_key"], ca=True, key_usage=dict(digital_signature=True))
    v = verdict(cert_file(pki["leaf_key"], pki["leaf"], inter), store_of(tmp_path, pki["root"]))
    assert not v.trusted and v.reason.endswith("may not sign certificates (keyUsage)")


def test_path_length_constraint(pki, tmp_path):
    """The intermediate allows no CA below it; a second intermediate under
    it breaks the path."""
    k2 = rsa_key()
    inter2 = make(k2, name("Second Intermediate"), issuer=pki["inter"].subject,
                  issuer_key=pki["int_key"], ca=True)
    leaf = make(pki["leaf_key"], name("Leaf"), issuer=inter2.subject, issuer_key=k2)
    v = verdict(cert_file(pki["leaf_key"], leaf, inter2, pki["inter"]),
                store_of(tmp_path, pki["root"]))
    assert not v.trusted
    assert v.reason == "CN=Test Intermediate CA,O=Test allows 0 CA certificate(s) below it"


@pytest.mark.parametrize("which", ["leaf", "intermediate", "root"])
@pytest.mark.parametrize("days", [(-30, -1), (1, 30)], ids=["expired", "not-yet-valid"])
def test_validity_period_of_every_certificate(pki, tmp_path, which, days):
    root_key, int_key, leaf_key = pki["root_key"], pki["int_key"], pki["leaf_key"]
    root = make(root_key, pki["root"].subject, ca=True,
                days=days if which == "root" else (-1, 30))
    inter = make(int_key, pki["inter"].subject, issuer=root.subject, issuer_key=root_key,
                 ca=True, days=days if which == "intermediate" else (-1, 30))
    leaf = make(leaf_key, pki["leaf"].subject, issuer=inter.subject, issuer_key=int_key,
                days=days if which == "leaf" else (-1, 30))
    v = verdict(cert_file(leaf_key, leaf, inter), store_of(tmp_path, root))
    assert not v.trusted
    assert ("expired on" if days[1] < 0 else "is not valid before") in v.reason


def test_expired_signer_trusted_directly_is_still_refused(tmp_path):
    key = rsa_key()
    old = make(key, name("Old"), days=(-60, -1))
    v = verdict(cert_file(key, old), store_of(tmp_path, old))
    assert not v.trusted and "CN=Old expired on" in v.reason


def test_weak_digest_in_chain(pki, tmp_path):
    inter = make(pki["int_key"], pki["inter"].subject, issuer=pki["root"].subject,
                 issuer_key=pki["root_key"], ca=True, digest=hashes.SHA1())
    v = verdict(cert_file(pki["leaf_key"], pki["leaf"], inter), store_of(tmp_path, pki["root"]))
    assert not v.trusted and v.reason.endswith("uses SHA1, which is too weak to trust")


def test_weak_rsa_key(tmp_path):
    key = rsa_key(1024)
    own = make(key, name("Small"))
    v = verdict(cert_file(key, own), store_of(tmp_path, own))
    assert not v.trusted and v.reason == "the RSA-1024 key of CN=Small is too weak to trust"


def test_tls_server_certificate_is_no_code_signer(pki, tmp_path):
    """A web server certificate from a public CA proves a domain name."""
    leaf = make(pki["leaf_key"], name("www.example.com"), issuer=pki["inter"].subject,
                issuer_key=pki["int_key"], eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    v = verdict(cert_file(pki["leaf_key"], leaf, pki["inter"]), store_of(tmp_path, pki["root"]))
    assert not v.trusted and v.reason.endswith("is not for code signing (extendedKeyUsage)")
    leaf = make(pki["leaf_key"], name("enc"), issuer=pki["inter"].subject,
                issuer_key=pki["int_key"], key_usage=dict(key_encipherment=True))
    v = verdict(cert_file(pki["leaf_key"], leaf, pki["inter"]), store_of(tmp_path, pki["root"]))
    assert not v.trusted and "keyUsage without digitalSignature" in v.reason


def test_unknown_critical_extension(pki, tmp_path):
    ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = make(pki["leaf_key"], name("Leaf"), issuer=pki["inter"].subject,
                issuer_key=pki["int_key"], extra=[(ext, True)])
    v = verdict(cert_file(pki["leaf_key"], leaf, pki["inter"]), store_of(tmp_path, pki["root"]))
    assert not v.trusted and "unsupported critical extension 1.3.6.1.4.1.99999.1" in v.reason


def test_impostor_intermediate_with_the_right_name_is_skipped(pki, tmp_path):
    """A carried certificate named like the real intermediate but with
    another key: the search tries it, fails on the signature, and goes on
    to the real one."""
    fake_key = rsa_key()
    fake = make(fake_key, pki["inter"].subject, issuer=pki["root"].subject, issuer_key=fake_key,
                ca=True)
    data = cert_file(pki["leaf_key"], pki["leaf"], fake, pki["inter"])
    assert verdict(data, store_of(tmp_path, pki["root"])).trusted
    only_fake = cert_file(pki["leaf_key"], pki["leaf"], fake)
    v = verdict(only_fake, store_of(tmp_path, pki["root"]))
    assert not v.trusted and "does not verify" in v.reason


def test_chain_length_is_bounded(tmp_path):
    """Root -> 8 intermediates -> leaf is 10 certificates: refused."""
    keys = [rsa_key() for _ in range(10)]
    root = make(keys[0], name("R"), ca=True)
    chain = [root]
    for i in range(1, 9):
        chain.append(make(keys[i], name(f"I{i}"), issuer=chain[-1].subject,
                          issuer_key=keys[i - 1], ca=True))
    leaf = make(keys[9], name("Leaf"), issuer=chain[-1].subject, issuer_key=keys[8])
    carried = chain[1:][::-1]
    v = verdict(cert_file(keys[9], leaf, *carried), store_of(tmp_path, root))
    assert not v.trusted and v.reason == "the chain is longer than 8 certificates"
    # Six intermediates (8 certificates with signer and root) still pass.
    leaf6 = make(keys[9], name("Leaf"), issuer=chain[6].subject, issuer_key=keys[6])
    assert verdict(cert_file(keys[9], leaf6, *chain[1:7][::-1]), store_of(tmp_path, root)).trusted


def test_many_carried_certificates_are_refused_fast(tmp_path):
    key = rsa_key()
    ca_key = rsa_key()
    same = [make(ca_key, name("CA"), ca=True) for _ in range(trust.MAX_FILE_CERTS)]
    leaf = make(key, name("Leaf"), issuer=name("CA"), issuer_key=rsa_key())
    root = make(rsa_key(), name("CA"), ca=True)
    start = time.monotonic()
    v = verdict(cert_file(key, leaf, *same), store_of(tmp_path, root))
    assert not v.trusted and "carries 17 certificates, more than 16" in v.reason
    v = verdict(cert_file(key, leaf, *same[:-1]), store_of(tmp_path, root))
    assert not v.trusted
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("damage", ["utf8", "tag"])
@pytest.mark.parametrize("where", ["signer", "intermediate"])
def test_malformed_name_is_one_integrity_error(pki, where, damage):
    """cryptography parses names lazily: a subject that is no valid UTF-8
    (ValueError) or whose string has an unknown ASN.1 tag (KeyError, in
    cryptography 38) must be refused as the file's problem, not crash."""
    key = pki["leaf_key"]
    subject = name("MALFORMED-NAME") if where == "signer" else pki["leaf"].subject
    leaf = make(key, subject, issuer=pki["inter"].subject, issuer_key=pki["int_key"])
    inter = pki["inter"] if where == "signer" else make(
        pki["int_key"], name("MALFORMED-NAME"), issuer=pki["root"].subject,
        issuer_key=pki["root_key"], ca=True)
    data = cert_file(key, leaf, inter)
    assert data.count(b"MALFORMED-NAME") == 0  # PEM: patch the DER instead
    head, _, _ = data.partition(b"-----BEGIN")
    def spoil(der: bytes) -> bytes:
        if damage == "utf8":
            return der.replace(b"MALFORMED-NAME", b"\xff\xfe" * 7)
        # CN = UTF8String (tag 12) "MALFORMED-NAME" -> tag 13
        return der.replace(b"\x55\x04\x03\x0c\x0eMALFORMED-NAME",
                           b"\x55\x04\x03\x0d\x0eMALFORMED-NAME")
    bad = [x509.load_der_x509_certificate(spoil(c.public_bytes(serialization.Encoding.DER)))
           for c in (leaf, inter)]
    assert bad[0 if where == "signer" else 1] != (leaf, inter)[0 if where == "signer" else 1]
    broken = head + pem(*bad)
    with pytest.raises(IntegrityError, match=r"^pkg.cert: certificate \d has a malformed "
                       r"subject or issuer name$"):
        verify_certificate(broken, "pkg.mf", MANIFEST, path="pkg.cert")
    with pytest.raises(IntegrityError, match="malformed subject or issuer name"):
        trust.check_signer(broken, trust.TrustStore(), path="pkg.cert")


# --------------------------------------------------------------- the operator's files

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("option", ["--trusted-cert", "--ca-bundle"])
@pytest.mark.parametrize("command", ["import", "verify"])
def test_fifo_or_device_as_trust_file_refused_at_once(tmp_path, option, command):
    """A FIFO nobody writes to hung the run for ever (open blocks); a device may
    never end.  Refused before the package is looked at: one line, exit 2."""
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    pkg = tmp_path / "p.ova"
    pkg.write_bytes(bytes(1024))
    for path in (fifo, Path("/dev/zero"), tmp_path):
        args = [option, str(path), str(pkg)]
        if command == "import":
            args = ["-o", str(tmp_path / "out"), *args]
        p = subprocess.run([sys.executable, str(ROOT / "scripts" / "ovfconverter"), command,
                            *args], capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, p.stderr
        assert p.stderr.splitlines() == [f"ovfconverter: error: {path}: {option}: not a "
                                         f"regular file (see 'ovfconverter {command} --help')"]
    assert not (tmp_path / "out").exists()


def test_trust_file_swapped_for_a_fifo_after_stat_refused(tmp_path, mocker):
    """The file checked is not necessarily the file opened: what was opened is
    checked again (the swap between the two calls is simulated: stat answers
    for a regular file)."""
    regular = tmp_path / "real.pem"
    regular.write_bytes(b"x")
    fifo = tmp_path / "fifo.pem"
    os.mkfifo(fifo)
    real_stat = os.stat
    mocker.patch.object(trust.os, "stat", lambda p, *a, **k: real_stat(regular))
    with pytest.raises(UsageError, match=r"^.*fifo.pem: --trusted-cert: not a regular file$"):
        trust.load_store([str(fifo)], system=False)


def test_store_files_that_do_not_load(tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(UsageError, match=r"--trusted-cert: cannot read: No such file"):
        trust.load_store([str(missing)])
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(UsageError, match=r"--ca-bundle: no PEM certificate in it"):
        trust.load_store((), str(empty))
    broken = tmp_path / "broken.pem"
    broken.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match=r"certificate 1 is not valid X.509"):
        trust.load_store([str(broken)])
    cut = tmp_path / "cut.pem"
    cut.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    with pytest.raises(UsageError, match=r"certificate 1 has no END line"):
        trust.load_store([str(cut)])


def test_store_size_bounds(tmp_path, monkeypatch):
    key = rsa_key()
    one = pem(make(key, name("x")))
    big = tmp_path / "big.pem"
    with open(big, "wb") as f:
        f.truncate(trust.MAX_BUNDLE_SIZE + 1)
    with pytest.raises(UsageError, match=f"larger than {trust.MAX_BUNDLE_SIZE} bytes"):
        trust.load_store((), str(big))
    many = tmp_path / "many.pem"
    many.write_bytes(one * 5)
    monkeypatch.setattr(trust, "MAX_BUNDLE_CERTS", 4)
    with pytest.raises(UsageError, match="more than 4 certificates"):
        trust.load_store((), str(many))


def test_system_default_and_explicit_bundle(tmp_path):
    if trust.default_bundle() is None:
        pytest.skip("no system CA bundle here")
    assert trust.load_store().bundle == trust.default_bundle()
    assert trust.load_store(system=False).anchors == ()
    key = rsa_key()
    f = tmp_path / "b.pem"
    f.write_bytes(pem(make(key, name("only"), ca=True)))
    s = trust.load_store((), str(f))
    assert s.bundle == str(f) and len(s.anchors) == 1  # replaces the system's


# --------------------------------------------------------------- fuzzing

@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1,
                      max_size=4),
       which=st.sampled_from(["signer", "intermediate"]))
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_damaged_certificates_give_a_verdict_or_one_integrity_error(pki, flips, which):
    """Random byte changes in the DER of the signer's or the intermediate's
    certificate: a verdict or an IntegrityError, never anything else."""
    certs = [pki["leaf"], pki["inter"]]
    index = 0 if which == "signer" else 1
    der = bytearray(certs[index].public_bytes(serialization.Encoding.DER))
    for pos, xor in flips:
        der[pos % len(der)] ^= xor
    head = cert_file(pki["leaf_key"], pki["leaf"]).partition(b"-----BEGIN")[0]
    pems = []
    for i, c in enumerate(certs):
        raw = bytes(der) if i == index else c.public_bytes(serialization.Encoding.DER)
        b64 = base64.encodebytes(raw).replace(b"\n", b"")
        body = b"\n".join(b64[j:j + 64] for j in range(0, len(b64), 64))
        pems.append(b"-----BEGIN CERTIFICATE-----\n" + body + b"\n-----END CERTIFICATE-----\n")
    data = head + b"".join(pems)
    store = trust.TrustStore((trust.Anchor(pki["root"], "test", True),))
    try:
        verify_certificate(data, "pkg.mf", MANIFEST, path="pkg.cert")
        v = trust.check_signer(data, store, path="pkg.cert")
    except IntegrityError:
        return
    assert isinstance(v, trust.Verdict)


def test_system_bundle_skips_what_cannot_be_parsed(tmp_path, monkeypatch, pki):
    """One damaged entry of the system's store must not stop every import;
    in a file the operator names it is a usage error."""
    good = pki["root"].public_bytes(serialization.Encoding.DER)
    damaged = x509.load_der_x509_certificate(
        good.replace(b"Test Root CA", b"\xff\xfe" * 6, 1))
    f = tmp_path / "system.pem"
    f.write_bytes(pem(damaged, pki["root"]))
    monkeypatch.setattr(trust, "SYSTEM_CA_BUNDLES", (str(f),))
    assert [a.cert for a in trust.load_store().anchors] == [pki["root"]]
    with pytest.raises(UsageError, match="--ca-bundle: certificate 1 is not valid X.509"):
        trust.load_store((), str(f))


# --------------------------------------------------------------- RSASSA-PSS

def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
@pytest.mark.parametrize("digest,ok", [("sha256", True), ("sha512", True), ("sha1", False)])
def test_rsassa_pss_chain_made_by_openssl(tmp_path, digest, ok):
    """cryptography 38 cannot build or read PSS certificate signatures, so
    openssl makes them; the parameters are read from the DER here."""
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-subj", "/CN=PSS Root", "-days", "5", *pss,
             "-addext", "basicConstraints=critical,CA:TRUE", cwd=tmp_path)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "leaf.key", "-out", "leaf.csr",
             "-subj", "/CN=PSS Leaf", cwd=tmp_path)
    _openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "leaf.pem", "-days", "5", f"-{digest}", *pss,
             cwd=tmp_path)
    leaf = x509.load_pem_x509_certificate((tmp_path / "leaf.pem").read_bytes())
    assert leaf.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
    key = serialization.load_pem_private_key((tmp_path / "leaf.key").read_bytes(), None)
    store = trust.load_store([str(tmp_path / "ca.pem")], system=False)
    v = verdict(cert_file(key, leaf), store)
    if ok:
        assert v.trusted, v.reason
        impostor_key = rsa_key()
        impostor = make(impostor_key, name("PSS Root"), ca=True)
        v = verdict(cert_file(key, leaf), store_of(tmp_path, impostor))
        assert not v.trusted and v.reason.endswith("does not verify")
    else:
        assert not v.trusted
        assert "RSASSA-PSS parameters that cannot be checked" in v.reason


def test_signature_checks_are_bounded(tmp_path):
    """Seven pairs of same-named CA certificates, each pair's key signing the
    next: 2^6 paths of valid links, each trying every candidate.  The
    search gives up after a fixed number of signature checks."""
    keys = [rsa_key() for _ in range(8)]
    x = name("X")
    carried = [make(keys[i], x, issuer=x, issuer_key=keys[i + 1], ca=True)
               for i in range(7) for _ in range(2)]
    leaf = make(keys[0], name("Leaf"), issuer=x, issuer_key=keys[0])
    other = make(rsa_key(), name("Root"), ca=True)
    start = time.monotonic()
    v = verdict(cert_file(keys[0], leaf, *carried), store_of(tmp_path, other))
    assert not v.trusted and v.reason == "too many candidate issuers to check"
    assert time.monotonic() - start < 10


def test_certificate_of_an_unknown_version_is_one_line(pki, tmp_path):
    """cryptography 38 raises InvalidVersion (no ValueError) for a version
    field of 3 (X.509 "v4"): one IntegrityError for a package's .cert, one
    usage error for a file the operator names."""
    der = bytearray(pki["leaf"].public_bytes(serialization.Encoding.DER))
    at = der.index(b"\xa0\x03\x02\x01\x02")  # tbsCertificate [0] version v3
    der[at + 4] = 3
    b64 = base64.encodebytes(bytes(der)).replace(b"\n", b"")
    pem = (b"-----BEGIN CERTIFICATE-----\n"
           + b"\n".join(b64[j:j + 64] for j in range(0, len(b64), 64))
           + b"\n-----END CERTIFICATE-----\n")
    head = cert_file(pki["leaf_key"], pki["leaf"]).partition(b"-----BEGIN")[0]
    with pytest.raises(IntegrityError, match="not a valid X.509 PEM certificate"):
        verify_certificate(head + pem, "pkg.mf", MANIFEST, path="pkg.cert")
    f = tmp_path / "v4.pem"
    f.write_bytes(pem)
    with pytest.raises(UsageError, match="is not valid X.509"):
        trust.load_store([str(f)], None)
