#!/usr/bin/env python3
"""Scans files for unencrypted private keys: PEM headers and DER key structures.

Usage: keyscan.py PATH...   (directories are walked; "-" reads stdin)
Prints one line per finding and exits 1 if any; 0 when every file is clean.
"""
import os
import re
import sys

PEM = re.compile(rb"-----BEGIN (RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----")
DER = [
    # PKCS#8 PrivateKeyInfo: version 0, then the algorithm (EC, RSA, Ed25519)
    (re.compile(rb"\x02\x01\x00\x30\x13\x06\x07\x2a\x86\x48\xce\x3d\x02\x01"), "PKCS#8 EC"),
    (re.compile(rb"\x02\x01\x00\x30\x0d\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"), "PKCS#8 RSA"),
    (re.compile(rb"\x02\x01\x00\x30\x05\x06\x03\x2b\x65\x70\x04\x22\x04\x20"), "PKCS#8 Ed25519"),
    # SEC1 ECPrivateKey: version 1, a 32/48-byte OCTET STRING
    (re.compile(rb"\x30[\x77\x81]\x81?.?\x02\x01\x01\x04[\x20\x30]", re.S), "SEC1 EC"),
    # PKCS#1 RSAPrivateKey: version 0, then a long modulus INTEGER
    (re.compile(rb"\x30\x82..\x02\x01\x00\x02\x82..\x00", re.S), "PKCS#1 RSA"),
]


def scan(name, data):
    found = []
    # passphrase-encrypted PKCS#8 is allowed; any other private key header is not
    if any(m.group(1) != b"ENCRYPTED " for m in PEM.finditer(data)):
        found.append("PEM private key header")
    for rx, what in DER:
        if rx.search(data):
            found.append("DER " + what)
    for f in found:
        print(f"{name}: {f}")
    return bool(found)


def main(paths):
    bad = False
    count = 0
    for p in paths:
        if p == "-":
            bad |= scan("<stdin>", sys.stdin.buffer.read())
            count += 1
            continue
        walk = [(p, [], [""])] if os.path.isfile(p) else os.walk(p)
        for root, _, files in walk:
            for f in files:
                full = os.path.join(root, f) if f else root
                if os.path.islink(full) or not os.path.isfile(full):
                    continue
                with open(full, "rb") as fh:
                    bad |= scan(full, fh.read())
                count += 1
    print(f"# scanned {count} file(s)", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
