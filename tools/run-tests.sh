#!/usr/bin/env bash
# The whole test suite: lint, then unit + integration + corpus + CLI tests
# (real qemu-img, lxml, files) on Debian's python3 as a Ganeti node runs it,
# the packaging checks (tools/check-wheel.sh; qa/deb.sh check as root), then
# the QA against a real three-node Ganeti cluster (qa/run.sh; needs root;
# SKIP_QA=1 skips it, the .deb check and the demo), then tools/demo.sh.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/python -m ruff check lib tests tools qa scripts/ovfconverter scripts/gnt-backup
.venv/bin/python -m pytest -q -p no:cacheprovider "$@" tests
# Packaging: sdist and wheel built in isolation, the wheel installed into a
# fresh venv; then the .deb installed, checked and purged (it diverts
# /usr/sbin/gnt-backup while installed, so it is machine-wide like the QA).
tools/check-wheel.sh
if [[ ${SKIP_QA:-0} == 1 ]]; then
  echo "deb check skipped (SKIP_QA=1): qa/deb.sh check installs and purges the package"
elif [[ $EUID -ne 0 ]]; then
  echo "deb check skipped: qa/deb.sh check needs root (dpkg)"
else
  qa/deb.sh check
fi
if [[ ${SKIP_QA:-0} == 1 ]]; then
  echo "QA skipped (SKIP_QA=1)"
elif [[ $EUID -ne 0 ]]; then
  echo "QA skipped: it needs root (a Ganeti cluster in a network namespace)"
else
  qa/run.sh
  # The README's first command, cluster part included, as an operator runs it.
  tools/demo.sh > "${TMPDIR:-/tmp}/ganeti-ovf-demo.log" 2>&1 \
    || { tail -n 40 "${TMPDIR:-/tmp}/ganeti-ovf-demo.log"; echo "demo failed" >&2; exit 1; }
  echo "demo: OK (tools/demo.sh, import and export on a throw-away cluster)"
fi
