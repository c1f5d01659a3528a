#!/usr/bin/env bash
# Demo: build a small VMware-style appliance (OVA: streamOptimized vmdk +
# qcow2 disk, SHA256 manifest, two NICs) with qemu-img; show it, verify it,
# convert it into a Ganeti export directory with ovfconverter; then (as root,
# unless DEMO_CLUSTER=0) do the real job on a throw-away single-node Ganeti
# cluster: gnt-backup import --ovf, the instance as Ganeti sees it, and
# gnt-backup export --ovf --ova back out.  The cluster is torn down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${SKIP_SETUP:-0} == 1 ]] || tools/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d "${TMPDIR:-/tmp}/ganeti-ovf-demo.XXXXXX")
# The work dir goes on every exit (DEMO_KEEP=1 keeps it to look around).
cleanup() { [[ ${DEMO_KEEP:-0} == 1 ]] && echo "(kept $work)" || rm -rf -- "$work"; }
trap cleanup EXIT
echo "== building an appliance in $work"
ova=$(.venv/bin/python tools/make_fixtures.py "$work")
echo "$ova"
echo; echo "== ovfconverter info $ova"
ovfconverter info "$ova"
echo; echo "== ovfconverter verify $ova"
ovfconverter verify "$ova"
echo; echo "== ovfconverter os-list"
ovfconverter os-list
echo; echo "== ovfconverter import $ova -o noop --output-dir $work/export -v"
out=$(ovfconverter import "$ova" -o noop --output-dir "$work/export" -v)
echo "$out"
echo; echo "== $out/config.ini"
cat "$out/config.ini"
echo "== dumps"
ls -ls "$out"

if [[ ${DEMO_CLUSTER:-1} == 0 || $EUID -ne 0 ]]; then
  echo; echo "(cluster part skipped: needs root and DEMO_CLUSTER unset)"
  exit 0
fi
prefix=$work/prefix
trap 'qa/cluster.sh down >/dev/null 2>&1 || true; cleanup' EXIT
echo; echo "== a throw-away Ganeti cluster (qa/cluster.sh up) and the plugin (tools/install.sh)"
qa/cluster.sh up
tools/install.sh --prefix "$prefix"
# On the master (node 1), in its network and mount namespaces.
g() { echo "# $*"; qa/cluster.sh run env PATH="$prefix/sbin:$PATH" "$@"; }
node=$(qa/cluster.sh run gnt-cluster getmaster)
echo
g gnt-backup import --ovf "$ova" -o noop -n "$node" -t file \
  --no-name-check --no-ip-check demo-vm
echo
g gnt-instance list -o name,os,disk_template,disk.sizes,be/maxmem,be/vcpus,nic.macs demo-vm
echo
g gnt-backup export --ovf --ova --output-dir "$work/out" -n "$node" demo-vm
echo
g ovfconverter info "$work/out/demo-vm.ova"
