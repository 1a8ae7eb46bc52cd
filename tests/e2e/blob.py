#!/usr/bin/env python3
"""Test traffic for tests/e2e: a server (in app) and clients (in client) that move seeded
random bytes both ways and compare SHA-256 digests per connection.

Protocol, per TCP connection: the client sends a 32-byte header (magic, tag, seed, up,
down), then `up` bytes, then shuts down its write side. The server reads exactly `up`
bytes while it writes `down` bytes of its own, then a 72-byte trailer: SHA-256 of what it
sent, SHA-256 of what it received, the count it received; then it closes. The client
checks the trailer against what it sent and what it read. The server records progress
(bytes written so far) per tag in STATUS/TAG, for the fairness test.
"""
import argparse
import asyncio
import hashlib
import os
import random
import struct
import sys
import time

MAGIC = 0x6D74756E  # "mtun"
HDR = struct.Struct("!IIQQQ")
TRAILER = 72
CHUNK = 1 << 16


def size(s):
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = s.strip().lower()
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def stream(seed):
    """Endless seeded random chunks."""
    r = random.Random(seed)
    while True:
        yield r.randbytes(CHUNK)


class Progress:
    """STATUS/TAG holds the bytes written so far, as fixed-width text rewritten in place."""

    def __init__(self, d, tag):
        self.fd = None
        if d:
            self.fd = os.open(os.path.join(d, str(tag)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.last = -1

    def set(self, n, force=False):
        if self.fd is None or (not force and n - self.last < (1 << 20)):
            return
        self.last = n
        os.pwrite(self.fd, b"%20d\n" % n, 0)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)


async def serve_conn(reader, writer, status):
    try:
        hdr = await reader.readexactly(HDR.size)
        magic, tag, seed, up, down = HDR.unpack(hdr)
        if magic != MAGIC:
            raise ValueError("bad magic")
        prog = Progress(status, tag)
        got = hashlib.sha256()
        sent = hashlib.sha256()
        nrecv = 0

        async def rx():
            nonlocal nrecv
            while nrecv < up:
                b = await reader.read(min(1 << 20, up - nrecv))
                if not b:
                    break
                got.update(b)
                nrecv += len(b)

        async def tx():
            n = 0
            gen = stream(seed ^ 0x5A5A5A5A)
            while n < down:
                b = next(gen)[: down - n]
                sent.update(b)
                writer.write(b)
                await writer.drain()
                n += len(b)
                prog.set(n)
            prog.set(n, True)

        await asyncio.gather(rx(), tx())
        writer.write(sent.digest() + got.digest() + struct.pack("!Q", nrecv))
        await writer.drain()
        prog.close()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
        print(f"blob server: connection ended: {e!r}", file=sys.stderr, flush=True)
    finally:
        writer.close()


async def server(args):
    servers = []
    for p in args.ports:
        s = await asyncio.start_server(lambda r, w: serve_conn(r, w, args.status), args.addr, p,
                                       limit=1 << 20, backlog=512)
        servers.append(s)
    print(f"blob server: listening on {args.addr} ports {args.ports}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


class Conn:
    """One client connection: sends `up` seeded bytes, reads `down` + the trailer."""

    def __init__(self, port, tag, seed, up, down):
        self.port, self.tag, self.seed, self.up, self.down = port, tag, seed, up, down
        self.recv = 0
        self.error = None
        self.paused = None  # an asyncio.Event: reading waits while it is clear

    async def run(self):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
        except OSError as e:
            self.error = f"connect: {e}"
            return False
        try:
            writer.write(HDR.pack(MAGIC, self.tag, self.seed, self.up, self.down))
            sent = hashlib.sha256()
            got = hashlib.sha256()
            tail = bytearray()

            async def tx():
                n = 0
                gen = stream(self.seed)
                while n < self.up:
                    b = next(gen)[: self.up - n]
                    sent.update(b)
                    writer.write(b)
                    await writer.drain()
                    n += len(b)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()

            async def rx():
                want = self.down + TRAILER
                while self.recv + len(tail) < want:
                    if self.paused is not None:
                        await self.paused.wait()
                    b = await reader.read(1 << 20)
                    if not b:
                        break
                    room = max(0, self.down - self.recv)
                    got.update(b[:room])
                    self.recv += min(room, len(b))
                    tail.extend(b[room:])
                extra = await reader.read(1)
                if extra:
                    raise ValueError("bytes after the trailer")

            await asyncio.gather(tx(), rx())
            if len(tail) != TRAILER:
                self.error = f"short: {self.recv} of {self.down} bytes, trailer {len(tail)} of {TRAILER}"
                return False
            srv_sent, srv_got, srv_n = tail[:32], tail[32:64], struct.unpack("!Q", tail[64:])[0]
            if srv_n != self.up or srv_got != sent.digest():
                self.error = f"up: the server got {srv_n} of {self.up} bytes, SHA-256 {'same' if srv_got == sent.digest() else 'DIFFERENT'}"
                return False
            if srv_sent != got.digest():
                self.error = f"down: {self.down} bytes arrived with a DIFFERENT SHA-256"
                return False
            return True
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            self.error = f"{e!r} after {self.recv} bytes down"
            return False
        finally:
            writer.close()


async def run(args):
    r = random.Random(args.seed)
    conns = []
    for i in range(args.n):
        if args.min == args.max:
            up = args.min
        else:  # log-uniform between min and max
            lo, hi = args.min.bit_length(), args.max.bit_length()
            up = min(args.max, max(args.min, int(2 ** r.uniform(lo - 1, hi))))
        down = up if args.down is None else args.down
        conns.append(Conn(args.port, i + 1, r.getrandbits(48), up, down))
    t0 = time.monotonic()
    res = await asyncio.wait_for(asyncio.gather(*(c.run() for c in conns)), args.timeout)
    dt = time.monotonic() - t0
    upb = sum(c.up for c in conns)
    downb = sum(c.down for c in conns)
    bad = [c for c, good in zip(conns, res) if not good]
    for c in bad:
        print(f"conn {c.tag} (up {c.up}, down {c.down}): {c.error}", flush=True)
    print(f"{len(conns) - len(bad)} of {len(conns)} connections intact: {upb / 2**20:.1f} MiB up, "
          f"{downb / 2**20:.1f} MiB down in {dt:.1f} s ({(upb + downb) * 8 / dt / 1e9:.3f} Gbit/s)",
          flush=True)
    return 0 if not bad else 1


def read_progress(d, tag):
    try:
        with open(os.path.join(d, str(tag))) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


async def fair(args):
    """A stops reading; once its sender is blocked (flow control), B must move
    args.b bytes before A's pause of args.pause seconds ends; then A reads all, intact."""
    a = Conn(args.port, 1001, 11, 0, args.a)
    b = Conn(args.port, 1002, 12, 0, args.b)
    a.paused = asyncio.Event()
    t0 = time.monotonic()
    ta = asyncio.ensure_future(a.run())
    # A's sender blocks once every window and buffer on its path is full: its progress
    # stops growing for 0.5 s (polled), and must stay below all of A's bytes.
    last, since = -1, time.monotonic()
    while True:
        await asyncio.sleep(0.1)
        cur = read_progress(args.status, 1001)
        if ta.done():
            print(f"FAIL: mtunnel A ended while paused: {a.error}", flush=True)
            return 1
        if cur != last:
            last, since = cur, time.monotonic()
        elif cur > 0 and time.monotonic() - since >= 0.5:
            break
        if time.monotonic() - t0 > args.pause:
            print(f"FAIL: A's sender never blocked within {args.pause} s ({cur} bytes sent)", flush=True)
            return 1
    t1 = time.monotonic()
    blocked = last
    print(f"A blocked after {blocked / 2**20:.1f} MiB of {args.a / 2**20:.0f} MiB "
          f"({t1 - t0:.1f} s into its pause)", flush=True)
    rc = 0
    if blocked >= args.a:
        print("FAIL: A's sender was never held back (it wrote everything)", flush=True)
        rc = 1
    try:
        okb = await asyncio.wait_for(b.run(), max(0.1, t0 + args.pause - time.monotonic()))
    except asyncio.TimeoutError:
        okb = False
        b.error = f"only {b.recv / 1e6:.1f} MB arrived before A's pause ended"
    t2 = time.monotonic()
    stalled = read_progress(args.status, 1001)
    if okb:
        print(f"B moved {args.b / 1e6:.1f} MB intact in {t2 - t1:.1f} s "
              f"({args.b * 8 / (t2 - t1) / 1e9:.3f} Gbit/s) while A was paused", flush=True)
    else:
        print(f"FAIL: B: {b.error}", flush=True)
        rc = 1
    # A's reader resumes after its whole pause.
    await asyncio.sleep(max(0, t0 + args.pause - time.monotonic()))
    print(f"A's reader resumes after {time.monotonic() - t0:.1f} s; its sender is at "
          f"{stalled / 2**20:.1f} MiB", flush=True)
    a.paused.set()
    try:
        oka = await asyncio.wait_for(ta, args.timeout)
    except asyncio.TimeoutError:
        oka = False
        a.error = f"timed out after {a.recv} bytes"
    if oka:
        print(f"A: all {args.a / 2**20:.0f} MiB arrived intact after the pause", flush=True)
    else:
        print(f"FAIL: A: {a.error}", flush=True)
        rc = 1
    return rc


async def expect_close(args):
    """Connects and waits for the other end to close without sending anything."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    except ConnectionResetError:
        # The handshake completed (a refused connect is ECONNREFUSED) and the reset came
        # before the event loop saw the connect finish: closed, without data.
        print(f"closed (reset while connecting) after {time.monotonic() - t0:.2f} s",
              flush=True)
        return 0
    except OSError as e:
        print(f"connect failed: {e}", flush=True)
        return 1
    try:
        b = await asyncio.wait_for(reader.read(1), args.within)
        how = "closed (EOF)" if not b else f"sent data: {b!r}"
    except asyncio.TimeoutError:
        how = "still open"
    except ConnectionError as e:
        how, b = f"closed ({e.__class__.__name__})", b""
    finally:
        writer.close()
    print(f"{how} after {time.monotonic() - t0:.2f} s", flush=True)
    return 0 if how.startswith("closed") else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--addr", required=True)
    s.add_argument("--status")
    s.add_argument("ports", nargs="+", type=int)
    c = sub.add_parser("run", help="N concurrent connections of seeded random sizes")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--n", type=int, default=1)
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--min", type=size, default=1024)
    c.add_argument("--max", type=size, default=1024)
    c.add_argument("--down", type=size, help="bytes down per connection (default: as up)")
    c.add_argument("--timeout", type=float, default=600)
    f = sub.add_parser("fair", help="A pauses its reader; B must move B bytes meanwhile")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--status", required=True)
    f.add_argument("--pause", type=float, default=10)
    f.add_argument("--a", type=size, default=size("128m"))
    f.add_argument("--b", type=size, default=100_000_000)
    f.add_argument("--timeout", type=float, default=300)
    e = sub.add_parser("expect-close", help="the connection must be closed without data")
    e.add_argument("--port", type=int, required=True)
    e.add_argument("--within", type=float, default=5)
    args = ap.parse_args()
    if args.cmd == "server":
        if args.status:
            os.makedirs(args.status, exist_ok=True)
        asyncio.run(server(args))
        return 0
    cmds = {"run": run, "fair": fair, "expect-close": expect_close}
    return asyncio.run(cmds[args.cmd](args))


if __name__ == "__main__":
    sys.exit(main())
