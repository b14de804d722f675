#!/usr/bin/python3
"""Fails when a source file includes against the one-way flow (docs/ARCHITECTURE.md).

    core  <-  drivers  <-  rules, upstream, commands  <-  gateway (the composition root)

- core/ includes only core/;
- drivers/*.{hpp,cpp} (the source interface, the registry) include core/ and drivers/*.hpp;
- drivers/<d>/ includes core/, drivers/*.hpp and drivers/<d>/: never another driver;
- rules/, upstream/, commands/ include core/ and their own folder only;
- gateway/ may include anything. tests/ and bench/ are not checked.
Run: tests/layering_test.py [ROOT]; prints each wrong include as FILE:LINE: ... and exits 1.
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent.parent)
include = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
ours = ("core/", "drivers/", "rules/", "upstream/", "commands/", "gateway/")


def allowed(src: str, target: str) -> bool:
    top = src.split("/")[0]
    if top == "gateway":
        return True
    if target.startswith("core/"):
        return True
    if top == "core":
        return False
    if top == "drivers":
        parts = src.split("/")
        tparts = target.split("/")
        if tparts[0] != "drivers":
            return False
        if len(tparts) == 2:  # drivers/source.hpp, drivers/driver.hpp, drivers/registry.hpp
            return len(parts) == 2 or tparts[1] != "registry.hpp"
        return len(parts) > 2 and tparts[1] == parts[1]
    return target.split("/")[0] == top


bad = []
for path in sorted(root.glob("*/**/*")):
    rel = path.relative_to(root).as_posix()
    if path.suffix not in (".hpp", ".cpp", ".h") or not rel.startswith(ours):
        continue
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        m = include.match(line)
        if m and m.group(1).startswith(ours) and not allowed(rel, m.group(1)):
            bad.append(f"{rel}:{n}: includes \"{m.group(1)}\" against the flow")
for b in bad:
    print(b)
if bad:
    print(f"layering: {len(bad)} include(s) against the flow (see docs/ARCHITECTURE.md)")
    sys.exit(1)
print("layering: every include follows the flow")
