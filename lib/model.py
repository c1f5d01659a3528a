"""The model in the middle: what an appliance is, independent of its files.

Readers (descriptor, exportdir) build these values; writers consume them.
All sizes are int bytes (MiB appears only in ``exportdir``).  Values are
frozen: command-line overrides use ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "MAX_CAPACITY",
    "MAX_MEMORY",
    "MAX_VCPUS",
    "ByteRange",
    "FileRef",
    "Disk",
    "Network",
    "Nic",
    "GanetiNic",
    "GanetiInfo",
    "Product",
    "VirtualSystem",
    "Envelope",
]


#: The most vCPUs a package may ask for.  Ganeti itself only asks for a
#: positive int (``BE_VCPUS`` is ``VTYPE_INT``); its hypervisors bound it:
#: Linux KVM accepts at most 4096 on x86-64 (``KVM_MAX_VCPUS``, the top of
#: ``CONFIG_KVM_MAX_NR_VCPUS``' range), Xen HVM guests 128
#: (``HVM_MAX_VCPUS``).  Above the largest of these no Ganeti node runs it.
MAX_VCPUS = 4096

#: The most memory a package may ask for: 4 PiB, x86-64's largest
#: physical address space (52 bits, the architectural MAXPHYADDR limit);
#: no KVM or Xen guest can be given more.  (Ganeti's ``maxmem`` is an int
#: of MiB, ``VTYPE_SIZE``, with no bound of its own.)
MAX_MEMORY = 1 << 52

#: The largest disk capacity that can be used: qemu-img's images are
#: int64-sized (QEMU's ``BDRV_MAX_LENGTH`` is below ``INT64_MAX``).
MAX_CAPACITY = (1 << 63) - (1 << 30)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[offset, offset+size)`` of a real file: a disk inside an OVA,
    or a whole file (offset 0) in a directory package.  Reading in place
    like this is what lets us convert straight out of a tar."""

    path: str
    offset: int = 0
    size: int = 0
    label: str = ""  # the name to show the operator (path may be /proc/self/fd/N)

    def read(self, start: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``start`` (relative), never past the range."""
        if start >= self.size:
            return b""
        length = min(length, self.size - start)
        with open(self.path, "rb") as f:
            f.seek(self.offset + start)
            return f.read(length)


@dataclass(frozen=True, slots=True)
class FileRef:
    """One ``References/File``: where a disk's bytes live in the package."""

    file_id: str
    href: str
    size: int | None = None
    compression: str | None = None  # None or "gzip"
    chunk_size: int | None = None


@dataclass(frozen=True, slots=True)
class Disk:
    """One virtual disk as attached to a system, in attachment order.

    ``file_ref`` is None for a blank disk (capacity only, created empty).
    ``capacity_problem`` says why a declared capacity cannot be used
    (capacity is then None); an omitted one is just None.
    """

    disk_id: str
    capacity: int | None
    file_ref: FileRef | None = None
    format_uri: str | None = None
    populated_size: int | None = None
    parent_ref: str | None = None
    capacity_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    description: str | None = None


@dataclass(frozen=True, slots=True)
class Nic:
    """One network adapter (counted by adapters, not by networks)."""

    network: str | None = None
    mac: str | None = None
    model: str | None = None  # rasd:ResourceSubType, e.g. "E1000", "virtio"
    name: str | None = None


@dataclass(frozen=True, slots=True)
class GanetiNic:
    """A NIC as Ganeti's own section describes it (all optional)."""

    mode: str | None = None
    link: str | None = None
    mac: str | None = None
    ip: str | None = None
    network: str | None = None
    name: str | None = None
    vlan: str | None = None


@dataclass(frozen=True, slots=True)
class GanetiInfo:
    """Ganeti's own data in a package, so Ganeti -> OVF -> Ganeti is lossless."""

    os_name: str | None = None
    os_params: dict[str, str] = field(default_factory=dict)
    os_params_private: dict[str, str] = field(default_factory=dict)
    hypervisor: str | None = None
    hv_params: dict[str, str] = field(default_factory=dict)
    backend: dict[str, str] = field(default_factory=dict)
    disk_template: str | None = None
    tags: tuple[str, ...] = ()
    nics: tuple[GanetiNic, ...] = ()
    disk_names: tuple[str | None, ...] = ()
    version: str | None = None
    auto_balance: str | None = None


@dataclass(frozen=True, slots=True)
class Product:
    """A ProductSection, its resolved properties and any EULA text."""

    product: str | None = None
    vendor: str | None = None
    version: str | None = None
    full_version: str | None = None
    product_url: str | None = None
    properties: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class VirtualSystem:
    system_id: str
    name: str | None = None
    info: str | None = None
    os_id: int | None = None  # CIM OperatingSystemSection ovf:id
    os_description: str | None = None
    os_type: str | None = None  # vmw:osType, if any
    cpus: int | None = None
    memory: int | None = None  # bytes
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    video_memory: int | None = None  # bytes
    virtual_system_type: str | None = None
    products: tuple[Product, ...] = ()
    eulas: tuple[str, ...] = ()
    ganeti: GanetiInfo | None = None
    # Why a declared CPU count / memory cannot be used (the value is then
    # None); None when it is usable or simply not declared.
    cpus_problem: str | None = None
    memory_problem: str | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A whole descriptor: every system, plus what the reader noticed.

    ``warnings`` lists what was present but not understood, so an importer
    can be lenient and still tell the operator (never silently drop).
    """

    version: str  # "0.9", "1.x" or "2.x"
    files: tuple[FileRef, ...] = ()
    disks: tuple[Disk, ...] = ()  # DiskSection, declaration order
    networks: tuple[Network, ...] = ()
    systems: tuple[VirtualSystem, ...] = ()
    configurations: tuple[str, ...] = ()  # DeploymentOption ids, default first
    configuration: str | None = None  # the one items were chosen for
    warnings: tuple[str, ...] = ()

    def system(self, system_id: str | None = None) -> VirtualSystem:
        """The chosen system: by id, or the only one.  KeyError/ValueError otherwise."""
        if system_id is None:
            if len(self.systems) != 1:
                raise ValueError(len(self.systems))
            return self.systems[0]
        for vs in self.systems:
            if vs.system_id == system_id:
                return vs
        raise KeyError(system_id)
