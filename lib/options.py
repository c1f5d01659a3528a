"""Command-line options, defined once and shared by ``ovfconverter`` and the
``gnt-backup --ovf`` extension, spelled as Ganeti spells them.

Each option is a small value (``Opt``) that can become an argparse or an
optparse option; value parsers (``N:key=val,...``, ``key=val``, sizes with
units) live here so that handlers never parse strings.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .diskformats import EXPORT_ALIASES

__all__ = [
    "Opt",
    "parse_keyval",
    "parse_identkeyval",
    "parse_size",
    "parse_mib",
    "parse_tags",
    "IMPORT_OPTS",
    "EXPORT_OPTS",
    "COMMON_OPTS",
    "SIGNATURE_OPTS",
    "add_opts",
    "from_optparse",
]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(i?b)?)?\s*$", re.I)
_SHIFT = {"": 20, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_size(text: str, *, default_unit: str = "m") -> int:
    """Bytes from '10G', '512M', '1024' (MiB, as Ganeti's ParseUnit), '4KiB'.

    Ganeti units are binary (M = MiB); a bare number is MiB, like
    ``gnt-instance add --disk 0:size=1024``.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 512M, 10G)")
    num, unit, _ = m.groups()
    shift = _SHIFT[(unit or default_unit).lower()]
    value = float(num) * (1 << shift)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return int(-(-value // 1))


def parse_mib(text: str) -> str:
    """A memory value as Ganeti stores it: whole MiB, as a string."""
    return str(-(-parse_size(text) // (1 << 20)))


def parse_keyval(text: str) -> dict[str, str]:
    """``a=1,b=2`` -> dict; a bare ``x`` is x=True and ``no_x`` x=False, as Ganeti."""
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(","):
        if not part:
            continue
        if "=" in part:
            k, v = part.split("=", 1)
        elif part.startswith("no_"):
            k, v = part[3:], "False"
        else:
            k, v = part, "True"
        k = k.strip()
        if not k:
            raise argparse.ArgumentTypeError(f"empty key in {text!r}")
        if k in out:
            raise argparse.ArgumentTypeError(f"key {k!r} given twice in {text!r}")
        out[k] = v
    return out


def parse_identkeyval(text: str) -> tuple[str, dict[str, str]]:
    """``ident:k=v,...`` -> (ident, dict), as Ganeti's identkeyval type."""
    ident, sep, rest = text.partition(":")
    if not ident:
        raise argparse.ArgumentTypeError(f"missing identifier in {text!r}")
    return ident, parse_keyval(rest) if sep else {}


def parse_tags(text: str) -> list[str]:
    tags = [t for t in re.split(r"[\s,]+", text) if t]
    for t in tags:
        if not re.match(r"^[\w.+*/:@-]+$", t):
            raise argparse.ArgumentTypeError(f"invalid tag {t!r}")
    return tags


@dataclass(frozen=True)
class Opt:
    flags: tuple[str, ...]
    dest: str
    help: str
    action: str = "store"
    type: Callable[[str], Any] | None = None
    metavar: str | None = None
    default: Any = None
    choices: Sequence[str] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Typed options in Ganeti's CLI: the name of Ganeti's own option type
    # (cli_opts.CliOption.TYPES: "unit", "keyval", ...) and how its value
    # becomes ours (e.g. "unit" gives MiB; we want bytes).
    ganeti_type: str | None = None
    from_ganeti: Callable[[Any], Any] | None = None

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        kw: dict[str, Any] = dict(dest=self.dest, help=self.help, action=self.action,
                                  default=self.default)
        if self.action in ("store", "append"):
            if self.type is not None:
                kw["type"] = self.type
            if self.metavar:
                kw["metavar"] = self.metavar
            if self.choices:
                kw["choices"] = self.choices
        kw.update(self.kwargs)
        parser.add_argument(*self.flags, **kw)

    def to_optparse(self, make: Callable[..., Any], *, long_only: bool = False,
                    dest: str | None = None) -> Any:
        """The same option for Ganeti's optparse-based CLI (``make`` is
        Ganeti's ``cli_option``); ``long_only`` drops short flags that
        would clash with Ganeti's own (``-f`` is ``--force`` there)."""
        flags = [f for f in self.flags if f.startswith("--")] if long_only else list(self.flags)
        kw: dict[str, Any] = dict(dest=dest or self.dest, help=self.help, action=self.action,
                                  default=self.default)
        if self.action in ("store", "append"):
            if self.type is not None:
                if self.ganeti_type is None:
                    raise ValueError(f"{flags[0]}: typed option without a Ganeti type")
                kw["type"] = self.ganeti_type
            if self.metavar:
                kw["metavar"] = self.metavar
            if self.choices:
                kw.update(type="choice", choices=list(self.choices))
        return make(*flags, **kw)


def add_opts(parser, opts: Sequence[Opt]) -> None:
    for o in opts:
        o.add_to(parser)


def from_optparse(values: Any, opts: Sequence[Opt], prefix: str = "") -> dict[str, Any]:
    """Our values (by our dest) from Ganeti's parsed options, where each of
    ``opts`` was added with ``dest=prefix + o.dest``: typed values converted."""
    out: dict[str, Any] = {}
    for o in opts:
        v = getattr(values, prefix + o.dest)
        out[o.dest] = o.from_ganeti(v) if o.from_ganeti is not None and v is not None else v
    return out


DEBUG_OPT = Opt(("-d", "--debug"), "debug", "show tracebacks and debug messages",
                action="store_true", default=False)
VERBOSE_OPT = Opt(("-v", "--verbose"), "verbose", "say what is being done",
                  action="store_true", default=False)
NAME_OPT = Opt(("-n", "--name"), "name", "instance name (default: the package's)",
               metavar="NAME")
OUTPUT_DIR_OPT = Opt(("--output-dir",), "output_dir",
                     "where to write (default: Ganeti's export directory)", metavar="DIR")
JSON_OPT = Opt(("--json",), "json", "print JSON instead of text", action="store_true",
               default=False)

OS_OPT = Opt(("-o", "--os-type"), "os", "OS for the instance, as 'gnt-os list' names it",
             metavar="OS")
OSPARAMS_OPT = Opt(("-O", "--os-parameters"), "osparams", "OS parameters (key=val,...)",
                   type=parse_keyval, metavar="PARAMS", default={})
# Ganeti 3.0's constants.DISK_TEMPLATES.
DISK_TEMPLATES = ("diskless", "file", "sharedfile", "plain", "blockdev", "drbd", "rbd", "ext",
                  "gluster")
DISK_TEMPLATE_OPT = Opt(("-t", "--disk-template"), "disk_template",
                        "disk template (plain, drbd, file, diskless, ...)", metavar="TEMPL",
                        choices=DISK_TEMPLATES)
DISK_OPT = Opt(("--disk",), "disks", "disk size: N:size=SIZE (units: M, G, T)",
               action="append", type=parse_identkeyval, metavar="N:size=SIZE", default=[])
BACKEND_OPT = Opt(("-B", "--backend-parameters"), "beparams",
                  "backend parameters (maxmem=,minmem=,vcpus=,...)", type=parse_keyval,
                  metavar="PARAMS", default={})
HYPERVISOR_OPT = Opt(("-H", "--hypervisor-parameters"), "hypervisor",
                     "hypervisor and its parameters: HV[:key=val,...]",
                     type=parse_identkeyval, metavar="HV:PARAMS")
NET_OPT = Opt(("--net",), "nics", "NIC N: N:mac=,ip=,mode=,link=,network=",
              action="append", type=parse_identkeyval, metavar="N:PARAMS", default=None)
NONICS_OPT = Opt(("--no-nics",), "no_nics", "create the instance without NICs",
                 action="store_true", default=False)
TAGS_OPT = Opt(("--tags",), "tags", "instance tags (comma-separated)", type=parse_tags,
               metavar="TAGS", default=[])
VSYS_OPT = Opt(("--vsys",), "vsys", "which VirtualSystem of a collection (its ovf:id)",
               metavar="ID")
CONFIGURATION_OPT = Opt(("--configuration",), "configuration",
                        "DeploymentOption configuration to use (default: the package's)",
                        metavar="ID")
NO_VERIFY_OPT = Opt(("--no-verify",), "verify",
                    "skip manifest and certificate checks (you accept the risk)",
                    action="store_false", default=True)
TRUST_OPT = Opt(("--trust-ganeti-section",), "trust_ganeti_section",
                "apply the hypervisor and OS parameters and NIC placement of the "
                "package's Ganeti section", action="store_true", default=False)

TRUSTED_CERT_OPT = Opt(("--trusted-cert",), "trusted_certs",
                       "trust the certificates of this PEM file: the signer's own, or a CA "
                       "of its chain (repeatable)", action="append", metavar="FILE")
CA_BUNDLE_OPT = Opt(("--ca-bundle",), "ca_bundle",
                    "PEM file of trusted CAs (default: the system's, "
                    "/etc/ssl/certs/ca-certificates.crt)", metavar="FILE")
REQUIRE_SIGNATURE_OPT = Opt(("--require-signature",), "require_signature",
                            "refuse a package that is not signed or whose signer does not "
                            "chain to a trusted certificate", action="store_true",
                            default=False)
SIGNATURE_OPTS = (TRUSTED_CERT_OPT, CA_BUNDLE_OPT, REQUIRE_SIGNATURE_OPT)

COMMON_OPTS = (DEBUG_OPT, VERBOSE_OPT)
IMPORT_OPTS = (NAME_OPT, OUTPUT_DIR_OPT, OS_OPT, OSPARAMS_OPT, DISK_TEMPLATE_OPT, DISK_OPT,
               BACKEND_OPT, HYPERVISOR_OPT, NET_OPT, NONICS_OPT, TAGS_OPT, VSYS_OPT,
               CONFIGURATION_OPT, NO_VERIFY_OPT, TRUST_OPT) + SIGNATURE_OPTS
EXPORT_NAME_OPT = Opt(("-n", "--name"), "name",
                      "package name (default: the instance's name)", metavar="NAME")
EXPORT_OUTPUT_DIR_OPT = Opt(("--output-dir",), "output_dir",
                            "where to write (default: the current directory)", metavar="DIR")
FORMAT_OPT = Opt(("-f", "--format"), "disk_format",
                 "disk format: vmdk (streamOptimized, default), qcow2 or raw",
                 choices=(*EXPORT_ALIASES, "cow"), metavar="FORMAT",
                 default=EXPORT_ALIASES[0])
COMPRESS_OPT = Opt(("--compress",), "compress", "gzip the disk files", action="store_true",
                   default=False)
EXTERNAL_OPT = Opt(("--external",), "external", "leave out Ganeti's own section",
                   action="store_true", default=False)
OVA_OPT = Opt(("--ova",), "ova", "write one .ova file instead of a directory",
              action="store_true", default=False)
OVF_VERSION_OPT = Opt(("--ovf-version",), "ovf_version", "OVF version: 1.0 (default) or 2.0",
                      choices=("1.0", "2.0"), metavar="VERSION", default="1.0")
MANIFEST_OPT = Opt(("--manifest",), "manifest",
                   "manifest digest: sha1, sha256 (default) or sha512",
                   choices=("sha1", "sha256", "sha512"), metavar="ALGORITHM", default="sha256")
SIGN_OPT = Opt(("--sign",), "sign_key", "sign the manifest with this PEM private key",
               metavar="KEY")
CERT_OPT = Opt(("--cert",), "sign_cert", "PEM certificate of the signing key", metavar="CERT")
CHUNK_SIZE_OPT = Opt(("--chunk-size",), "chunk_size",
                     "split disk files into chunks of SIZE (units: M, G; at least 1M)",
                     type=parse_size, metavar="SIZE", ganeti_type="unit",
                     from_ganeti=lambda mib: mib << 20)

EXPORT_OPTS = (EXPORT_NAME_OPT, EXPORT_OUTPUT_DIR_OPT, FORMAT_OPT, COMPRESS_OPT, EXTERNAL_OPT,
               OVA_OPT, OVF_VERSION_OPT, MANIFEST_OPT, SIGN_OPT, CERT_OPT, CHUNK_SIZE_OPT)
