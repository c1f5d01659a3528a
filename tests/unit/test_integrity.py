"""Manifests and certificates: parsing, formatting, signing, verifying.

Keys and certificates are made here with the real ``cryptography`` (no
mocks); error messages are pinned whole.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from ganeti_ovf.errors import IntegrityError, PackageError, UsageError
from ganeti_ovf.integrity import (
    ALGORITHMS,
    CertFile,
    Manifest,
    ManifestEntry,
    digest_file,
    format_manifest,
    new_hasher,
    parse_certificate_file,
    parse_manifest,
    sign_manifest,
    verify_certificate,
)

H1 = hashlib.sha1(b"one").hexdigest()
H256 = hashlib.sha256(b"one").hexdigest()
H512 = hashlib.sha512(b"one").hexdigest()
HEX = {"SHA1": H1, "SHA256": H256, "SHA512": H512}


def raises(cls: type[Exception], message: str):
    """pytest.raises for the whole one-line message."""
    return pytest.raises(cls, match="^" + re.escape(message) + "$")


# ---------------------------------------------------------------------------
# parse_manifest: accepted forms


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_ovftool_style_each_algorithm(algorithm):
    data = f"{algorithm}(vm.ovf)= {HEX[algorithm]}\n{algorithm}(vm-disk1.vmdk)= {HEX[algorithm]}\n"
    manifest = parse_manifest(data.encode())
    assert manifest == Manifest(
        (
            ManifestEntry(algorithm, "vm.ovf", HEX[algorithm]),
            ManifestEntry(algorithm, "vm-disk1.vmdk", HEX[algorithm]),
        )
    )


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_coreutils_tag_style_each_algorithm(algorithm):
    data = f"{algorithm} (vm.ovf) = {HEX[algorithm]}\n".encode()
    assert parse_manifest(data).entries == (ManifestEntry(algorithm, "vm.ovf", HEX[algorithm]),)


def test_mixed_styles_and_algorithms_keep_file_order():
    data = (f"SHA256(b.vmdk)= {H256}\nSHA1 (a.ovf) = {H1}\nSHA512(c.iso)= {H512}\n").encode()
    manifest = parse_manifest(data)
    assert [(e.algorithm, e.filename) for e in manifest] == [
        ("SHA256", "b.vmdk"),
        ("SHA1", "a.ovf"),
        ("SHA512", "c.iso"),
    ]
    assert len(manifest) == 3


def test_crlf_bom_blank_lines_and_extra_spaces():
    data = (
        b"\xef\xbb\xbf"
        + f"SHA1(a.ovf)= {H1}\r\n".encode()
        + b"\r\n   \n\t\n"
        + f"  SHA1  (b.vmdk)  =   {H1}  \r\n".encode()
    )
    assert [e.filename for e in parse_manifest(data)] == ["a.ovf", "b.vmdk"]


def test_virtualbox_padding_and_no_final_newline():
    # VirtualBox 5 pads the member with spaces and leaves the last line open.
    data = f"SHA256(t3-disk1.vmdk.gz)= {H256}\n".encode() + b" " * 100
    assert parse_manifest(data).entries == (ManifestEntry("SHA256", "t3-disk1.vmdk.gz", H256),)
    data = f"SHA1(a.ovf)= {H1}".encode()
    assert parse_manifest(data).entries == (ManifestEntry("SHA1", "a.ovf", H1),)


@pytest.mark.parametrize(
    ("line", "name"),
    [
        (f"SHA1(my disk (1).vmdk)= {H1}", "my disk (1).vmdk"),
        (f"SHA1 (my disk (1).vmdk) = {H1}", "my disk (1).vmdk"),
        (f"SHA1(a)= b.vmdk)= {H1}", "a)= b.vmdk"),
        (f"SHA1(a) = b)=c) = {H1}", "a) = b)=c"),
        (f"SHA1(()= {H1}", "("),
        (f"SHA1(Ünïcödé.ovf)= {H1}", "Ünïcödé.ovf"),
    ],
)
def test_file_name_runs_to_the_last_closing_parenthesis(line, name):
    assert parse_manifest(line.encode()).entries[0].filename == name


def test_digest_hex_is_stored_lowercase_and_algorithm_canonical():
    data = f"sha256(a.ovf)= {H256.upper()}\n".encode()
    assert parse_manifest(data).entries == (ManifestEntry("SHA256", "a.ovf", H256),)


def test_lookup():
    manifest = parse_manifest(f"SHA1(a.ovf)= {H1}\nSHA1(A.OVF)= {H1}\n".encode())
    assert manifest.lookup("a.ovf") == ManifestEntry("SHA1", "a.ovf", H1)
    assert manifest.lookup("A.OVF").filename == "A.OVF"
    assert manifest.lookup("b.ovf") is None
    assert manifest.lookup("a.ov") is None


def test_values_are_frozen():
    entry = ManifestEntry("SHA1", "a.ovf", H1)
    with pytest.raises(AttributeError):
        entry.digest = H1  # type: ignore[misc]


# ---------------------------------------------------------------------------
# parse_manifest: errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            f"SHA1(a.ovf)= {H1}\nSHA1(b.ovf)= {H1}\nMD5(c.ovf)= 0123456789abcdef0123456789abcdef\n",
            "pkg.mf: line 3: unknown digest algorithm 'MD5'",
        ),
        (
            f"SHA1(a.ovf)= {H1}\ngarbage here\n",
            "pkg.mf: line 2: malformed line 'garbage here'",
        ),
        (
            f"SHA1(a.ovf) {H1}\n",
            f"pkg.mf: line 1: malformed line 'SHA1(a.ovf) {H1}'",
        ),
        (
            f"SHA1(a.ovf)= {H1} extra\n",
            f"pkg.mf: line 1: malformed line 'SHA1(a.ovf)= {H1} extra'",
        ),
        (
            "SHA256(a.ovf)= abcd\n",
            "pkg.mf: line 1: SHA256 digest of 'a.ovf' should be 64 hex digits, got 'abcd'",
        ),
        (
            f"SHA1(a.ovf)= {H256}\n",
            f"pkg.mf: line 1: SHA1 digest of 'a.ovf' should be 40 hex digits, got '{H256}'",
        ),
        (
            "SHA1(a.ovf)= " + "g" * 40 + "\n",
            "pkg.mf: line 1: SHA1 digest of 'a.ovf' should be 40 hex digits, got '"
            + "g" * 40
            + "'",
        ),
        (
            "\n\nSHA1(a.ovf)=\n",
            "pkg.mf: line 3: SHA1 digest of 'a.ovf' should be 40 hex digits, got ''",
        ),
        (
            f"SHA1(a.ovf)= {H1}\nSHA1(b.ovf)= {H1}\nSHA256(a.ovf)= {H256}\n",
            "pkg.mf: line 3: duplicate entry for 'a.ovf' (first on line 1)",
        ),
        (
            f"SHA1()= {H1}\n",
            f"pkg.mf: line 1: empty file name in 'SHA1()= {H1}'",
        ),
        ("", "pkg.mf: manifest lists no files"),
        ("\r\n  \n\ufeff", "pkg.mf: line 3: malformed line '\\ufeff'"),
    ],
)
def test_manifest_errors(data, message):
    with raises(IntegrityError, message):
        parse_manifest(data.encode(), path="pkg.mf")


def test_bom_only_and_whitespace_only_manifest_lists_no_files():
    with raises(IntegrityError, "manifest lists no files"):
        parse_manifest(b"\xef\xbb\xbf  \r\n" + b" " * 50)
    # ovftool 4.0 writes these; the caller decides (a warning unless signed)
    assert parse_manifest(b"\xef\xbb\xbf  \r\n", allow_empty=True).entries == ()
    assert parse_manifest(b"", allow_empty=True).lookup("a") is None


def test_lookup_is_a_dict_not_a_scan():
    """A chunked disk of 40k chunks is looked up 40k times (22 s when each scanned)."""
    import time

    names = [f"d.vmdk.{i:09d}" for i in range(40_000)]
    manifest = parse_manifest("".join(f"SHA1({n})= {H1}\n" for n in names).encode())
    start = time.monotonic()
    assert all(manifest.lookup(n).filename == n for n in names)
    assert time.monotonic() - start < 5


def test_not_utf8():
    with raises(IntegrityError, "pkg.mf: line 2: not UTF-8 text b'SHA1(\\xff.ovf)= 00'"):
        parse_manifest(f"SHA1(a.ovf)= {H1}\n".encode() + b"SHA1(\xff.ovf)= 00\n", path="pkg.mf")


def test_long_offending_text_is_cut_short():
    line = "x" * 200
    with raises(IntegrityError, f"line 1: malformed line {'x' * 80!r}..."):
        parse_manifest(line.encode())


def test_pathological_lines_parse_in_linear_time():
    # A backtracking regex would take hours on these; each is one line.
    with raises(IntegrityError, f"line 1: malformed line {')=' * 40!r}..."):
        parse_manifest(b")=" * 500_000)
    line = "SHA1(" + "(a)= " * 200_000 + "x"
    with raises(
        IntegrityError,
        f"line 1: SHA1 digest of {line[5:85]!r}... should be 40 hex digits, got 'x'",
    ):
        parse_manifest(line.encode())


def test_error_without_path_and_error_fields():
    with pytest.raises(IntegrityError) as info:
        parse_manifest(b"MD5(a)= 00")
    assert str(info.value) == "line 1: unknown digest algorithm 'MD5'"
    assert info.value.path is None
    with pytest.raises(IntegrityError) as info:
        parse_manifest(b"MD5(a)= 00", path="dir/pkg.mf")
    assert info.value.path == "dir/pkg.mf"
    assert info.value.problem == "line 1: unknown digest algorithm 'MD5'"


# ---------------------------------------------------------------------------
# format_manifest


def test_format_manifest_exact_bytes():
    data = format_manifest([("vm.ovf", H256), ("vm-disk1.vmdk", H256.upper())], "sha256")
    assert data == f"SHA256(vm.ovf)= {H256}\nSHA256(vm-disk1.vmdk)= {H256}\n".encode()


def test_format_manifest_empty():
    assert format_manifest([], "SHA1") == b""


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_format_then_parse_round_trip(algorithm):
    names = ["vm.ovf", "my disk (1).vmdk", "a)= b", "Ünïcödé.iso", "x" * 300]
    pairs = [(n, hashlib.new(algorithm, n.encode()).hexdigest()) for n in names]
    manifest = parse_manifest(format_manifest(pairs, algorithm))
    assert [(e.filename, e.digest) for e in manifest] == pairs
    assert {e.algorithm for e in manifest} == {algorithm}


@pytest.mark.parametrize(
    ("pairs", "algorithm", "message"),
    [
        (
            [("a.ovf", H1)],
            "MD5",
            "unknown digest algorithm 'MD5' (expected SHA1, SHA256 or SHA512)",
        ),
        ([("a\nb", H1)], "SHA1", "cannot name 'a\\nb' in a manifest"),
        ([("a\rb", H1)], "SHA1", "cannot name 'a\\rb' in a manifest"),
        ([("", H1)], "SHA1", "cannot name '' in a manifest"),
        ([(" a.ovf", H1)], "SHA1", "cannot name ' a.ovf' in a manifest"),
        (
            [("a.ovf", H1), ("a.ovf", H1)],
            "SHA1",
            "'a.ovf' is listed twice in the manifest",
        ),
        (
            [("a.ovf", H256)],
            "SHA1",
            f"SHA1 digest of 'a.ovf' should be 40 hex digits, got '{H256}'",
        ),
    ],
)
def test_format_manifest_errors(pairs, algorithm, message):
    with raises(UsageError, message):
        format_manifest(pairs, algorithm)


# ---------------------------------------------------------------------------
# new_hasher, digest_file


@pytest.mark.parametrize("name", ["SHA1", "sha1", "SHA256", "sha256", "Sha512", "sha512"])
def test_new_hasher(name):
    hasher = new_hasher(name)
    hasher.update(b"one")
    assert hasher.hexdigest() == hashlib.new(name.lower(), b"one").hexdigest()
    assert len(hasher.hexdigest()) == ALGORITHMS[name.upper()]


@pytest.mark.parametrize("name", ["MD5", "sha-256", "", "SHA384"])
def test_new_hasher_refuses(name):
    with raises(
        UsageError,
        f"unknown digest algorithm {name!r} (expected SHA1, SHA256 or SHA512)",
    ):
        new_hasher(name)


@pytest.fixture
def blob(tmp_path):
    data = bytes(range(256)) * 40  # 10240 bytes
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_digest_whole_file(blob, algorithm):
    path, data = blob
    assert digest_file(path, algorithm) == hashlib.new(algorithm, data).hexdigest()
    assert (
        digest_file(str(path), algorithm.lower(), chunk=7)
        == hashlib.new(algorithm, data).hexdigest()
    )


@pytest.mark.parametrize(
    ("offset", "size", "chunk"),
    [
        (0, 10240, 1 << 20),
        (512, 1024, 100),
        (512, None, 3),
        (10240, 0, 1),
        (10240, None, 5),
        (3, 1, 1),
    ],
)
def test_digest_byte_range(blob, offset, size, chunk):
    path, data = blob
    end = None if size is None else offset + size
    want = hashlib.sha256(data[offset:end]).hexdigest()
    assert digest_file(path, "SHA256", offset, size, chunk=chunk) == want


def test_digest_range_past_end(blob):
    path, _ = blob
    with raises(
        IntegrityError,
        f"{path}: file ends 100 bytes before the end of the 1000-byte range at offset 9340",
    ):
        digest_file(path, "SHA256", 9340, 1000)


def test_digest_missing_file(tmp_path):
    path = tmp_path / "nope.vmdk"
    with raises(PackageError, f"{path}: cannot read: No such file or directory"):
        digest_file(path, "SHA1")


@pytest.mark.parametrize(("offset", "size", "chunk"), [(-1, None, 1), (0, -5, 1), (0, None, 0)])
def test_digest_bad_range(blob, offset, size, chunk):
    path, _ = blob
    with raises(UsageError, f"bad byte range: offset={offset}, size={size}, chunk={chunk}"):
        digest_file(path, "SHA1", offset, size, chunk=chunk)


def test_digest_unknown_algorithm(blob):
    path, _ = blob
    with raises(UsageError, "unknown digest algorithm 'MD5' (expected SHA1, SHA256 or SHA512)"):
        digest_file(path, "MD5")


# ---------------------------------------------------------------------------
# Certificates: helpers

NOW = datetime(2025, 6, 1, tzinfo=UTC)
MANIFEST = f"SHA256(pkg.ovf)= {H256}\nSHA256(pkg-disk1.vmdk)= {H256}\n".encode()


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Inc"),
        ]
    )


def make_cert(
    key,
    cn: str = "Test Signer",
    *,
    issuer_key=None,
    issuer_cn: str | None = None,
    not_before: datetime = NOW - timedelta(days=30),
    not_after: datetime = NOW + timedelta(days=365),
) -> x509.Certificate:
    """A certificate for ``key``: self-signed unless an issuer is given."""
    signing_key = issuer_key if issuer_key is not None else key
    digest = None if isinstance(signing_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn or cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(signing_key, digest)
    )


def pem(obj, password: bytes | None = None) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def keys(rsa_key, ec_key):
    return {"rsa": rsa_key, "ec": ec_key}


@pytest.fixture(scope="module")
def signed(rsa_key):
    """(cert file bytes, certificate) for MANIFEST as 'pkg.mf', RSA/SHA256."""
    cert = make_cert(rsa_key)
    return sign_manifest("pkg.mf", MANIFEST, pem(rsa_key), pem(cert)), cert


# ---------------------------------------------------------------------------
# Certificates: sign then verify


@pytest.mark.parametrize("kind", ["rsa", "ec"])
@pytest.mark.parametrize("algorithm", ["SHA1", "SHA256", "SHA512"])
def test_sign_then_verify(keys, kind, algorithm):
    key = keys[kind]
    cert = make_cert(key)
    cert_file = sign_manifest("pkg.mf", MANIFEST, pem(key), pem(cert), algorithm)
    info = verify_certificate(cert_file, "pkg.mf", MANIFEST, path="pkg.cert", now=NOW)
    assert info.algorithm == algorithm
    assert info.subject == "O=Example Inc,CN=Test Signer"
    assert info.issuer == info.subject
    assert info.self_signed is True
    assert info.expired is False
    assert info.not_yet_valid is False
    assert info.not_before == NOW - timedelta(days=30)
    assert info.not_after == NOW + timedelta(days=365)
    assert info.not_before.tzinfo is not None
    assert info.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert info.key == {"rsa": "RSA-2048", "ec": "EC-secp256r1"}[kind]


def test_cert_file_layout(signed):
    cert_file, cert = signed
    first, rest = cert_file.split(b"\n", 1)
    assert re.fullmatch(rb"SHA256\(pkg\.mf\)= [0-9a-f]{512}", first)
    assert rest == pem(cert)
    parsed = parse_certificate_file(cert_file)
    assert parsed == CertFile("SHA256", "pkg.mf", bytes.fromhex(first[16:].decode()), (cert,))


def test_signature_is_pkcs1v15_over_the_manifest_bytes(signed, rsa_key):
    # What `openssl dgst -sha256 -sign key.pem pkg.mf` gives: deterministic.
    cert_file, _ = signed
    want = rsa_key.sign(MANIFEST, padding.PKCS1v15(), hashes.SHA256())
    assert parse_certificate_file(cert_file).signature == want


def test_verify_tolerates_crlf_bom_and_padding(signed):
    cert_file, _ = signed
    mangled = b"\xef\xbb\xbf\r\n" + cert_file.replace(b"\n", b"\r\n") + b" " * 4096
    info = verify_certificate(mangled, "pkg.mf", MANIFEST, now=NOW)
    assert info.algorithm == "SHA256"
    spaced = cert_file.replace(b")= ", b") =   ", 1).replace(b"SHA256(", b"  SHA256 (", 1)
    verify_certificate(spaced, "pkg.mf", MANIFEST, now=NOW)


def test_signature_hex_case_does_not_matter(signed):
    cert_file, _ = signed
    first, rest = cert_file.split(b"\n", 1)
    upper = first[:16] + first[16:].upper() + b"\n" + rest
    verify_certificate(upper, "pkg.mf", MANIFEST, now=NOW)


def test_signature_covers_every_byte(signed):
    cert_file, _ = signed
    msg = (
        "pkg.cert: SHA256 signature of 'pkg.mf' does not verify"
        " with the key of 'O=Example Inc,CN=Test Signer'"
    )
    for tampered in (
        MANIFEST.replace(b"pkg.ovf", b"pkh.ovf"),
        MANIFEST + b"\n",
        MANIFEST + b" ",
        MANIFEST.replace(b"\n", b"\r\n"),
        MANIFEST[:-1],
        b"",
    ):
        with raises(IntegrityError, msg):
            verify_certificate(cert_file, "pkg.mf", tampered, path="pkg.cert", now=NOW)


def test_wrong_manifest_name(signed):
    cert_file, _ = signed
    with raises(IntegrityError, "pkg.cert: signature is for 'pkg.mf', not 'other.mf'"):
        verify_certificate(cert_file, "other.mf", MANIFEST, path="pkg.cert")
    with raises(IntegrityError, "signature is for 'pkg.mf', not 'PKG.mf'"):
        verify_certificate(cert_file, "PKG.mf", MANIFEST)


def test_swapped_certificate(signed, other_rsa_key):
    cert_file, _ = signed
    line = cert_file.split(b"\n", 1)[0] + b"\n"
    impostor = make_cert(other_rsa_key, "Impostor")
    with raises(
        IntegrityError,
        "SHA256 signature of 'pkg.mf' does not verify with the key of 'O=Example Inc,CN=Impostor'",
    ):
        verify_certificate(line + pem(impostor), "pkg.mf", MANIFEST)


def test_swapped_ec_certificate(ec_key):
    cert = make_cert(ec_key)
    other = make_cert(ec.generate_private_key(ec.SECP384R1()), "Other")
    cert_file = sign_manifest("pkg.mf", MANIFEST, pem(ec_key), pem(cert))
    line = cert_file.split(b"\n", 1)[0] + b"\n"
    with raises(
        IntegrityError,
        "SHA256 signature of 'pkg.mf' does not verify with the key of 'O=Example Inc,CN=Other'",
    ):
        verify_certificate(line + pem(other), "pkg.mf", MANIFEST)


def test_tampered_signature(signed):
    cert_file, _ = signed
    first, rest = cert_file.split(b"\n", 1)
    flipped = first[:-1] + (b"0" if first[-1:] != b"0" else b"1")
    with raises(
        IntegrityError,
        "SHA256 signature of 'pkg.mf' does not verify"
        " with the key of 'O=Example Inc,CN=Test Signer'",
    ):
        verify_certificate(flipped + b"\n" + rest, "pkg.mf", MANIFEST)


def test_algorithm_in_the_line_is_the_one_used(signed):
    cert_file, _ = signed
    relabelled = cert_file.replace(b"SHA256(", b"SHA512(", 1)
    with raises(
        IntegrityError,
        "SHA512 signature of 'pkg.mf' does not verify"
        " with the key of 'O=Example Inc,CN=Test Signer'",
    ):
        verify_certificate(relabelled, "pkg.mf", MANIFEST)


def test_expired_and_not_yet_valid_are_reported_not_errors(rsa_key):
    cert = make_cert(
        rsa_key,
        not_before=datetime(2008, 1, 1, tzinfo=UTC),
        not_after=datetime(2009, 1, 1, tzinfo=UTC),
    )
    cert_file = sign_manifest("pkg.mf", MANIFEST, pem(rsa_key), pem(cert))
    info = verify_certificate(cert_file, "pkg.mf", MANIFEST)
    assert (info.expired, info.not_yet_valid) == (True, False)
    info = verify_certificate(cert_file, "pkg.mf", MANIFEST, now=datetime(2007, 1, 1, tzinfo=UTC))
    assert (info.expired, info.not_yet_valid) == (False, True)
    # A naive ``now`` is taken as UTC.
    info = verify_certificate(cert_file, "pkg.mf", MANIFEST, now=datetime(2008, 6, 1))
    assert (info.expired, info.not_yet_valid) == (False, False)
    assert (
        verify_certificate(cert_file, "pkg.mf", MANIFEST, now=datetime(2009, 1, 1)).expired is False
    )
    assert (
        verify_certificate(cert_file, "pkg.mf", MANIFEST, now=datetime(2009, 1, 1, 0, 0, 1)).expired
        is True
    )


def test_subject_escaping_follows_rfc4514_and_messages_use_repr(other_rsa_key):
    cert = make_cert(other_rsa_key, "Doe, Jane")
    cert_file = sign_manifest("pkg.mf", MANIFEST, pem(other_rsa_key), pem(cert))
    info = verify_certificate(cert_file, "pkg.mf", MANIFEST, now=NOW)
    assert info.subject == "O=Example Inc,CN=Doe\\, Jane"
    with raises(
        IntegrityError,
        "SHA256 signature of 'pkg.mf' does not verify"
        r" with the key of 'O=Example Inc,CN=Doe\\, Jane'",
    ):
        verify_certificate(cert_file, "pkg.mf", MANIFEST + b"x")


def test_ca_issued_certificate_and_chain(rsa_key, ec_key):
    ca = make_cert(ec_key, "Test CA")
    leaf = make_cert(rsa_key, "Vendor", issuer_key=ec_key, issuer_cn="Test CA")
    cert_file = sign_manifest("pkg.mf", MANIFEST, pem(rsa_key), pem(leaf) + b"\n" + pem(ca))
    parsed = parse_certificate_file(cert_file)
    assert parsed.certificates == (leaf, ca)
    info = verify_certificate(cert_file, "pkg.mf", MANIFEST, now=NOW)
    assert info.subject == "O=Example Inc,CN=Vendor"
    assert info.issuer == "O=Example Inc,CN=Test CA"
    assert info.self_signed is False
    assert info.key == "RSA-2048"


def test_encrypted_key(rsa_key):
    cert = make_cert(rsa_key)
    cert_file = sign_manifest(
        "pkg.mf", MANIFEST, pem(rsa_key, b"s3cret"), pem(cert), password=b"s3cret"
    )
    verify_certificate(cert_file, "pkg.mf", MANIFEST, now=NOW)


def test_unsupported_key_type_in_certificate():
    key = ed25519.Ed25519PrivateKey.generate()
    cert = make_cert(key, "Edwards")
    data = f"SHA256(pkg.mf)= {'00' * 64}\n".encode() + pem(cert)
    with raises(
        IntegrityError,
        "pkg.cert: cannot verify with key type 'Ed25519'"
        " of 'O=Example Inc,CN=Edwards' (RSA or EC only)",
    ):
        verify_certificate(data, "pkg.mf", MANIFEST, path="pkg.cert")
    with raises(UsageError, "cannot sign with key type 'Ed25519' (RSA or EC only)"):
        sign_manifest("pkg.mf", MANIFEST, pem(key), pem(cert))


# ---------------------------------------------------------------------------
# Certificates: malformed files


@pytest.fixture(scope="module")
def cert_pem(signed):
    return signed[0].split(b"\n", 1)[1]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: b"",
            "pkg.cert: no certificate ('-----BEGIN CERTIFICATE-----' not found)",
        ),
        (
            lambda p: b"\x00\x01garbage\xff" * 50,
            "pkg.cert: no certificate ('-----BEGIN CERTIFICATE-----' not found)",
        ),
        (
            lambda p: f"SHA256(pkg.mf)= {'ab' * 256}\n".encode(),
            "pkg.cert: no certificate ('-----BEGIN CERTIFICATE-----' not found)",
        ),
        (lambda p: p, "pkg.cert: no signature line before the certificate"),
        (
            lambda p: b"\r\n  \n" + p,
            "pkg.cert: no signature line before the certificate",
        ),
        (
            lambda p: f"SHA256(pkg.mf)= {'ab' * 4}\nSHA1(pkg.mf)= {'ab' * 4}\n".encode() + p,
            "pkg.cert: line 2: more than one signature line: 'SHA1(pkg.mf)= abababab'",
        ),
        (
            lambda p: b"MD5(pkg.mf)= abab\n" + p,
            "pkg.cert: line 1: unknown digest algorithm 'MD5'",
        ),
        (
            lambda p: b"RSA-SHA256(pkg.mf)= abab\n" + p,
            "pkg.cert: line 1: unknown digest algorithm 'RSA-SHA256'",
        ),
        (lambda p: b"signature\n" + p, "pkg.cert: line 1: malformed line 'signature'"),
        (
            lambda p: b"SHA256(pkg.mf)= abc\n" + p,
            "pkg.cert: line 1: signature of 'pkg.mf' is not hex: 'abc'",
        ),
        (
            lambda p: b"SHA256(pkg.mf)= xyzw\n" + p,
            "pkg.cert: line 1: signature of 'pkg.mf' is not hex: 'xyzw'",
        ),
        (
            lambda p: b"SHA256(pkg.mf)=\n" + p,
            "pkg.cert: line 1: signature of 'pkg.mf' is not hex: ''",
        ),
        (
            lambda p: b"SHA256(pkg.mf)= abab\nhello " + p,
            "pkg.cert: line 2: text before '-----BEGIN CERTIFICATE-----'",
        ),
        (
            lambda p: b"SHA256(pkg.mf)= abab" + p,
            "pkg.cert: line 1: text before '-----BEGIN CERTIFICATE-----'",
        ),
        (
            lambda p: b"SHA256(pkg.mf)= abab\n" + p.replace(b"-----END CERTIFICATE-----", b""),
            "pkg.cert: certificate has no '-----END CERTIFICATE-----' line",
        ),
        (
            lambda p: b"SHA256(pkg.mf)= abab\n" + p[:40] + b"AAAA" + p[40:],
            "pkg.cert: certificate is not a valid X.509 PEM certificate",
        ),
        (
            lambda p: b"SHA256(pkg.mf)= abab\n" + p + b"trailing words\n",
            "pkg.cert: unexpected text after the certificate: b'trailing words'",
        ),
        (
            lambda p: (
                b"SHA256(pkg.mf)= abab\n"
                + p
                + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ),
            "pkg.cert: unexpected text after the certificate:"
            " b'-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----'",
        ),
    ],
)
def test_malformed_cert_files(cert_pem, make, message):
    data = make(cert_pem)
    with raises(IntegrityError, message):
        parse_certificate_file(data, path="pkg.cert")
    with raises(IntegrityError, message):
        verify_certificate(data, "pkg.mf", MANIFEST, path="pkg.cert")


def test_many_begin_markers_without_end_are_refused_quickly():
    data = b"SHA256(pkg.mf)= abab\n" + b"-----BEGIN CERTIFICATE-----\n" * 100_000
    with raises(IntegrityError, "certificate has no '-----END CERTIFICATE-----' line"):
        parse_certificate_file(data)


def test_parse_certificate_file_odd_but_valid(cert_pem):
    data = b"\n\nSHA1 (my pkg (2).mf) = ABCD\n\n" + cert_pem + b"\n\n" + cert_pem
    parsed = parse_certificate_file(data)
    assert (parsed.algorithm, parsed.manifest_name, parsed.signature) == (
        "SHA1",
        "my pkg (2).mf",
        b"\xab\xcd",
    )
    assert len(parsed.certificates) == 2


# ---------------------------------------------------------------------------
# sign_manifest: refusals


def test_key_does_not_match_certificate(rsa_key, other_rsa_key, ec_key):
    cert = make_cert(rsa_key)
    for key in (other_rsa_key, ec_key):
        with raises(
            IntegrityError,
            "private key does not match the certificate of 'O=Example Inc,CN=Test Signer'",
        ):
            sign_manifest("pkg.mf", MANIFEST, pem(key), pem(cert))


def test_sign_refusals(rsa_key):
    cert = pem(make_cert(rsa_key))
    key = pem(rsa_key)
    cases = [
        (
            {"key_pem": pem(rsa_key, b"pw")},
            "private key is encrypted and no password was given",
        ),
        ({"password": b"pw"}, "private key is not encrypted, but a password was given"),
        (
            {"key_pem": pem(rsa_key, b"pw"), "password": b"wrong"},
            "private key cannot be read (not a PEM key, or wrong password)",
        ),
        (
            {"key_pem": b"garbage"},
            "private key cannot be read (not a PEM key, or wrong password)",
        ),
        (
            {"cert_pem": b"garbage"},
            "no '-----BEGIN CERTIFICATE-----' in the certificate",
        ),
        (
            {"cert_pem": cert[:40] + b"AAAA" + cert[40:]},
            "certificate is not a valid X.509 PEM certificate",
        ),
        (
            {"algorithm": "MD5"},
            "unknown digest algorithm 'MD5' (expected SHA1, SHA256 or SHA512)",
        ),
        ({"manifest_name": "a\nb.mf"}, "cannot name 'a\\nb.mf' in a certificate file"),
        ({"manifest_name": ""}, "cannot name '' in a certificate file"),
    ]
    for overrides, message in cases:
        kwargs = {
            "manifest_name": "pkg.mf",
            "manifest_data": MANIFEST,
            "key_pem": key,
            "cert_pem": cert,
        }
        kwargs.update(overrides)
        with raises(UsageError, message):
            sign_manifest(**kwargs)


def test_sign_accepts_lowercase_algorithm_and_odd_names(rsa_key):
    cert = make_cert(rsa_key)
    name = "my pkg (2).mf"
    cert_file = sign_manifest(name, MANIFEST, pem(rsa_key), pem(cert), "sha512")
    assert cert_file.startswith(b"SHA512(my pkg (2).mf)= ")
    assert verify_certificate(cert_file, name, MANIFEST, now=NOW).algorithm == "SHA512"
