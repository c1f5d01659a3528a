#!/usr/bin/env bash
# One-time (idempotent) set-up on a Debian 12 node or CI machine, as root:
# Debian packages (qemu-utils, Ganeti, the Python libraries Ganeti nodes
# already have) and a venv in .venv on the system python3 that sees them,
# with the test tools and ganeti-ovf installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(qemu-utils python3-venv python3-pip python3-lxml python3-pyparsing
      python3-cryptography python3-docutils ganeti ganeti-os-noop iproute2 time
      git debhelper dh-python python3-all python3-setuptools)  # last: qa/deb.sh build
missing=()
for p in "${PKGS[@]}"; do
  [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] \
    || missing+=("$p")
done
if ((${#missing[@]})); then
  [[ $EUID -eq 0 ]] || { echo "setup: run as root to install: ${missing[*]}" >&2; exit 1; }
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    # Keep package scripts from starting Ganeti daemons on this machine.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  [[ $created_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
fi

if [[ ! -x .venv/bin/python ]]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
# Debian's setuptools 66 cannot install a renamed package dir (lib -> ganeti_ovf)
# in editable mode; a newer one in the venv can (PEP 660).
.venv/bin/python -m pip install -q --disable-pip-version-check \
  "setuptools>=68" pytest pytest-mock hypothesis ruff
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
.venv/bin/python -c "import ganeti_ovf, lxml, pyparsing, cryptography, pytest"
