"""What ``info`` and ``verify`` tell an operator, built from the model.

``package_info`` returns plain data (the ``--json`` form); ``info_text``
formats it for a terminal.  ``verify_package`` collects every problem
instead of stopping at the first, so one run lists them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import diskformats, trust
from . import disks as diskmod
from .errors import OvfError
from .importer import load_envelope
from .inspection import inspect_package
from .model import Disk, Envelope, VirtualSystem
from .package import Package, open_package
from .packagecheck import check_package

__all__ = ["package_info", "info_text", "verify_package", "verify_report"]


def _disk_data(pkg: Package, disk: Disk, probe: bool) -> dict[str, Any]:
    ref = disk.file_ref
    d: dict[str, Any] = {
        "id": disk.disk_id,
        "capacity": disk.capacity,
        "populated_size": disk.populated_size,
        "format_uri": disk.format_uri,
        "file": ref.href if ref else None,
        "file_size": ref.size if ref else None,
        "compression": ref.compression if ref else None,
        "chunk_size": ref.chunk_size if ref else None,
    }
    if probe and ref is not None and not ref.compression and not ref.chunk_size:
        try:
            src = pkg.get(ref.href).byte_range()
            fmt = diskmod.detect_format(src, name=ref.href)
            diskformats.check_declared(disk.format_uri, fmt, name=ref.href)
            info = diskmod.image_info(src, fmt, name=ref.href)
            d["format"] = fmt
            d["virtual_size"] = info.virtual_size
            d["create_type"] = info.create_type
        except OvfError as e:
            d["problem"] = e.problem
    return d


def _system_data(pkg: Package, vs: VirtualSystem, probe: bool) -> dict[str, Any]:
    g = vs.ganeti
    return {
        "id": vs.system_id,
        "name": vs.name,
        "os": {"id": vs.os_id, "description": vs.os_description, "vmw_os_type": vs.os_type},
        "cpus": vs.cpus,
        "memory": vs.memory,
        "video_memory": vs.video_memory,
        "virtual_system_type": vs.virtual_system_type,
        "disks": [_disk_data(pkg, d, probe) for d in vs.disks],
        "nics": [dataclasses.asdict(n) for n in vs.nics],
        "products": [dataclasses.asdict(p) for p in vs.products],
        "eulas": list(vs.eulas),
        "ganeti": None if g is None else {
            "os": g.os_name, "os_parameters": g.os_params, "hypervisor": g.hypervisor,
            "hypervisor_parameters": g.hv_params, "backend": g.backend,
            "disk_template": g.disk_template, "tags": list(g.tags),
            "nics": [dataclasses.asdict(n) for n in g.nics],
        },
    }


def package_info(path: str, *, vsys: str | None = None, configuration: str | None = None,
                 probe: bool = True, store: trust.TrustStore | None = None,
                 require_signature: bool = False) -> dict[str, Any]:
    """Everything an operator wants to know before importing; the signer is
    judged against ``store`` (default: the system's CA bundle)."""
    with open_package(path) as pkg:
        env: Envelope = load_envelope(pkg, configuration=configuration)
        check = check_package(pkg, env, collect=True, store=store,
                              require_signature=require_signature)
        return _package_info(pkg, path, env, check, vsys, probe)


def _trust_data(check) -> dict[str, Any] | None:
    v = check.trust
    if v is None:
        return None
    return {"trusted": v.trusted, "anchor": v.anchor, "source": v.source,
            "chain": list(v.chain), "reason": v.reason,
            "line": v.line(check.certificate_name or "certificate")}


def _package_info(pkg: Package, path: str, env: Envelope, check, vsys: str | None,
                  probe: bool) -> dict[str, Any]:
    systems = [vs for vs in env.systems if vsys is None or vs.system_id == vsys]
    cert = check.certificate
    return {
        "package": path,
        "kind": pkg.kind,
        "descriptor": pkg.descriptor_name,
        "ovf_version": env.version,
        "configurations": list(env.configurations),
        "configuration": env.configuration,
        "networks": [dataclasses.asdict(n) for n in env.networks],
        "systems": [_system_data(pkg, vs, probe) for vs in systems],
        "manifest": None if check.manifest is None else {
            "file": check.manifest, "algorithms": list(check.algorithms),
            "verified": list(check.verified), "problems": list(check.problems),
            "warnings": list(check.warnings),
        },
        "certificate": None if cert is None else {
            "subject": cert.subject, "issuer": cert.issuer,
            "not_before": cert.not_before.isoformat(), "not_after": cert.not_after.isoformat(),
            "self_signed": cert.self_signed, "expired": cert.expired,
            "not_yet_valid": cert.not_yet_valid, "key": cert.key,
            "fingerprint_sha256": cert.fingerprint_sha256,
            "trust": _trust_data(check),
        },
        # What the reader could not use, then what the manifest leaves
        # unprotected (e.g. VirtualBox 5.0 manifests that skip the .ovf).
        "warnings": list(env.warnings) + list(check.warnings),
    }


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 10)) == 0 or n >= 10 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} B"


def info_text(d: dict[str, Any]) -> str:
    out = [f"Package: {d['package']} ({d['kind']}, OVF {d['ovf_version']})"]
    if d["configurations"]:
        out.append(f"Configurations: {', '.join(d['configurations'])} "
                   f"(using {d['configuration']})")
    for n in d["networks"]:
        out.append(f"Network: {n['name']}" + (f" - {n['description']}" if n["description"]
                                              else ""))
    if not d["systems"]:
        out.append("Virtual systems: none (nothing to import)")
    for vs in d["systems"]:
        out.append(f"Virtual system {vs['id']!r}: {vs['name'] or '(no name)'}")
        os_ = vs["os"]
        if any(v is not None for v in os_.values()):
            detail = ", ".join(x for x in (
                None if os_["id"] is None else f"id {os_['id']}", os_["vmw_os_type"]) if x)
            out.append(f"  OS: {os_['description'] or '-'}" + (f" ({detail})" if detail else ""))
        out.append(f"  CPUs: {vs['cpus'] if vs['cpus'] is not None else '-'}   "
                   f"Memory: {_size(vs['memory'])}"
                   + (f"   Video memory: {_size(vs['video_memory'])}"
                      if vs["video_memory"] else ""))
        for i, disk in enumerate(vs["disks"]):
            src = disk["file"] or "(blank)"
            extra = []
            if disk.get("format"):
                extra.append(disk["format"] + (f"/{disk['create_type']}"
                                               if disk.get("create_type") else ""))
            if disk["compression"]:
                extra.append(disk["compression"])
            if disk["chunk_size"]:
                extra.append(f"chunks of {_size(disk['chunk_size'])}")
            out.append(f"  Disk {i}: {src}, capacity {_size(disk['capacity'])}, "
                       f"populated {_size(disk['populated_size'])}"
                       + (f" [{', '.join(extra)}]" if extra else "")
                       + (f" PROBLEM: {disk['problem']}" if disk.get("problem") else ""))
        for i, nic in enumerate(vs["nics"]):
            out.append(f"  NIC {i}: network {nic['network'] or '-'}, model "
                       f"{nic['model'] or '-'}, MAC {nic['mac'] or '-'}")
        g = vs["ganeti"]
        if g:
            out.append(f"  Ganeti: OS {g['os'] or '-'}, hypervisor {g['hypervisor'] or '-'}, "
                       f"template {g['disk_template'] or '-'}, tags {' '.join(g['tags']) or '-'}")
            # Shown in full: these apply only with --trust-ganeti-section.
            for label, params in (("hypervisor parameter", g["hypervisor_parameters"]),
                                  ("OS parameter", g["os_parameters"]),
                                  ("backend parameter", g["backend"])):
                for k, v in params.items():
                    out.append(f"    {label} {k} = {v!r}")
            for i, n in enumerate(g["nics"]):
                placed = {k: n[k] for k in ("mode", "link", "network", "ip", "vlan") if n[k]}
                if placed:
                    out.append(f"    NIC {i}: " + ", ".join(f"{k} {v}" for k, v in placed.items()))
        for p in vs["products"]:
            label = " ".join(x for x in (p["vendor"], p["product"], p["version"]) if x)
            if label:
                out.append(f"  Product: {label}")
            for k, v in p["properties"].items():
                out.append(f"    property {k} = {v!r}")
        for e in vs["eulas"]:
            first = e.strip().splitlines()[0] if e.strip() else ""
            out.append(f"  EULA: {first[:100]}{'...' if len(e) > len(first) else ''}")
    m = d["manifest"]
    if m is None:
        out.append("Manifest: none")
    else:
        state = "OK" if not m["problems"] else f"{len(m['problems'])} problem(s)"
        out.append(f"Manifest: {m['file']} ({', '.join(m['algorithms'])}): {state}")
        out.extend(f"  {p}" for p in m["problems"])
    c = d["certificate"]
    if c is not None:
        flags = [x for x, on in (("self-signed", c["self_signed"]), ("EXPIRED", c["expired"]))
                 if on]
        out.append(f"Certificate: {c['subject']} (issuer {c['issuer']}; valid "
                   f"{c['not_before']} .. {c['not_after']})"
                   + (f" [{', '.join(flags)}]" if flags else ""))
        t = c.get("trust")
        if t is not None:
            out.append(f"  {'Trusted' if t['trusted'] else 'NOT TRUSTED'}: {t['line']}")
    for w in d["warnings"]:
        out.append(f"Note: {w}")
    return "\n".join(out)


def verify_package(path: str) -> tuple[list[str], list[str]]:
    """(problems, what was checked and held) for a whole package."""
    problems, checked, _ = verify_report(path)
    return problems, checked


def verify_report(path: str, *, store: trust.TrustStore | None = None,
                  require_signature: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(problems, what was checked and held, warnings): a warning says that
    a signer does not chain to a trusted certificate of ``store``."""
    warnings: list[str] = []
    try:
        with open_package(path) as pkg:
            problems, checked = _verify(pkg, store, require_signature, warnings)
            return problems, checked, warnings
    except OvfError as e:
        if isinstance(e.__cause__, OSError) and e.path == path:
            raise  # nothing to verify (missing, unreadable): an error, as for info
        return [e.problem], [], warnings


def _verify(pkg: Package, store: trust.TrustStore | None = None,
            require_signature: bool = False, warnings: list[str] | None = None
            ) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    checked: list[str] = []
    try:
        env = load_envelope(pkg)
    except OvfError as e:
        return [e.problem], checked
    checked.append(f"descriptor {pkg.descriptor_name} (OVF {env.version})")
    referenced = {pkg.descriptor_name}
    for suffix in (".mf", ".cert"):
        m = pkg.sibling(suffix)
        if m is not None:
            referenced.add(m.name)
    for ref in env.files:
        try:
            members = pkg.file_members(ref)
        except OvfError as e:
            problems.append(e.problem)
            continue
        referenced.update(m.name for m in members)
        stored = sum(m.size for m in members)
        if ref.size is not None and ref.size != stored:
            problems.append(f"file {ref.href!r} is {stored} bytes, but References declares "
                            f"{ref.size}")
        else:
            checked.append(f"file {ref.href} present ({stored} bytes)")
    found = inspect_package(pkg, env, collect=True, store=store,
                            require_signature=require_signature)
    check = found.check
    assert check is not None  # verify always checks integrity
    problems.extend(p for p in found.problems if p not in problems)  # sizes: said above
    checked.extend(f"image {d.ref.href} is {d.fmt}, {d.info.virtual_size} bytes, safe"
                   for d in found.disks if d.ref is not None and d.info is not None)
    extra = [n for n in pkg.names() if n not in referenced]
    if pkg.kind == "ova":
        problems.extend(f"member {n!r} is not referenced by the descriptor" for n in extra)
    problems.extend(check.problems)
    if check.manifest:
        checked.append(f"manifest {check.manifest}: {len(check.verified)} digest(s) match"
                       + "".join(f"; {w}" for w in check.warnings))
    else:
        checked.append("no manifest" + "".join(f"; {w}" for w in check.warnings))
    if check.certificate is not None:
        checked.append(f"certificate {check.certificate.subject}: signature over the "
                       "manifest holds")
    v = check.trust
    if v is not None:
        line = v.line(check.certificate_name or "certificate")
        if v.trusted:
            checked.append(line)
        elif warnings is not None and not require_signature:  # else it is a problem
            warnings.append(line)
    return problems, checked
