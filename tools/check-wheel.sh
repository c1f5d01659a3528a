#!/usr/bin/env bash
# Packaging check (run by tools/run-tests.sh): build the sdist and, from it,
# the wheel with pip's isolated build (only pyproject.toml's build
# requirements are present), install the wheel into a fresh venv on the
# system python3, and check that the entry point runs and the man pages and
# bash completion were installed.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/ganeti-ovf-wheel.XXXXXX)
trap '[[ ${KEEP:-0} == 1 ]] || rm -rf "$work"' EXIT
quiet=(-q --disable-pip-version-check)
/usr/bin/python3 -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install "${quiet[@]}" build
# Out of a copy: the build leaves build/ and *.egg-info behind.
git ls-files -z --cached --others --exclude-standard | tar -c --null -T - | (mkdir "$work/src" && tar -x -C "$work/src")
"$work/build-env/bin/python" -m build --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; echo "check-wheel: build failed" >&2; exit 1; }
sdist=$(ls "$work"/dist/*.tar.gz); wheel=$(ls "$work"/dist/*.whl)
/usr/bin/python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install "${quiet[@]}" "$wheel"
v=$work/venv
fail() { echo "check-wheel: $*" >&2; exit 1; }
[[ $("$v/bin/ovfconverter" --version) == "ovfconverter "[0-9]* ]] || fail "ovfconverter --version"
out=$("$v/bin/ovfconverter" info /nonexistent.ova 2>&1) && fail "info of a missing file succeeded"
[[ $out == "ovfconverter: error: /nonexistent.ova: cannot open"* ]] \
  || fail "ovfconverter info does not run: $out"
for f in share/man/man1/ovfconverter.1 share/man/man8/gnt-backup-ovf.8 \
         share/bash-completion/completions/ovfconverter; do
  [[ -s $v/$f ]] || fail "$f not installed by the wheel"
done
grep -qiE '^\.TH "ovfconverter" "?1' "$v/share/man/man1/ovfconverter.1" || fail "man page not rendered"
echo "check-wheel: ok: $(basename "$sdist"), $(basename "$wheel"): ovfconverter, man pages, completion"
