"""Manifests (.mf) and certificates (.cert) of OVF packages.

DSP0243 protects a package in two layers, and this module handles both:

* The **manifest** lists a digest for every other file of the package, one
  ``SHA256(name)= hex`` line each.  Tools disagree on the details: ovftool,
  VirtualBox, COT and Ganeti write ``SHA1(f)= h``; coreutils ``--tag`` (and
  some hand-made packages) write ``SHA1 (f) = h``; VirtualBox pads the file
  with spaces and omits the last newline.  We read all of these, and write
  the one style every reader accepts.
* The **certificate file** holds one more such line, whose "digest" is the
  signer's signature over the manifest file's bytes (RSA PKCS#1 v1.5 or
  ECDSA, with the named digest, in hex), followed by the signer's X.509
  certificate in PEM.  This is what ``openssl dgst -sha256 -sign`` produces
  and what ovftool writes and VirtualBox checks
  (``Appliance::i_readTailProcessing`` verifies the signature against the
  digest of the manifest exactly as stored, padding included).

Only standard ``hashlib`` and ``cryptography`` are used, and only APIs that
cryptography 38 (Debian 12) already has, so that the node's own python3
runs this.  Every failure is an :class:`~ganeti_ovf.errors.IntegrityError`
(or ``UsageError`` for an impossible request), with the line number and the
offending text in repr.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    padding,
    rsa,
)
from cryptography.utils import CryptographyDeprecationWarning

from .errors import IntegrityError, PackageError, UsageError

__all__ = [
    "ALGORITHMS",
    "CertFile",
    "CertInfo",
    "Manifest",
    "ManifestEntry",
    "digest_file",
    "format_manifest",
    "new_hasher",
    "parse_certificate_file",
    "parse_manifest",
    "sign_manifest",
    "verify_certificate",
]

#: Digest algorithms as manifests name them, and their length in hex digits.
ALGORITHMS = MappingProxyType({"SHA1": 40, "SHA256": 64, "SHA512": 128})

_HASHLIB = {"SHA1": hashlib.sha1, "SHA256": hashlib.sha256, "SHA512": hashlib.sha512}
_CRYPTO_HASH = {"SHA1": hashes.SHA1, "SHA256": hashes.SHA256, "SHA512": hashes.SHA512}

_ALG_RE = re.compile(r"[A-Za-z0-9-]+")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"
_BLANK = b" \t\r\n\0"
_EXCERPT = 80

PathLike = str | os.PathLike[str]


def _excerpt(text: str | bytes) -> str:
    """repr() of ``text``, cut short so one bad line cannot flood a log."""
    if len(text) > _EXCERPT:
        return repr(text[:_EXCERPT]) + "..."
    return repr(text)


def _canonical(algorithm: str) -> str | None:
    """``"sha256"`` -> ``"SHA256"``; None for anything we do not support."""
    name = algorithm.upper()
    return name if name in ALGORITHMS else None


def _checked_algorithm(algorithm: str) -> str:
    name = _canonical(algorithm)
    if name is None:
        raise UsageError(
            f"unknown digest algorithm {algorithm!r} (expected SHA1, SHA256 or SHA512)"
        )
    return name


# ---------------------------------------------------------------------------
# Manifests


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One manifest line: ``algorithm`` is canonical ("SHA256"), ``digest``
    lowercase hex of the right length."""

    algorithm: str
    filename: str
    digest: str


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed manifest: entries in file order, file names unique."""

    entries: tuple[ManifestEntry, ...]
    _by_name: dict[str, ManifestEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One dict, so that checking 40k chunks is 40k look-ups, not 40k scans.
        object.__setattr__(self, "_by_name", {e.filename: e for e in self.entries})

    def lookup(self, filename: str) -> ManifestEntry | None:
        """The entry for ``filename`` (exact match), or None."""
        return self._by_name.get(filename)

    def __iter__(self) -> Iterator[ManifestEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _text_lines(data: bytes, path: PathLike | None) -> Iterator[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line.

    Strips a UTF-8 BOM, CR before LF, and spaces/tabs at both ends (the
    padding VirtualBox writes); a last line without newline is fine.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise IntegrityError(
                f"line {number}: not UTF-8 text {_excerpt(raw.strip(_BLANK))}", path
            ) from e
        text = text.strip(" \t\r\0")
        if text:
            yield number, text


def _parse_line(number: int, text: str, path: PathLike | None) -> tuple[str, str, str]:
    """(canonical algorithm, name, value) of one ``ALG(name)= value`` line.

    ``ALG (name) = value`` is the same line.  The name runs from the first
    "(" to the ")" before the *last* "=", so it may hold spaces, "(", ")"
    and "=".  Parsed by hand, in linear time, whatever the line holds.
    """
    head, equals, value = text.rpartition("=")
    value = value.strip(" \t")
    head = head.rstrip(" \t")
    alg, paren, rest = head.partition("(")
    alg = alg.rstrip(" \t")
    if (
        not equals
        or not paren
        or not rest.endswith(")")
        or not _ALG_RE.fullmatch(alg)
        or any(c.isspace() for c in value)
    ):
        raise IntegrityError(f"line {number}: malformed line {_excerpt(text)}", path)
    name = rest[:-1]
    canonical = _canonical(alg)
    if canonical is None:
        raise IntegrityError(f"line {number}: unknown digest algorithm {_excerpt(alg)}", path)
    if not name:
        raise IntegrityError(f"line {number}: empty file name in {_excerpt(text)}", path)
    return canonical, name, value


def parse_manifest(data: bytes, *, path: PathLike | None = None,
                   allow_empty: bool = False) -> Manifest:
    """Parse a manifest file's bytes.

    Accepts ``SHA1(f)= h``, ``SHA256(f)= h``, ``SHA512(f)= h`` and the
    coreutils ``--tag`` form ``SHA256 (f) = h``, in any mix.  ``path`` only
    names the file in error messages.  Raises ``IntegrityError`` for an
    unknown algorithm, a malformed line, a digest of the wrong length, a
    file named twice or (unless ``allow_empty``: ovftool 4.0 writes such
    manifests) a manifest that lists nothing.
    """
    entries: list[ManifestEntry] = []
    first_line: dict[str, int] = {}
    for number, text in _text_lines(data, path):
        algorithm, name, value = _parse_line(number, text, path)
        want = ALGORITHMS[algorithm]
        if len(value) != want or not _HEX_RE.fullmatch(value):
            raise IntegrityError(
                f"line {number}: {algorithm} digest of {_excerpt(name)} should be"
                f" {want} hex digits, got {_excerpt(value)}",
                path,
            )
        if name in first_line:
            raise IntegrityError(
                f"line {number}: duplicate entry for {_excerpt(name)}"
                f" (first on line {first_line[name]})",
                path,
            )
        first_line[name] = number
        entries.append(ManifestEntry(algorithm, name, value.lower()))
    if not entries and not allow_empty:
        raise IntegrityError("manifest lists no files", path)
    return Manifest(tuple(entries))


def _check_name(name: str, what: str) -> None:
    if not name or "\n" in name or "\r" in name or name != name.strip(" \t\0"):
        raise UsageError(f"cannot name {name!r} in a {what}")


def format_manifest(entries: Iterable[tuple[str, str]], algorithm: str) -> bytes:
    """Manifest bytes: ``SHA256(name)= hex`` lines, LF-terminated, in order.

    ``entries`` are ``(filename, hex digest)`` pairs computed with
    ``algorithm``.  Raises ``UsageError`` for an unknown algorithm, a name
    that a reader would not get back unchanged (empty, line break, leading
    or trailing blanks), a repeated name or a digest of the wrong form.
    """
    algorithm = _checked_algorithm(algorithm)
    want = ALGORITHMS[algorithm]
    seen: set[str] = set()
    lines = []
    for name, digest in entries:
        _check_name(name, "manifest")
        if name in seen:
            raise UsageError(f"{name!r} is listed twice in the manifest")
        seen.add(name)
        if len(digest) != want or not _HEX_RE.fullmatch(digest):
            raise UsageError(
                f"{algorithm} digest of {name!r} should be {want} hex digits,"
                f" got {_excerpt(digest)}"
            )
        lines.append(f"{algorithm}({name})= {digest.lower()}\n")
    return "".join(lines).encode("utf-8")


def new_hasher(algorithm: str) -> hashlib._Hash:
    """A fresh hashlib object for "SHA1", "SHA256" or "SHA512" (any case).

    Raises ``UsageError`` for anything else.
    """
    return _HASHLIB[_checked_algorithm(algorithm)]()


def digest_file(
    path: PathLike,
    algorithm: str,
    offset: int = 0,
    size: int | None = None,
    *,
    chunk: int = 1 << 20,
) -> str:
    """Lowercase hex digest of bytes ``[offset, offset+size)`` of ``path``.

    ``size=None`` reads to the end of the file.  Reads ``chunk`` bytes at a
    time, so a disk inside an OVA is digested in place.  Raises
    ``PackageError`` if the file cannot be read and ``IntegrityError`` if it
    ends before the range does.
    """
    hasher = new_hasher(algorithm)
    if offset < 0 or (size is not None and size < 0) or chunk <= 0:
        raise UsageError(f"bad byte range: offset={offset!r}, size={size!r}, chunk={chunk!r}")
    remaining = size
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while remaining is None or remaining > 0:
                block = f.read(chunk if remaining is None else min(chunk, remaining))
                if not block:
                    break
                hasher.update(block)
                if remaining is not None:
                    remaining -= len(block)
    except OSError as e:
        raise PackageError(f"cannot read: {e.strerror or e}", path) from e
    if remaining:
        raise IntegrityError(
            f"file ends {remaining} bytes before the end of the"
            f" {size}-byte range at offset {offset}",
            path,
        )
    return hasher.hexdigest()


# ---------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True, slots=True)
class CertFile:
    """A parsed .cert file: the signature line and the PEM certificates.

    ``signature`` is the raw signature (the hex decoded), over the manifest
    ``manifest_name`` with digest ``algorithm``.  ``certificates[0]`` is the
    signer; any others are what the publisher added (a chain), which
    ``trust.check_signer`` may use as intermediates.
    """

    algorithm: str
    manifest_name: str
    signature: bytes
    certificates: tuple[x509.Certificate, ...]


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the operator should see about a signature that verified.

    Times are timezone-aware UTC.  ``expired``/``not_yet_valid`` compare
    the validity period with ``now``; ``self_signed`` means the issuer is
    the subject.  ``key`` describes the signer's public key
    ("RSA-2048", "EC-secp256r1").
    """

    subject: str
    issuer: str
    not_before: datetime
    not_after: datetime
    algorithm: str
    self_signed: bool
    expired: bool
    not_yet_valid: bool
    fingerprint_sha256: str
    key: str


@contextlib.contextmanager
def quiet_parsing() -> Iterator[None]:
    """cryptography warns (on stderr) about certificates it will refuse one
    day, e.g. the non-positive serial numbers of some CAs in Debian's
    store: not the operator's business on every run; a certificate that
    matters is judged by the chain check, not by such warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        yield


def _load_certificates(pem: bytes) -> tuple[list[x509.Certificate], bytes]:
    """Every complete PEM certificate in ``pem``, and the bytes around them.

    Raises ValueError (from cryptography) for a block that does not load.
    """
    certs: list[x509.Certificate] = []
    rest: list[bytes] = []
    pos = 0
    while (start := pem.find(_PEM_BEGIN, pos)) >= 0:
        end = pem.find(_PEM_END, start)
        if end < 0:
            break
        end += len(_PEM_END)
        with quiet_parsing():
            certs.append(x509.load_pem_x509_certificate(pem[start:end]))
        rest.append(pem[pos:start])
        pos = end
    rest.append(pem[pos:])
    return certs, b"".join(rest)


def parse_certificate_file(data: bytes, *, path: PathLike | None = None) -> CertFile:
    """Parse a .cert file: one ``ALG(name.mf)= hex`` line, then PEM.

    Blank lines, CRLF, a BOM and space padding are tolerated; anything else
    (a second signature line, text after the certificates, a certificate
    that does not load) raises ``IntegrityError``.  Nothing is verified here.
    """
    begin = data.find(_PEM_BEGIN)
    if begin < 0:
        raise IntegrityError(f"no certificate ({_PEM_BEGIN.decode()!r} not found)", path)
    # Like VirtualBox, the signature part ends where the BEGIN line starts.
    head_end = data.rfind(b"\n", 0, begin) + 1
    head, pem = data[:head_end], data[head_end:]
    if pem[: begin - head_end].strip(_BLANK):
        number = head.count(b"\n") + 1
        raise IntegrityError(f"line {number}: text before {_PEM_BEGIN.decode()!r}", path)

    signature_line: tuple[str, str, bytes] | None = None
    for number, text in _text_lines(head, path):
        if signature_line is not None:
            raise IntegrityError(
                f"line {number}: more than one signature line: {_excerpt(text)}", path
            )
        algorithm, name, value = _parse_line(number, text, path)
        if len(value) % 2 or not _HEX_RE.fullmatch(value):
            raise IntegrityError(
                f"line {number}: signature of {_excerpt(name)} is not hex: {_excerpt(value)}",
                path,
            )
        signature_line = (algorithm, name, bytes.fromhex(value))
    if signature_line is None:
        raise IntegrityError("no signature line before the certificate", path)

    try:
        certs, rest = _load_certificates(pem)
    except (ValueError, x509.InvalidVersion) as e:  # the latter: no ValueError in 38
        raise IntegrityError("certificate is not a valid X.509 PEM certificate", path) from e
    if not certs:
        raise IntegrityError(f"certificate has no {_PEM_END.decode()!r} line", path)
    rest = rest.strip(_BLANK)
    if rest:
        raise IntegrityError(f"unexpected text after the certificate: {_excerpt(rest)}", path)
    for number, cert in enumerate(certs, start=1):
        try:  # parsed lazily by cryptography: a bad name would surface later
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
        except (ValueError, KeyError, TypeError) as e:  # cryptography 38 raises all three
            raise IntegrityError(f"certificate {number} has a malformed subject or issuer name",
                                 path) from e
    algorithm, name, signature = signature_line
    return CertFile(algorithm, name, signature, tuple(certs))


def _utc(cert: x509.Certificate, which: str) -> datetime:
    """``not_valid_before``/``after`` as aware UTC, on cryptography 38 and 42+."""
    aware = getattr(cert, which + "_utc", None)  # cryptography >= 42
    if aware is not None:
        return aware
    return getattr(cert, which).replace(tzinfo=UTC)


def _key_description(key: object) -> str:
    """Name a key for messages and CertInfo: RSA-2048, EC-secp256r1, Ed25519."""
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return f"RSA-{key.key_size}"
    if isinstance(key, (ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey)):
        return f"EC-{key.curve.name}"
    if isinstance(key, (dsa.DSAPublicKey, dsa.DSAPrivateKey)):
        return f"DSA-{key.key_size}"
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "Ed25519"
    if isinstance(key, (ed448.Ed448PublicKey, ed448.Ed448PrivateKey)):
        return "Ed448"
    return type(key).__name__.lstrip("_")


def _spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify_certificate(
    cert_data: bytes,
    manifest_name: str,
    manifest_data: bytes,
    *,
    path: PathLike | None = None,
    now: datetime | None = None,
) -> CertInfo:
    """Check that ``cert_data`` signs ``manifest_data`` (the .mf as stored).

    ``manifest_name`` is the manifest's file name in the package; the
    signature line must name exactly it.  RSA (PKCS#1 v1.5) and EC (ECDSA)
    signer keys are supported.  Raises ``IntegrityError`` if the file is
    malformed, names another manifest, or the signature does not verify.

    This proves only that the manifest was signed by the holder of the key
    in the certificate, whatever names the certificate carries.  Whether
    that signer is trusted is decided by ``trust.check_signer``, against
    the operator's anchors; an expired, not yet valid or self-signed
    certificate is reported in the returned ``CertInfo`` for the caller to
    warn about.
    """
    cert_file = parse_certificate_file(cert_data, path=path)
    if cert_file.manifest_name != manifest_name:
        raise IntegrityError(
            f"signature is for {_excerpt(cert_file.manifest_name)}, not {manifest_name!r}", path
        )
    signer = cert_file.certificates[0]
    subject = signer.subject.rfc4514_string()
    try:
        key = signer.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise IntegrityError(f"public key of {subject!r} cannot be read", path) from e
    digest = _CRYPTO_HASH[cert_file.algorithm]()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert_file.signature, manifest_data, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert_file.signature, manifest_data, ec.ECDSA(digest))
        else:
            raise IntegrityError(
                f"cannot verify with key type {_key_description(key)!r}"
                f" of {subject!r} (RSA or EC only)",
                path,
            )
    except (InvalidSignature, ValueError) as e:
        raise IntegrityError(
            f"{cert_file.algorithm} signature of {manifest_name!r} does not verify"
            f" with the key of {subject!r}",
            path,
        ) from e
    except UnsupportedAlgorithm as e:
        raise IntegrityError(
            f"{cert_file.algorithm} signatures cannot be checked here ({e})", path
        ) from e

    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    not_before, not_after = (
        _utc(signer, "not_valid_before"),
        _utc(signer, "not_valid_after"),
    )
    return CertInfo(
        subject=subject,
        issuer=signer.issuer.rfc4514_string(),
        not_before=not_before,
        not_after=not_after,
        algorithm=cert_file.algorithm,
        self_signed=signer.issuer == signer.subject,
        expired=now > not_after,
        not_yet_valid=now < not_before,
        fingerprint_sha256=signer.fingerprint(hashes.SHA256()).hex(),
        key=_key_description(key),
    )


def sign_manifest(
    manifest_name: str,
    manifest_data: bytes,
    key_pem: bytes,
    cert_pem: bytes,
    algorithm: str = "SHA256",
    *,
    password: bytes | None = None,
) -> bytes:
    """The .cert file content signing ``manifest_data`` (what ovftool writes).

    ``key_pem`` is the signer's private key (RSA or EC, PEM, decrypted with
    ``password`` if given); ``cert_pem`` its certificate, optionally
    followed by the rest of its chain, copied as given.  Raises
    ``UsageError`` for an unreadable key or certificate, a wrong password or
    an unsupported key type, and ``IntegrityError`` if the key is not the
    one the certificate certifies.
    """
    algorithm = _checked_algorithm(algorithm)
    _check_name(manifest_name, "certificate file")
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except TypeError as e:
        if password is None:
            raise UsageError("private key is encrypted and no password was given") from e
        raise UsageError("private key is not encrypted, but a password was given") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UsageError("private key cannot be read (not a PEM key, or wrong password)") from e
    try:
        certs, _ = _load_certificates(cert_pem)
    except ValueError as e:
        raise UsageError("certificate is not a valid X.509 PEM certificate") from e
    if not certs:
        raise UsageError(f"no {_PEM_BEGIN.decode()!r} in the certificate")
    signer = certs[0]
    subject = signer.subject.rfc4514_string()
    try:
        matches = _spki(key.public_key()) == _spki(signer.public_key())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise UsageError(f"public key of {subject!r} cannot be read") from e
    if not matches:
        raise IntegrityError(f"private key does not match the certificate of {subject!r}")

    digest = _CRYPTO_HASH[algorithm]()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(manifest_data, padding.PKCS1v15(), digest)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(manifest_data, ec.ECDSA(digest))
    else:
        raise UsageError(f"cannot sign with key type {_key_description(key)!r} (RSA or EC only)")
    line = f"{algorithm}({manifest_name})= {signature.hex()}\n".encode()
    return line + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
