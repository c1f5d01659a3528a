"""What varies between OVF versions, as data (after COT's name_helper).

Readers classify any namespace URI into a *role* (``ovf``, ``rasd``,
``vssd``, ``sasd``, ``epasd``, ``gnt``, ``vmw``...) so that 0.9, 1.x, 2.x and
the variants real tools write (trailing slash, ``.xsd`` suffix,
``schema.dmtf.org`` typos, no namespace at all) read the same way.  Writers
take exact URIs from ``WRITE_NS``.
"""

from __future__ import annotations

import re

__all__ = [
    "GANETI_NS",
    "WRITE_NS",
    "ns_role",
    "ovf_version_of",
    "RESOURCE_TYPES",
]

GANETI_NS = "http://ganeti"

OVF_09_NS = "http://www.vmware.com/schema/ovf/1/envelope"

# Exact namespaces we write, per version family.
WRITE_NS: dict[str, dict[str, str]] = {
    "1.0": {
        "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
        "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
        "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
        "xsi": "http://www.w3.org/2001/XMLSchema-instance",
        "gnt": GANETI_NS,
    },
    "2.0": {
        "ovf": "http://schemas.dmtf.org/ovf/envelope/2",
        "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
        "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
        "sasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData",
        "epasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData",
        "cim": "http://schemas.dmtf.org/wbem/wscim/1/common",
        "xsi": "http://www.w3.org/2001/XMLSchema-instance",
        "gnt": GANETI_NS,
    },
}

_ROLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The digit is missing in pre-1.0 drafts (IBM open-ovf).
    ("ovf", re.compile(r"schemas?\.dmtf\.org/ovf/envelope(/\d|/?$)", re.I)),
    ("ovf", re.compile(r"vmware\.com/schema/ovf/\d/envelope", re.I)),
    ("rasd", re.compile(r"CIM_ResourceAllocationSettingData", re.I)),
    ("vssd", re.compile(r"CIM_VirtualSystemSettingData", re.I)),
    ("sasd", re.compile(r"CIM_StorageAllocationSettingData", re.I)),
    ("epasd", re.compile(r"CIM_EthernetPortAllocationSettingData", re.I)),
    ("gnt", re.compile(r"^http://ganeti/?$")),
    ("vmw", re.compile(r"vmware\.com/schema/ovf$", re.I)),
    ("vbox", re.compile(r"virtualbox", re.I)),
    ("ovfenv", re.compile(r"dmtf\.org/ovf/environment", re.I)),
    ("cim", re.compile(r"wscim/1/common", re.I)),
    ("xsi", re.compile(r"XMLSchema-instance")),
)


def ns_role(uri: str | None) -> str:
    """The role of a namespace URI; ``""`` (no namespace) reads as ``ovf``,
    since some producers write an Envelope in no namespace at all."""
    if not uri:
        return "ovf"
    for role, pat in _ROLE_PATTERNS:
        if pat.search(uri):
            return role
    return "other"


def ovf_version_of(root_ns: str | None, version_attr: str | None) -> str:
    """``"0.9"``, ``"1.x"`` or ``"2.x"`` from the Envelope's namespace."""
    if root_ns:
        if re.search(r"vmware\.com/schema/ovf/\d/envelope", root_ns, re.I):
            return "0.9"
        m = re.search(r"ovf/envelope/(\d)", root_ns)
        if m:
            return "2.x" if m.group(1) == "2" else "1.x"
    if version_attr:
        v = version_attr.strip()
        if v.startswith("0."):
            return "0.9"
        if v.startswith("2"):
            return "2.x"
    return "1.x"


# CIM ResourceType values we act on (DSP1043 / CIM_ResourceAllocationSettingData).
RESOURCE_TYPES = {
    "processor": 3,
    "memory": 4,
    "ide": 5,
    "scsi": 6,
    "ethernet": 10,
    "floppy": 14,
    "cdrom": 15,
    "dvd": 16,
    "disk": 17,
    "sata": 20,
    "usb": 23,
    "graphics": 24,
    "sound": 35,
}
