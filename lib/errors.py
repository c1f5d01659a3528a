"""One error hierarchy: each error knows its one-line message.

The CLI maps classes to exit codes (``cli.EXIT_CODES``); nothing below it
prints or exits.  Messages name the file first, then the problem, with the
offending value in repr, e.g. ``vm.ova: member '../x' leaves the package``.
"""

from __future__ import annotations

import os

__all__ = [
    "OvfError",
    "UsageError",
    "PackageError",
    "UnsafeMemberError",
    "DescriptorError",
    "UnitsError",
    "IntegrityError",
    "DiskImageError",
    "ExportDirError",
    "ClusterError",
    "OsNameError",
]


class OvfError(Exception):
    """Root of every error we raise on purpose.

    ``path`` is the file (or package) the problem is in, ``problem`` the
    text.  ``str()`` gives the one line the operator sees.
    """

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = os.fspath(path) if path is not None else None

    def __str__(self) -> str:
        line = f"{self.path}: {self.problem}" if self.path else self.problem
        # One line, always: a stray newline from a tool would break logs.
        return " ".join(line.split("\n")).strip()


class UsageError(OvfError):
    """The command line asks for something impossible."""


class PackageError(OvfError):
    """The package's file layout is wrong (missing file, bad tar, ...)."""


class UnsafeMemberError(PackageError):
    """A file name or tar member would reach outside the package."""

    def __init__(self, problem: str, path=None, member: str | None = None) -> None:
        super().__init__(problem, path)
        self.member = member


class DescriptorError(OvfError):
    """The OVF descriptor cannot be understood."""


class UnitsError(OvfError):
    """A DSP0004 unit string (``byte * 2^20``) cannot be parsed."""

    def __init__(self, problem: str, path=None, value: str | None = None) -> None:
        super().__init__(problem, path)
        self.value = value


class IntegrityError(OvfError):
    """A manifest digest or a certificate signature does not hold."""


class DiskImageError(OvfError):
    """A disk image is unsafe, unreadable, or qemu-img failed on it."""


class ExportDirError(OvfError):
    """A Ganeti export directory (config.ini and dumps) is wrong."""


class ClusterError(OvfError):
    """The Ganeti installation or cluster could not answer."""


class OsNameError(OvfError):
    """The OS is not one ``gnt-os list`` would show."""

    def __init__(self, problem: str, path=None, valid: tuple[str, ...] = ()) -> None:
        super().__init__(problem, path)
        self.valid = valid
