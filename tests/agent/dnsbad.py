#!/usr/bin/env python3
"""Raw DNS queries for tests/agent/intercept.t: sends one query of a kind to a resolver
(from inside the agent's cgroup, so the stub gets it) and prints the reply's rcode name,
or 'none' when nothing comes back within the timeout (the stub dropped it)."""
import random
import socket
import struct
import sys

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def name(text):
    out = b""
    for label in text.split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(qid, qd=1, flags=0x0100):
    return struct.pack("!HHHHHH", qid, flags, qd, 0, 0, 0)


def query(kind, qid):
    if kind == "good":
        return header(qid) + name(sys.argv[3]) + struct.pack("!HH", 1, 1)
    if kind == "short":
        return b"\x12\x34\x01"
    if kind == "garbage":
        return header(qid) + bytes(random.getrandbits(8) for _ in range(40))
    if kind == "truncated":
        return header(qid) + b"\x06server"
    if kind == "longlabel":
        return header(qid) + bytes([64]) + b"a" * 64 + b"\0" + struct.pack("!HH", 1, 1)
    if kind == "longname":
        labels = ".".join(["a" * 63] * 5)  # 320 bytes on the wire: over 255
        return header(qid) + name(labels) + struct.pack("!HH", 1, 1)
    if kind == "loop":
        # the question name is a pointer to itself
        return header(qid) + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    if kind == "loop2":
        # two pointers pointing at each other
        return header(qid) + b"\x01a\xc0\x0e" + b"\xc0\x0c" + struct.pack("!HH", 1, 1)
    if kind == "badptr":
        return header(qid) + b"\xc3\xff" + struct.pack("!HH", 1, 1)
    if kind == "class":
        # an unknown class (4242) for the name in argv[3]
        return header(qid) + name(sys.argv[3]) + struct.pack("!HH", 1, 4242)
    if kind == "twoq":
        q = name(sys.argv[3]) + struct.pack("!HH", 1, 1)
        return header(qid, qd=2) + q + q
    if kind == "response":
        return header(qid, flags=0x8180) + name(sys.argv[3]) + struct.pack("!HH", 1, 1)
    if kind == "notify":
        return header(qid, flags=0x2000) + name(sys.argv[3]) + struct.pack("!HH", 6, 1)
    raise SystemExit("unknown kind " + kind)


def main():
    kind, server = sys.argv[1], sys.argv[2]
    qid = random.randrange(1, 65535)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(float(sys.argv[4]) if len(sys.argv) > 4 else 1.5)
    s.sendto(query(kind, qid), (server, 53))
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        print("none")
        return
    if len(data) < 12:
        print("short-reply")
        return
    rid, flags = struct.unpack("!HH", data[:4])
    if kind not in ("short",) and rid != qid:
        print("wrong-id")
        return
    print(RCODES.get(flags & 0xF, str(flags & 0xF)) + (" from %s" % peer[0] if peer[0] != server else ""))


main()
