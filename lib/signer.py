"""Who signed a package, and what the operator is told about it.

Between the certificate file (``integrity``: does the signature over the
manifest hold?) and the trust decision (``trust``: does the signer chain to
a certificate the operator trusts?) sits what ``check_package`` records and
what ``import`` says: a warning when the signer is not trusted, whatever
``-v`` says, and the line naming the trusted certificate when it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import integrity, trust
from .errors import IntegrityError

__all__ = ["check_signature", "describe_certificate", "report_signer"]

log = logging.getLogger(__name__)


def check_signature(cert_data: bytes, mf_name: str, mf_bytes: bytes,
                    store: trust.TrustStore | None, problem: Callable[[str], None], *,
                    require_signature: bool = False, path: str | None = None,
                    ) -> tuple[integrity.CertInfo | None, trust.Verdict | None]:
    """The certificate's signature over the manifest, then whether its
    signer chains to a trusted certificate of ``store`` (default: the
    system's CA bundle).  Problems go to ``problem``; with
    ``require_signature`` an untrusted signer is one."""
    try:
        cert = integrity.verify_certificate(cert_data, mf_name, mf_bytes, path=path)
    except IntegrityError as e:
        problem(e.problem)
        return None, None
    verdict = trust.check_signer(cert_data, store if store is not None else trust.load_store(),
                                 path=path)
    if require_signature and not verdict.trusted:
        problem(f"signer {verdict.signer} does not chain to a trusted certificate "
                f"({verdict.reason}) and --require-signature is given")
    return cert, verdict


def describe_certificate(cert: integrity.CertInfo,
                         verdict: trust.Verdict | None = None) -> tuple[str, bool]:
    """One line about the signer, and whether it deserves a warning (a
    self-signed signer given with --trusted-cert does not)."""
    self_signed = cert.self_signed and not (verdict is not None and verdict.trusted)
    flags = [f for f, on in (("self-signed", self_signed), ("EXPIRED", cert.expired),
                             ("not yet valid", cert.not_yet_valid)) if on]
    line = (f"signed by {cert.subject} (issuer {cert.issuer}; SHA256 fingerprint "
            f"{cert.fingerprint_sha256}" + (f"; {', '.join(flags)}" if flags else "") + ")")
    return line, bool(flags)


def report_signer(package: str, cert: integrity.CertInfo | None,
                  verdict: trust.Verdict | None, cert_name: str | None) -> str | None:
    """Log the signer and whether it chains to a trusted certificate (a
    warning if not); return the line naming the anchor if it does, for the
    front end to show without -v."""
    if cert is None:
        return None
    line, alarming = describe_certificate(cert, verdict)
    (log.warning if alarming else log.info)("%s: %s", package, line)
    if verdict is None:
        return None
    said = verdict.line(cert_name or "certificate")
    if not verdict.trusted:
        log.warning("%s: %s", package, said)
        return None
    log.info("%s: %s", package, said)
    return said
