"""Integrity of a package before anything is written: the manifest's digests,
its coverage of every referenced file, and the certificate's signature and
trust.  Shared by ``import``, ``verify`` and ``info``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import integrity, signer, trust
from .errors import IntegrityError, OvfError, PackageError
from .model import Envelope
from .package import Member, Package

__all__ = ["MAX_MANIFEST_SIZE", "PackageCheck", "check_package"]


@dataclass(frozen=True, slots=True)
class PackageCheck:
    """What integrity checking found (for ``info`` and ``verify``)."""

    manifest: str | None = None  # member name, if any
    algorithms: tuple[str, ...] = ()
    verified: tuple[str, ...] = ()  # files whose digest matched
    certificate: integrity.CertInfo | None = None
    trust: trust.Verdict | None = None  # does the signer chain to a trusted certificate
    certificate_name: str | None = None  # the .cert member
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    deferred: tuple[integrity.ManifestEntry, ...] = ()  # digests left to the caller


MAX_MANIFEST_SIZE = 4 << 20
"""Manifests and certificates larger than this are refused (real ones are
kilobytes; VirtualBox pads certificates to 100 KiB)."""


def _small_member(pkg: Package, m, what: str) -> bytes:
    if m.size > MAX_MANIFEST_SIZE:
        raise IntegrityError(f"{what} {m.name!r} is {m.size} bytes; refusing more than "
                             f"{MAX_MANIFEST_SIZE}", pkg.path)
    return m.byte_range().read(0, m.size)


def check_package(pkg: Package, env: Envelope | None = None, *,
                  collect: bool = False, defer: frozenset[str] = frozenset(),
                  store: trust.TrustStore | None = None,
                  require_signature: bool = False) -> PackageCheck:
    """Verify the manifest and certificate.

    A manifest must list every file the descriptor references (each chunk
    of a chunked file), and its digests must match; a certificate must
    sign the manifest (a certificate without a manifest protects nothing
    and is refused).  With ``collect`` every problem is returned
    (``verify``); otherwise the first one raises IntegrityError.  Digests
    of the members named in ``defer`` are not computed here but returned
    as ``deferred``: the importer checks them while it converts.

    A signature that verifies is then judged against ``store`` (default:
    the system's CA bundle): ``trust`` says whether the signer chains to a
    trusted certificate.  With ``require_signature`` an unsigned package,
    or one whose signer does not chain, is a problem.
    """
    problems: list[str] = []

    def problem(msg: str) -> None:
        if not collect:
            raise IntegrityError(msg, pkg.path)
        problems.append(msg)

    mf = pkg.sibling(".mf")
    cm = pkg.sibling(".cert")
    warnings = _lookalike_warnings(pkg)
    if mf is None:
        if cm is not None:
            problem(f"certificate {cm.name!r} but no manifest {_stem(pkg) + '.mf'!r} for it "
                    "to sign")
        elif require_signature:
            problem("the package is not signed (no manifest, no certificate) and "
                    "--require-signature is given")
        return PackageCheck(problems=tuple(problems), warnings=tuple(warnings))
    mf_bytes = _small_member(pkg, mf, "manifest")
    manifest = integrity.parse_manifest(mf_bytes, path=mf.label or mf.name, allow_empty=True)
    if not manifest.entries:
        if cm is not None:
            problem(f"manifest {mf.name!r} lists no files, yet certificate {cm.name!r} signs "
                    "it: a signature that protects nothing is refused")
            return PackageCheck(manifest=mf.name, problems=tuple(problems))
        # ovftool 4.0 writes these and VirtualBox imports them: no manifest.
        return PackageCheck(manifest=mf.name, warnings=(*warnings,
            f"manifest {mf.name!r} lists no files; nothing is protected, as without one"))
    listed = _listed_members(pkg, manifest, problem)
    verified, deferred = _check_digests(pkg, listed, defer, problem)
    if pkg.descriptor_name not in listed:
        # VirtualBox 5.0 wrote manifests like this; the descriptor then
        # goes unchecked, which the operator should know.
        warnings.append(f"manifest does not list the descriptor {pkg.descriptor_name!r}; "
                        "it is not protected by the manifest")
    for ref in env.files if env is not None else ():
        try:
            members = pkg.file_members(ref)
        except PackageError:
            continue  # reported where the file is used
        for m in members:
            if m.name not in listed:
                problem(f"manifest does not list {m.name!r}: its content is not protected")
    cert = verdict = None
    if cm is not None:
        cert, verdict = signer.check_signature(
            _small_member(pkg, cm, "certificate"), mf.name, mf_bytes, store, problem,
            require_signature=require_signature, path=pkg.path)
    elif require_signature:
        problem(f"the package is not signed (no certificate {_stem(pkg) + '.cert'!r}) "
                "and --require-signature is given")
    return PackageCheck(
        manifest=mf.name,
        algorithms=tuple(sorted({e.algorithm for e in manifest.entries})),
        verified=tuple(verified), certificate=cert, trust=verdict,
        certificate_name=cm.name if cm is not None else None, problems=tuple(problems),
        warnings=tuple(warnings), deferred=tuple(deferred),
    )


def _listed_members(pkg: Package, manifest: integrity.Manifest, problem: Callable[[str], None]
                    ) -> dict[str, tuple[integrity.ManifestEntry, Member]]:
    """The member each manifest entry names, by member name.

    Spellings that name one member (``d``, ``./d``, ``.\\d``, ``d%2E``...)
    are refused: the first would be checked, a reader might use another,
    and thousands of them would hash one disk thousands of times.
    """
    listed: dict[str, tuple[integrity.ManifestEntry, Member]] = {}
    for entry in manifest.entries:
        try:
            m = pkg.get(entry.filename)
        except PackageError:
            problem(f"manifest lists {entry.filename!r}, which is not in the package")
            continue
        first = listed.get(m.name)
        if first is not None:
            problem(f"manifest lists {m.name!r} twice, as {first[0].filename!r} and "
                    f"{entry.filename!r}")
            continue
        listed[m.name] = (entry, m)
    return listed


def _check_digests(pkg: Package, listed: dict[str, tuple[integrity.ManifestEntry, Member]],
                   defer: frozenset[str], problem: Callable[[str], None]
                   ) -> tuple[list[str], list[integrity.ManifestEntry]]:
    """Digest each listed member once: (names that matched, entries deferred)."""
    verified = []
    deferred = []
    for name, (entry, m) in listed.items():
        if name in defer:
            deferred.append(entry)
            continue
        try:
            got = integrity.digest_file(m.container, entry.algorithm, m.offset, m.size)
        except OvfError as e:  # name the member, not /proc/self/fd/N
            raise type(e)(f"{entry.filename!r}: {e.problem}", pkg.path) from e
        if got != entry.digest:
            problem(f"{entry.algorithm} digest of {entry.filename!r} does not match the "
                    f"manifest (got {got}, manifest says {entry.digest})")
        else:
            verified.append(entry.filename)
    return verified, deferred


def _lookalike_warnings(pkg: Package) -> list[str]:
    """A warning for each member named like the manifest or certificate but
    for case (``upmf.MF``).  DSP0243 names them ``<stem>.mf``/``.cert`` and
    every tool we know writes lower case, so such a member is not used: a
    warning, not a refusal, since dropping the manifest altogether would get
    the same package through; --require-signature still refuses it as
    unsigned.  Matching case-insensitively instead would make the package
    mean different things to different tools."""
    out = []
    for suffix, what in ((".mf", "manifest"), (".cert", "certificate")):
        want = _stem(pkg) + suffix
        for name in pkg.sibling_lookalikes(suffix):
            out.append(f"{what}-like member {name!r} does not match the descriptor's name "
                       f"{want!r} and is not used: its digests or signature are NOT checked")
    return out


def _stem(pkg: Package) -> str:
    return pkg.descriptor_name.rsplit(".", 1)[0]
