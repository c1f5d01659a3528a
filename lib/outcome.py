"""What ``import`` and ``export`` say at the end: one summary line (what
was written, sizes, time) or, with ``--json``, a result object (paths,
disks, sizes, digests).  Built from the workflow's result and the disk
meters of ``progress``; the CLI prints it."""

from __future__ import annotations

import os

from .integrity import parse_manifest
from .package import open_package
from .progress import DiskStat, Progress, human_size

__all__ = ["import_outcome", "export_outcome", "summary_line"]


def allocated(path: str) -> int:
    """Bytes a file occupies on disk (0 if it cannot be told)."""
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _digests(package: str) -> dict[str, str]:
    """``{file: "SHA256:hex"}`` from a package's manifest ({} without one)."""
    with open_package(package) as pkg:
        mf = pkg.sibling(".mf")
        if mf is None:
            return {}
        data = mf.byte_range().read(0, mf.size)
        return {e.filename: f"{e.algorithm}:{e.digest}"
                for e in parse_manifest(data, path=mf.name, allow_empty=True)}


def _stat_of(stats: list[DiskStat], index: int) -> DiskStat | None:
    return next((s for s in stats if s.index == index), None)


def import_outcome(package: str, result, progress: Progress) -> dict:
    """What ``import --json`` prints: the export directory and its disks,
    with the package's manifest digests of the files they came from."""
    disks = []
    for i, d in enumerate(result.config.disks):
        path = os.path.join(result.path, d.dump) if d.dump else None
        stat = _stat_of(progress.disks, i)
        disks.append({"index": i, "dump": path, "size": d.size,
                      "written": allocated(path) if path else 0, "name": d.name,
                      "seconds": round(stat.seconds, 3) if stat else None})
    return {"command": "import", "package": package, "path": result.path,
            "config": os.path.join(result.path, "config.ini"), "name": result.config.name,
            "os": result.config.os, "disks": disks, "package_digests": _digests(package),
            "warnings": list(result.warnings), "seconds": round(progress.elapsed(), 3)}


def export_outcome(result, progress: Progress) -> dict:
    """What ``export --json`` prints: the package, its files with sizes and
    manifest digests, and its disks."""
    ova = not os.path.isdir(result.path)
    where = result.path if ova else result.descriptor  # the .ovf's path
    digests = _digests(where)
    files = []
    with open_package(where) as pkg:
        for name in result.files:
            m = pkg.member(name)
            files.append({"name": name, "size": m.size if m else None,
                          "digest": digests.get(name)})
    disks = [{"index": s.index, "file": s.label, "read": s.done,
              "seconds": round(s.seconds, 3)} for s in sorted(progress.disks,
                                                              key=lambda s: s.index)]
    return {"command": "export", "path": result.path, "ova": ova,
            "descriptor": result.descriptor, "files": files, "disks": disks,
            "size": sum(f["size"] or 0 for f in files),
            "warnings": list(result.warnings), "seconds": round(progress.elapsed(), 3)}


def summary_line(outcome: dict) -> str:
    """One line: what was written, how big, how long."""
    secs = f"{outcome['seconds']:.1f} s"
    if outcome["command"] == "import":
        disks = outcome["disks"]
        virtual = sum(d["size"] for d in disks)
        written = sum(d["written"] for d in disks)
        return (f"imported {outcome['name']!r} into {outcome['path']}: {len(disks)} "
                f"disk{'s' if len(disks) != 1 else ''}, {human_size(virtual)} virtual, "
                f"{human_size(written)} written, in {secs}")
    kind = "OVA" if outcome["ova"] else "package"
    return (f"exported {kind} {outcome['path']}: {len(outcome['files'])} files, "
            f"{human_size(outcome['size'])}, in {secs}")
