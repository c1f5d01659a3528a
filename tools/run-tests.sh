#!/usr/bin/env bash
# The whole test suite: lint, unit + integration + corpus tests (real
# qemu-img, lxml, files), on Debian's python3 as a Ganeti node runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/python -m ruff check lib tests tools qa scripts/ovfconverter scripts/gnt-backup
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
