#!/usr/bin/env python3
"""Render man/*.rst into man pages with docutils' manpage writer.

Used by setup.py at build time and by the tests; any docutils warning is an
error, so a broken page never ships.

    python3 tools/build_man.py OUTDIR
"""

from __future__ import annotations

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def render(rst_path: str, version: str) -> str:
    from docutils.core import publish_string
    from docutils.writers import manpage

    with open(rst_path, encoding="utf-8") as f:
        text = f.read().replace("@GANETI_OVF_VERSION@", version)
    out = publish_string(text, writer=manpage.Writer(), source_path=rst_path,
                         settings_overrides={"halt_level": 2, "report_level": 2,
                                             "input_encoding": "utf-8"})
    return out.decode("utf-8") if isinstance(out, bytes) else out


def section_of(rst_path: str) -> str:
    with open(rst_path, encoding="utf-8") as f:
        m = re.search(r"^:Manual section: (\d)$", f.read(), re.M)
    if not m:
        raise SystemExit(f"{rst_path}: no ':Manual section: N' field")
    return m.group(1)


def build_all(outdir: str, version: str) -> list[str]:
    os.makedirs(outdir, exist_ok=True)
    made = []
    mandir = os.path.join(ROOT, "man")
    for name in sorted(os.listdir(mandir)):
        if not name.endswith(".rst"):
            continue
        src = os.path.join(mandir, name)
        dest = os.path.join(outdir, f"{name[:-4]}.{section_of(src)}")
        with open(dest, "w", encoding="utf-8") as f:
            f.write(render(src, version))
        made.append(dest)
    return made


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(ROOT, "lib"))
    for p in build_all(sys.argv[1] if len(sys.argv) > 1 else "build/man", "0"):
        print(p)
