"""Writing a package: one interface, two layouts (a directory, an OVA).

Every package is written the same way (:func:`write_package`): the disk
files first, each encoded in one pass with its digest; then the
descriptor (which states their sizes), the manifest (which digests the
descriptor and the files) and the certificate (which signs the manifest),
written once, here.  A layout only says where bytes go:

* :class:`DirPackage` -- files in a staging directory renamed into place
  at the end; zero runs written as holes.
* :class:`OvaPackage` -- members of one tar in a file of a staging
  directory (:mod:`staging`), linked into place at the end.  DSP0243
  puts the descriptor, manifest and certificate *first* in an OVA, yet
  they describe and digest the disks written after them, so their members
  are reserved up front (:mod:`ovawriter`) and filled at the end: the
  descriptor with a safe upper bound, padded with spaces (XML allows
  them); the manifest with its exact size, so it is exactly its lines
  (virt-v2v warns about a padded last line); the certificate with its
  bound, padded with newlines.  Disk members are streamed; each header is
  filled in when its member is closed.

Member order in an OVA: descriptor, manifest, certificate, then the files
in References order, each once.  A chunked export does not know its
chunk count, hence its manifest's size, before the disks are written: its
manifest and certificate come last instead.  DSP0243 (5.3) allows the manifest and
certificate right after the descriptor or both at the end; right after it
is where both big consumers take them: VirtualBox reads .ovf/.mf/.cert
wherever they are ("the manifest and its optional signature file either
follows immediately or at the very end of the OVA", Appliance::i_readFSOVA
in src/VBox/Main/src-server/ApplianceImplImport.cpp), and VMware's own OVA
builder writes this order (``tar cf NAME.ova *.ovf *.mf *.vmdk`` in
vmware/open-vmdk ova/mkova.sh).  A reader can then check the manifest
before any disk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from . import integrity
from .diskencode import Output, Written, chunk_names, encode_disk, stored_bound
from .errors import IntegrityError, PackageError, UsageError
from .exportdir import staging, staging_file
from .exportplan import DiskPlan, ExportRequest, descriptor, read_pem
from .model import Envelope
from .ovawriter import OvaWriter, Reservation
from .progress import meter
from .sparse import SparseFile

__all__ = ["Signer", "signer", "PackageWriter", "DirPackage", "OvaPackage", "write_package"]

_SIZE_PLACEHOLDER = 10**19 - 1  # more digits than any real size: descriptor upper bound
_EC_SIGNATURE_SLACK = 32  # bytes an ECDSA signature may outgrow our trial one


@dataclass(frozen=True, slots=True)
class Signer:
    key: bytes
    cert: bytes
    size_bound: int  # bytes the .cert may need

    def sign(self, mf_name: str, manifest: bytes, algorithm: str) -> bytes:
        return integrity.sign_manifest(mf_name, manifest, self.key, self.cert, algorithm)


def signer(req: ExportRequest, mf_name: str) -> Signer | None:
    """Load and try the key and certificate now, before any disk is written."""
    if req.sign_key is None or req.sign_cert is None:
        return None
    key = read_pem(req.sign_key, "signing key")
    cert = read_pem(req.sign_cert, "certificate")
    try:
        trial = integrity.sign_manifest(mf_name, b"trial\n", key, cert, req.manifest)
    except UsageError as e:
        raise UsageError(f"--sign/--cert: {e.problem}", req.sign_key) from e
    except IntegrityError as e:
        raise UsageError(f"--sign/--cert: {e.problem}", req.sign_cert) from e
    parsed = integrity.parse_certificate_file(trial)
    # RSA signatures have the modulus' length; ECDSA's DER length varies a little.
    rsa_key = isinstance(parsed.certificates[0].public_key(), rsa.RSAPublicKey)
    slack = 0 if rsa_key else 2 * _EC_SIGNATURE_SLACK
    return Signer(key, cert, len(trial) + slack)




class PackageWriter:
    """Where a package's bytes go.  Used as a context manager: on an error
    (Ctrl-C included) everything written so far is removed; on success it
    is put in place.  Subclasses give :meth:`_session`."""

    path: str
    _cm: contextlib.AbstractContextManager | None = None

    def _session(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def begin(self, names: dict[str, str], bounds: dict[str, int]) -> None:
        """Before any disk: the descriptor, manifest and certificate names
        with upper bounds of their sizes."""

    def open_file(self, name: str) -> Output:
        raise NotImplementedError

    def fit(self, name: str, data: bytes) -> bytes:
        """``data`` as it will be stored under ``name`` (an OVA pads its
        reserved members); digests are taken of what this returns."""
        return data

    def put(self, name: str, data: bytes, *, pad: bytes = b" ") -> None:
        raise NotImplementedError

    def __enter__(self) -> PackageWriter:
        self._cm = self._session()
        self._cm.__enter__()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        assert self._cm is not None
        return self._cm.__exit__(*exc)


class DirPackage(PackageWriter):
    """``DEST/`` holding the files, staged in a sibling directory."""

    def __init__(self, dest: str) -> None:
        self.path = dest
        self._work = ""

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        with staging(self.path) as work:
            self._work = work
            yield

    def open_file(self, name: str) -> Output:
        return SparseFile(os.path.join(self._work, name))

    def put(self, name: str, data: bytes, *, pad: bytes = b" ") -> None:
        out = SparseFile(os.path.join(self._work, name))
        out.write(data)
        out.close()


class OvaPackage(PackageWriter):
    """``DEST.ova``, staged in a sibling file."""

    def __init__(self, dest: str) -> None:
        self.path = dest
        self._ova: OvaWriter | None = None
        self._reserved: dict[str, Reservation] = {}

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        with staging_file(self.path) as tmp:
            self._ova = OvaWriter(tmp)
            try:
                yield
                self._ova.close()
            except BaseException:
                self._ova.abort()
                raise

    def begin(self, names: dict[str, str], bounds: dict[str, int]) -> None:
        assert self._ova is not None
        for name in names.values():
            if name in bounds:
                self._reserved[name] = self._ova.reserve(name, bounds[name])

    def open_file(self, name: str) -> Output:
        assert self._ova is not None
        return self._ova.open_member(name)

    def fit(self, name: str, data: bytes) -> bytes:
        res = self._reserved.get(name)
        if res is None or len(data) > res.size:
            return data
        return data + b" " * (res.size - len(data))

    def put(self, name: str, data: bytes, *, pad: bytes = b" ") -> None:
        """A reserved member's bytes, or (not reserved) a member appended now."""
        assert self._ova is not None
        try:
            if name in self._reserved:
                self._ova.fill(self._reserved[name], data, pad=pad)
            else:
                self._ova.add(name, data)
        except ValueError as e:
            raise PackageError(f"internal error: {e}", self.path) from e


def _bounds(plans: Sequence[DiskPlan], env_for: Callable[[dict], Envelope],
            req: ExportRequest, names: dict[str, str], sig: Signer | None,
            config: str) -> tuple[dict[str, int], dict[str, int]]:
    """(upper bounds of the descriptor/manifest/certificate sizes, the
    number of chunks each disk file may take)."""
    files = {p.file_id: stored_bound(p, req) for p in plans if p.file_id}
    ovf = len(descriptor(env_for({fid: _SIZE_PLACEHOLDER for fid in files}), req, config))
    hexlen = integrity.ALGORITHMS[req.manifest.upper()]
    chunks = {p.file_id: len(chunk_names(p.href, req, files[p.file_id]))
              for p in plans if p.file_id and p.href}
    potential = [names["ovf"]] + [n for p in plans if p.href and p.file_id
                                  for n in chunk_names(p.href, req, files[p.file_id])]
    bounds = {names["ovf"]: ovf}
    if req.chunk_size is None:
        # Every name is known and every digest has one length: the exact
        # size, so the manifest is exactly its lines.  A chunked file's
        # chunk count is known only once written: its manifest and
        # certificate go at the end, which DSP0243 allows as well.
        bounds[names["mf"]] = len(integrity.format_manifest(
            [(n, "0" * hexlen) for n in potential], req.manifest))
        if sig is not None:
            bounds[names["cert"]] = sig.size_bound
    return bounds, chunks


def write_package(writer: PackageWriter, plans: Sequence[DiskPlan],
                  env_for: Callable[[dict], Envelope], req: ExportRequest,
                  names: dict[str, str], sig: Signer | None,
                  progress: Callable[[str], None], config: str) -> list[str]:
    """Disks, then descriptor -> manifest -> certificate; returns the
    files in package order."""
    bounds, max_chunks = _bounds(plans, env_for, req, names, sig, config)
    with writer:
        writer.begin({k: v for k, v in names.items() if k != "cert" or sig}, bounds)
        written: list[Written] = []
        sizes: dict[str, int] = {}
        for p in plans:
            with meter(progress, p.index, p.href or "", p.allocated, watch=p.href):
                files = encode_disk(p, req, writer.open_file, progress)
            written += files
            if p.file_id is not None and p.href is not None:
                sizes[p.file_id] = sum(f.size for f in files)
                if len(files) > max_chunks[p.file_id]:
                    raise PackageError(f"{p.href!r} came out at {sizes[p.file_id]} bytes, "
                                       "more chunks than the manifest has room for",
                                       writer.path)
        ovf = writer.fit(names["ovf"], descriptor(env_for(sizes), req, config))
        digest = integrity.new_hasher(req.manifest)
        digest.update(ovf)
        manifest = integrity.format_manifest(
            [(names["ovf"], digest.hexdigest())] + [(w.name, w.digest) for w in written],
            req.manifest)
        if names["mf"] in bounds and len(manifest) != bounds[names["mf"]]:
            raise PackageError(f"internal error: manifest of {len(manifest)} bytes, "
                               f"{bounds[names['mf']]} reserved", writer.path)
        writer.put(names["ovf"], ovf)
        writer.put(names["mf"], manifest)
        trailer = [names["mf"]]
        if sig is not None:
            writer.put(names["cert"], sig.sign(names["mf"], manifest, req.manifest), pad=b"\n")
            trailer.append(names["cert"])
    files = [w.name for w in written]
    if names["mf"] in bounds:
        return [names["ovf"], *trailer, *files]
    return [names["ovf"], *files, *trailer]
