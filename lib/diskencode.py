"""One disk of an export, encoded into its package file(s) in one pass.

A raw dump (or an instance's disk) is read once, holes skipped
(:mod:`sparse`), and encoded straight into its destination: the package
file, its gzip stream, its chunks or its OVA member.  The manifest digest
of each file is taken by :class:`Files` as the bytes go by.  Every format
is written by us, as a stream: raw as it is, vmdk by :mod:`vmdkwriter`
(streamOptimized, grains deflated on all cores), qcow2 by
:mod:`qcow2writer`.  No temporary copy of a disk is ever made, so an
interrupted export has written only inside its staging directory, which
is removed anyway.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import integrity, qcow2writer, sparse, vmdkwriter
from .errors import OvfError
from .exportdir import MIB
from .exportplan import DiskPlan, ExportRequest

__all__ = ["Written", "Output", "Files", "stored_bound", "chunk_names", "estimate_space",
           "encode_disk"]

GZIP_LEVEL = 6


@dataclass(frozen=True, slots=True)
class Written:
    """One file of the package as written: name, size, digest (hex)."""

    name: str
    size: int
    digest: str


class Output(Protocol):
    """Where one package file's bytes go: a sparse.SparseFile or an OVA member."""

    def write(self, data: bytes | memoryview) -> int: ...

    def close(self) -> int: ...


class _Open:
    """The file of a _Files being written."""

    __slots__ = ("name", "out", "hasher", "size")

    def __init__(self, name: str, out: Output, hasher: Any) -> None:
        self.name = name
        self.out = out
        self.hasher = hasher
        self.size = 0


class Files:
    """The files of one References/File: the whole file, or its chunks;
    digested as they are written.  A file-like sink for gzip.GzipFile (it
    has no ``name``, so gzip records no file name in its header)."""

    def __init__(self, open_out: Callable[[str], Output], href: str,
                 chunk_size: int | None, algorithm: str) -> None:
        self._open_out = open_out
        self._href = href
        self._chunk = chunk_size
        self._alg = algorithm
        self._cur: _Open | None = None
        self._done: list[Written] = []

    def _start(self) -> _Open:
        name = self._href if self._chunk is None else f"{self._href}.{len(self._done):09d}"
        self._cur = _Open(name, self._open_out(name), integrity.new_hasher(self._alg))
        return self._cur

    def _finish(self, cur: _Open) -> None:
        cur.out.close()
        self._done.append(Written(cur.name, cur.size, cur.hasher.hexdigest()))
        self._cur = None

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        total = len(view)
        while view:
            cur = self._cur or self._start()
            n = len(view) if self._chunk is None else min(len(view), self._chunk - cur.size)
            piece = view[:n]
            cur.hasher.update(piece)
            cur.out.write(piece)
            cur.size += n
            view = view[n:]
            if self._chunk is not None and cur.size == self._chunk:
                self._finish(cur)
        return total

    def flush(self) -> None:
        pass

    def close(self) -> list[Written]:
        if self._cur is None and not self._done:
            self._start()  # an empty stream is still one (empty) file
        if self._cur is not None:
            self._finish(self._cur)
        return self._done

    def abort(self) -> None:
        if self._cur is not None:
            with contextlib.suppress(OvfError, OSError, ValueError):
                self._cur.out.close()
            self._cur = None


def stored_bound(p: DiskPlan, req: ExportRequest) -> int:
    """An upper bound of a disk file's stored size, before it is written:
    the format's own worst case, plus gzip's (0.03% and a header)."""
    if req.disk_format == "raw":
        bound = p.capacity
    elif req.disk_format == "vmdk":
        bound = vmdkwriter.stored_bound(p.capacity)
    else:
        bound = qcow2writer.stored_bound(p.capacity)
    if req.compress:
        bound += bound // 1000 + 64 * 1024
    return bound


def chunk_names(href: str, req: ExportRequest, bound: int) -> list[str]:
    if req.chunk_size is None:
        return [href]
    return [f"{href}.{i:09d}" for i in range(max(1, math.ceil(bound / req.chunk_size)))]


def estimate_space(plans: Sequence[DiskPlan], req: ExportRequest) -> int:
    """Bytes the export may need on the output file system, at most.

    Each disk's output is bounded by the blocks its dump occupies (zeros
    and holes shrink, never grow; written zeros become holes) plus its
    format's slack.  Nothing else: no disk is ever copied to a temporary
    file.
    """
    need = MIB  # descriptor, manifest, certificate, tar headers
    for p in plans:
        if p.dump is not None:
            data = min(p.allocated, p.capacity)
            need += data + data // 32 + 4 * MIB
    return need


def encode_disk(p: DiskPlan, req: ExportRequest, open_out: Callable[[str], Output],
                progress: Callable[[str], None]) -> list[Written]:
    """Write one disk's file(s) through ``open_out``; returns them with
    sizes and digests.  The source is read only up to the disk's size."""
    if p.dump is None or p.href is None:
        return []
    label = os.path.basename(p.dump)
    fmt = req.disk_format
    progress(f"disk {p.index}: {label} -> {p.href}" + ("" if fmt == "raw" else f" ({fmt})"))
    fd = sparse.open_source(p.dump, p.capacity, label)
    files = Files(open_out, p.href, req.chunk_size, req.manifest)
    try:
        with contextlib.ExitStack() as stack:
            sink: Any = files
            if req.compress:
                sink = stack.enter_context(
                    gzip.GzipFile(fileobj=files, mode="wb", compresslevel=GZIP_LEVEL, mtime=0))
            if fmt == "vmdk":
                extent = p.href.removesuffix(".gz")
                vmdkwriter.write_stream_optimized(fd, p.capacity, sink.write,
                                                  extent_name=extent, label=label)
            elif fmt == "qcow2":
                qcow2writer.write_qcow2(fd, p.capacity, sink.write, label=label)
            else:
                for block in sparse.blocks(fd, p.capacity, label):
                    sink.write(block)
        return files.close()
    except BaseException:
        files.abort()
        raise
    finally:
        os.close(fd)
