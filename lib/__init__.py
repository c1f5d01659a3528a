"""ganeti-ovf: OVF/OVA packages in and out of Ganeti export directories.

Data flows one way: package -> model -> export dir on import, and export
dir -> model -> package on export.  Only ``cli`` and ``gnt_backup`` know
about command lines, printing and exit codes.
"""

__version__ = "0.1.0"
