#!/usr/bin/env bash
# QA against a real single-node Ganeti 3.0 cluster: brings the cluster up
# (qa/cluster.sh), installs ganeti-ovf into a throw-away prefix with
# tools/install.sh (its sbin first on PATH, as /usr/local/sbin is on a node),
# runs qa/qa_ovf.py, and always tears the cluster down again.
#   qa/run.sh [--config FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$(mktemp -d /tmp/ganeti-ovf-qa-prefix.XXXXXX)
cleanup() {
  qa/cluster.sh down || true
  tools/install.sh --prefix "$prefix" --uninstall >/dev/null || true
  rm -rf "$prefix"
}
trap cleanup EXIT
qa/cluster.sh down >/dev/null 2>&1 || true
qa/cluster.sh up
tools/install.sh --prefix "$prefix"
/usr/bin/python3 qa/qa_ovf.py --prefix "$prefix" "$@"
