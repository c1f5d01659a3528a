"""``gnt-backup`` with ``--ovf``: Ganeti's own command, extended.

Without ``--ovf`` (and outside ``--help``) the real ``gnt-backup`` is
exec'd untouched, so output and exit status are exactly Ganeti's.  With it,
Ganeti's own ``commands`` table is used with options added (``--ovf``,
``-o/--os-type``, ``--no-verify``, ``--trust-ganeti-section``,
``--trusted-cert``, ``--ca-bundle``, ``--require-signature`` on import;
``--ovf`` and every ``ovfconverter export`` option on export) and the
import/export handlers wrapped, both behind one error boundary
(``_boundary``):

``import --ovf PACKAGE``: the package is checked and converted (manifest,
OS validated against the cluster, disks converted) into a hidden staging
export directory under the cluster's export dir on this node, then
Ganeti's real import handler runs on it with ``--src-node`` this node and
the operator's own options.  The staging directory is removed afterwards;
with ``--submit`` by a detached watcher once the job has finished.  An
instance whose disk transfer failed (Ganeti only warns) is removed again.

``export --ovf``: see ``gnt_export``.

Runs on the interpreter Ganeti runs on (``/usr/bin/python3``), in-process
with Ganeti's CLI, so options and messages are Ganeti's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence

from . import ganeti_env
from . import staging as stage
from .errors import ClusterError, OvfError

__all__ = ["main", "real_gnt_backup", "undo_partial_import", "wants_extension"]


def real_gnt_backup() -> str:
    """Ganeti's own gnt-backup, by its installed path (never a PATH lookup
    of our own name: that could be us)."""
    gdir = ganeti_env.ganeti_dir()
    candidates = [os.path.join(gdir, "gnt-backup")] if gdir else []
    candidates.append("/usr/share/ganeti/default/gnt-backup")
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise OvfError("Ganeti's gnt-backup is not installed (package ganeti)")


def wants_extension(argv: Sequence[str]) -> bool:
    """Only ``--ovf`` and help requests go through the extended table."""
    args = list(argv[1:])
    if not args:
        return True
    return any(a == "--ovf" or a.startswith("--ovf=") or a in ("-h", "--help")
               for a in args)


def _ovf_options(cli_opts) -> tuple[list, list]:
    """Ganeti-style options for import and export: ovfconverter's own option
    objects (``options``) in optparse form, long flags only, with dests
    kept apart from Ganeti's."""
    from . import options as o
    from .gnt_export import EXPORT_PREFIX

    opt = cli_opts.cli_option
    ovf_import = opt("--ovf", dest="ovf", metavar="<package>", default=None,
                     help="Import from an OVF/OVA package (.ovf or .ova) instead of"
                          " a Ganeti export; the package is converted on this node")
    ovf_export = opt("--ovf", dest="ovf", action="store_true", default=False,
                     help="Export as an OVF package instead of a Ganeti export")
    return (
        [ovf_import, cli_opts.OS_OPT,
         o.NO_VERIFY_OPT.to_optparse(opt, long_only=True, dest="ovf_verify"),
         o.TRUST_OPT.to_optparse(opt, long_only=True, dest="ovf_trust")]
        + [x.to_optparse(opt, long_only=True, dest="ovf_" + x.dest) for x in o.SIGNATURE_OPTS],
        [ovf_export] + [x.to_optparse(opt, long_only=True, dest=EXPORT_PREFIX + x.dest)
                        for x in o.EXPORT_OPTS],
    )


def _extended_commands(gb, cli_opts, cli) -> dict:
    imp_opts, exp_opts = _ovf_options(cli_opts)
    commands = dict(gb.commands)
    func, args, opts, usage, desc = commands["import"]
    commands["import"] = (_wrap_import(func, cli), args, list(opts) + imp_opts,
                          "[--ovf <package> [-o <os>] [--trusted-cert FILE] [--ca-bundle FILE]"
                          " [--require-signature]] " + usage,
                          desc + " or from an OVF/OVA package (--ovf)")
    func, args, opts, usage, desc = commands["export"]
    commands["export"] = (_wrap_export(func, cli), args, list(opts) + exp_opts,
                          "[--ovf [--ova] [--format vmdk|qcow2|raw] [--compress]"
                          " [--external] [--ovf-version 1.0|2.0] [--manifest ALG]"
                          " [--sign KEY --cert CERT] [--chunk-size SIZE] [--name NAME]"
                          " [--output-dir DIR]] " + usage,
                          desc + " or to an OVF/OVA package (--ovf)")
    return commands


def _boundary(cli, what: str, run) -> int:
    """The one error boundary of both ``--ovf`` commands: our errors become
    Ganeti's one-line ``Failure: ...`` and exit 1 (Ganeti's own errors go on
    to GenericMain, which formats them the same way)."""
    try:
        with _conversion_context(cli):
            return run()
    except OvfError as e:
        cli.ToStderr("Failure: %s", e)
    except OSError as e:
        cli.ToStderr("Failure: %s: %s", e.filename or what, e.strerror or e)
    except KeyboardInterrupt:
        cli.ToStderr("Failure: interrupted; nothing was left behind")
    return 1


def _wrap_import(original, cli):
    def import_instance(opts, args):
        if not getattr(opts, "ovf", None):
            if getattr(opts, "os", None):
                cli.ToStderr("Failure: -o/--os-type is only used with --ovf (a Ganeti "
                             "export names its OS)")
                return 1
            return original(opts, args)
        return _boundary(cli, opts.ovf, lambda: ovf_import(original, cli, opts, args))
    import_instance.__doc__ = original.__doc__
    return import_instance


class _ToGanetiStderr(logging.Handler):
    """Our warnings on Ganeti's stderr (Ganeti's own handler shows only
    critical messages on the console)."""

    def __init__(self, cli) -> None:
        super().__init__(logging.WARNING)
        self._cli = cli

    def emit(self, record: logging.LogRecord) -> None:
        self._cli.ToStderr("Warning: %s", record.getMessage())


def _interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


@contextlib.contextmanager
def _conversion_context(cli):
    """Warnings shown; SIGTERM/SIGHUP clean up like Ctrl-C while we convert."""
    logger = logging.getLogger("ganeti_ovf")
    handler = _ToGanetiStderr(cli)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def import_request(opts, instance: str):
    """Ganeti's parsed options -> our ImportRequest.  Ganeti applies
    -t/--disk/--net/-B/-H/... itself; -t and --no-nics must also shape the
    staging export, which Ganeti reads the rest from."""
    from .importer import ImportRequest

    return ImportRequest(name=instance, os_name=opts.os, verify=opts.ovf_verify,
                         trust_ganeti_section=opts.ovf_trust, no_nics=bool(opts.no_nics),
                         disk_template=opts.disk_template, use_cluster=True,
                         trusted_certs=tuple(opts.ovf_trusted_certs or ()),
                         ca_bundle=opts.ovf_ca_bundle,
                         require_signature=opts.ovf_require_signature)


def ovf_import(original, cli, opts, args) -> int:
    """Convert into a hidden staging export, then run Ganeti's own import.

    The import job is always submitted first (as Ganeti's own SubmitOpCode
    does: send, then poll), so the job id is known at once: from then on a
    detached watcher removes the staging directory when the job ends, and
    a signal or a dropped session in the foreground cannot pull the dumps
    from under a running job.  Before that, SIGTERM/SIGHUP/Ctrl-C remove it.
    """
    from .importer import import_package
    from .progress import Progress

    if opts.src_node or opts.src_dir:
        cli.ToStderr("Failure: --ovf replaces --src-node/--src-dir")
        return 1
    instance = args[0]
    export_root = ganeti_env.export_dir()
    node = ganeti_env.my_hostname()
    req = import_request(opts, instance)
    if not opts.ovf_verify:
        cli.ToStderr("Warning: --no-verify: manifest and certificate are NOT checked")
    wanted_submit = opts.submit_only
    staging = None
    lock: int | None = None
    job_id = None
    try:
        try:
            os.makedirs(export_root, mode=0o755, exist_ok=True)
        except OSError as e:
            raise ClusterError(f"cannot create a staging directory: {e.strerror}",
                               export_root) from e
        staging, lock = stage.work_dir(export_root, "import")
        with Progress(lambda m: cli.ToStdout("%s", m)) as shown:  # meters on a tty
            result = import_package(opts.ovf, staging, req, progress=shown)
        if result.trusted_signer:
            cli.ToStdout("%s: %s", opts.ovf, result.trusted_signer)
        opts.src_node = node
        opts.src_dir = result.path
        opts.submit_only = True
        try:
            return original(opts, args)  # returns only if nothing was submitted
        except cli.errors.JobSubmittedException as e:
            job_id = e.args[0]
            # The foreground undoes a partial import itself, unless --submit.
            _cleanup_after_job(job_id, staging, instance if wanted_submit else None, lock)
    finally:
        if job_id is None and staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if lock is not None and (job_id is None or wanted_submit):
            os.close(lock)  # with a job, the watcher holds the lock too
            lock = None
    if wanted_submit:
        raise cli.errors.JobSubmittedException(job_id)
    try:
        cli.PollJob(job_id)  # Ganeti's own progress output and error handling
    except KeyboardInterrupt:
        raise ClusterError(f"interrupted; job {job_id} goes on, and its staging directory "
                           "is removed when it ends") from None
    finally:
        # The job has ended unless we were interrupted while polling (then
        # the watcher removes the directory when it does).
        if not _job_running(cli, job_id):
            shutil.rmtree(staging, ignore_errors=True)
        if lock is not None:
            os.close(lock)
    undo_partial_import(cli, job_id, instance)
    return 0


# Ganeti's LUInstanceCreate only warns when a disk transfer fails (a full
# target, a lost node) and keeps the half-written instance.
_NOT_IMPORTED = "were not imported successfully"


def undo_partial_import(cli, job_id, instance: str) -> None:
    """An instance whose disks did not all arrive is removed again: with
    ``--ovf`` an import succeeds whole or leaves nothing."""
    oplog = cli.GetClient().QueryJobs([int(job_id)], ["oplog"])[0][0] or []
    warning = next((e[3] for op in oplog for e in op
                    if len(e) > 3 and isinstance(e[3], str) and _NOT_IMPORTED in e[3]), None)
    if warning is None:
        return
    opcodes = ganeti_env.import_ganeti("ganeti.opcodes")
    cli.SubmitOpCode(opcodes.OpInstanceRemove(instance_name=instance, ignore_failures=True,
                                              shutdown_timeout=0))
    raise ClusterError(f"{warning.strip()}; instance {instance} was removed again")


def _job_running(cli, job_id) -> bool:
    try:
        status = cli.GetClient().QueryJobs([job_id], ["status"])[0][0]
    except Exception:  # noqa: BLE001 - unknown: leave it to the watcher
        return True
    return status not in ("success", "error", "canceled")


def _cleanup_after_job(job_id, staging: str, undo_instance: str | None, lock: int) -> None:
    """Remove the staging dir once the submitted job has finished, from a
    detached process (the command itself returns at once with --submit);
    with ``undo_instance``, also remove that instance if its disks did not
    all arrive (``undo_partial_import``)."""
    from . import nodecmd

    argv = nodecmd.helper_argv("after-import", ganeti_env.gnt_command("gnt-job"), str(job_id),
                               staging, *([undo_instance] if undo_instance else []))
    # The watcher inherits the staging directory's lock: while the job runs
    # (and we may be gone), no later run takes the directory for stale.
    subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                     pass_fds=(lock,))


def _wrap_export(original, cli):
    def export_instance(opts, args):
        if not getattr(opts, "ovf", False):
            return original(opts, args)
        from .gnt_export import ovf_export

        return _boundary(cli, args[0], lambda: ovf_export(cli, opts, args))
    export_instance.__doc__ = original.__doc__
    return export_instance


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if not wants_extension(argv):
        real = real_gnt_backup()
        os.execv(real, [real] + argv[1:])
    try:
        gb = ganeti_env.import_ganeti("ganeti.client.gnt_backup")
        cli = ganeti_env.import_ganeti("ganeti.cli")
        cli_opts = ganeti_env.import_ganeti("ganeti.cli_opts")
    except OvfError as e:
        print(f"gnt-backup: {e}", file=sys.stderr)
        return 1
    sys.argv = argv
    return cli.GenericMain(_extended_commands(gb, cli_opts, cli))
