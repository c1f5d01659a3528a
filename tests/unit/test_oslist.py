"""oslist: OS definition directories judged as Ganeti's node daemon does.

Fixtures are real directories in tmp_path.  The strongest check runs
Ganeti's own ``backend.DiagnoseOS`` and ``gnt-os list`` query code
(``OsQuery`` + ``CalculateOSNames``) on Debian's interpreter over the same
directories and requires the same validity, reasons and names.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ganeti_ovf import ganeti_env, oslist
from ganeti_ovf.errors import ClusterError, OsNameError
from ganeti_ovf.oslist import OsDefinition

API = frozenset([10, 15, 20])  # Ganeti 3.0's OS_API_VERSIONS
API_REPR = "frozenset({10, 20, 15})"  # how Ganeti's message prints it
SCRIPTS = ("create", "export", "import", "rename")
DEBIAN_PYTHON = "/usr/bin/python3"
NOOP = "/usr/share/ganeti/os/noop"


def make_os(
    parent: Path,
    name: str,
    api: str | None = "10\n",
    scripts: tuple[str, ...] = SCRIPTS,
    variants: str | None = None,
    parameters: str | None = None,
    mode: int = 0o755,
) -> Path:
    """One OS definition directory, written the way packages install them."""
    d = parent / name
    d.mkdir(parents=True)
    if api is not None:
        (d / "ganeti_api_version").write_text(api)
    for script in scripts:
        p = d / script
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(mode)
    if variants is not None:
        (d / "variants.list").write_text(variants)
    if parameters is not None:
        (d / "parameters.list").write_text(parameters)
    return d


V20 = (*SCRIPTS, "verify")


@pytest.fixture
def search(tmp_path: Path) -> list[Path]:
    """Two search directories (plus a missing one) full of good and bad OSes."""
    first, second = tmp_path / "first", tmp_path / "second"
    make_os(first, "plain10")
    make_os(first, "legacy", api="5\n10\n")
    make_os(
        first,
        "debian",
        api="20\n15\n10\n",
        scripts=V20,
        variants="default\n# a comment\n\n  minimal  \ndefault\n",
        parameters="filesystem The root filesystem type\nswap\n\n",
    )
    make_os(first, "emptyvar", api="20\n", scripts=V20, variants="", parameters="")
    make_os(first, "novarfile", api="20\n", scripts=V20, parameters="")
    make_os(first, "oldvariants", api="10\n", variants="ignored\n")
    make_os(first, "v15", api="15\n", variants="a\nb\n", parameters="ignored before 20\n")
    make_os(first, "untrusted", scripts=("create_untrusted", "export", "import", "rename"))
    make_os(first, "noapi", api=None)
    make_os(first, "api5", api="5\n")
    make_os(first, "apiblank", api="20\n\n")
    make_os(first, "apitext", api="twenty\n")
    make_os(first, "noexec", mode=0o644)
    make_os(first, "noimport", scripts=("create", "export", "rename"))
    make_os(first, "nocreate", scripts=("export", "import", "rename"))
    make_os(first, "noverify", api="20\n", parameters="")
    make_os(first, "noparams", api="20\n", scripts=V20)
    make_os(first, "os2")
    make_os(first, "os10")
    make_os(first, ".hidden")
    make_os(first, "bad.name")
    d = make_os(first, "dirscript", scripts=("create", "export", "import"))
    (d / "rename").mkdir()
    d = make_os(first, "apidir", api=None)
    (d / "ganeti_api_version").mkdir()
    (first / "stray-file").write_text("not an OS\n")
    target = make_os(tmp_path / "elsewhere", "real")
    (first / "linked").symlink_to(target)
    # Same names in both directories: the first directory decides.
    make_os(first, "dup", api=None)
    make_os(second, "dup")
    make_os(first, "dup2")
    make_os(second, "dup2", variants="x\n", api="15\n")
    make_os(second, "second-only")
    return [first, second, tmp_path / "missing"]


def by_name(defs: tuple[OsDefinition, ...]) -> dict[str, OsDefinition]:
    return {d.name: d for d in defs}


# -- what is listed -------------------------------------------------------


def test_listed_names_in_nicesort_order(search: list[Path]) -> None:
    assert oslist.list_os(search_path=search) == (
        "debian+default",
        "debian+minimal",
        "dup2",
        "emptyvar",
        "legacy",
        "linked",
        "novarfile",
        "oldvariants",
        "os2",
        "os10",
        "plain10",
        "second-only",
        "untrusted",
        "v15+a",
        "v15+b",
    )


def test_scan_returns_every_visible_entry_once(search: list[Path]) -> None:
    names = [d.name for d in oslist.scan_search_path(search, API)]
    assert ".hidden" not in names
    assert names.count("dup") == 1
    assert {"stray-file", "bad.name", "second-only"} <= set(names)


def test_valid_definition_fields(search: list[Path]) -> None:
    defs = by_name(oslist.scan_search_path(search, API))
    first = str(search[0])
    assert defs["debian"] == OsDefinition(
        name="debian",
        path=f"{first}/debian",
        api_versions=(20, 15, 10),
        variants=("default", "minimal"),
        parameters={"filesystem": "The root filesystem type", "swap": ""},
        valid=True,
        reason=None,
        trusted=True,
    )
    assert defs["debian"].names == ("debian+default", "debian+minimal")
    assert defs["legacy"].api_versions == (5, 10)
    assert defs["legacy"].names == ("legacy",)


def test_empty_variants_list_at_api20_is_valid_under_bare_name(search: list[Path]) -> None:
    d = by_name(oslist.scan_search_path(search, API))["emptyvar"]
    assert (d.valid, d.variants, d.names) == (True, (), ("emptyvar",))


def test_variants_file_is_ignored_below_api15(search: list[Path]) -> None:
    d = by_name(oslist.scan_search_path(search, API))["oldvariants"]
    assert (d.valid, d.variants, d.names) == (True, (), ("oldvariants",))


def test_api15_needs_no_verify_and_ignores_parameters(search: list[Path]) -> None:
    d = by_name(oslist.scan_search_path(search, API))["v15"]
    assert (d.valid, d.variants, d.parameters) == (True, ("a", "b"), {})


def test_create_untrusted_alone_is_valid_and_untrusted(search: list[Path]) -> None:
    d = by_name(oslist.scan_search_path(search, API))["untrusted"]
    assert (d.valid, d.trusted) == (True, False)


def test_symlinked_os_directory_is_followed(search: list[Path]) -> None:
    d = by_name(oslist.scan_search_path(search, API))["linked"]
    assert (d.valid, d.path) == (True, f"{search[0]}/linked")


def test_first_directory_wins_even_when_invalid(search: list[Path]) -> None:
    defs = by_name(oslist.scan_search_path(search, API))
    first = str(search[0])
    assert defs["dup"].valid is False
    assert defs["dup"].path == f"{first}/dup"
    assert defs["dup2"].path == f"{first}/dup2"
    assert defs["dup2"].names == ("dup2",)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("noapi", "Required file 'ganeti_api_version' not found under path {d}: ENOENT"),
        ("api5", "API version mismatch for path '{d}': found [5], want " + API_REPR + "."),
        (
            "apiblank",
            "API version(s) can't be converted to integer:"
            " invalid literal for int() with base 10: ''",
        ),
        (
            "apitext",
            "API version(s) can't be converted to integer:"
            " invalid literal for int() with base 10: 'twenty'",
        ),
        ("apidir", "File 'ganeti_api_version' in {d} is not a regular file"),
        ("noexec", "File 'create' under path '{d}' is not executable"),
        ("noimport", "File 'import' under path '{d}' is missing (ENOENT)"),
        ("nocreate", "A create script (trusted or untrusted) under path '{d}' must exist"),
        ("noverify", "File 'verify' under path '{d}' is missing (ENOENT)"),
        ("noparams", "File 'parameters.list' under path '{d}' is missing (ENOENT)"),
        ("dirscript", "File 'rename' under path '{d}' is not a regular file"),
        ("stray-file", "Directory for OS stray-file not found in search path"),
        ("bad.name", "Directory for OS bad.name not found in search path"),
    ],
)
def test_invalid_definitions_and_reasons(search: list[Path], name: str, reason: str) -> None:
    d = by_name(oslist.scan_search_path(search, API))[name]
    path = f"{search[0]}/{name}"
    expected = reason.replace("{d}", path)
    assert (d.valid, d.reason, d.path, d.names) == (False, expected, path, ())


def test_undecodable_api_file_is_invalid(tmp_path: Path) -> None:
    # Ganeti's node daemon raises here; we call the OS invalid instead.
    d = make_os(tmp_path, "latin1", api=None)
    (d / "ganeti_api_version").write_bytes(b"\xff10\n")
    (got,) = oslist.scan_search_path([tmp_path], API)
    api_file = d / "ganeti_api_version"
    assert got.reason == f"Error while reading the API version file at {api_file}: EILSEQ"


def test_relative_search_directory(search: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(search[0].parent)
    assert "plain10" in oslist.list_os(search_path=["first"])


def test_string_search_path_is_refused(search: list[Path]) -> None:
    with pytest.raises(TypeError):
        oslist.scan_search_path(str(search[0]))


def test_api_versions_argument(search: list[Path]) -> None:
    defs = by_name(oslist.scan_search_path(search, [5]))
    assert defs["api5"].valid and defs["legacy"].valid


def test_default_search_path_comes_from_ganeti_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gdir = fake_ganeti(tmp_path, search_path=[tmp_path / "os"])
    make_os(tmp_path / "os", "mine")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    assert oslist.list_os() == ("mine",)


# -- validate_os messages --------------------------------------------------


@pytest.fixture
def installed(tmp_path: Path) -> list[Path]:
    d = tmp_path / "os"
    make_os(d, "noop", api="5\n10\n")
    make_os(
        d, "debootstrap", api="20\n15\n10\n5\n", scripts=V20,
        variants="default\nminimal\n", parameters="filesystem fs type\n",
    )
    make_os(d, "broken", mode=0o644)
    return [d]


VALID = ("debootstrap+default", "debootstrap+minimal", "noop")
LISTING = "valid OS names: debootstrap+default, debootstrap+minimal, noop"


@pytest.mark.parametrize("name", ["noop", "debootstrap+default", "debootstrap+minimal"])
def test_validate_accepts_listed_names(installed: list[Path], name: str) -> None:
    assert oslist.validate_os(name, search_path=installed) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (None, "no OS given (use -o/--os-type); " + LISTING),
        ("", "no OS given (use -o/--os-type); " + LISTING),
        ("foo", "unknown OS 'foo'; " + LISTING),
        ("Noop", "unknown OS 'Noop'; " + LISTING),
        (
            "debootstrap",
            "OS 'debootstrap' needs a variant;"
            " valid names: debootstrap+default, debootstrap+minimal",
        ),
        (
            "debootstrap+sid",
            "OS 'debootstrap' has no variant 'sid';"
            " valid names: debootstrap+default, debootstrap+minimal",
        ),
        ("noop+x", "OS 'noop' has no variants ('noop+x' given); valid names: noop"),
        (
            "broken",
            "OS 'broken' is not valid (File 'create' under path '{d}/broken'"
            " is not executable); " + LISTING,
        ),
        (
            "broken+v",
            "OS 'broken' is not valid (File 'create' under path '{d}/broken'"
            " is not executable); " + LISTING,
        ),
    ],
)
def test_validate_messages(installed: list[Path], name: str | None, message: str) -> None:
    with pytest.raises(OsNameError) as info:
        oslist.validate_os(name, search_path=installed)
    assert str(info.value) == message.replace("{d}", str(installed[0]))
    assert info.value.valid == VALID
    assert info.value.path is None


def test_validate_names_the_file(installed: list[Path]) -> None:
    with pytest.raises(OsNameError) as info:
        oslist.validate_os("foo", search_path=installed, path="vm.ovf")
    assert str(info.value) == "vm.ovf: unknown OS 'foo'; " + LISTING
    assert info.value.path == "vm.ovf"


def test_validate_without_any_valid_os(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_os(a, "broken", api=None)
    where = f"'{a}:{b}'"
    with pytest.raises(OsNameError) as info:
        oslist.validate_os(None, search_path=[a, b])
    assert str(info.value) == (
        f"no OS given (use -o/--os-type); no valid OS in the OS search path {where}"
    )
    assert info.value.valid == ()
    with pytest.raises(OsNameError) as info:
        oslist.validate_os("noop", search_path=[a, b])
    assert str(info.value) == f"unknown OS 'noop'; no valid OS in the OS search path {where}"


# -- the cluster path: a stand-in Ganeti installation ----------------------


def fake_ganeti(
    root: Path, search_path: list[Path] | None = None, gnt_os: str | None = None
) -> Path:
    """A Ganeti directory: generated constants, and optionally a gnt-os."""
    gdir = root / "share"
    (gdir / "ganeti").mkdir(parents=True)
    paths = [str(p) for p in (search_path or [root / "os"])]
    (gdir / "ganeti" / "_constants.py").write_text(
        f"EXPORT_DIR = {str(root / 'export')!r}\n"
        f"OS_SEARCH_PATH = {paths!r}\n"
        "OS_API_VERSIONS = frozenset([10,15,20])\n"
        f"LOCALSTATEDIR = {str(root / 'var')!r}\n"
    )
    (root / "var" / "lib" / "ganeti").mkdir(parents=True)
    if gnt_os is not None:
        script = gdir / "gnt-os"
        script.write_text("#!/bin/sh\n" + gnt_os)
        script.chmod(0o755)
    return gdir


def be_master(root: Path) -> None:
    (root / "var" / "lib" / "ganeti" / "ssconf_master_node").write_text(
        ganeti_env.my_hostname() + "\n"
    )


GNT_OS_OK = """\
echo "$*" > "$(dirname "$0")/args"
echo "${PYTHONPATH-unset}" >> "$(dirname "$0")/args"
echo 'debootstrap+default'
echo 'noop               '
"""


def test_master_asks_gnt_os_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(tmp_path, gnt_os=GNT_OS_OK)
    make_os(tmp_path / "os", "local-only")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    be_master(tmp_path)
    assert oslist.list_os() == ("debootstrap+default", "noop")
    assert (gdir / "args").read_text() == "list --no-headers\nunset\n"
    assert oslist.validate_os("noop") == "noop"
    with pytest.raises(OsNameError) as info:
        oslist.validate_os("debootstrap")
    assert str(info.value) == "OS 'debootstrap' needs a variant; valid names: debootstrap+default"
    with pytest.raises(OsNameError) as info:
        oslist.validate_os("local-only")
    assert str(info.value) == "unknown OS 'local-only'; valid OS names: debootstrap+default, noop"
    # Explicit choices scan instead.
    assert oslist.list_os(use_cluster=False) == ("local-only",)
    assert oslist.list_os(search_path=[tmp_path / "os"]) == ("local-only",)


def test_cluster_without_os(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(tmp_path, gnt_os="exit 0\n")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    be_master(tmp_path)
    assert oslist.list_os() == ()
    with pytest.raises(OsNameError) as info:
        oslist.validate_os(None)
    assert str(info.value) == "no OS given (use -o/--os-type); 'gnt-os list' shows no OS"


def test_not_master_scans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(tmp_path, gnt_os="exit 1\n")
    make_os(tmp_path / "os", "local-only")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    (tmp_path / "var/lib/ganeti/ssconf_master_node").write_text("other-node.example.com\n")
    assert oslist.list_os() == ("local-only",)


def test_gnt_os_failure_is_a_cluster_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(
        tmp_path,
        gnt_os="echo 'Failure: command execution error:' >&2\n"
        "echo 'Cannot communicate with the master daemon.' >&2\nexit 1\n",
    )
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    be_master(tmp_path)
    with pytest.raises(ClusterError) as info:
        oslist.list_os()
    assert str(info.value) == (
        f"{gdir}/gnt-os list --no-headers exited with exit code 1:"
        " Cannot communicate with the master daemon."
    )
    with pytest.raises(ClusterError):
        oslist.validate_os("noop")


def test_gnt_os_missing_is_a_cluster_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(tmp_path)
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    be_master(tmp_path)
    with pytest.raises(ClusterError) as info:
        oslist.list_os()
    assert str(info.value) == f"Ganeti command 'gnt-os' not found in {gdir}"


def test_gnt_os_killed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(tmp_path, gnt_os="kill -TERM $$\n")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    be_master(tmp_path)
    with pytest.raises(ClusterError) as info:
        oslist.list_os()
    assert str(info.value) == (
        f"{gdir}/gnt-os list --no-headers was terminated by signal 15: no output"
    )


# -- against the real Ganeti ------------------------------------------------


def real_ganeti_dir() -> str | None:
    saved = os.environ.pop(ganeti_env.ENV_GANETI_DIR, None)
    try:
        gdir = ganeti_env.ganeti_dir()
    finally:
        if saved is not None:
            os.environ[ganeti_env.ENV_GANETI_DIR] = saved
    if gdir is None or not os.path.isfile(os.path.join(gdir, "ganeti", "backend.py")):
        return None
    return gdir


needs_ganeti = pytest.mark.skipif(
    real_ganeti_dir() is None or not os.access(DEBIAN_PYTHON, os.X_OK),
    reason="Ganeti (and its /usr/bin/python3) not installed",
)

# Runs on Debian's interpreter: Ganeti's node-side diagnosis, then the
# master-side query gnt-os list submits (OsQuery behind LUOsDiagnose's
# filter), fed through a one-node stand-in for the cluster, then the
# client's CalculateOSNames.
GANETI_HARNESS = r"""
import json, sys
from ganeti import backend
from ganeti.cli import CalculateOSNames
from ganeti.cmdlib.operating_system import LUOsDiagnose, OsQuery

dirs = json.loads(sys.argv[1])
diag = backend.DiagnoseOS(dirs) if dirs is not None else backend.DiagnoseOS()

class Result:
    fail_msg = None
    def __init__(self, payload):
        self.payload = payload
class Node:
    uuid = "node-uuid"; offline = False; vm_capable = True
class Cluster:
    hidden_os = []; blacklisted_os = []; os_hvp = {}; osparams = {}
class Cfg:
    def GetAllNodesInfo(self): return {"node-uuid": Node()}
    def GetClusterInfo(self): return Cluster()
class Rpc:
    def call_os_diagnose(self, uuids): return {u: Result(diag) for u in uuids}
class Lu:
    cfg = Cfg(); rpc = Rpc()

fields = ["name", "variants"]
query = OsQuery(LUOsDiagnose._BuildFilter(fields, []), fields, False)
lu = Lu()
query.ExpandNames(lu)
rows = query.OldStyleQuery(lu)
names = [n for (name, variants) in rows for n in CalculateOSNames(name, variants)]
print(json.dumps({"diagnose": diag, "names": names}))
"""


def ganeti_says(dirs: list[str] | None) -> dict:
    proc = subprocess.run(
        [DEBIAN_PYTHON, "-c", GANETI_HARNESS, json.dumps(dirs)],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": real_ganeti_dir()},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(proc.stdout)


def assert_agree(dirs: list[str] | None, ours: tuple[OsDefinition, ...], names: tuple[str, ...]):
    theirs = ganeti_says(dirs)
    first: dict[str, list] = {}
    for entry in theirs["diagnose"]:
        first.setdefault(entry[0], entry)  # OsQuery looks at the first entry
    mine = by_name(ours)
    assert sorted(mine) == sorted(first)
    for name, (_, path, status, diagnose, variants, params, api, trusted) in first.items():
        d = mine[name]
        assert (d.path, d.valid, d.reason or "") == (path, status, diagnose), name
        assert d.api_versions == tuple(api), name
        assert d.variants == tuple(dict.fromkeys(variants)), name
        assert d.parameters == {p[0]: (p[1] if len(p) > 1 else "") for p in params if p}, name
        assert d.trusted == trusted, name
    # Ganeti's query keeps variants in a set: compare the names unordered.
    assert sorted(names) == sorted(theirs["names"])


@needs_ganeti
def test_agrees_with_ganeti_on_fixtures(search: list[Path]) -> None:
    dirs = [str(p) for p in search]
    assert_agree(dirs, oslist.scan_search_path(search), oslist.list_os(search_path=search))


@needs_ganeti
def test_agrees_with_ganeti_on_validate_fixtures(installed: list[Path]) -> None:
    dirs = [str(p) for p in installed]
    assert_agree(
        dirs, oslist.scan_search_path(installed), oslist.list_os(search_path=installed)
    )


@needs_ganeti
def test_agrees_with_ganeti_on_installed_search_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ganeti_env.ENV_GANETI_DIR, raising=False)
    assert_agree(None, oslist.scan_search_path(), oslist.list_os(use_cluster=False))


@pytest.mark.skipif(not os.path.isdir(NOOP), reason="ganeti-os-noop not installed")
def test_installed_noop_is_listed() -> None:
    parent = os.path.dirname(NOOP)
    d = by_name(oslist.scan_search_path([parent]))["noop"]
    assert (d.valid, d.path, d.api_versions, d.names) == (True, NOOP, (5, 10), ("noop",))
    assert "noop" in oslist.list_os(search_path=[parent])
    assert oslist.validate_os("noop", search_path=[parent]) == "noop"
