"""What gnt-backup export --ovf takes from Ganeti's instance query."""

from __future__ import annotations

from ganeti_ovf.exportdir import MIB, render_config
from ganeti_ovf.gnt_export import FIELDS, instance_config

ROW = {
    "name": "web1", "os": "noop", "pnode": "node1", "oper_state": False, "admin_state": "down",
    "disks_active": False, "disk_template": "file", "hypervisor": "kvm",
    "be/maxmem": 512, "be/minmem": 256, "be/vcpus": 2,
    "custom_beparams": {"auto_balance": False}, "custom_hvparams": {"kernel_path": ""},
    "custom_osparams": {"x": "1%"}, "tags": ["web", "env:prod"],
    "disk.sizes": [64, 8], "disk.names": ["root", None],
    "nic.macs": ["aa:00:00:00:00:01"], "nic.ips": [None], "nic.modes": ["bridged"],
    "nic.links": ["br0"], "nic.networks": [None], "nic.names": ["eth0"], "nic.vlans": [""],
}


def test_row_covers_the_queried_fields():
    assert set(ROW) == set(FIELDS)


def test_instance_config():
    cfg = instance_config(ROW)
    assert (cfg.name, cfg.os, cfg.disk_template, cfg.hypervisor) == ("web1", "noop", "file",
                                                                     "kvm")
    assert [d.size for d in cfg.disks] == [64 * MIB, 8 * MIB]
    assert [d.name for d in cfg.disks] == ["root", None]
    assert cfg.backend == {"auto_balance": "False", "maxmem": "512", "minmem": "256",
                           "vcpus": "2"}
    assert cfg.hv_params == {"kernel_path": ""} and cfg.os_params == {"x": "1%"}
    assert cfg.tags == ("env:prod", "web")
    nic = cfg.nics[0]
    assert (nic.mac, nic.mode, nic.link, nic.name, nic.ip, nic.vlan) == (
        "aa:00:00:00:00:01", "bridged", "br0", "eth0", None, None)
    text = render_config(cfg)  # and it renders as Ganeti reads it
    assert "x = 1%%" in text and "disk0_name = root" in text
