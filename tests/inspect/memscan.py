#!/usr/bin/env python3
"""Searches files, or a live process's memory, for secrets given in hex.

Usage: memscan.py --pid PID HEX...     every readable mapping of /proc/PID/mem
       memscan.py --files PATH... -- HEX...   files (directories walked)
A secret is looked for as given and byte-reversed (a BIGNUM's limbs on little-endian
machines hold a scalar in reverse order). Prints each finding; exits 1 if any, 0 if none,
2 on error.
"""
import os
import re
import sys


def needles(hexes):
    out = []
    for h in hexes:
        b = bytes.fromhex(h)
        if len(b) < 16:
            sys.exit(2)
        out += [(h, b), (h + " (reversed)", b[::-1])]
    return out


CHUNK = 16 << 20
MAP_MAX = 1 << 30  # larger mappings are reservations (ASan's shadow), not data


def scan_stream(read, name, ns):
    """Reads chunks with an overlap so that a needle across two chunks is seen."""
    found = False
    keep = max(len(b) for _, b in ns) - 1
    tail = b""
    while True:
        chunk = read(CHUNK)
        if not chunk:
            return found
        data = tail + chunk
        for what, b in ns:
            if b in data:
                print(f"{name}: {what}")
                found = True
        tail = data[-keep:]


def scan_pid(pid, ns):
    found = False
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) (\S+)", line)
            lo, hi, perm = int(m[1], 16), int(m[2], 16), m[3]
            if perm[0] != "r" or "[vvar]" in line or "[vsyscall]" in line or hi - lo > MAP_MAX:
                continue
            left = hi - lo
            try:
                mem.seek(lo)

                def read(n):
                    nonlocal left
                    d = mem.read(min(n, left)) if left > 0 else b""
                    left -= len(d)
                    return d

                found |= scan_stream(read, f"pid {pid} {line.strip()}", ns)
            except OSError:
                continue  # memfd_secret pages cannot be read, even by root
    return found


def scan_files(paths, ns):
    found = False
    for p in paths:
        walk = [(os.path.dirname(p), [], [os.path.basename(p)])] if os.path.isfile(p) else os.walk(p)
        for root, _, files in walk:
            for f in files:
                full = os.path.join(root, f)
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                with open(full, "rb") as fh:
                    found |= scan_stream(fh.read, full, ns)
    return found


def main(argv):
    if len(argv) >= 3 and argv[0] == "--pid":
        return 1 if scan_pid(int(argv[1]), needles(argv[2:])) else 0
    if argv and argv[0] == "--files" and "--" in argv:
        i = argv.index("--")
        return 1 if scan_files(argv[1:i], needles(argv[i + 1:])) else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
