"""Export inputs (config.ini, dumps, an instance's disks) are opened by the
import side's rules: regular files only, no symbolic or hard links, a size
cap for config.ini.  Each hostile input must fail fast with one line naming
the file, so every case runs the real command in a subprocess with a hard
timeout: a regression hangs the child, not the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_export import SAMPLES, make_export

from ganeti_ovf.errors import ExportDirError
from ganeti_ovf.exportdir import read_config

ROOT = Path(__file__).resolve().parents[2]
BOUND = 20  # seconds: "fails fast", generous for a loaded machine
CONFIG_MAX = 1 << 20  # the documented cap of config.ini


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ovfconverter"), "export",
                           *args], capture_output=True, text=True, timeout=BOUND,
                          stdin=subprocess.DEVNULL, check=False)


def one_error(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1, p.stderr
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def dump_of(export: Path) -> Path:
    return export / read_config(str(export / "config.ini")).disks[0].dump


def test_fifo_as_dump_is_refused_without_hanging(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    dump = dump_of(export)
    dump.unlink()
    os.mkfifo(dump)
    line = one_error(export_cli(str(export), "--output-dir", str(tmp_path / "out")))
    assert line == (f"ovfconverter: error: {export}/config.ini: disk0_dump {dump.name!r} "
                    "is not a regular file")
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


def test_fifo_as_config_is_refused_without_hanging(tmp_path):
    export = tmp_path / "src"
    export.mkdir()
    os.mkfifo(export / "config.ini")
    line = one_error(export_cli(str(export), "--output-dir", str(tmp_path / "out")))
    assert line == f"ovfconverter: error: {export}/config.ini: config.ini is not a regular file"


def test_config_linked_to_dev_zero_is_refused_at_once(tmp_path):
    """A symbolic link (to /dev/zero: endless) is never followed."""
    export = tmp_path / "src"
    export.mkdir()
    (export / "config.ini").symlink_to("/dev/zero")
    p = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", sys.executable,
                        str(ROOT / "scripts" / "ovfconverter"), "export", str(export),
                        "--output-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=BOUND, check=False)
    *err, peak_kib = p.stderr.strip().splitlines()
    assert err == [f"ovfconverter: error: {export}/config.ini: config.ini is a symbolic "
                   "link; links are never followed"]
    assert int(peak_kib) < 200 * 1024  # no unbounded read


def test_oversized_config_is_refused_with_bounded_reading(tmp_path):
    export = tmp_path / "src"
    export.mkdir()
    cfg = export / "config.ini"
    with open(cfg, "w") as f:
        f.write("[export]\n")
        f.write(("; padding\n" * 1024) * (CONFIG_MAX // 10240 + 2))
    with pytest.raises(ExportDirError, match=f"is larger than {CONFIG_MAX} bytes"):
        read_config(str(cfg))


def test_dump_hard_linked_to_a_root_only_file_is_refused(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    dump = dump_of(export)
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xaa" * dump.stat().st_size)
    secret.chmod(0o600)
    dump.unlink()
    os.link(secret, dump)
    line = one_error(export_cli(str(export), "--output-dir", str(tmp_path / "out")))
    assert line == (f"ovfconverter: error: {export}/config.ini: disk0_dump {dump.name!r} "
                    "has 2 hard links; an input must have one name only (copy it)")


def test_hard_linked_config_is_refused(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    os.link(export / "config.ini", tmp_path / "other-name")
    line = one_error(export_cli(str(export), "--output-dir", str(tmp_path / "out")))
    assert line.endswith("config.ini: config.ini has 2 hard links; an input must have one "
                         "name only (copy it)")


def test_fifo_as_instance_disk_fails_fast(tmp_path):
    """An instance's disk (gnt-backup export --ovf) may be a link to a block
    device, but a FIFO there must not hang the export."""
    code = ("import sys\n"
            "from ganeti_ovf.exportdir import read_config\n"
            "from ganeti_ovf.exporter import export_config\n"
            "from ganeti_ovf.errors import OvfError\n"
            "cfg = read_config(sys.argv[1])\n"
            "try:\n"
            "    export_config(cfg, [sys.argv[2]], sys.argv[3])\n"
            "except OvfError as e:\n"
            "    print(e)\n")
    fifo = tmp_path / "disk"
    os.mkfifo(fifo)
    p = subprocess.run([sys.executable, "-c", code, str(SAMPLES / "plain" / "config.ini"),
                        str(fifo), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=BOUND, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{fifo}: cannot read: Illegal seek"


def test_fifo_as_signing_key_is_refused_without_hanging(tmp_path):
    export = make_export(tmp_path, SAMPLES / "plain" / "config.ini")
    key = tmp_path / "key.pem"
    os.mkfifo(key)
    cert = tmp_path / "cert.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    p = export_cli(str(export), "--sign", str(key), "--cert", str(cert), "--output-dir",
                   str(tmp_path / "out"))
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"ovfconverter: error: {key}: the signing key is not a "
                               "regular file")
