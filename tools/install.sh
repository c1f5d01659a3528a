#!/usr/bin/env bash
# Install ganeti-ovf on a Ganeti node, or remove it again.
#
#   tools/install.sh [--prefix /usr/local]          install
#   tools/install.sh [--prefix /usr/local] --uninstall
#
# What goes where (nothing of Ganeti's own is touched or diverted):
#   PREFIX/lib/ganeti-ovf/ganeti_ovf/   the package (runs on /usr/bin/python3,
#                                        Ganeti's interpreter)
#   PREFIX/sbin/gnt-backup               Ganeti's gnt-backup plus --ovf; root's
#                                        PATH (and sudo's secure_path) has
#                                        /usr/local/sbin before /usr/sbin, so it
#                                        is the one operators run; without --ovf
#                                        it execs /usr/share/ganeti/default/gnt-backup
#   PREFIX/sbin/ovfconverter             the converter
#   PREFIX/share/man/man1/ovfconverter.1, man8/gnt-backup-ovf.8
#   PREFIX/lib/ganeti-ovf/INSTALLED      the list of the above, for --uninstall
#
# Needs Debian's python3-lxml, python3-pyparsing, python3-cryptography,
# python3-docutils (man pages) and qemu-utils; says which are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr/local
action=install
while (($#)); do
  case $1 in
    --prefix) prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    *) echo "usage: $0 [--prefix DIR] [--uninstall]" >&2; exit 2 ;;
  esac
done
libdir=$prefix/lib/ganeti-ovf
list=$libdir/INSTALLED

if [[ $action == uninstall ]]; then
  [[ -f $list ]] || { echo "install: nothing installed under $prefix" >&2; exit 1; }
  while IFS= read -r f; do rm -f -- "$f"; done < "$list"
  rm -rf -- "$libdir/ganeti_ovf" "$list"
  rmdir -- "$libdir" 2>/dev/null || true
  echo "removed ganeti-ovf from $prefix"
  exit 0
fi

py=/usr/bin/python3
missing=()
$py -c 'import lxml' 2>/dev/null || missing+=(python3-lxml)
$py -c 'import pyparsing' 2>/dev/null || missing+=(python3-pyparsing)
$py -c 'import cryptography' 2>/dev/null || missing+=(python3-cryptography)
$py -c 'import docutils' 2>/dev/null || missing+=(python3-docutils)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
if ((${#missing[@]})); then
  echo "install: missing packages; run: apt-get install ${missing[*]}" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$libdir" "$prefix/sbin" "$prefix/share/man/man1" "$prefix/share/man/man8"
rm -rf "$libdir/ganeti_ovf.new"
mkdir "$libdir/ganeti_ovf.new"
cp -r lib/. "$libdir/ganeti_ovf.new/"
find "$libdir/ganeti_ovf.new" -name __pycache__ -prune -exec rm -rf {} +
rm -rf "$libdir/ganeti_ovf"
mv "$libdir/ganeti_ovf.new" "$libdir/ganeti_ovf"

installed=()
for cmd in gnt-backup ovfconverter; do
  {
    echo "#!$py"
    echo "import sys"
    echo "sys.path.insert(0, '$libdir')"
    tail -n +2 "scripts/$cmd"
  } > "$tmp/$cmd"
  install -m 0755 "$tmp/$cmd" "$prefix/sbin/$cmd"
  installed+=("$prefix/sbin/$cmd")
done
$py tools/build_man.py "$tmp/man" >/dev/null
for page in "$tmp"/man/*.[18]; do
  sec=${page##*.}
  install -m 0644 "$page" "$prefix/share/man/man$sec/"
  installed+=("$prefix/share/man/man$sec/$(basename "$page")")
done
printf '%s\n' "${installed[@]}" > "$list"
echo "installed ganeti-ovf into $prefix (gnt-backup: $prefix/sbin/gnt-backup)"
