#!/usr/bin/env bash
# QA against a real throw-away Ganeti 3.0 cluster of QA_NODES nodes (default 3)
# on this machine (qa/cluster.sh): installs ganeti-ovf the way operators do,
# as the .deb built from this tree (install_plugin: qa/deb.sh build + install;
# it diverts /usr/sbin/gnt-backup, shared by every node namespace, and is
# purged again at the end), or with QA_INSTALL=prefix by tools/install.sh into
# a throw-away prefix (its sbin first on PATH, as /usr/local/sbin is), runs
# qa/qa_ovf.py inside the master node with a config naming the
# cluster's nodes, templates and an adopted loop device, and always tears
# everything down again, also when a scenario fails or it is interrupted.
# The last line is the summary:
#   QA: N passed, M failed on a K-node cluster (templates: ...)
# and the exit status is non-zero when anything failed.
#   qa/run.sh [qa_ovf.py options, e.g. --workdir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
K=${QA_NODES:-3}
TEMPLATES="file, sharedfile, blockdev"
prefix=$(mktemp -d /tmp/ganeti-ovf-qa-prefix.XXXXXX)
summary=$prefix.summary
config=$prefix.json

# The plugin install step: one function each.
INSTALL=${QA_INSTALL:-deb}
prefix_arg=()
install_plugin() {
  if [[ $INSTALL == deb ]]; then
    local deb; deb=$(qa/deb.sh build); qa/deb.sh install "$deb"
  else
    tools/install.sh --prefix "$prefix" >/dev/null; prefix_arg=(--prefix "$prefix")
  fi
}
remove_plugin() {
  if [[ $INSTALL == deb ]]; then
    qa/deb.sh purge || true
  else
    tools/install.sh --prefix "$prefix" --uninstall >/dev/null 2>&1 || true
  fi
  rm -rf "$prefix"
}

# Long steps run in the background and are waited for, so that INT/TERM run
# the teardown at once (it stops every process of the node namespaces).
bg=
run_bg() { "$@" & bg=$!; wait "$bg"; bg=; }

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $bg ]]; then kill "$bg" 2>/dev/null || true; wait "$bg" 2>/dev/null || true; fi
  qa/cluster.sh down >&2 || rc=1
  remove_plugin
  if [[ -s $summary ]]; then
    line=$(cat "$summary")
  else
    line="QA: 0 passed, 1 failed on a $K-node cluster (templates: $TEMPLATES)"
    rc=1
  fi
  rm -f "$summary" "$config"
  echo "$line"
  [[ $line == *" 0 failed "* ]] || ((rc)) || rc=1
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

qa/cluster.sh down >/dev/null 2>&1 || true
run_bg qa/cluster.sh up "$K" >&2
install_plugin
# An adopted block device on the second node (the master if K=1): 32 MiB,
# grown by 2 MiB after adoption (a partial 4 MiB LVM extent).
bnode=$((K > 1 ? 2 : 1))
qa/cluster.sh loop "$bnode" 32 ovfqa-blk0 >/dev/null
mapfile -t nodes < <(qa/cluster.sh nodes)
/usr/bin/python3 - "$config" "${nodes[@]}" <<'PY'
import json, sys
cfg = json.load(open("qa/qa-sample.json"))
nodes = sys.argv[2:]
cfg.update(name="cluster.ovfqa.test", nodes=nodes, **{
    "blockdev": {"node": nodes[1 if len(nodes) > 1 else 0], "path": "/dev/disk/ovfqa-blk0",
                 "grow-loop-mib": 2},
    "intrusive": True})
json.dump(cfg, open(sys.argv[1], "w"), indent=1)
PY
run_bg qa/cluster.sh run /usr/bin/python3 qa/qa_ovf.py "${prefix_arg[@]}" \
  --config "$config" --summary "$summary" "$@"
