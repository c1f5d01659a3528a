#!/usr/bin/env bash
# qa/cluster.sh up [K] | down | run [-n I] CMD... | nodes | loop I SIZE_MIB NAME
#
# A throw-away Ganeti 3.0 cluster of K nodes (default 3) on this one machine.
#
#   Each node is a process tree in its own network, mount and UTS namespace:
#   network namespace "ovfqa-nI" (veth "eth0" enslaved to a local bridge
#   "ovfqa0" holding 10.79.0.I/24; every veth's peer sits on the bridge of a
#   hub namespace "ovfqa-hub"), a mount namespace in which private
#   directories under /var/tmp/ganeti-ovf-qa/nodeI are bind-mounted over
#   /var/lib/ganeti, /etc/ganeti, /run/ganeti, /var/log/ganeti, /srv/ganeti,
#   /etc/ssh, /root/.ssh, /run/lock, /dev/disk (tmpfs), /etc/hosts and
#   /etc/resolv.conf, and hostname nodeI.ovfqa.test.  A holder process
#   ("sleep infinity") keeps the namespaces; everything is entered with
#   nsenter.  Each node runs its own sshd on its private address, which
#   "gnt-node add" needs.  /srv/ganeti/shared-file-storage is the same
#   directory on every node (sharedfile).  10.79.0.0/24 is made unreachable
#   from the root namespace: nothing for the test net leaves the machine.
#
#   up     node 1 runs "gnt-cluster init" (fake hypervisor; file, sharedfile,
#          blockdev, diskless; an instance policy admitting 4 MiB disks and
#          NIC-less instances), nodes 2..K join with "gnt-node add".
#   down   stops every process of every node namespace (daemons, sshds,
#          holders, import/export helpers), detaches the loop devices made by
#          "loop", deletes the namespaces, the route and all state.  Safe to
#          run at any time, also half-way through "up".
#   run    runs CMD in node I (default 1, the master).
#   nodes  prints the node names, master first.
#   loop   makes a SIZE_MIB loop device and links it as /dev/disk/NAME on
#          node I (blockdev adoption needs /dev/disk/); prints the loop device.
set -euo pipefail

PREFIX=ovfqa
HUB=$PREFIX-hub
BRIDGE=ovfqa0
NET=10.79.0
SUBNET=$NET.0/24
CLUSTER_IP=$NET.100
DOMAIN=ovfqa.test
CLUSTER=cluster.$DOMAIN
BASE=/var/tmp/ganeti-ovf-qa
SHARED_DIR=/srv/ganeti/shared-file-storage
FILE_DIR=/srv/ganeti/file-storage
IPOLICY='min:disk-size=1,cpu-count=1,disk-count=1,memory-size=32,nic-count=0,spindle-use=1/max:cpu-count=8,disk-count=16,disk-size=1048576,memory-size=32768,nic-count=8,spindle-use=12'
# root-namespace mount points we had to create (removed again by down)
MOUNTPOINTS=(/run/ganeti /srv/ganeti /root/.ssh /dev/disk)

say() { printf '[qa-cluster] %s\n' "$*" >&2; }
die() { printf '[qa-cluster] ERROR: %s\n' "$*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "must run as root"

node_name() { printf 'node%s.%s' "$1" "$DOMAIN"; }
holder() { cat "$BASE/node$1/holder.pid" 2>/dev/null; }
inode() {  # inode I CMD...: run CMD inside node I
  local i=$1 pid; shift
  pid=$(holder "$i") || die "node $i is not up"
  nsenter -t "$pid" -m -u -n -- env -C "$PWD" "$@"
}

install_packages() {
  local p missing=()
  for p in ganeti ganeti-os-noop qemu-utils iproute2 openssh-server openssh-client util-linux; do
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

# The holder: runs in the node's fresh mount+UTS namespace (inside its
# network namespace), makes the private mounts, then sleeps forever.
holder_main() {
  local i=$1 d=$BASE/node$1
  mount --make-rprivate /
  mount --bind "$d/lib" /var/lib/ganeti
  mount --bind "$d/etc" /etc/ganeti
  mount --bind "$d/run" /run/ganeti
  mount --bind "$d/log" /var/log/ganeti
  mount --bind "$d/srv" /srv/ganeti
  mount --bind "$BASE/shared" "$SHARED_DIR"
  mount --bind "$d/ssh" /etc/ssh
  mount --bind "$d/rootssh" /root/.ssh
  mount -t tmpfs -o mode=755 tmpfs /run/lock
  mount -t tmpfs -o mode=755 tmpfs /dev/disk
  mount --bind "$BASE/hosts" /etc/hosts
  mount --bind "$BASE/resolv.conf" /etc/resolv.conf
  hostname "$(node_name "$i")"
  touch "$d/ready"
  exec sleep infinity
}

mkdir_like() {  # mkdir_like REF DIR: DIR with REF's owner and mode
  mkdir -p "$2"
  if [[ -e $1 ]]; then
    chown "$(stat -c %u:%g "$1")" "$2"; chmod "$(stat -c %a "$1")" "$2"
  fi
}

start_node() {
  local i=$1 d=$BASE/node$1 ns=$PREFIX-n$1
  mkdir -p "$d"
  mkdir_like /var/lib/ganeti "$d/lib"
  mkdir_like /var/log/ganeti "$d/log"
  mkdir -p "$d/run" "$d/srv/file-storage" "$d/srv/shared-file-storage" "$d/etc" "$d/lib/export"
  install -d -m 700 "$d/rootssh"
  cp -a /etc/ganeti/. "$d/etc/"
  printf '%s\n%s\n' "$FILE_DIR" "$SHARED_DIR" > "$d/etc/file-storage-paths"
  rm -rf "$d/ssh"; cp -a /etc/ssh "$d/ssh"
  ip netns add "$ns"
  ip -n "$HUB" link add "v$i" type veth peer name eth0 netns "$ns"
  ip -n "$HUB" link set "v$i" master "$BRIDGE" up
  ip -n "$ns" link set lo up
  ip -n "$ns" link add "$BRIDGE" type bridge
  ip -n "$ns" link set eth0 master "$BRIDGE" up
  ip -n "$ns" addr add "$NET.$i/24" dev "$BRIDGE"
  ip -n "$ns" link set "$BRIDGE" up
  ip netns exec "$ns" unshare --mount --uts --propagation private -- \
    "$(readlink -f "$0")" __holder "$i" </dev/null >"$d/holder.log" 2>&1 &
  echo $! > "$d/holder.pid"
  local t
  for t in $(seq 1 100); do [[ -e $d/ready ]] && break; sleep 0.1; done
  [[ -e $d/ready ]] || die "node $i: namespace set-up failed: $(cat "$d/holder.log")"
  mkdir -p /run/sshd
  inode "$i" /usr/sbin/sshd -o "ListenAddress=$NET.$i" -o "PidFile=$d/sshd.pid" \
    -o PermitRootLogin=prohibit-password -o PasswordAuthentication=no -o UseDNS=no
}

wait_master() {
  local t
  for t in $(seq 1 60); do
    inode 1 gnt-cluster getmaster >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "master daemon did not answer"
}

up() {
  local k=${1:-3} i
  [[ $k =~ ^[1-9]$ ]] || die "node count must be 1..9"
  install_packages
  [[ -e /run/netns/$HUB ]] && die "already up (run: $0 down)"
  for i in "${MOUNTPOINTS[@]}"; do
    [[ -e $i ]] || { mkdir -p "$i"; echo "$i" >> "$BASE.created"; }
  done
  mkdir -p "$BASE/shared"
  echo "$k" > "$BASE/count"
  {
    printf '127.0.0.1 localhost\n%s %s\n' "$CLUSTER_IP" "$CLUSTER"
    for i in $(seq 1 "$k"); do printf '%s.%s %s node%s\n' "$NET" "$i" "$(node_name "$i")" "$i"; done
  } > "$BASE/hosts"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' > "$BASE/resolv.conf"
  ip route show type unreachable "$SUBNET" | grep -q . || ip route add unreachable "$SUBNET"
  ip netns add "$HUB"
  ip -n "$HUB" link add "$BRIDGE" type bridge
  ip -n "$HUB" link set "$BRIDGE" up
  for i in $(seq 1 "$k"); do start_node "$i"; done
  say "gnt-cluster init $CLUSTER (master $(node_name 1))"
  inode 1 gnt-cluster init --enabled-hypervisors=fake \
    --enabled-disk-templates=file,sharedfile,blockdev,diskless \
    --file-storage-dir="$FILE_DIR" --shared-file-storage-dir="$SHARED_DIR" \
    --master-netdev="$BRIDGE" --master-netmask=24 \
    --nic-parameters="mode=bridged,link=$BRIDGE" \
    --ipolicy-bounds-specs="$IPOLICY" --no-etc-hosts "$CLUSTER" >/dev/null
  wait_master
  for i in $(seq 2 "$k"); do
    # The master's root key lets "gnt-node add" in; Ganeti then installs
    # the cluster's own keys (prepare-node-join).
    cat "$BASE"/node1/rootssh/id_*.pub > "$BASE/node$i/rootssh/authorized_keys"
    say "gnt-node add $(node_name "$i")"
    inode 1 gnt-node add --no-ssh-key-check "$(node_name "$i")" >"$BASE/node$i/add.log" 2>&1 \
      || { cat "$BASE/node$i/add.log" >&2; die "gnt-node add $(node_name "$i") failed"; }
  done
  inode 1 gnt-os list --no-headers | grep -qx noop || die "OS noop not visible to Ganeti"
  say "up: $k node(s), master $(inode 1 gnt-cluster getmaster)"
}

stop_pid() {
  local pid=$1 t
  kill -TERM "$pid" 2>/dev/null || return 0
  for t in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && return 0
    sleep 0.2
  done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  local ns pid i f
  shopt -s nullglob
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-n[0-9]*$" || true); do
    # Ganeti's daemons first, then everything else
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -q 'ganeti-\|/daemons/' \
        && stop_pid "$pid"
    done
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      [[ $pid != "$$" ]] && stop_pid "$pid"
    done
    ip netns del "$ns"
  done
  [[ -e /run/netns/$HUB ]] && ip netns del "$HUB"
  for f in "$BASE"/node*/loops; do
    while read -r dev; do losetup -d "$dev" 2>/dev/null || true; done < "$f"
  done
  ip route show type unreachable "$SUBNET" | grep -q . && ip route del unreachable "$SUBNET"
  rm -rf "$BASE"
  if [[ -e $BASE.created ]]; then
    while read -r f; do rmdir "$f" 2>/dev/null || true; done < <(tac "$BASE.created")
    rm -f "$BASE.created"
  fi
  say "down"
}

loop() {  # loop I SIZE_MIB NAME
  local i=$1 img=$BASE/node$1/$3.img dev
  truncate -s "${2}M" "$img"
  dev=$(losetup -f --show "$img")
  echo "$dev" >> "$BASE/node$i/loops"
  inode "$i" ln -sfn "$dev" "/dev/disk/$3"
  echo "$dev"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  run) shift; n=1; if [[ ${1:-} == -n ]]; then n=$2; shift 2; fi; inode "$n" "$@" ;;
  nodes) for i in $(seq 1 "$(cat "$BASE/count")"); do node_name "$i"; echo; done ;;
  loop) shift; loop "$@" ;;
  __holder) holder_main "$2" ;;
  *) die "usage: $0 up [K] | down | run [-n I] CMD... | nodes | loop I SIZE_MIB NAME" ;;
esac
