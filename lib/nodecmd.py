"""Node-side work of ``gnt-backup export --ovf``, and how the master runs it.

An instance's disks can be read only on its primary node, and the package
must land on the ``-n`` node; the command runs on the master.  Like
Ganeti's own ``prepare-node-join`` and ``ssh-update`` tools, the work on
another node runs over the cluster's SSH: ``ganeti.ssh.SshRunner`` with
root's cluster keys, the cluster's ``known_hosts`` (host key alias = the
cluster name, strict checking, batch mode) and the node's ``ssh_port``
ndparam; its input is JSON on stdin.  On this node the same command runs
without SSH.  Why not Ganeti's import/export daemons: they move only what
an OS definition's ``export`` script writes (a ``dump(8)`` stream for
debootstrap, not a disk image), and Ganeti offers no RPC that runs a
plugin's code on a node.

Node-side actions (``main``; the code is this package, loaded from the
same directory as on the master: nodes run identical installations):

``export``
    JSON ``{"row", "paths", "request", "output_dir"}`` on stdin: the
    instance's query row, its disk device paths (as Ganeti activated them),
    the ``ExportRequest`` fields.  With an ``output_dir`` the package is
    written there and its path is the last line of stdout; without one it
    is written into a staging directory in Ganeti's export dir and sent to
    stdout as a tar stream (regular files only, no directories), and the
    staging directory is removed whatever happens.
``receive DEST``
    reads such a stream from stdin into ``DEST`` (a package directory) or,
    with ``--ova``, the raw ``.ova`` bytes into the file ``DEST``; written
    to a temporary sibling and renamed, so DEST appears whole or not at all.

Progress goes to stderr; a failure is one line on stderr and exit 1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import asdict

from . import ganeti_env
from .errors import ClusterError, OvfError
from .staging import work_dir

__all__ = ["helper_argv", "main", "node_argv"]

END_MEMBER = ".end-of-package"
#: Exit status of a step whose output pipe broke: the next step's error is the one to show.
DOWNSTREAM_GONE = 3
_BUF = 1 << 20

# Loads this package from its directory on the node, whatever the layout
# (an installed ganeti_ovf/ or an editable checkout's lib/).
_BOOT = ("import importlib.util as u, os, sys; d = sys.argv[1]; "
         "os.path.isdir(d) or sys.exit(os.uname().nodename + ': ganeti-ovf is not installed"
         " in ' + d + ' (it must be at the same path on every node)'); "
         "s = u.spec_from_file_location('ganeti_ovf', d + '/__init__.py', "
         "submodule_search_locations=[d]); m = u.module_from_spec(s); "
         "sys.modules['ganeti_ovf'] = m; s.loader.exec_module(m); "
         "from ganeti_ovf.nodecmd import main; sys.exit(main(sys.argv[2:]))")


def helper_argv(*action: str) -> list[str]:
    """The node-side command line for ``action`` (same paths as here)."""
    pkg = os.path.dirname(os.path.abspath(__file__))
    return ["/usr/bin/python3", "-c", _BOOT, pkg, *action]


def node_argv(node: str, argv: Sequence[str], *, cluster_name: str, port: int | None) -> list[str]:
    """``argv`` to run on ``node``: as is on this node, else over Ganeti's SSH."""
    if node == ganeti_env.my_hostname():
        return list(argv)
    ssh = ganeti_env.import_ganeti("ganeti.ssh")
    utils = ganeti_env.import_ganeti("ganeti.utils")
    constants = ganeti_env.import_ganeti("ganeti.constants")
    return ssh.SshRunner(cluster_name).BuildCmd(
        node, constants.SSH_LOGIN_USER, utils.ShellQuoteArgs(list(argv)),
        batch=True, use_cluster_key=True, strict_host_check=True, port=port)


def request_json(row: dict, paths: Sequence[str], req, output_dir: str | None,
                 signing: dict | None = None) -> bytes:
    """The ``export`` action's input; ``signing`` holds the PEM texts of
    ``--sign``/``--cert`` (read where the operator named them)."""
    return json.dumps({"row": row, "paths": list(paths), "request": asdict(req),
                       "output_dir": output_dir, "signing": signing}).encode()


# ------------------------------------------------------------ node side

def _interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def _device(path: str) -> str:
    """The disk as Ganeti activated it (a blockdev path is a link under
    /dev/disk): resolved, and only a regular file or a block device."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise ClusterError(f"cannot read instance disk: {e.strerror}", path) from e
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise ClusterError("instance disk is neither a file nor a block device", path)
    return real


def _export(data: dict) -> int:
    """Run the node's export; the signing key, if any, is written into a
    locked 0700 working directory of the export directory, so that one a
    SIGKILL left is removed by the next run like any stale staging."""
    signing = data.get("signing")
    if not signing:
        return _export_with(data)
    keys, lock = work_dir(_staging_root(data), "sign")
    try:
        for what in ("key", "cert"):
            fd = os.open(os.path.join(keys, what), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                         0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(signing[what])
        data["request"].update(sign_key=os.path.join(keys, "key"),
                               sign_cert=os.path.join(keys, "cert"))
        return _export_with(data)
    finally:
        shutil.rmtree(keys, ignore_errors=True)
        os.close(lock)


def _staging_root(data: dict) -> str:
    root = data.get("staging_root") or ganeti_env.export_dir()
    os.makedirs(root, mode=0o755, exist_ok=True)
    return root


def _export_with(data: dict) -> int:
    from .exporter import ExportRequest, export_config
    from .gnt_export import instance_config

    req = ExportRequest(**data["request"])
    cfg = instance_config(data["row"])
    paths = [_device(p) for p in data["paths"]]
    label = f"instance {cfg.name}"

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    out = data.get("output_dir")
    if out:
        result = export_config(cfg, paths, out, req, progress=progress, label=label)
        _warn(result.warnings)
        print(result.path, flush=True)
        return 0
    staging, lock = work_dir(_staging_root(data), "export")
    try:
        result = export_config(cfg, paths, staging, req, progress=progress, label=label)
        _warn(result.warnings)
        _send(result.path, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        os.close(lock)
    return 0


def _warn(warnings: Sequence[str]) -> None:
    for w in warnings:
        print(f"Warning: {w}", file=sys.stderr, flush=True)


def _send(path: str, out) -> None:
    """The package as a tar stream: its files (an .ova is one), then
    ``END_MEMBER``, so a stream cut short at a member boundary is refused."""
    names = [os.path.basename(path)] if os.path.isfile(path) else sorted(os.listdir(path))
    top = os.path.dirname(path) if os.path.isfile(path) else path
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            tar.add(os.path.join(top, name), arcname=name, recursive=False)
        tar.addfile(tarfile.TarInfo(END_MEMBER))


def _receive(dest: str, ova: bool, src) -> int:
    from .exportdir import staging, staging_file

    with (staging_file(dest) if ova else staging(dest)) as tmp, \
            tarfile.open(fileobj=src, mode="r|") as tar:
        ended = False
        for m in tar:
            if ended or not m.isfile() or "/" in m.name or m.name in ("", ".", ".."):
                raise ClusterError(f"unexpected member {m.name!r} in the package stream", dest)
            if m.name == END_MEMBER:
                ended = True
                continue
            if ova and m.name != os.path.basename(dest):
                raise ClusterError(f"unexpected member {m.name!r} in the package stream", dest)
            out = tmp if ova else os.path.join(tmp, m.name)
            with open(out, "wb" if ova else "xb") as f:
                shutil.copyfileobj(tar.extractfile(m), f, _BUF)
                f.flush()
                os.fsync(f.fileno())
        if not ended:
            raise ClusterError("the package stream ended early", dest)
    print(dest, flush=True)
    return 0


def _after_import(gnt_job: str, job_id: str, staging: str, instance: str | None) -> int:
    """The detached watcher of ``gnt-backup import --ovf`` (on the node that
    converted): once the job ends, the staging dir goes, and with --submit
    an instance whose disks did not all arrive."""
    try:
        subprocess.run([gnt_job, "watch", job_id], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if instance:
        from .gnt_backup import undo_partial_import

        undo_partial_import(ganeti_env.import_ganeti("ganeti.cli"), job_id, instance)
    return 0


def main(argv: Sequence[str]) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    me = ganeti_env.my_hostname()
    try:
        if argv[:1] == ["export"]:
            return _export(json.load(sys.stdin))
        if argv[:1] == ["receive"] and len(argv) in (2, 3):
            return _receive(argv[1], argv[2:] == ["--ova"], sys.stdin.buffer)
        if argv[:1] == ["after-import"] and len(argv) in (4, 5):
            return _after_import(argv[1], argv[2], argv[3], (argv[4:] or [None])[0])
        print(f"{me}: usage: export | receive DEST [--ova] | "
              "after-import GNT-JOB JOB STAGING [INSTANCE]", file=sys.stderr)
        return 2
    except OvfError as e:
        print(f"{me}: {e}", file=sys.stderr)
    except BrokenPipeError:
        print(f"{me}: the receiving side went away", file=sys.stderr)
        return DOWNSTREAM_GONE
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{me}: {where}{e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{me}: interrupted; nothing was left behind", file=sys.stderr)
    return 1

