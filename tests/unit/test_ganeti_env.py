"""ganeti_env: the installed Ganeti's facts, and the fallbacks without it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ganeti_ovf import ganeti_env
from ganeti_ovf.errors import ClusterError

DEBIAN_PYTHON = "/usr/bin/python3"
REPO_LIB = Path(__file__).resolve().parents[2] / "lib"


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ganeti_env.ENV_GANETI_DIR, raising=False)


def installed_dir() -> str | None:
    saved = os.environ.pop(ganeti_env.ENV_GANETI_DIR, None)
    try:
        return ganeti_env.ganeti_dir()
    finally:
        if saved is not None:
            os.environ[ganeti_env.ENV_GANETI_DIR] = saved


needs_ganeti = pytest.mark.skipif(installed_dir() is None, reason="Ganeti not installed")
needs_debian_ganeti = pytest.mark.skipif(
    installed_dir() is None or not os.access(DEBIAN_PYTHON, os.X_OK),
    reason="Ganeti (and its /usr/bin/python3) not installed",
)


def ganeti_python(code: str) -> object:
    """Run ``code`` with Ganeti on Debian's interpreter; its printed JSON."""
    proc = subprocess.run(
        [DEBIAN_PYTHON, "-c", code],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": installed_dir()},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(proc.stdout)


def fake_ganeti(root: Path, constants: str) -> Path:
    gdir = root / "share"
    (gdir / "ganeti").mkdir(parents=True)
    (gdir / "ganeti" / "_constants.py").write_text(constants)
    return gdir


# -- the installed Ganeti ---------------------------------------------------


@needs_debian_ganeti
def test_facts_match_ganeti_own_values(no_override: None) -> None:
    theirs = ganeti_python(
        "import json\n"
        "from ganeti import constants, pathutils\n"
        "print(json.dumps([constants.RELEASE_VERSION, pathutils.EXPORT_DIR,"
        " list(pathutils.OS_SEARCH_PATH), sorted(constants.OS_API_VERSIONS),"
        " constants.QEMUIMG_PATH, pathutils.DATA_DIR]))"
    )
    f = ganeti_env.facts()
    assert f.source == "import"
    assert [
        f.release_version,
        ganeti_env.export_dir(),
        list(ganeti_env.os_search_path()),
        sorted(ganeti_env.os_api_versions()),
        f.qemu_img,
        ganeti_env.ssconf_dir(),
    ] == theirs


@needs_ganeti
def test_debian_ganeti_30_values(no_override: None) -> None:
    f = ganeti_env.facts()
    if not (f.release_version or "").startswith("3.0."):
        pytest.skip(f"Ganeti {f.release_version}, not 3.0")
    assert ganeti_env.ganeti_dir() == "/usr/share/ganeti/default"
    assert ganeti_env.export_dir() == "/var/lib/ganeti/export"
    assert ganeti_env.os_search_path() == (
        "/srv/ganeti/os",
        "/usr/local/lib/ganeti/os",
        "/usr/lib/ganeti/os",
        "/usr/share/ganeti/os",
    )
    assert ganeti_env.os_api_versions() == frozenset([10, 15, 20])
    assert ganeti_env.ssconf_dir() == "/var/lib/ganeti"
    # The fallbacks are Ganeti 3.0's values (bar the export dir, by design).
    assert ganeti_env.FALLBACK_OS_SEARCH_PATH == ganeti_env.os_search_path()
    assert ganeti_env.FALLBACK_OS_API_VERSIONS == ganeti_env.os_api_versions()
    assert ganeti_env.FALLBACK_DATA_DIR == ganeti_env.ssconf_dir()


@needs_ganeti
def test_parse_path_agrees_with_import(no_override: None) -> None:
    imported = ganeti_env.facts()
    parsed = ganeti_env._from_parse(ganeti_env.ganeti_dir(), "test")
    assert parsed.source == "parse"
    for name in ("release_version", "export_dir", "os_search_path", "os_api_versions",
                 "data_dir", "qemu_img"):
        assert getattr(parsed, name) == getattr(imported, name), name


@needs_ganeti
def test_import_leaves_sys_path_alone(no_override: None) -> None:
    before = list(sys.path)
    ganeti_env._load.cache_clear()
    ganeti_env.facts()
    assert sys.path == before


@needs_ganeti
def test_gnt_command_prefers_sbin(no_override: None) -> None:
    if not os.access("/usr/sbin/gnt-os", os.X_OK):
        pytest.skip("no /usr/sbin/gnt-os")
    assert ganeti_env.gnt_command("gnt-os") == "/usr/sbin/gnt-os"


@needs_ganeti
def test_gnt_command_missing(no_override: None) -> None:
    with pytest.raises(ClusterError) as info:
        ganeti_env.gnt_command("gnt-nosuch")
    assert str(info.value) == (
        f"Ganeti command 'gnt-nosuch' not found in /usr/sbin or {ganeti_env.ganeti_dir()}"
    )


@needs_ganeti
def test_override_uses_only_that_installation(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.path.realpath(installed_dir())
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, real)
    assert ganeti_env.ganeti_dir() == real
    assert ganeti_env.gnt_command("gnt-os") == os.path.join(real, "gnt-os")


@needs_debian_ganeti
def test_my_hostname_is_ganeti_sysname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANETI_ROOTDIR", raising=False)
    monkeypatch.delenv("GANETI_HOSTNAME", raising=False)
    theirs = ganeti_python(
        "import json\nfrom ganeti import netutils\n"
        "print(json.dumps(netutils.Hostname.GetSysName()))"
    )
    assert ganeti_env.my_hostname() == theirs


# -- without Ganeti -----------------------------------------------------------


def test_fallbacks_with_empty_ganeti_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(tmp_path))
    f = ganeti_env.facts()
    assert (f.ganeti_dir, f.source, f.release_version, f.qemu_img) == (
        str(tmp_path), "defaults", None, None,
    )
    assert ganeti_env.export_dir() == "/srv/ganeti/export"
    assert ganeti_env.os_search_path() == (
        "/srv/ganeti/os",
        "/usr/local/lib/ganeti/os",
        "/usr/lib/ganeti/os",
        "/usr/share/ganeti/os",
    )
    assert ganeti_env.os_api_versions() == frozenset([10, 15, 20])
    assert ganeti_env.ssconf_dir() == "/var/lib/ganeti"
    with pytest.raises(ClusterError) as info:
        ganeti_env.gnt_command("gnt-os")
    assert str(info.value) == f"Ganeti command 'gnt-os' not found in {tmp_path}"


def test_qemu_img_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(tmp_path))
    if os.access("/usr/bin/qemu-img", os.X_OK):
        assert ganeti_env.qemu_img_path() == "/usr/bin/qemu-img"
    else:
        import shutil

        assert ganeti_env.qemu_img_path() == shutil.which("qemu-img")


def test_qemu_img_from_constants_when_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = tmp_path / "bin" / "qemu-img"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    gdir = fake_ganeti(tmp_path, f"QEMUIMG_PATH = {str(tool)!r}\n")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    assert ganeti_env.qemu_img_path() == str(tool)
    tool.unlink()  # named but missing: fall back
    assert ganeti_env.qemu_img_path() != str(tool)


def test_parsed_constants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(
        tmp_path,
        "# generated\n"
        'EXPORT_DIR = "/x/export"\n'
        'OS_SEARCH_PATH = ["/x/os","/y/os"]\n'
        "OS_API_VERSIONS = frozenset([10,15,20,25])\n"
        'QEMUIMG_PATH = "/x/qemu-img"\n'
        'LOCALSTATEDIR = "/x/var"\n'
        'RELEASE_VERSION = "9.1.0"\n'
        "UNRELATED = some_call()\n",
    )
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    f = ganeti_env.facts()
    assert f.source == "parse"
    assert f.release_version == "9.1.0"
    assert f.qemu_img == "/x/qemu-img"
    assert ganeti_env.export_dir() == "/x/export"
    assert ganeti_env.os_search_path() == ("/x/os", "/y/os")
    assert ganeti_env.os_api_versions() == frozenset([10, 15, 20, 25])
    assert ganeti_env.ssconf_dir() == "/x/var/lib/ganeti"
    # The stand-in was parsed, never imported.
    loaded = [m for m in list(sys.modules.values()) if str(gdir) in str(getattr(m, "__path__", ""))]
    assert loaded == []


def test_parsed_constants_partly_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(tmp_path, 'EXPORT_DIR = "/x/export"\nOS_SEARCH_PATH = "oops"\n')
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    assert ganeti_env.export_dir() == "/x/export"
    assert ganeti_env.os_search_path() == ganeti_env.FALLBACK_OS_SEARCH_PATH
    assert ganeti_env.os_api_versions() == ganeti_env.FALLBACK_OS_API_VERSIONS


def test_unparsable_constants_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gdir = fake_ganeti(tmp_path, "EXPORT_DIR = (\n")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    f = ganeti_env.facts()
    assert (f.source, f.export_dir) == ("defaults", "/srv/ganeti/export")
    assert "parse failed" in (f.note or "")


def test_highest_version_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ganeti_env.ENV_GANETI_DIR, raising=False)
    monkeypatch.setattr(ganeti_env, "SHARE_ROOT", str(tmp_path))
    for version in ("2.9", "2.16", "3.0"):
        (tmp_path / version / "ganeti").mkdir(parents=True)
        (tmp_path / version / "ganeti" / "_constants.py").write_text("")
    # A leftover without constants, and non-version names, do not count.
    (tmp_path / "3.1" / "ganeti" / "utils").mkdir(parents=True)
    (tmp_path / "os").mkdir()
    (tmp_path / "extstorage").mkdir()
    assert ganeti_env.ganeti_dir() == str(tmp_path / "3.0")
    (tmp_path / "default").symlink_to(tmp_path / "2.16")
    assert ganeti_env.ganeti_dir() == str(tmp_path / "default")


def test_no_installation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ganeti_env.ENV_GANETI_DIR, raising=False)
    monkeypatch.setattr(ganeti_env, "SHARE_ROOT", str(tmp_path / "absent"))
    assert ganeti_env.ganeti_dir() is None
    f = ganeti_env.facts()
    assert (f.ganeti_dir, f.source, f.note) == (None, "defaults", "no Ganeti installation found")


def test_gnt_command_name_is_checked() -> None:
    for bad in ("gnt-os/../x", "ls", "/usr/sbin/gnt-os", "gnt-"):
        with pytest.raises(ValueError):
            ganeti_env.gnt_command(bad)


def test_package_works_without_ganeti(tmp_path: Path) -> None:
    os_dir = tmp_path / "os" / "noop"
    os_dir.mkdir(parents=True)
    (os_dir / "ganeti_api_version").write_text("10\n")
    for script in ("create", "export", "import", "rename"):
        (os_dir / script).write_text("#!/bin/sh\n")
        (os_dir / script).chmod(0o755)
    code = (
        "import sys\n"
        "from ganeti_ovf import ganeti_env, oslist\n"
        f"print(oslist.list_os(search_path=[{str(tmp_path / 'os')!r}]),"
        " ganeti_env.export_dir(), ganeti_env.facts().source,"
        " 'ganeti' in sys.modules)\n"
    )
    env = dict(os.environ, **{ganeti_env.ENV_GANETI_DIR: str(tmp_path / "nothing")})
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout == "('noop',) /srv/ganeti/export defaults False\n"


# -- ssconf and the master ----------------------------------------------------


@pytest.fixture
def ssconf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    gdir = fake_ganeti(tmp_path, f"LOCALSTATEDIR = {str(tmp_path / 'var')!r}\n")
    monkeypatch.setenv(ganeti_env.ENV_GANETI_DIR, str(gdir))
    d = tmp_path / "var" / "lib" / "ganeti"
    d.mkdir(parents=True)
    assert ganeti_env.ssconf_dir() == str(d)
    return d


def test_no_cluster(ssconf: Path) -> None:
    assert ganeti_env.master_node() is None
    assert ganeti_env.is_master() is False


def test_other_master(ssconf: Path) -> None:
    (ssconf / "ssconf_master_node").write_text("node1.example.com\n")
    assert ganeti_env.master_node() == "node1.example.com"
    assert ganeti_env.is_master() is False


def test_this_node_is_master(ssconf: Path) -> None:
    (ssconf / "ssconf_master_node").write_text(ganeti_env.my_hostname() + "\n")
    assert ganeti_env.is_master() is True


def test_empty_master_file(ssconf: Path) -> None:
    (ssconf / "ssconf_master_node").write_text("\n")
    assert ganeti_env.master_node() is None
    assert ganeti_env.is_master() is False


def test_unreadable_master_file(ssconf: Path) -> None:
    (ssconf / "ssconf_master_node").mkdir()
    with pytest.raises(ClusterError) as info:
        ganeti_env.master_node()
    assert str(info.value) == (
        f"{ssconf}/ssconf_master_node: cannot read ssconf file: Is a directory"
    )


def test_my_hostname_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANETI_ROOTDIR", raising=False)
    monkeypatch.setenv("GANETI_HOSTNAME", "ignored.example")
    assert ganeti_env.my_hostname() == socket.getfqdn().lower().rstrip(".")


def test_my_hostname_virtual_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANETI_ROOTDIR", "/srv/vcluster/node1.example.")
    monkeypatch.setenv("GANETI_HOSTNAME", "Node1.Example.")
    assert ganeti_env.my_hostname() == "node1.example"
