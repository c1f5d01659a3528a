"""The gnt-backup extension: dispatch, Ganeti's table extended, installer."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from ganeti_ovf import gnt_backup
from ganeti_ovf.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
REAL = "/usr/share/ganeti/default/gnt-backup"


def _ganeti_cli():
    try:
        from ganeti_ovf import ganeti_env
        return (ganeti_env.import_ganeti("ganeti.client.gnt_backup"),
                ganeti_env.import_ganeti("ganeti.cli_opts"),
                ganeti_env.import_ganeti("ganeti.cli"))
    except ClusterError as e:
        pytest.skip(f"Ganeti's CLI not importable here: {e}")


@pytest.mark.parametrize("argv,extended", [
    (["gnt-backup"], True),
    (["gnt-backup", "list"], False),
    (["gnt-backup", "import", "-n", "n1", "--src-dir", "x", "i1"], False),
    (["gnt-backup", "import", "--ovf", "a.ova", "i1"], True),
    (["gnt-backup", "import", "--ovf=a.ova", "i1"], True),
    (["gnt-backup", "export", "--ovf", "-n", "n", "i1"], True),
    (["gnt-backup", "import", "--help"], True),
    (["gnt-backup", "--ovfx"], False),
])
def test_only_ovf_and_help_are_extended(argv, extended):
    assert gnt_backup.wants_extension(argv) is extended


def test_real_command_is_ganetis_not_ours():
    if not os.path.exists(REAL):
        pytest.skip("Ganeti not installed")
    real = gnt_backup.real_gnt_backup()
    assert os.path.realpath(real) == os.path.realpath(REAL)
    assert "ganeti.client.gnt_backup" in Path(real).read_text()


def test_extended_table_keeps_ganetis_and_adds_ovf():
    gb, cli_opts, cli = _ganeti_cli()
    ext = gnt_backup._extended_commands(gb, cli_opts, cli)
    assert set(ext) == set(gb.commands)
    for cmd in ("list", "list-fields", "remove"):
        assert ext[cmd] is gb.commands[cmd]

    def longs(c):
        return {s for o in ext[c][2] for s in o._long_opts}

    def orig(c):
        return {s for o in gb.commands[c][2] for s in o._long_opts}

    assert longs("import") - orig("import") == {"--ovf", "--os-type", "--no-verify",
                                                "--trust-ganeti-section", "--trusted-cert",
                                                "--ca-bundle", "--require-signature"}
    assert longs("export") - orig("export") == {
        "--ovf", "--ova", "--format", "--output-dir", "--manifest", "--name", "--compress",
        "--external", "--ovf-version", "--sign", "--cert", "--chunk-size"}


def test_every_ovfconverter_export_option_reaches_the_request():
    """The full command line, parsed by Ganeti's own parser and option types."""
    from ganeti_ovf import options
    from ganeti_ovf.exporter import ExportRequest
    from ganeti_ovf.gnt_export import export_request

    gb, cli_opts, cli = _ganeti_cli()
    ext = gnt_backup._extended_commands(gb, cli_opts, cli)
    argv = ["gnt-backup", "export", "--ovf", "--ova", "--format", "qcow2", "--compress",
            "--external", "--ovf-version", "2.0", "--manifest", "sha512", "--sign", "k.pem",
            "--cert", "c.pem", "--chunk-size", "2G", "--name", "pkg", "--output-dir", "/o",
            "-n", "node2", "inst1"]
    _func, opts, args = cli._ParseArgs("gnt-backup", argv, ext, {}, set())
    req, out, warnings = export_request(opts)
    assert (out, warnings, args, opts.node) == ("/o", [], ["inst1"], "node2")
    assert req == ExportRequest(name="pkg", disk_format="qcow2", compress=True, external=True,
                                ova=True, ovf_version="2.0", manifest="sha512",
                                sign_key="k.pem", sign_cert="c.pem", chunk_size=2 << 30)
    # every export option of ovfconverter is there, and nothing else was needed
    ovfconverter_dests = {o.dest for o in options.EXPORT_OPTS} - {"output_dir"}
    assert ovfconverter_dests == set(ExportRequest.__dataclass_fields__)
    # defaults are ovfconverter's
    argv = ["gnt-backup", "export", "--ovf", "--format", "cow", "-n", "n", "i"]
    req, out, warnings = export_request(cli._ParseArgs("gnt-backup", argv, ext, {}, set())[1])
    assert req == ExportRequest(disk_format="qcow2", manifest="sha256") and out is None
    assert warnings and "qcow2" in warnings[0]


def test_signature_options_reach_the_import_request():
    """--trusted-cert (repeatable), --ca-bundle and --require-signature on
    gnt-backup import --ovf, parsed by Ganeti's own parser."""
    from ganeti_ovf.importer import ImportRequest

    gb, cli_opts, cli = _ganeti_cli()
    ext = gnt_backup._extended_commands(gb, cli_opts, cli)
    argv = ["gnt-backup", "import", "--ovf", "a.ova", "--trusted-cert", "pub.pem",
            "--trusted-cert", "ca.pem", "--ca-bundle", "b.pem", "--require-signature",
            "-n", "node1", "inst1"]
    _func, opts, args = cli._ParseArgs("gnt-backup", argv, ext, {}, set())
    req = gnt_backup.import_request(opts, args[0])
    assert (req.trusted_certs, req.ca_bundle, req.require_signature) == (
        ("pub.pem", "ca.pem"), "b.pem", True)
    argv = ["gnt-backup", "import", "--ovf", "a.ova", "-n", "node1", "inst1"]
    _func, opts, args = cli._ParseArgs("gnt-backup", argv, ext, {}, set())
    req = gnt_backup.import_request(opts, args[0])
    default = ImportRequest()
    assert (req.trusted_certs, req.ca_bundle, req.require_signature) == (
        default.trusted_certs, default.ca_bundle, default.require_signature)
    # Ganeti's parser builds a fresh list per run: nothing leaks between parses
    assert opts.ovf_trusted_certs in (None, [])


def test_man_page_documents_the_added_options():
    gb, cli_opts, cli = _ganeti_cli()
    imp, exp = gnt_backup._ovf_options(cli_opts)
    page = (ROOT / "man" / "gnt-backup-ovf.rst").read_text()
    for o in imp + exp:
        for s in o._long_opts:
            assert re.search(rf"``{re.escape(s)}``", page), s


def test_install_and_uninstall_leave_nothing(tmp_path):
    if not os.path.exists("/usr/bin/python3"):
        pytest.skip("no /usr/bin/python3")
    prefix = tmp_path / "prefix"
    r = subprocess.run([str(ROOT / "tools" / "install.sh"), "--prefix", str(prefix)],
                       capture_output=True, text=True)
    if r.returncode != 0 and "missing packages" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr
    gb = prefix / "sbin" / "gnt-backup"
    assert gb.read_text().startswith("#!/usr/bin/python3\n")
    assert (prefix / "share" / "man" / "man8" / "gnt-backup-ovf.8").is_file()
    assert (prefix / "share" / "man" / "man1" / "ovfconverter.1").is_file()
    v = subprocess.run([str(prefix / "sbin" / "ovfconverter"), "--version"],
                       capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("ovfconverter ")
    if os.path.exists(REAL):
        h = subprocess.run([str(gb), "import", "--help"], capture_output=True, text=True)
        assert h.returncode == 0 and "--ovf=<package>" in h.stdout
    r = subprocess.run([str(ROOT / "tools" / "install.sh"), "--prefix", str(prefix),
                        "--uninstall"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    left = [p for p in prefix.rglob("*") if p.is_file()]
    assert left == []
