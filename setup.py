"""ganeti-ovf: OVF/OVA import and export for Ganeti clusters."""

from setuptools import setup

setup(
    name="ganeti-ovf",
    version="0.1.0",
    description="OVF/OVA import and export for Ganeti clusters",
    license="BSD-2-Clause",
    python_requires=">=3.11",
    packages=["ganeti_ovf", "ganeti_ovf.descriptor"],
    package_dir={"ganeti_ovf": "lib"},
    package_data={"ganeti_ovf": ["py.typed"]},
    install_requires=["lxml", "pyparsing>=3.0", "cryptography>=38"],
    extras_require={"test": ["pytest", "pytest-mock", "hypothesis", "ruff"]},
    scripts=["scripts/ovfconverter"],
)
