#!/usr/bin/env bash
# The Debian package, built and checked the way an operator installs it.
#
#   qa/deb.sh build         build the .deb (dpkg-buildpackage -us -uc -b in a
#                           copy of the tree); prints its path (build/deb/)
#   qa/deb.sh install DEB   install it (with its dependencies); idempotent, quiet
#   qa/deb.sh purge         remove it and its diversion; idempotent, quiet
#   qa/deb.sh check         build, install, check that /usr/sbin/gnt-backup is
#                           diverted and runs ours, purge, and check that Ganeti's
#                           /usr/sbin/gnt-backup is back byte for byte (symlink
#                           target and bytes) with no diversion left
#
# Needs root (dpkg) and the build tools (debhelper, dh-python: tools/setup.sh).
# install/purge change the machine: /usr/sbin/gnt-backup is diverted while the
# package is installed.  Runs are serialised with a lock.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PKG=ganeti-ovf
SBIN=/usr/sbin/gnt-backup
DIVERTED=/usr/sbin/gnt-backup.distrib

die() { echo "deb: $*" >&2; exit 1; }
need_root() { [[ $EUID -eq 0 ]] || die "needs root (dpkg)"; }
lock() { exec 8>/run/lock/ganeti-ovf-deb.lock; flock -w 600 8 || die "another qa/deb.sh is running"; }

# Runs a command quietly; on failure shows what it said.
quietly() {
  local log; log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; die "failed: $*"
  fi
  rm -f "$log"
}

build() {
  local work out=${DEB_OUT:-$ROOT/build/deb}
  work=$(mktemp -d /tmp/ganeti-ovf-deb.XXXXXX)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/$PKG" "$out"
  # The tree as git sees it (tracked and new files, nothing ignored).
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | (cd "$ROOT" && tar -c --null -T -) | tar -x -C "$work/$PKG"
  (cd "$work/$PKG" && quietly dpkg-buildpackage -us -uc -b)
  local deb
  deb=$(ls "$work"/${PKG}_*_all.deb)
  cp "$deb" "$out/"
  echo "$out/$(basename "$deb")"
}

installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null || true)" == "install ok installed" ]]
}

install_deb() {
  local deb=${1:?usage: qa/deb.sh install DEB}
  [[ -f $deb ]] || die "$deb: no such file"
  need_root
  # apt-get resolves the dependencies; --reinstall takes a rebuilt package
  # of the same version.
  DEBIAN_FRONTEND=noninteractive quietly apt-get install -y -qq --reinstall \
    --no-install-recommends -o DPkg::Lock::Timeout=300 "$(realpath "$deb")"
}

purge() {
  need_root
  if installed || dpkg-query -W "$PKG" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive quietly dpkg --purge "$PKG"
  fi
}

# What an operator would compare: type, symlink target, and the bytes run.
state() {
  local f=$1
  if [[ -L $f ]]; then
    echo "symlink -> $(readlink "$f"); $(sha256sum < "$(readlink -f "$f")")"
  elif [[ -e $f ]]; then
    echo "file $(stat -c %a "$f"); $(sha256sum < "$f")"
  else
    echo "absent"
  fi
}

diversion() { dpkg-divert --list "$SBIN"; }

check() {
  need_root
  [[ -e $SBIN || -L $SBIN ]] || die "$SBIN is absent: Ganeti is not installed"
  purge  # a package left by an earlier run would hide Ganeti's file
  [[ -z $(diversion) ]] || die "$SBIN is diverted by someone else: $(diversion)"
  local before deb
  before=$(state "$SBIN")
  deb=$(build)
  echo "deb: built $deb"
  install_deb "$deb"
  trap purge EXIT  # never leave the diversion behind
  local div
  div=$(diversion)
  [[ $div == "diversion of $SBIN to $DIVERTED by $PKG" ]] || die "diversion: '$div'"
  [[ $(state "$DIVERTED") == "$before" ]] || die "$DIVERTED is not Ganeti's $SBIN"
  grep -q "ganeti_ovf.gnt_backup" "$SBIN" || die "$SBIN is not ours"
  local help
  help=$("$SBIN" import --help 2>&1) || die "gnt-backup import --help failed: $help"
  [[ $help == *"--ovf"* ]] || die "gnt-backup import --help shows no --ovf: $help"
  # Without --ovf it is Ganeti's command: same output, same exit status.
  local ours theirs rc_ours=0 rc_theirs=0
  ours=$("$SBIN" list-fields 2>&1) || rc_ours=$?
  theirs=$("$DIVERTED" list-fields 2>&1) || rc_theirs=$?
  [[ $ours == "$theirs" && $rc_ours == "$rc_theirs" ]] \
    || die "gnt-backup list-fields differs from Ganeti's ($rc_ours vs $rc_theirs)"
  [[ $(/usr/bin/ovfconverter --version) == "ovfconverter "* ]] || die "ovfconverter does not run"
  for f in /usr/share/man/man1/ovfconverter.1.gz /usr/share/man/man8/gnt-backup-ovf.8.gz \
           /usr/share/bash-completion/completions/ovfconverter \
           /etc/bash_completion.d/gnt-backup-ovf; do
    [[ -s $f ]] || die "$f not installed"
  done
  echo "deb: installed: $SBIN diverted to $DIVERTED, gnt-backup runs ours (--ovf)," \
       "pass-through output and status equal Ganeti's"
  purge
  trap - EXIT
  [[ -z $(diversion) ]] || die "diversion left after purge: $(diversion)"
  [[ ! -e $DIVERTED && ! -L $DIVERTED ]] || die "$DIVERTED left after purge"
  local after
  after=$(state "$SBIN")
  [[ $after == "$before" ]] || die "$SBIN after purge: '$after', before: '$before'"
  [[ ! -e /usr/lib/python3/dist-packages/ganeti_ovf ]] || die "package files left"
  [[ ! -e /etc/bash_completion.d/gnt-backup-ovf ]] || die "completion conffile left"
  echo "deb: purged: $SBIN is Ganeti's again ($after), no diversion"
}

case ${1:-} in
  build) lock; build ;;
  install) lock; install_deb "${2:-}" ;;
  purge) lock; purge ;;
  check) lock; check ;;
  *) echo "usage: qa/deb.sh build | install DEB | purge | check" >&2; exit 2 ;;
esac
