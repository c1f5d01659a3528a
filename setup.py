"""ganeti-ovf: OVF/OVA import and export for Ganeti clusters.

``build`` also renders man/*.rst into man pages with docutils (any docutils
warning fails the build) and installs them under share/man, with the bash
completion.  pyproject.toml declares what the build needs (docutils), so
pip's isolated build works.
"""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"
MAN_BUILD = os.path.join("build", "man")


def _man_pages():
    out = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "man"))):
        if name.endswith(".rst"):
            with open(os.path.join(ROOT, "man", name), encoding="utf-8") as f:
                section = next((ln.split(":")[2].strip() for ln in f
                                if ln.startswith(":Manual section:")), "1")
            out.setdefault(f"share/man/man{section}", []).append(
                os.path.join(MAN_BUILD, f"{name[:-4]}.{section}"))
    return sorted(out.items())


class BuildWithMan(build_py):
    def run(self):
        sys.path.insert(0, os.path.join(ROOT, "tools"))
        import build_man  # noqa: PLC0415

        build_man.build_all(os.path.join(ROOT, MAN_BUILD), VERSION)
        super().run()


setup(
    name="ganeti-ovf",
    version=VERSION,
    description="OVF/OVA import and export for Ganeti clusters",
    license="BSD-2-Clause",
    python_requires=">=3.11",
    packages=["ganeti_ovf", "ganeti_ovf.descriptor"],
    package_dir={"ganeti_ovf": "lib"},
    package_data={"ganeti_ovf": ["py.typed"]},
    install_requires=["lxml", "pyparsing>=3.0", "cryptography>=38"],
    extras_require={"test": ["pytest", "pytest-mock", "hypothesis", "ruff", "docutils"]},
    scripts=["scripts/ovfconverter"],
    data_files=_man_pages() + [("share/bash-completion/completions",
                                ["completion/ovfconverter"])],
    cmdclass={"build_py": BuildWithMan},
)
