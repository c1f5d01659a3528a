#!/usr/bin/env bash
# qa/cluster.sh up|down|run CMD... - a throw-away single-node Ganeti 3.0
# cluster for QA, inside a private network namespace.
#
#   up    installs ganeti + ganeti-os-noop if missing (daemons kept from
#         starting in the root namespace), creates netns "ovfqa" with bridge
#         ovfqa0 = 10.79.0.1/24, makes 10.79.0.0/24 unreachable from the root
#         namespace (nothing for the test net leaves the machine), and runs
#         "gnt-cluster init" inside it: fake hypervisor, file/sharedfile/
#         diskless templates, no SSH, no /etc/hosts edits, an instance policy
#         that admits 4 MiB disks and NIC-less instances.
#   down  stops every daemon and process of the netns, deletes it, and wipes
#         all cluster state (/var/lib/ganeti, /run/ganeti, logs, file storage).
#   run   runs CMD inside the namespace.
#
# Refuses to touch a cluster it did not make (a config.data that exists
# while our namespace does not).
set -euo pipefail

NS=ovfqa
BRIDGE=ovfqa0
NODE_IP=10.79.0.1
CLUSTER_IP=10.79.0.100
SUBNET=10.79.0.0/24
DOMAIN=ovfqa.test
CLUSTER=cluster.$DOMAIN
FILE_DIR=/srv/ganeti/file-storage
SHARED_DIR=/srv/ganeti/shared-file-storage
CONFIG=/var/lib/ganeti/config.data
MARK=/var/lib/ganeti/.ganeti-ovf-qa
RUN_DIR=/run/ganeti

say() { printf '[qa-cluster] %s\n' "$*" >&2; }
die() { printf '[qa-cluster] ERROR: %s\n' "$*" >&2; exit 1; }
inns() { ip netns exec "$NS" "$@"; }
[[ $EUID -eq 0 ]] || die "must run as root"

install_packages() {
  local p missing=()
  for p in ganeti ganeti-os-noop qemu-utils iproute2; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" == "install ok installed" ]] \
      || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  say "installing ${missing[*]}"
  local policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  [[ $policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
  return 0
}

up() {
  install_packages
  if [[ -e $CONFIG && ! -e $MARK ]]; then
    die "$CONFIG exists and is not ours; refusing to touch that cluster"
  fi
  [[ -e /run/netns/$NS ]] || ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip -n "$NS" link show "$BRIDGE" >/dev/null 2>&1 || ip -n "$NS" link add "$BRIDGE" type bridge
  ip -n "$NS" -4 addr show dev "$BRIDGE" | grep -q " $NODE_IP/" \
    || ip -n "$NS" addr add "$NODE_IP/24" dev "$BRIDGE"
  ip -n "$NS" link set "$BRIDGE" up
  local short node
  short=$(hostname -s)
  node=$short.$DOMAIN
  mkdir -p "/etc/netns/$NS"
  printf '127.0.0.1 localhost\n%s %s %s\n%s %s\n' "$NODE_IP" "$node" "$short" \
    "$CLUSTER_IP" "$CLUSTER" > "/etc/netns/$NS/hosts"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "/etc/netns/$NS/resolv.conf"
  ip route show type unreachable "$SUBNET" | grep -q . || ip route add unreachable "$SUBNET"
  mkdir -p "$FILE_DIR" "$SHARED_DIR" /etc/ganeti
  printf '%s\n%s\n' "$FILE_DIR" "$SHARED_DIR" > /etc/ganeti/file-storage-paths
  if [[ ! -e $CONFIG ]]; then
    say "gnt-cluster init $CLUSTER (node $node)"
    inns gnt-cluster init --enabled-hypervisors=fake \
      --enabled-disk-templates=file,sharedfile,diskless \
      --file-storage-dir="$FILE_DIR" --shared-file-storage-dir="$SHARED_DIR" \
      --master-netdev="$BRIDGE" --master-netmask=24 \
      --nic-parameters="mode=bridged,link=$BRIDGE" \
      --ipolicy-bounds-specs='min:disk-size=1,cpu-count=1,disk-count=1,memory-size=32,nic-count=0,spindle-use=1/max:cpu-count=8,disk-count=16,disk-size=1048576,memory-size=32768,nic-count=8,spindle-use=12' \
      --no-etc-hosts --no-ssh-init "$CLUSTER" >/dev/null
    touch "$MARK"
  elif ! inns gnt-cluster getmaster >/dev/null 2>&1; then
    say "starting daemons"
    inns /usr/lib/ganeti/daemon-util start-all
  fi
  local i
  for i in $(seq 1 30); do
    inns gnt-cluster getmaster >/dev/null 2>&1 && break
    sleep 1
  done
  inns gnt-os list --no-headers | grep -qx noop || die "OS noop not visible to Ganeti"
  say "up: master $(inns gnt-cluster getmaster)"
}

stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  if [[ -e $CONFIG && ! -e $MARK ]]; then
    die "$CONFIG exists and is not ours; refusing to touch that cluster"
  fi
  local pf pid
  shopt -s nullglob
  for pf in "$RUN_DIR"/ganeti-*.pid; do
    pid=$(<"$pf") || continue
    [[ $pid =~ ^[0-9]+$ ]] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null \
      | grep -q "$(basename "$pf" .pid)" && stop_pid "$pid"
  done
  if [[ -e /run/netns/$NS ]]; then
    for pid in $(ip netns pids "$NS" 2>/dev/null); do
      [[ $pid != "$$" ]] && stop_pid "$pid"
    done
    ip netns del "$NS"
  fi
  rm -rf "/etc/netns/$NS"
  rmdir /etc/netns 2>/dev/null || true
  ip route show type unreachable "$SUBNET" | grep -q . && ip route del unreachable "$SUBNET"
  [[ -d /var/lib/ganeti ]] && find /var/lib/ganeti -mindepth 1 -delete
  rm -rf "$RUN_DIR" /run/lock/ganeti-ssconf.lock
  [[ -d /var/log/ganeti ]] && find /var/log/ganeti -mindepth 1 -delete
  rm -f /etc/ganeti/file-storage-paths
  rm -rf "$FILE_DIR" "$SHARED_DIR"
  rmdir /srv/ganeti 2>/dev/null || true
  say "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  run) shift; inns "$@" ;;
  *) die "usage: $0 up|down|run CMD..." ;;
esac
