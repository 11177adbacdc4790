#!/usr/bin/env python3
"""Print the RESULT line of a driver scenario's log (stdin) as a compact report.
Usage: report.py NAME < scenario.log"""
import json
import sys


def flat(prefix, v, out):
    if isinstance(v, dict):
        for k, x in v.items():
            flat(f"{prefix}.{k}" if prefix else str(k), x, out)
    else:
        out.append((prefix, v))


name = sys.argv[1] if len(sys.argv) > 1 else None
seen = False
for line in sys.stdin:
    if not line.startswith("RESULT "):
        continue
    r = json.loads(line[len("RESULT "):])
    seen = True
    mark = "PASS" if r["status"] == "pass" else "FAIL"
    print(f"\n[{mark}] {name or r['scenario']}: {r['checks_passed']} checks ok, {len(r['checks_failed'])} failed")
    for f in r["checks_failed"]:
        print(f"       failed: {f}")
    items = []
    flat("", r.get("figures", {}), items)
    for k, v in items:
        print(f"       {k} = {v}")
if not seen:
    print(f"\n[FAIL] {name}: no RESULT line (the driver died; see its log)")
