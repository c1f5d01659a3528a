"""``ovfconverter``: the command line.  The only place that prints, exits,
and maps our errors to exit codes.

Exit status (also in the man page's EXIT STATUS):
  0  success
  1  failure (bad package, disk image, cluster, I/O ...)
  2  usage error (bad options or arguments)
  3  verification failed (manifest, certificate, ``verify`` found problems)
  130 interrupted (SIGINT, SIGTERM, SIGHUP) before the output was in place;
      a signal after that changes nothing (the command succeeded)
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import __version__, ganeti_env, oslist, outcome, progress, report, staging
from .errors import IntegrityError, OvfError, UsageError
from .importer import ImportRequest
from .options import (
    COMMON_OPTS,
    CONFIGURATION_OPT,
    EXPORT_OPTS,
    IMPORT_OPTS,
    JSON_OPT,
    SIGNATURE_OPTS,
    VSYS_OPT,
    add_opts,
    parse_mib,
    parse_size,
)

__all__ = ["main", "EXIT_CODES", "build_parser"]

PROG = "ovfconverter"
EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3
EXIT_INTERRUPTED = 130

# Ordered: the first class an error is an instance of decides its code.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (IntegrityError, EXIT_VERIFY),
    (OvfError, EXIT_FAILURE),
)

log = logging.getLogger("ganeti_ovf")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_opts(common, COMMON_OPTS)
    common.add_argument("-q", "--quiet", action="store_true", default=False,
                        help="no progress display and no summary line")
    p = _Parser(prog=PROG, parents=[common],
                description="Convert OVF/OVA packages to and from Ganeti export directories.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    imp = sub.add_parser("import", parents=[common],
                         help="OVF/OVA package -> Ganeti export directory")
    imp.add_argument("package", metavar="PACKAGE", help=".ovf or .ova file")
    add_opts(imp, IMPORT_OPTS + (JSON_OPT,))

    exp = sub.add_parser("export", parents=[common],
                         help="Ganeti export directory -> OVF/OVA package")
    exp.add_argument("source", metavar="EXPORT", help="export directory or its config.ini")
    add_opts(exp, EXPORT_OPTS + (JSON_OPT,))

    info = sub.add_parser("info", parents=[common], help="describe a package")
    info.add_argument("package", metavar="PACKAGE")
    add_opts(info, (JSON_OPT, VSYS_OPT, CONFIGURATION_OPT) + SIGNATURE_OPTS)

    ver = sub.add_parser("verify", parents=[common], help="check a package without importing")
    ver.add_argument("package", metavar="PACKAGE")
    add_opts(ver, (JSON_OPT,) + SIGNATURE_OPTS)

    osl = sub.add_parser("os-list", parents=[common], help="OS names gnt-os list would show")
    add_opts(osl, (JSON_OPT,))
    return p


class _StatusAwareHandler(logging.StreamHandler):
    """A log line never lands in the middle of a progress status line."""

    def emit(self, record: logging.LogRecord) -> None:
        progress.clear_status()
        super().emit(record)


def _setup_logging(debug: bool, verbose: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = _StatusAwareHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    root = logging.getLogger("ganeti_ovf")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _on_sigterm(signum, frame):  # noqa: ARG001
    """Clean up like Ctrl-C -- unless the output is already in place: the
    command has then succeeded, and a late signal must not make it a
    failure (it ends normally, exit 0)."""
    if staging.published() or staging.deferring(signum):
        return
    raise KeyboardInterrupt


def _emit(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def import_request(args) -> ImportRequest:
    """Options -> ImportRequest: the library never sees the options object."""
    disk_sizes: dict[int, int] = {}
    for ident, params in args.disks:
        idx = _index(ident, "--disk")
        if set(params) != {"size"}:
            raise UsageError(f"--disk {ident}: only size=SIZE is accepted, got "
                             f"{','.join(sorted(params)) or 'nothing'}")
        if idx in disk_sizes:
            raise UsageError(f"--disk {idx} given twice")
        try:
            disk_sizes[idx] = parse_size(params["size"])
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--disk {ident}: {e}") from None
    nics = None
    if args.nics is not None:
        if args.no_nics:
            raise UsageError("--net and --no-nics exclude each other")
        by_index = {}
        for ident, params in args.nics:
            idx = _index(ident, "--net")
            if idx in by_index:
                raise UsageError(f"--net {idx} given twice")
            unknown = set(params) - {"mac", "ip", "mode", "link", "network", "name", "vlan"}
            if unknown:
                raise UsageError(f"--net {ident}: unknown parameter(s) "
                                 f"{', '.join(sorted(unknown))}")
            by_index[idx] = params
        if sorted(by_index) != list(range(len(by_index))):
            raise UsageError("--net indices must be 0, 1, 2, ... without gaps")
        nics = [by_index[i] for i in range(len(by_index))]
    backend = dict(args.beparams)
    for key in ("maxmem", "minmem", "memory"):
        if key in backend:
            try:
                backend[key] = parse_mib(backend[key])
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"-B {key}: {e}") from None
    hv_name, hv_params = args.hypervisor if args.hypervisor else (None, {})
    return ImportRequest(
        name=args.name, os_name=args.os, os_params=args.osparams,
        disk_template=args.disk_template, disk_sizes=disk_sizes, backend=backend,
        hypervisor=hv_name, hv_params=hv_params, nics=nics, no_nics=args.no_nics,
        tags=tuple(args.tags), vsys=args.vsys, configuration=args.configuration,
        verify=args.verify, trust_ganeti_section=args.trust_ganeti_section,
        trusted_certs=tuple(args.trusted_certs or ()), ca_bundle=args.ca_bundle,
        require_signature=args.require_signature,
    )


def _index(ident: str, opt: str) -> int:
    if not ident.isdigit():
        raise UsageError(f"{opt} {ident}: the index must be a number (e.g. {opt} 0:...)")
    return int(ident)


def cmd_import(args) -> int:
    from .importer import import_package

    req = import_request(args)
    if not req.verify:
        log.warning("--no-verify: manifest and certificate are NOT checked")
    out = args.output_dir or ganeti_env.export_dir()
    with _progress(args) as prog:
        result = import_package(args.package, out, req, progress=prog)
    if result.trusted_signer and not args.quiet:
        print(f"{PROG}: {args.package}: {result.trusted_signer}", file=sys.stderr)
    _finish(args, outcome.import_outcome(args.package, result, prog), result.path)
    return EXIT_SUCCESS


def _progress(args) -> progress.Progress:
    return progress.Progress(log.info, stream=sys.stderr, quiet=args.quiet)


def _finish(args, said: dict, path: str) -> None:
    """stdout: the path (scripts use it) or, with --json, the outcome;
    stderr: one summary line unless -q."""
    _emit(json.dumps(said, indent=2) if args.json else path)
    if not args.quiet:
        print(f"{PROG}: {outcome.summary_line(said)}", file=sys.stderr)


def cmd_export(args) -> int:
    """Export to OVF/OVA; the default output directory is the current one
    (what tar, qemu-img and ovftool do), not Ganeti's export directory as
    upstream's converter did: gnt-backup owns that tree and replaces or
    removes an instance's export there, package included."""
    from .exporter import ExportRequest, export_package

    fmt = args.disk_format
    if fmt == "cow":
        log.warning("--format cow: qemu-img no longer writes cow images; writing qcow2")
        fmt = "qcow2"
    req = ExportRequest(
        name=args.name, disk_format=fmt, compress=args.compress, external=args.external,
        ova=args.ova, ovf_version=args.ovf_version, manifest=args.manifest,
        sign_key=args.sign_key, sign_cert=args.sign_cert, chunk_size=args.chunk_size,
    )
    with _progress(args) as prog:
        result = export_package(args.source, args.output_dir or ".", req, progress=prog)
    _finish(args, outcome.export_outcome(result, prog), result.path)
    return EXIT_SUCCESS


def _trust_store(args):
    """The anchors ``--trusted-cert``/``--ca-bundle`` name (a file that does
    not load is a usage error, found before the package is opened)."""
    from . import trust

    return trust.load_store(tuple(args.trusted_certs or ()), args.ca_bundle)


def cmd_info(args) -> int:
    data = report.package_info(args.package, vsys=args.vsys, configuration=args.configuration,
                               store=_trust_store(args),
                               require_signature=args.require_signature)
    _emit(json.dumps(data, indent=2, sort_keys=False) if args.json else report.info_text(data))
    cert = data["certificate"]
    if args.require_signature and not (cert and cert["trust"] and cert["trust"]["trusted"]):
        why = "has no signature that verifies" if cert is None else \
            "has a signer that does not chain to a " \
            "trusted certificate"
        print(f"{PROG}: error: {args.package}: the package {why} and --require-signature is "
              "given", file=sys.stderr)
        return EXIT_VERIFY
    return EXIT_SUCCESS


def cmd_verify(args) -> int:
    problems, checked, warnings = report.verify_report(
        args.package, store=_trust_store(args), require_signature=args.require_signature)
    if args.json:
        _emit(json.dumps({"package": args.package, "ok": not problems, "checked": checked,
                          "problems": problems, "warnings": warnings}, indent=2))
    else:
        for line in checked:
            _emit(f"ok: {line}")
        for w in warnings:
            print(f"{PROG}: warning: {args.package}: {w}", file=sys.stderr)
        for p in problems:
            print(f"{PROG}: {args.package}: {p}", file=sys.stderr)
    return EXIT_VERIFY if problems else EXIT_SUCCESS


def cmd_os_list(args) -> int:
    names = oslist.list_os()
    _emit(json.dumps(list(names)) if args.json else "\n".join(names) if names else "")
    return EXIT_SUCCESS


COMMANDS = {
    "import": cmd_import,
    "export": cmd_export,
    "info": cmd_info,
    "verify": cmd_verify,
    "os-list": cmd_os_list,
}


def _help_command(argv: Sequence[str]) -> str:
    """``ovfconverter import`` when the subcommand is known, else ``ovfconverter``."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return f"{PROG} {command}" if command in COMMANDS else PROG


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "-d" in argv or "--debug" in argv
    _setup_logging(debug, "-v" in argv or "--verbose" in argv)
    # SIGTERM (kill) and SIGHUP (a dropped ssh session) clean up like Ctrl-C.
    staging.reset_published()
    old = {sig: signal.signal(sig, _on_sigterm) for sig in _SIGNALS}
    # Everything we (and qemu-img for us) create holds guest data: 0600/0700.
    old_umask = os.umask(0o077)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        for sig in _SIGNALS:  # a second Ctrl-C must not cut this line short
            signal.signal(sig, signal.SIG_IGN)
        print(f"{PROG}: interrupted; nothing was left behind", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FAILURE
    except OvfError as e:
        if debug:
            log.exception("traceback")
        hint = f" (see '{_help_command(argv)} --help')" if isinstance(e, UsageError) else ""
        print(f"{PROG}: error: {e}{hint}", file=sys.stderr)
        return next(code for cls, code in EXIT_CODES if isinstance(e, cls))
    except OSError as e:
        if debug:
            log.exception("traceback")
        full = staging.no_space(e, e.filename, OvfError) if e.filename else None
        if full is not None:
            print(f"{PROG}: error: {full}", file=sys.stderr)
            return EXIT_FAILURE
        where = f"{e.filename}: " if e.filename else ""
        msg = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        print(f"{PROG}: error: {where}{msg}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as e:  # a bug of ours: still one line, traceback with --debug
        if debug:
            log.exception("traceback")
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (run with --debug for "
              "details)", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        os.umask(old_umask)
        for sig, handler in old.items():
            signal.signal(sig, handler)
