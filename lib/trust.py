"""Does a package's signer chain to a certificate the operator trusts?

A signature that verifies (``integrity.verify_certificate``) proves only
that the manifest is unchanged since the holder of the key signed it: the
subject and issuer names in the certificate are whatever its maker wrote
("VMware, Inc.", issuer "DigiCert ...").  This module decides trust: the
signer is trusted if its certificate *is* one the operator gave with
``--trusted-cert`` (same DER, or same subject and public key), or if a chain
leads from it, through the intermediates the ``.cert`` file carries, to a
``--trusted-cert`` certificate or a CA of ``--ca-bundle`` (default: the
system's CA store).

cryptography 38 (Debian 12) has no ``x509.verification``, so the path is
built here, conservatively: issuer names match subject names *and* each
signature is verified with the issuer's key (RSA PKCS#1 v1.5, RSASSA-PSS
with SHA-2 and MGF1, ECDSA, Ed25519, Ed448; never MD5 or SHA-1); every certificate on the path is
within its validity period; every issuer is a CA (basicConstraints CA=true,
keyCertSign if keyUsage is present, path length respected); unknown
critical extensions are refused; the path is at most ``MAX_CHAIN``
certificates.  Nothing is fetched (no AIA, CRL or OCSP).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, ObjectIdentifier
from cryptography.x509.oid import SignatureAlgorithmOID as Sig

from .errors import UsageError
from .integrity import parse_certificate_file, quiet_parsing

__all__ = [
    "MAX_CHAIN",
    "SYSTEM_CA_BUNDLES",
    "Anchor",
    "TrustStore",
    "Verdict",
    "check_signer",
    "default_bundle",
    "load_store",
]

#: Where distributions keep the system's CA bundle; the first that exists
#: is the default of ``--ca-bundle``.
SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # SUSE
)
MAX_CHAIN = 8
"""Certificates on a path, signer and anchor included."""
MAX_BUNDLE_SIZE = 16 << 20
MAX_BUNDLE_CERTS = 4096
MAX_FILE_CERTS = 16
"""Certificates a .cert file may carry (signer and intermediates)."""
_MAX_SIGNATURE_CHECKS = 256
_MIN_RSA_BITS = 2048
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"
_KNOWN_CRITICAL = frozenset({
    ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE, ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.SUBJECT_KEY_IDENTIFIER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
})
_WEAK_HASHES = ("md5", "sha1")
# What cryptography 38 raises for a damaged certificate field it parses lazily.
_LAZY_PARSE_ERRORS = (ValueError, KeyError, TypeError, UnsupportedAlgorithm,
                      x509.InvalidVersion)
_RSA_PKCS1 = frozenset({Sig.RSA_WITH_SHA224, Sig.RSA_WITH_SHA256, Sig.RSA_WITH_SHA384,
                        Sig.RSA_WITH_SHA512, Sig.RSA_WITH_SHA3_224, Sig.RSA_WITH_SHA3_256,
                        Sig.RSA_WITH_SHA3_384, Sig.RSA_WITH_SHA3_512})
_ECDSA = frozenset({Sig.ECDSA_WITH_SHA224, Sig.ECDSA_WITH_SHA256, Sig.ECDSA_WITH_SHA384,
                    Sig.ECDSA_WITH_SHA512, Sig.ECDSA_WITH_SHA3_224, Sig.ECDSA_WITH_SHA3_256,
                    Sig.ECDSA_WITH_SHA3_384, Sig.ECDSA_WITH_SHA3_512})
_ANY_EKU = ObjectIdentifier("2.5.29.37.0")
# RSASSA-PSS parameters (RFC 4055), by the DER content of their OIDs.
_PSS_HASHES = {b"\x60\x86\x48\x01\x65\x03\x04\x02\x01": hashes.SHA256,
               b"\x60\x86\x48\x01\x65\x03\x04\x02\x02": hashes.SHA384,
               b"\x60\x86\x48\x01\x65\x03\x04\x02\x03": hashes.SHA512}
_SHA1_OID = b"\x2b\x0e\x03\x02\x1a"
_MGF1_OID = b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x08"


@dataclass(frozen=True, slots=True)
class Anchor:
    """A trusted certificate and where the operator said so."""

    cert: x509.Certificate
    source: str  # "--trusted-cert FILE" or "CA bundle FILE"
    direct: bool  # from --trusted-cert: trusted as a signer too, CA or not


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The anchors of one run; ``bundle`` is the CA file used (None: none)."""

    anchors: tuple[Anchor, ...] = ()
    bundle: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether the signer chains to an anchor.  ``chain`` is the path's
    subjects, signer first; ``reason`` says why not (None if trusted)."""

    trusted: bool
    signer: str
    anchor: str | None = None
    source: str | None = None
    chain: tuple[str, ...] = ()
    reason: str | None = None

    def line(self, cert_name: str) -> str:
        """The one line an operator reads at import."""
        if self.trusted:
            via = "" if len(self.chain) <= 2 else \
                f" via {', '.join(self.chain[1:-1])}"
            what = "is the trusted certificate" if len(self.chain) == 1 else \
                f"chains to the trusted certificate {self.anchor}{via}"
            return f"{cert_name}: signer {self.signer} {what} ({self.source})"
        return (f"{cert_name}: signer {self.signer} does not chain to a trusted certificate"
                f" ({self.reason}; the signature proves only that the manifest is unchanged"
                " since someone with that key signed it)")


def _name(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _read_pem_file(path: str, what: str, *, strict: bool = True) -> list[x509.Certificate]:
    """Every certificate of a PEM file the operator named; UsageError if it
    cannot be read, is too large, or holds no (or a broken) certificate.
    Not ``strict`` (the system's bundle), a certificate that cryptography
    cannot parse is left out instead."""
    data = _read_regular(path, what)
    if len(data) > MAX_BUNDLE_SIZE:
        raise UsageError(f"{what}: larger than {MAX_BUNDLE_SIZE} bytes", path)
    certs: list[x509.Certificate] = []
    pos = 0
    while (start := data.find(_PEM_BEGIN, pos)) >= 0:
        end = data.find(_PEM_END, start)
        if end < 0:
            raise UsageError(f"{what}: certificate {len(certs) + 1} has no END line", path)
        end += len(_PEM_END)
        if len(certs) >= MAX_BUNDLE_CERTS:
            raise UsageError(f"{what}: more than {MAX_BUNDLE_CERTS} certificates", path)
        try:
            with quiet_parsing():
                cert = x509.load_pem_x509_certificate(data[start:end])
                cert.subject.rfc4514_string()
                cert.issuer.rfc4514_string()
                cert.extensions  # noqa: B018 - parsed lazily: fail here, not mid-search
            certs.append(cert)
        except _LAZY_PARSE_ERRORS as e:
            if strict:
                raise UsageError(f"{what}: certificate {len(certs) + 1} is not valid X.509",
                                 path) from e
        pos = end
    if not certs:
        raise UsageError(f"{what}: no PEM certificate in it", path)
    return certs


def _read_regular(path: str, what: str) -> bytes:
    """Up to MAX_BUNDLE_SIZE + 1 bytes of a regular file.  A FIFO would block
    the run for ever and a device may never end (or act on being opened), so
    anything else is refused: stat before opening, then O_NONBLOCK (opening a
    FIFO never waits) and fstat what was opened, in case it was swapped.
    Symlinks are followed: these are the operator's own files."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UsageError(f"{what}: not a regular file", path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UsageError(f"{what}: not a regular file", path)
            chunks: list[bytes] = []
            left = MAX_BUNDLE_SIZE + 1
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    except OSError as e:
        raise UsageError(f"{what}: cannot read: {e.strerror or e}", path) from e


def default_bundle() -> str | None:
    """The system's CA bundle, if there is one."""
    return next((p for p in SYSTEM_CA_BUNDLES if os.path.isfile(p)), None)


def load_store(trusted_certs: Sequence[str] = (), ca_bundle: str | None = None, *,
               system: bool = True) -> TrustStore:
    """The anchors: each ``--trusted-cert`` file's certificates, then the CA
    bundle's (``ca_bundle``, or with ``system`` the system's if it exists).
    A file the operator named that does not load is a UsageError."""
    anchors = [Anchor(c, f"--trusted-cert {p}", True)
               for p in trusted_certs for c in _read_pem_file(p, "--trusted-cert")]
    bundle = ca_bundle if ca_bundle is not None else default_bundle() if system else None
    if bundle is not None:
        what = "--ca-bundle" if ca_bundle is not None else "system CA bundle"
        anchors += [Anchor(c, f"CA bundle {bundle}", False)
                    for c in _read_pem_file(bundle, what, strict=ca_bundle is not None)]
    return TrustStore(tuple(anchors), bundle)


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    """The same certificate, or the same subject with the same key."""
    if a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER):
        return True
    try:
        return a.subject == b.subject and _spki(a) == _spki(b)
    except (ValueError, UnsupportedAlgorithm):
        return False


def _utc(cert: x509.Certificate, which: str) -> datetime:
    aware = getattr(cert, which + "_utc", None)  # cryptography >= 42
    return aware if aware is not None else getattr(cert, which).replace(tzinfo=UTC)


def _own_problem(cert: x509.Certificate, now: datetime) -> str | None:
    """Why ``cert`` cannot be on any path: validity, weak key, unknown
    critical extension."""
    not_before, not_after = _utc(cert, "not_valid_before"), _utc(cert, "not_valid_after")
    if now > not_after:
        return f"{_name(cert)} expired on {not_after:%Y-%m-%d %H:%M:%S} UTC"
    if now < not_before:
        return f"{_name(cert)} is not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC"
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return f"the public key of {_name(cert)} cannot be read"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
        return f"the RSA-{key.key_size} key of {_name(cert)} is too weak to trust"
    try:
        extensions = cert.extensions
    except ValueError:
        return f"{_name(cert)} has malformed extensions"
    for ext in extensions:
        if ext.critical and ext.oid not in _KNOWN_CRITICAL:
            return f"{_name(cert)} has an unsupported critical extension {ext.oid.dotted_string}"
    return None


def _ext(cert: x509.Certificate, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _issuer_problem(issuer: x509.Certificate, below: int) -> str | None:
    """Why ``issuer`` may not sign certificates (``below`` CA certificates
    under it on the path, for its pathLenConstraint)."""
    bc = _ext(issuer, x509.BasicConstraints)
    if bc is None or not bc.ca:
        return f"{_name(issuer)} is not a CA certificate (basicConstraints CA=true)"
    if bc.path_length is not None and below > bc.path_length:
        return f"{_name(issuer)} allows {bc.path_length} CA certificate(s) below it"
    ku = _ext(issuer, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        return f"{_name(issuer)} may not sign certificates (keyUsage)"
    return None


def _signer_problem(signer: x509.Certificate) -> str | None:
    """Why a CA-issued ``signer`` may not sign packages: keyUsage without
    digitalSignature, or an extendedKeyUsage without code signing (a TLS
    server certificate proves a domain name, not a publisher)."""
    ku = _ext(signer, x509.KeyUsage)
    if ku is not None and not (ku.digital_signature or ku.content_commitment):
        return f"{_name(signer)} may not sign (keyUsage without digitalSignature)"
    eku = _ext(signer, x509.ExtendedKeyUsage)
    if eku is not None and ExtendedKeyUsageOID.CODE_SIGNING not in eku and \
            _ANY_EKU not in eku:
        return f"{_name(signer)} is not for code signing (extendedKeyUsage)"
    return None


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """(tag, content) of each DER element in ``data``; ValueError if it is
    not exactly a sequence of well-formed elements."""
    items, pos = [], 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise ValueError("truncated")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if length & 0x80:
            n = length & 0x7F
            if not 1 <= n <= 4 or pos + n > len(data):
                raise ValueError("bad length")
            length = int.from_bytes(data[pos:pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise ValueError("truncated")
        items.append((tag, data[pos:pos + length]))
        pos += length
    return items


def _pss(cert: x509.Certificate) -> tuple[hashes.HashAlgorithm, padding.PSS]:
    """The digest and padding of an RSASSA-PSS certificate signature, from
    its parameters (cryptography 38 does not read them).  ValueError for
    anything but SHA-256/384/512 with MGF1 of the same digest."""
    (_, outer), = _der_items(cert.public_bytes(serialization.Encoding.DER))
    algorithm = _der_items(outer)[1]
    if algorithm[0] != 0x30:
        raise ValueError("no AlgorithmIdentifier")
    oid_and_params = _der_items(algorithm[1])
    if len(oid_and_params) != 2:
        raise ValueError("no PSS parameters")
    fields = dict(_der_items(oid_and_params[1][1]))
    if 0xA0 not in fields or 0xA1 not in fields:
        raise ValueError("SHA-1 defaults")
    hash_oid = _der_items(_der_items(fields[0xA0])[0][1])[0][1]
    mgf = _der_items(_der_items(fields[0xA1])[0][1])
    mgf_hash_oid = _der_items(mgf[1][1])[0][1]
    if mgf[0][1] != _MGF1_OID or hash_oid not in _PSS_HASHES or mgf_hash_oid != hash_oid:
        raise ValueError("unsupported PSS parameters")
    salt = int.from_bytes(_der_items(fields[0xA2])[0][1], "big") if 0xA2 in fields else 20
    digest = _PSS_HASHES[hash_oid]()
    return digest, padding.PSS(mgf=padding.MGF1(_PSS_HASHES[hash_oid]()), salt_length=salt)


def _signature_problem(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None if ``issuer``'s key made ``cert``'s signature, else why not."""
    what = f"the signature of {_name(cert)} by {_name(issuer)}"
    if cert.signature_algorithm_oid == Sig.RSASSA_PSS:
        return _pss_problem(cert, issuer, what)
    try:
        key = issuer.public_key()
        digest = cert.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        oid = cert.signature_algorithm_oid.dotted_string
        return f"{what} uses an unsupported algorithm ({oid})"
    if digest is not None and digest.name in _WEAK_HASHES:
        return f"{what} uses {digest.name.upper()}, which is too weak to trust"
    oid = cert.signature_algorithm_oid
    tbs, sig = cert.tbs_certificate_bytes, cert.signature
    try:
        if isinstance(key, rsa.RSAPublicKey) and oid in _RSA_PKCS1 and digest is not None:
            key.verify(sig, tbs, padding.PKCS1v15(), digest)
        elif isinstance(key, ec.EllipticCurvePublicKey) and oid in _ECDSA and digest is not None:
            key.verify(sig, tbs, ec.ECDSA(digest))
        elif isinstance(key, ed25519.Ed25519PublicKey) and oid == Sig.ED25519:
            key.verify(sig, tbs)
        elif isinstance(key, ed448.Ed448PublicKey) and oid == Sig.ED448:
            key.verify(sig, tbs)
        else:
            return (f"{what} cannot be checked (algorithm {oid.dotted_string} with a"
                    f" {type(key).__name__.lstrip('_')})")
    except (InvalidSignature, ValueError):
        return f"{what} does not verify"
    return None


def _pss_problem(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> str | None:
    key = issuer.public_key()
    try:
        digest, pss = _pss(cert)
    except (ValueError, IndexError, KeyError):
        return f"{what} uses RSASSA-PSS parameters that cannot be checked (SHA-256/384/512 only)"
    if not isinstance(key, rsa.RSAPublicKey):
        return f"{what} is RSASSA-PSS, but the issuer's key is no RSA key"
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, pss, digest)
    except (InvalidSignature, ValueError):
        return f"{what} does not verify"
    return None


def check_signer(cert_data: bytes, store: TrustStore, *, now: datetime | None = None,
                 path: str | None = None) -> Verdict:
    """Whether the signer of a .cert file (``cert_data``, already verified
    against its manifest) chains to an anchor of ``store``.  A certificate
    that cannot be parsed breaks the chain (cryptography parses lazily)."""
    cert_file = parse_certificate_file(cert_data, path=path)
    subject = _name(cert_file.certificates[0])
    try:
        return _check(cert_file.certificates, store, now or datetime.now(UTC))
    except _LAZY_PARSE_ERRORS:
        return Verdict(False, subject, reason="a certificate of the chain cannot be parsed")


def _check(certs: Sequence[x509.Certificate], store: TrustStore, now: datetime) -> Verdict:
    signer, carried = certs[0], certs[1:]
    subject = _name(signer)
    if len(certs) > MAX_FILE_CERTS:
        return Verdict(False, subject, reason=f"the certificate file carries {len(certs)} "
                       f"certificates, more than {MAX_FILE_CERTS}")
    problem = _own_problem(signer, now)
    if problem is not None:
        return Verdict(False, subject, reason=problem)
    for a in store.anchors:
        if a.direct and _same(signer, a.cert):
            return Verdict(True, subject, _name(a.cert), a.source, (subject,))
    if not store.anchors:
        return Verdict(False, subject, reason="no trusted certificates are configured "
                       "(--trusted-cert, --ca-bundle)")
    problem = _signer_problem(signer)
    if problem is not None:
        return Verdict(False, subject, reason=problem)
    search = _Search(store, carried, now)
    found = search.walk(signer, (signer,))
    if found is not None:
        anchor, chain = found
        return Verdict(True, subject, _name(anchor.cert), anchor.source,
                       tuple(_name(c) for c in chain))
    if search.why is not None:
        return Verdict(False, subject, reason=search.why)
    top = search.top
    whom = "it" if top is signer else _name(top)
    return Verdict(False, subject, reason=f"no trusted certificate issued {whom} "
                   f"(issuer {top.issuer.rfc4514_string()})")


class _Search:
    """Depth-first path building, bounded in depth and signature checks."""

    def __init__(self, store: TrustStore, carried: Sequence[x509.Certificate],
                 now: datetime) -> None:
        self.store, self.carried, self.now = store, carried, now
        self.checks = 0
        self.why: str | None = None  # the first problem met on a name match
        self.top: x509.Certificate | None = None  # the end of the longest path built
        self._longest = 0

    def _fail(self, why: str) -> None:
        if self.why is None:
            self.why = why

    def _links(self, cert: x509.Certificate, issuer: x509.Certificate, cas_below: int) -> bool:
        """Whether ``issuer`` can be the next certificate above ``cert``."""
        self.checks += 1
        if self.checks > _MAX_SIGNATURE_CHECKS:  # the search is cut short: say that
            self.why = "too many candidate issuers to check"
            return False
        problem = (_own_problem(issuer, self.now) or _issuer_problem(issuer, cas_below)
                   or _signature_problem(cert, issuer))
        if problem is not None:
            self._fail(problem)
            return False
        return True

    def walk(self, cert: x509.Certificate, chain: tuple[x509.Certificate, ...]
             ) -> tuple[Anchor, tuple[x509.Certificate, ...]] | None:
        cas_below = len(chain) - 1  # CA certificates between the signer and the next issuer
        if len(chain) > self._longest:
            self._longest, self.top = len(chain), cert
        for a in self.store.anchors:
            if a.cert.subject == cert.issuer and self._links(cert, a.cert, cas_below):
                return a, chain + (a.cert,)
        if len(chain) + 2 > MAX_CHAIN:  # an intermediate and an anchor must still fit
            if any(c.subject == cert.issuer for c in self.carried):
                self._fail(f"the chain is longer than {MAX_CHAIN} certificates")
            return None
        for c in self.carried:
            if c.subject != cert.issuer or any(_same(c, x) for x in chain):
                continue
            if self._links(cert, c, cas_below):
                found = self.walk(c, chain + (c,))
                if found is not None:
                    return found
            if self.checks > _MAX_SIGNATURE_CHECKS:
                return None
        return None
