"""qemu's ``json:`` filenames: how every image is named to qemu-img.

An untrusted image is a byte range of a real file (a member of an OVA is
read in place), opened read-only with ``"backing": null`` under the format
detected from its bytes; an instance's own disk (trusted) is a file or a
block device read as raw up to its Ganeti size.  Names are built here and
checked against the file, so qemu-img is never asked for bytes that are
not there; :mod:`ganeti_ovf.disks` runs it.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from .diskformats import ACCEPTED_FORMATS
from .errors import DiskImageError
from .model import ByteRange

__all__ = ["json_filename", "spec", "trusted_spec"]

_SECTOR = 512


def _file_node(src: ByteRange, label: str) -> tuple[dict[str, Any], bool]:
    """qemu's node for the range, and whether it is the whole file.

    qemu's raw driver wants ``size`` in whole 512-byte sectors, so a range
    that ends mid-sector is widened to the end of that sector -- allowed only
    when the range starts on a sector boundary, as tar members do, so the
    extra bytes are the member's own tar padding, never another member.
    """
    path = os.path.abspath(src.path)
    shown = src.label or src.path
    try:
        path.encode("utf-8")  # qemu's JSON is UTF-8; a stray byte names another file
    except UnicodeEncodeError as e:
        raise DiskImageError(f"file name {shown!r} is not valid UTF-8", label) from e
    try:
        st = os.stat(path)
    except OSError as e:
        raise DiskImageError(f"cannot read {shown!r}: {e.strerror or e}", label) from e
    if not stat.S_ISREG(st.st_mode):
        raise DiskImageError(f"{shown!r} is not a regular file", label)
    if src.size <= 0:
        raise DiskImageError("image is empty", label)
    if src.offset < 0 or src.offset + src.size > st.st_size:
        raise DiskImageError(
            f"byte range {src.offset}+{src.size} runs past the end of "
            f"{shown!r} ({st.st_size} bytes)",
            label,
        )
    file_node: dict[str, Any] = {"driver": "file", "filename": path}
    if src.offset == 0 and src.size == st.st_size:
        return file_node, True
    size = -(-src.size // _SECTOR) * _SECTOR
    if size != src.size and (src.offset % _SECTOR or src.offset + size > st.st_size):
        raise DiskImageError(
            f"byte range {src.offset}+{src.size} of {shown!r} cannot be read "
            "in place (qemu needs whole 512-byte sectors)",
            label,
        )
    node = {"driver": "raw", "offset": src.offset, "size": size, "file": file_node}
    return node, False


def _check_format(fmt: str, label: str) -> None:
    if fmt not in ACCEPTED_FORMATS:
        raise DiskImageError(f"disk format {fmt!r} is not accepted", label)


def spec(src: ByteRange, fmt: str, label: str) -> tuple[str, bool]:
    """The json: filename of untrusted ``src`` read as ``fmt``, and whether
    it is the whole file."""
    _check_format(fmt, label)
    node, whole = _file_node(src, label)
    # read-only: not even `check -r` could write; backing null: never open
    # a backing file, whatever the header says (every driver accepts it).
    opts = {"driver": fmt, "read-only": True, "backing": None, "file": node}
    return "json:" + json.dumps(opts, separators=(",", ":")), whole


def json_filename(src: ByteRange, fmt: str) -> str:
    """The ``json:`` filename opening ``src`` as ``fmt``: read-only, no backing.

    Validates the range against the file (DiskImageError) so qemu is never
    asked for bytes that are not there.
    """
    return spec(src, fmt, src.path)[0]


def trusted_spec(path: str, fmt: str, label: str, size: int | None = None) -> str:
    """The json: filename of an instance's own disk (file or block device)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DiskImageError(f"cannot read {path!r}: {e.strerror or e}", label) from e
    if stat.S_ISBLK(st.st_mode):
        # An instance's own block device (blockdev, LVM), read in place;
        # ``size`` caps it at the disk size Ganeti records.
        file_node: dict[str, Any] = {"driver": "host_device", "filename": os.path.abspath(path)}
        if size is not None:
            file_node = {"driver": "raw", "offset": 0, "size": size, "file": file_node}
        opts = {"driver": fmt, "read-only": True, "backing": None, "file": file_node}
        return "json:" + json.dumps(opts, separators=(",", ":"))
    return spec(ByteRange(path, 0, st.st_size if size is None else size), fmt, label)[0]
