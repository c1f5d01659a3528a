"""``gnt-backup export --ovf``: an instance -> OVF/OVA package.

A Ganeti export dump is whatever the OS definition's ``export`` script
writes (raw bytes for noop, a dump(8) stream for debootstrap), so the
native export cannot be the source of an OVF disk in general.  Instead the
instance's own disks are read directly, while it is stopped, on its
primary node: the master activates them with Ganeti's opcode
(``OpInstanceActivateDisks``, which answers with each disk's device path
on the primary node) and deactivates them afterwards if they were inactive
before.  No native Ganeti export is made or kept.

Run on the master (or any node that can reach the master daemon): the
conversion runs on the primary node and the package lands in
``--output-dir`` on the ``-n`` node, both through ``nodecmd`` (locally,
or over the cluster's SSH as Ganeti runs its node tools).  Default output
dir: the current directory, when ``-n`` is this node.
"""

from __future__ import annotations

import os
import subprocess
import threading

from . import ganeti_env, nodecmd
from .errors import ClusterError, UsageError
from .exportdir import MIB, ExportConfig, ExportDisk
from .exporter import ExportRequest
from .model import GanetiNic

__all__ = ["EXPORT_PREFIX", "export_request", "instance_config", "ovf_export"]

#: ``gnt-backup export --ovf`` keeps ovfconverter's option dests apart from
#: Ganeti's under this prefix (see ``options.from_optparse``).
EXPORT_PREFIX = "ovf_"

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


def export_request(opts) -> tuple[ExportRequest, str | None, list[str]]:
    """ovfconverter's export options as given to ``gnt-backup export --ovf``:
    the request, the output dir and warnings."""
    from . import options

    values = options.from_optparse(opts, options.EXPORT_OPTS, prefix=EXPORT_PREFIX)
    output_dir = values.pop("output_dir")
    warnings = []
    if values["disk_format"] == "cow":
        warnings.append("format 'cow' is written as qcow2 (qemu-img has no cow)")
        values["disk_format"] = "qcow2"
    return ExportRequest(**values), output_dir, warnings


def _node(cli, name: str, role: str) -> tuple[str, int | None]:
    """Ganeti's name for node ``name`` and its SSH port (ndparam); it must be
    online, as Ganeti's own export requires of its nodes."""
    rows = cli.GetClient().QueryNodes([name], ["name", "ndp/ssh_port", "offline"], False)
    if not rows:
        raise UsageError(f"node {name!r} is not in the cluster")
    node, port, offline = rows[0]
    if offline:
        raise UsageError(f"{role} {node} is offline")
    return node, port


def _activate(cli, instance: str, pnode: str, count: int) -> list[str]:
    """Device paths of the instance's disks on its primary node."""
    opcodes = ganeti_env.import_ganeti("ganeti.opcodes")
    info = cli.SubmitOpCode(opcodes.OpInstanceActivateDisks(instance_name=instance))
    paths = {}
    for node, iv_name, path in info:
        if node == pnode and iv_name.startswith("disk/") and path:
            paths[int(iv_name[5:])] = path
    if sorted(paths) != list(range(count)):
        raise ClusterError(f"activating the disks of {instance!r} gave disks {sorted(paths)} "
                           f"on {pnode}, expected {count}")
    return [paths[i] for i in range(count)]


def _deactivate(cli, instance: str) -> None:
    opcodes = ganeti_env.import_ganeti("ganeti.opcodes")
    cli.SubmitOpCode(opcodes.OpInstanceDeactivateDisks(instance_name=instance))


def _signing(req: ExportRequest) -> dict | None:
    """The key and certificate, read here (where the operator named them)
    for the node that signs."""
    if req.sign_key is None or req.sign_cert is None:
        return None
    out = {}
    for what, path in (("key", req.sign_key), ("cert", req.sign_cert)):
        try:
            with open(path, encoding="ascii") as f:
                out[what] = f.read(1 << 20)
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the {'private key' if what == 'key' else what}: "
                             f"{getattr(e, 'strerror', None) or e}", path) from e
    return out


def _forward(cli, node: str, stream, last: list[str]) -> None:
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if not line:
            continue
        last[:] = [line]
        if line.startswith("Warning: "):
            cli.ToStderr("%s", line)
        else:
            cli.ToStdout("%s: %s", node, line)


def run_pipeline(cli, steps: list[tuple[str, list[str]]], data: bytes) -> str:
    """Run ``steps`` (node, argv) as a pipeline, ``data`` into the first;
    the last line the last one prints.  A failure is reported by the
    cause: the first failing step, skipping steps that only lost their
    reader (``nodecmd.DOWNSTREAM_GONE``), as its last stderr line."""
    procs: list[tuple[str, subprocess.Popen]] = []
    threads = []
    lasts: list[list[str]] = []
    try:
        for node, argv in steps:
            stdin = procs[-1][1].stdout if procs else subprocess.PIPE
            p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
            if procs:
                procs[-1][1].stdout.close()  # the next step holds it now
            procs.append((node, p))
            lasts.append([])
            t = threading.Thread(target=_forward, args=(cli, node, p.stderr, lasts[-1]),
                                 daemon=True)
            t.start()
            threads.append(t)
        first = procs[0][1]
        try:
            first.stdin.write(data)
            first.stdin.close()
        except BrokenPipeError:
            pass  # it ended early (e.g. no SSH): its status and stderr say why
        out = procs[-1][1].stdout.read()
    except BaseException:
        for _, p in procs:
            p.kill()
        raise
    finally:
        for _, p in procs:
            p.wait()
        for t in threads:
            t.join()
    failed = [(node, p.returncode, last) for (node, p), last in zip(procs, lasts, strict=True)
              if p.returncode != 0]
    failed.sort(key=lambda f: f[1] == nodecmd.DOWNSTREAM_GONE)  # the cause first
    if failed:
        node, rc, last = failed[0]
        why = last[0] if last else f"exited with status {rc}"
        if rc == 255 and node != ganeti_env.my_hostname():
            why = f"cannot run on {node} over SSH: {why}"
        raise ClusterError(why)
    lines = out.decode("utf-8", "replace").split()
    if not lines:
        raise ClusterError(f"{steps[-1][0]} did not report the package path")
    return lines[-1]


def ovf_export(cli, opts, args) -> int:
    instance = args[0]
    if not opts.node:
        raise UsageError("target node must be specified (-n)")
    req, output_dir, warnings = export_request(opts)
    for w in warnings:
        cli.ToStderr("Warning: %s", w)
    row = _query(cli, instance)
    if row["oper_state"] or row["admin_state"] == "up":
        # admin_state too: the watcher restarts an instance that should run.
        raise UsageError(f"instance {instance!r} is running; shut it down first "
                         f"(gnt-instance shutdown {instance}): a running disk is not a "
                         "consistent image")
    me = ganeti_env.my_hostname()
    target, target_port = _node(cli, opts.node, "target node")
    pnode, pnode_port = _node(cli, row["pnode"], f"the primary node of {instance}")
    if target != me and not (output_dir and os.path.isabs(output_dir)):
        raise UsageError(f"-n {target} is another node: give the directory there with "
                         "--output-dir (an absolute path)")
    output_dir = os.path.abspath(output_dir or os.getcwd())
    name = req.name or instance
    dest = os.path.join(output_dir, name + ".ova" if req.ova else name)
    signing = _signing(req)
    cluster = ganeti_env.import_ganeti("ganeti.ssconf").SimpleStore().GetClusterName()
    src_argv = nodecmd.node_argv(pnode, nodecmd.helper_argv("export"),
                                 cluster_name=cluster, port=pnode_port)
    steps = [(pnode, src_argv)]
    if target != pnode:
        recv = nodecmd.helper_argv("receive", dest, *(["--ova"] if req.ova else []))
        steps.append((target, nodecmd.node_argv(target, recv, cluster_name=cluster,
                                                 port=target_port)))
    count = len(row["disk.sizes"])
    was_active = bool(row["disks_active"])
    paths = _activate(cli, instance, pnode, count) if count else []
    try:
        data = nodecmd.request_json(row, paths, req, output_dir if target == pnode else None,
                                    signing)
        path = run_pipeline(cli, steps, data)
    finally:
        if count and not was_active:
            _deactivate(cli, instance)
    cli.ToStdout("%s", path if target == me else f"{target}:{path}")
    return 0
