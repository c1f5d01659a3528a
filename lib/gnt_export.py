"""``gnt-backup export --ovf``: an instance -> OVF/OVA package.

A Ganeti export dump is whatever the OS definition's ``export`` script
writes (raw bytes for noop, a dump(8) stream for debootstrap), so the
native export cannot be the source of an OVF disk in general.  Instead the
instance's own disks are read directly, while it is stopped: Ganeti
activates them (``gnt-instance activate-disks`` shows the paths) and they
are deactivated again afterwards if they were inactive before.  No native
Ganeti export is made or kept.

The disks are local only on the instance's primary node, so that node
must be this one (and the ``-n`` node).  The package lands in
``--output-dir`` (default: the current directory), as with
``ovfconverter export``.
"""

from __future__ import annotations

import os
import subprocess

from . import ganeti_env
from .errors import ClusterError, UsageError
from .exportdir import MIB, ExportConfig, ExportDisk
from .exporter import ExportRequest, export_config
from .model import GanetiNic
from .progress import Progress

__all__ = ["ovf_export", "instance_config"]

FIELDS = ["name", "os", "pnode", "oper_state", "admin_state", "disks_active", "disk_template",
          "hypervisor", "be/maxmem", "be/minmem", "be/vcpus", "custom_beparams", "custom_hvparams",
          "custom_osparams", "tags", "disk.sizes", "disk.names", "nic.macs", "nic.ips",
          "nic.modes", "nic.links", "nic.networks", "nic.names", "nic.vlans"]


def instance_config(row: dict) -> ExportConfig:
    """The instance's settings as an export config (what config.ini holds)."""
    backend = {k: str(v) for k, v in row["custom_beparams"].items()}
    backend.update(maxmem=str(row["be/maxmem"]), minmem=str(row["be/minmem"]),
                   vcpus=str(row["be/vcpus"]))
    disks = tuple(ExportDisk(size=mib * MIB, dump=None, name=name)
                  for mib, name in zip(row["disk.sizes"], row["disk.names"], strict=True))
    nics = tuple(
        GanetiNic(mac=mac, ip=ip, mode=mode, link=link, network=net, name=name,
                  vlan=vlan or None)
        for mac, ip, mode, link, net, name, vlan in zip(
            row["nic.macs"], row["nic.ips"], row["nic.modes"], row["nic.links"],
            row["nic.networks"], row["nic.names"], row["nic.vlans"], strict=True))
    return ExportConfig(
        name=row["name"], os=row["os"], disks=disks, nics=nics,
        disk_template=row["disk_template"], hypervisor=row["hypervisor"],
        tags=tuple(sorted(row["tags"])), backend=backend,
        hv_params={k: str(v) for k, v in row["custom_hvparams"].items()},
        os_params={k: str(v) for k, v in row["custom_osparams"].items()},
        source=f"instance {row['name']}",
    )


def _query(cli, name: str) -> dict:
    rows = cli.GetClient().QueryInstances([name], FIELDS, False)
    if not rows:
        raise ClusterError(f"instance {name!r} not found")
    return dict(zip(FIELDS, rows[0], strict=True))


def _gnt_instance(*args: str) -> str:
    cmd = [ganeti_env.gnt_command("gnt-instance"), *args]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ClusterError(f"{' '.join(cmd[:2])} {args[-1]} failed: {last[0]}")
    return p.stdout


def _disk_paths(instance: str, count: int) -> list[str]:
    """``node:disk/N:path`` lines of ``gnt-instance activate-disks``."""
    paths: dict[int, str] = {}
    for line in _gnt_instance("activate-disks", instance).splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1].startswith("disk/"):
            paths[int(parts[1][5:])] = parts[2]
    if sorted(paths) != list(range(count)):
        raise ClusterError(f"activate-disks of {instance!r} showed disks {sorted(paths)}, "
                           f"expected {count}")
    return [paths[i] for i in range(count)]


def ovf_export(cli, opts, args) -> int:
    instance = args[0]
    if not opts.node:
        raise UsageError("target node must be specified (-n)")
    row = _query(cli, instance)
    me = ganeti_env.my_hostname()
    if row["oper_state"] or row["admin_state"] == "up":
        # admin_state too: the watcher restarts an instance that should run.
        raise UsageError(f"instance {instance!r} is running; shut it down first "
                         f"(gnt-instance shutdown {instance}): a running disk is not a "
                         "consistent image")
    if opts.node != row["pnode"] or row["pnode"] != me:
        raise UsageError(f"--ovf reads the disks on the instance's primary node "
                         f"{row['pnode']!r}: run it there with -n {row['pnode']} "
                         f"(this node is {me!r}, -n {opts.node!r})")
    if opts.ovf_format == "cow":
        cli.ToStderr("Warning: format 'cow' is written as qcow2 (qemu-img has no cow)")
        opts.ovf_format = "qcow2"
    cfg = instance_config(row)
    req = ExportRequest(disk_format=opts.ovf_format, ova=opts.ova,
                        manifest=opts.ovf_manifest.upper())
    was_active = bool(row["disks_active"])
    try:
        paths = _disk_paths(instance, len(cfg.disks)) if cfg.disks else []
        with Progress(lambda m: cli.ToStdout("%s", m)) as shown:  # meters on a tty
            result = export_config(cfg, paths, opts.ovf_output_dir or os.getcwd(), req,
                                   progress=shown, label=f"instance {instance}")
    finally:
        if cfg.disks and not was_active:
            _gnt_instance("deactivate-disks", instance)
    for w in result.warnings:
        cli.ToStderr("Warning: %s", w)
    cli.ToStdout("%s", result.path)
    return 0
