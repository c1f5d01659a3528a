#!/usr/bin/env bash
# Demo: build a small VMware-style appliance (OVA: streamOptimized vmdk +
# qcow2 disk, SHA256 manifest) with qemu-img, show what it holds, verify it,
# import it into a Ganeti export directory, and show the result.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d /tmp/ganeti-ovf-demo.XXXXXX)
os_dir=$work/os
mkdir -p "$os_dir"
[[ -d /usr/share/ganeti/os/noop ]] || { echo "demo: ganeti-os-noop missing" >&2; exit 1; }

echo "== building an appliance in $work"
ova=$(.venv/bin/python tools/make_fixtures.py "$work")
echo "$ova"
echo; echo "== ovfconverter info"
ovfconverter info "$ova"
echo; echo "== ovfconverter verify"
ovfconverter verify "$ova"
echo; echo "== ovfconverter os-list"
ovfconverter os-list
echo; echo "== ovfconverter import -o noop --output-dir $work/export"
out=$(ovfconverter import "$ova" -o noop --output-dir "$work/export" -v)
echo "$out"
echo; echo "== $out/config.ini"
cat "$out/config.ini"
echo "== dumps"
ls -ls "$out"
echo; echo "Ready for: gnt-backup import -n NODE --src-node NODE --src-dir $out -t file INSTANCE"
