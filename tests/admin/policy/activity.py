#!/usr/bin/env python3
"""Reads the broker's activity log (JSON lines) for tests/admin/policy.t.

  activity.py check FILE [OUT]      every line is one JSON object with every key of
                                    s11's record, of the right type; prints the count.
                                    OUT: each record again as compact JSON with sorted
                                    keys, one a line (for grep: "port":22, "user":"bob"})
  activity.py select FILE K=V ...   the records whose keys equal the values (compared
                                    as text: port=22, bytes_up=100032, user=bob), one
                                    compact JSON object a line
"""
import json
import re
import sys

KEYS = {
    "tenant": str, "user": str, "device": str, "app": str, "port": int, "proto": str,
    "connector": str, "broker": str, "bytes_up": int, "bytes_down": int, "start": str,
    "end": str, "duration_ms": int, "status": str, "reason": str, "rule_id": int,
    "rule": str, "segment": str,
}
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def records(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            yield n, line


def check(path, out):
    bad = []
    count = 0
    norm = open(out, "w", encoding="utf-8") if out else None
    for n, line in records(path):
        count += 1
        try:
            r = json.loads(line)
        except ValueError as e:
            bad.append(f"line {n}: not JSON: {e}")
            continue
        if not isinstance(r, dict):
            bad.append(f"line {n}: not an object")
            continue
        if norm:
            print(json.dumps(r, separators=(",", ":"), sort_keys=True), file=norm)
        for k, t in KEYS.items():
            if k not in r:
                bad.append(f"line {n}: no key '{k}'")
            elif not isinstance(r[k], t) or isinstance(r[k], bool):
                bad.append(f"line {n}: '{k}' is {type(r[k]).__name__}, not {t.__name__}")
        for k in ("start", "end"):
            if isinstance(r.get(k), str) and not RFC3339_MS.match(r[k]):
                bad.append(f"line {n}: '{k}' {r[k]!r} is not RFC 3339 UTC with milliseconds")
        if r.get("proto") not in ("tcp", "udp"):
            bad.append(f"line {n}: proto {r.get('proto')!r}")
    if norm:
        norm.close()
    for b in bad[:20]:
        print(b)
    if not bad:
        print(count)
    return 1 if bad else 0


def text(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def select(path, conds):
    want = []
    for c in conds:
        k, sep, v = c.partition("=")
        if not sep:
            print(f"bad condition {c!r}: KEY=VALUE", file=sys.stderr)
            return 2
        want.append((k, v))
    for _, line in records(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and all(k in r and text(r[k]) == v for k, v in want):
            print(json.dumps(r, separators=(",", ":"), sort_keys=True))
    return 0


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("check", "select"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        if sys.argv[1] == "check":
            return check(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
        return select(sys.argv[2], sys.argv[3:])
    except OSError as e:
        print(f"{sys.argv[2]}: {e.strerror}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
