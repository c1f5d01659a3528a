"""OS names validated the way ``gnt-os list`` sees them.

An OVF package names no Ganeti OS (or one from another cluster), so the
importer must check the name the operator gives before writing a
config.ini that ``gnt-backup import`` would only reject after the disks
were copied.  On the master we ask the cluster itself (``gnt-os list``,
which also hides hidden and blacklisted OSes); elsewhere we read the OS
search path the way Ganeti 3.0's node daemon does:

* ``backend.DiagnoseOS``: every visible entry (no leading dot, no
  ``lost+found`` on a mount point) of each existing search directory is a
  candidate; a directory that cannot be listed ends the scan; the first
  directory holding a name decides it, valid or not
  (``OsQuery._GetQueryData`` uses the first entry per node).
* ``backend._TryOSFromDisk`` and ``_OSOndiskAPIVersion``: the checks, in
  Ganeti's order, with Ganeti's diagnose texts as ``reason``.
* ``LUOsDiagnose._BuildFilter`` and ``cli.CalculateOSNames``: only valid
  OSes are listed, as ``os+variant`` per variant, or the bare name when
  there are none; names are in ``utils.NiceSort`` order.

What a local scan cannot know: the cluster's hidden/blacklisted lists,
and the other nodes (the cluster keeps only variants every node has).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import ganeti_env
from .errors import ClusterError, OsNameError

__all__ = [
    "GNT_OS_TIMEOUT",
    "OsDefinition",
    "list_os",
    "scan_search_path",
    "validate_os",
]

#: Seconds ``gnt-os list`` may take (it runs a job on the master).
GNT_OS_TIMEOUT = 300

# Ganeti 3.0 constants.OS_* (the file names are part of the OS interface).
_API_FILE = "ganeti_api_version"
_VARIANTS_FILE = "variants.list"
_PARAMETERS_FILE = "parameters.list"
_CREATE = "create"
_CREATE_UNTRUSTED = "create_untrusted"
_VERIFY = "verify"
_OS_SCRIPTS = (_CREATE, _CREATE_UNTRUSTED, "export", "import", "rename", _VERIFY)
_API_V15 = 15
_API_V20 = 20
# constants.EXT_PLUGIN_MASK: utils.FindFile refuses any other name.
_PLUGIN_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_VARIANT_DELIM = "+"
# utils.algo: NiceSort looks at up to eight digit/non-digit groups.
_SORTER_RE = re.compile("^" + 8 * r"(\D+|\d+)?" + "(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class OsDefinition:
    """One OS definition directory as Ganeti's node daemon judges it.

    ``api_versions`` are in file order, ``variants`` in file order without
    repeats, ``parameters`` maps name to description.  ``reason`` is
    Ganeti's diagnose text when not ``valid``.  ``trusted`` is False when
    a ``create_untrusted`` script is present.
    """

    name: str
    path: str
    api_versions: tuple[int, ...] = ()
    variants: tuple[str, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    valid: bool = True
    reason: str | None = None
    trusted: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        """The names ``gnt-os list`` shows for it; none when invalid."""
        if not self.valid:
            return ()
        if self.variants:
            return tuple(f"{self.name}{_VARIANT_DELIM}{v}" for v in self.variants)
        return (self.name,)


class _Invalid(Exception):
    """Carries Ganeti's diagnose text out of the checks."""


def scan_search_path(
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    api_versions: Sequence[int] | frozenset[int] | None = None,
) -> tuple[OsDefinition, ...]:
    """Every OS in the search path, one per name (the first directory wins),
    valid or not, in NiceSort order of name.

    Defaults: Ganeti's ``OS_SEARCH_PATH`` and ``OS_API_VERSIONS``.
    Relative directories are taken from the current directory.
    """
    dirs = _search_dirs(search_path)
    supported = (
        ganeti_env.os_api_versions() if api_versions is None else frozenset(api_versions)
    )
    found: dict[str, OsDefinition] = {}
    for top in dirs:
        top = os.path.normpath(os.path.abspath(top))
        if not os.path.isdir(top):
            continue
        try:
            entries = _visible_entries(top)
        except OSError:
            break  # DiagnoseOS logs and stops at an unlistable directory
        for name in entries:
            if name not in found:
                found[name] = _read_os(name, top, supported)
    return tuple(found[n] for n in sorted(found, key=_nice_key))


def list_os(
    *,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    use_cluster: bool = True,
) -> tuple[str, ...]:
    """The names ``gnt-os list`` would show.

    On the master (and ``use_cluster``, and no explicit ``search_path``)
    this is the real ``gnt-os list`` output; ClusterError if it fails.
    Otherwise the search path is scanned.
    """
    if _ask_cluster(search_path, use_cluster):
        return _cluster_names()
    return _names(scan_search_path(search_path))


def validate_os(
    name: str | None,
    *,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    use_cluster: bool = True,
    path: str | os.PathLike[str] | None = None,
) -> str:
    """``name`` if ``gnt-os list`` would show it, else OsNameError.

    The error's ``valid`` holds every valid name; ``path`` is the file the
    name came from, for the message.  Source of names as in :func:`list_os`.
    """
    definitions: tuple[OsDefinition, ...] | None = None
    if _ask_cluster(search_path, use_cluster):
        names = _cluster_names()
        nothing = "'gnt-os list' shows no OS"
    else:
        dirs = _search_dirs(search_path)
        definitions = scan_search_path(dirs)
        names = _names(definitions)
        nothing = f"no valid OS in the OS search path {':'.join(dirs)!r}"
    if name and name in names:
        return name
    raise OsNameError(_explain(name, names, definitions, nothing), path, valid=names)


def _explain(
    name: str | None,
    names: tuple[str, ...],
    definitions: tuple[OsDefinition, ...] | None,
    nothing: str,
) -> str:
    """The one-line reason ``name`` is not among ``names``."""
    listing = f"valid OS names: {', '.join(names)}" if names else nothing
    if not name:
        return f"no OS given (use -o/--os-type); {listing}"
    base, delim, variant = name.partition(_VARIANT_DELIM)
    own = tuple(n for n in names if n.partition(_VARIANT_DELIM)[0] == base)
    if own:
        has_variants = any(_VARIANT_DELIM in n for n in own)
        if not delim and has_variants:
            problem = f"OS {base!r} needs a variant"
        elif not has_variants:
            problem = f"OS {base!r} has no variants ({name!r} given)"
        else:
            problem = f"OS {base!r} has no variant {variant!r}"
        return f"{problem}; valid names: {', '.join(own)}"
    for d in definitions or ():
        if d.name == base and not d.valid:
            return f"OS {base!r} is not valid ({d.reason}); {listing}"
    return f"unknown OS {name!r}; {listing}"


def _ask_cluster(search_path: object, use_cluster: bool) -> bool:
    return search_path is None and use_cluster and ganeti_env.is_master()


def _search_dirs(search_path: Sequence[str | os.PathLike[str]] | None) -> tuple[str, ...]:
    if search_path is None:
        return ganeti_env.os_search_path()
    if isinstance(search_path, (str, bytes)):
        # A lone string would be scanned one character at a time.
        raise TypeError("search_path must be a sequence of directories, not a string")
    return tuple(os.fspath(p) for p in search_path)


def _names(definitions: tuple[OsDefinition, ...]) -> tuple[str, ...]:
    return tuple(n for d in definitions for n in d.names)


def _cluster_names() -> tuple[str, ...]:
    """Run the real ``gnt-os list --no-headers`` and read its names."""
    argv = [ganeti_env.gnt_command("gnt-os"), "list", "--no-headers"]
    command = " ".join(argv)
    # Ganeti's scripts run on /usr/bin/python3 and import Ganeti from their
    # own directory: our interpreter's settings must not leak into them.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=GNT_OS_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ClusterError(f"{command} gave no answer within {GNT_OS_TIMEOUT} s") from e
    except OSError as e:
        raise ClusterError(f"cannot run {command}: {e.strerror}") from e
    if proc.returncode != 0:
        if proc.returncode > 0:
            how = f"exited with exit code {proc.returncode}"
        else:
            how = f"was terminated by signal {-proc.returncode}"
        last = _last_line(proc.stderr) or _last_line(proc.stdout) or "no output"
        raise ClusterError(f"{command} {how}: {last}")
    return tuple(line.strip() for line in proc.stdout.splitlines() if line.strip())


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _visible_entries(top: str) -> list[str]:
    """utils.ListVisibleFiles: no dot files, no lost+found on a mount point."""
    mountpoint = os.path.ismount(top)
    return [
        n
        for n in os.listdir(top)
        if not (
            n.startswith(".")
            or (mountpoint and n == "lost+found" and os.path.isdir(os.path.join(top, n)))
        )
    ]


def _read_os(name: str, top: str, supported: frozenset[int]) -> OsDefinition:
    os_dir = top + os.sep + name
    try:
        return _try_os_from_disk(name, os_dir, supported)
    except _Invalid as e:
        return OsDefinition(name=name, path=os_dir, valid=False, reason=str(e))


def _try_os_from_disk(name: str, os_dir: str, supported: frozenset[int]) -> OsDefinition:
    """backend._TryOSFromDisk for one directory; _Invalid with Ganeti's text."""
    if not _PLUGIN_NAME.match(name) or not os.path.isdir(os_dir):
        raise _Invalid(f"Directory for OS {name} not found in search path")
    versions = _api_versions(os_dir)
    if not supported.intersection(versions):
        raise _Invalid(
            f"API version mismatch for path '{os_dir}': found {versions}, want {supported}."
        )

    # True: required, False: optional (same order as Ganeti, so the same
    # problem is reported first).
    wanted: dict[str, bool] = dict.fromkeys(_OS_SCRIPTS, True)
    wanted[_CREATE] = False
    wanted[_CREATE_UNTRUSTED] = False
    if max(versions) >= _API_V15:
        wanted[_VARIANTS_FILE] = False
    if max(versions) >= _API_V20:
        wanted[_PARAMETERS_FILE] = True
    else:
        del wanted[_VERIFY]

    present: dict[str, str] = {}
    for filename, required in wanted.items():
        file_path = os.path.join(os_dir, filename)
        try:
            st = os.stat(file_path)
        except OSError as err:
            if err.errno == errno.ENOENT and not required:
                continue
            raise _Invalid(
                f"File '{filename}' under path '{os_dir}' is missing ({_errno_name(err)})"
            ) from err
        if not stat.S_ISREG(st.st_mode):
            raise _Invalid(f"File '{filename}' under path '{os_dir}' is not a regular file")
        if filename in _OS_SCRIPTS and not st.st_mode & stat.S_IXUSR:
            raise _Invalid(f"File '{filename}' under path '{os_dir}' is not executable")
        present[filename] = file_path

    if _CREATE not in present and _CREATE_UNTRUSTED not in present:
        raise _Invalid(
            f"A create script (trusted or untrusted) under path '{os_dir}' must exist"
        )

    variants: list[str] = []
    if _VARIANTS_FILE in present:
        variants_file = present[_VARIANTS_FILE]
        try:
            variants = _filter_lines(_read_text(variants_file))
        except OSError as err:
            if err.errno != errno.ENOENT:
                raise _Invalid(
                    f"Error while reading the OS variants file at {variants_file}:"
                    f" {_errno_name(err)}"
                ) from err

    parameters: dict[str, str] = {}
    if _PARAMETERS_FILE in present:
        parameters_file = present[_PARAMETERS_FILE]
        try:
            text = _read_text(parameters_file)
        except OSError as err:
            raise _Invalid(
                f"Error while reading the OS parameters file at {parameters_file}:"
                f" {_errno_name(err)}"
            ) from err
        for line in text.splitlines():
            parts = line.split(None, 1)
            if parts:
                parameters[parts[0]] = parts[1] if len(parts) > 1 else ""

    return OsDefinition(
        name=name,
        path=os_dir,
        api_versions=tuple(versions),
        variants=tuple(dict.fromkeys(variants)),
        parameters=parameters,
        valid=True,
        reason=None,
        trusted=_CREATE_UNTRUSTED not in present,
    )


def _api_versions(os_dir: str) -> list[int]:
    """backend._OSOndiskAPIVersion: one integer per line, no blank lines."""
    api_file = os.path.join(os_dir, _API_FILE)
    try:
        st = os.stat(api_file)
    except OSError as err:
        raise _Invalid(
            f"Required file '{_API_FILE}' not found under path {os_dir}: {_errno_name(err)}"
        ) from err
    if not stat.S_ISREG(st.st_mode):
        raise _Invalid(f"File '{_API_FILE}' in {os_dir} is not a regular file")
    try:
        lines = _read_text(api_file).splitlines()
    except OSError as err:
        raise _Invalid(
            f"Error while reading the API version file at {api_file}: {_errno_name(err)}"
        ) from err
    try:
        return [int(v.strip()) for v in lines]
    except ValueError as err:
        raise _Invalid(f"API version(s) can't be converted to integer: {err}") from err


def _read_text(path: str) -> str:
    """utils.ReadFile; undecodable bytes are an OSError here (Ganeti crashes)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise OSError(errno.EILSEQ, "not UTF-8", path) from e


def _filter_lines(text: str) -> list[str]:
    """utils.FilterEmptyLinesAndComments."""
    stripped = (line.strip() for line in text.splitlines())
    return [s for s in stripped if s and not s.startswith("#")]


def _errno_name(err: OSError) -> str:
    """utils.ErrnoOrStr: ``ENOENT`` rather than the message."""
    if err.errno is not None and err.errno in errno.errorcode:
        return errno.errorcode[err.errno]
    return str(err)


def _nice_key(value: str) -> list[tuple[int, int, str]]:
    """utils.NiceSortKey: digit groups compare as numbers, ``a2`` < ``a10``."""
    key: list[tuple[int, int, str]] = []
    match = _SORTER_RE.match(value)
    groups = match.groups() if match else (value,)  # the pattern matches any string
    for group in groups:
        if group is None:
            key.append((0, 0, ""))
        elif group.isdigit():
            try:
                key.append((1, int(group), ""))
            except ValueError:  # digits int() refuses, e.g. superscripts
                key.append((2, 0, group))
        else:
            key.append((2, 0, group))
    return key
