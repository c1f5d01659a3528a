"""bash completion, run for real: bash sources the completion file, gets
COMP_WORDS/COMP_CWORD as readline would set them, calls the function, and
prints COMPREPLY.  The option lists are held equal to the real parsers."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ganeti_ovf import cli, gnt_backup, options
from ganeti_ovf.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
OVFCONVERTER = ROOT / "completion" / "ovfconverter"
GNT_BACKUP = ROOT / "completion" / "gnt-backup-ovf"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

_RUN = r'''
source "$1"; shift; fn=$1; shift
COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMPREPLY=()
"$fn"
printf '%s\n' "${COMPREPLY[@]}"
'''


def complete(script: Path, func: str, *words: str, cwd: Path | None = None,
             path: str | None = None) -> list[str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", _RUN, "complete", str(script),
                        func, *words], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return [w for w in r.stdout.split("\n") if w]


def ovfc(*words: str, **kw) -> list[str]:
    return complete(OVFCONVERTER, "_ovfconverter", "ovfconverter", *words, **kw)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = cli.build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_subcommands():
    assert ovfc("") == list(_subparsers())
    assert ovfc("i") == ["import", "info"]
    assert ovfc("-") == ["-d", "--debug", "-v", "--verbose", "-q", "--quiet", "-h", "--help",
                         "--version"]


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_options_are_the_parsers(command):
    want = {s for a in _subparsers()[command]._actions for s in a.option_strings}
    assert set(ovfc(command, "-")) == want


def test_option_values():
    assert ovfc("export", "-f", "") == ["vmdk", "qcow2", "raw", "cow"]
    assert ovfc("export", "--format", "=", "q") == ["qcow2"]  # '=' breaks words
    assert ovfc("export", "--format=q") == ["qcow2"]
    assert ovfc("export", "--manifest", "sha5") == ["sha512"]
    assert ovfc("export", "--ovf-version", "") == ["1.0", "2.0"]
    assert sorted(ovfc("import", "-t", "")) == sorted(options.DISK_TEMPLATES)
    assert ovfc("import", "--disk", "") == []  # free text: nothing offered


def test_package_files_and_dirs(tmp_path):
    for name in ("a.ova", "b.OVF", "notes.txt", "c.ovf.bak"):
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "config.ini").write_text("[export]\n")
    assert sorted(ovfc("import", "", cwd=tmp_path)) == ["a.ova", "b.OVF", "exp", "sub"]
    assert sorted(ovfc("verify", "a", cwd=tmp_path)) == ["a.ova"]
    assert sorted(ovfc("export", "exp/", cwd=tmp_path)) == ["exp/config.ini"]
    assert ovfc("import", "a.ova", "--output-dir", "s", cwd=tmp_path) == ["sub"]


def test_os_names_come_from_os_list(tmp_path):
    """-o offers what 'ovfconverter os-list' prints (here a stand-in
    ovfconverter first on PATH, the command completion runs)."""
    fake = tmp_path / "bin" / "ovfconverter"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n[ \"$1\" = os-list ] && printf 'debootstrap+default\\n"
                    "noop\\nimage+minimal\\n'\n")
    fake.chmod(0o755)
    path = f"{fake.parent}:{os.environ['PATH']}"
    assert ovfc("import", "x.ova", "-o", "", path=path) == [
        "debootstrap+default", "noop", "image+minimal"]
    assert ovfc("import", "x.ova", "--os-type", "=", "im", path=path) == ["image+minimal"]


def test_os_names_from_the_real_os_list():
    real = subprocess.run([str(ROOT / ".venv" / "bin" / "ovfconverter"), "os-list"],
                          capture_output=True, text=True)
    if real.returncode != 0 or not real.stdout.strip():
        pytest.skip("no OS definitions installed here")
    path = f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
    assert ovfc("import", "-o", "", path=path) == real.stdout.split()


# -- gnt-backup ---------------------------------------------------------------

def _ovf_flags() -> tuple[set[str], set[str]]:
    """The flags the extension really adds (over Ganeti's option objects)."""
    from ganeti_ovf import ganeti_env
    try:
        cli_opts = ganeti_env.import_ganeti("ganeti.cli_opts")
    except ClusterError as e:
        pytest.skip(f"Ganeti's CLI not importable here: {e}")
    imp, exp = gnt_backup._ovf_options(cli_opts)

    def flags(opts):
        return {f for o in opts for f in o._short_opts + o._long_opts}
    return flags(imp), flags(exp)


def gnt(*words: str, **kw) -> list[str]:
    return complete(GNT_BACKUP, "_gnt_backup_ovf", "gnt-backup", *words, **kw)


def test_gnt_backup_ovf_options_are_the_extensions():
    imp, exp = _ovf_flags()
    offered_imp = {w for w in gnt("import", "-") if w in imp | {"--ovf"}}
    assert offered_imp == imp
    offered_exp = {w for w in gnt("export", "-") if w in exp}
    assert offered_exp == exp
    listed = GNT_BACKUP.read_text()
    m_imp = re.search(r'import\) ours="([^"]*)"', listed)
    m_exp = re.search(r'export\) ours="([^"]*)"', listed)
    assert m_imp and set(m_imp.group(1).split()) == imp
    assert m_exp and set(m_exp.group(1).split()) == exp


def test_gnt_backup_values_and_files(tmp_path):
    (tmp_path / "app.ova").write_text("x")
    (tmp_path / "readme").write_text("x")
    assert gnt("import", "--ovf", "", cwd=tmp_path) == ["app.ova"]
    assert gnt("export", "--ovf", "--format", "q") == ["qcow2"]
    assert gnt("export", "--ovf", "--manifest", "=", "sha2") == ["sha256"]
    assert "--ovf" in gnt("import", "--o")
    assert "--ova" in gnt("export", "--ov")


def test_gnt_backup_keeps_ganetis_completion():
    if not Path("/usr/share/bash-completion/completions/ganeti").exists():
        pytest.skip("Ganeti's bash completion is not installed")
    assert gnt("im") == ["import"]  # Ganeti's own subcommand list
    got = gnt("import", "--src-d")
    assert got == ["--src-dir"]  # Ganeti's own options, still offered
