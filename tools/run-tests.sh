#!/usr/bin/env bash
# The whole test suite: lint, then unit + integration + corpus + CLI tests
# (real qemu-img, lxml, files) on Debian's python3 as a Ganeti node runs it,
# then the QA against a real single-node Ganeti cluster (qa/run.sh; needs
# root; SKIP_QA=1 skips it).  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/python -m ruff check lib tests tools qa scripts/ovfconverter scripts/gnt-backup
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
if [[ ${SKIP_QA:-0} == 1 ]]; then
  echo "QA skipped (SKIP_QA=1)"
elif [[ $EUID -ne 0 ]]; then
  echo "QA skipped: it needs root (a Ganeti cluster in a network namespace)"
else
  qa/run.sh
fi
