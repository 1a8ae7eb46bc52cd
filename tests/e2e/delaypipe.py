#!/usr/bin/env python3
"""A delaying IP path for tests/e2e (the kernel here has no netem): run in the app's
namespace, it makes two TUN devices, moves one into NODE's namespace and routes NODE's
traffic to the app through itself, holding each packet from NODE for the delay read
from --delay-file (milliseconds, re-read when it changes). Replies pass at once. Only
IPv4 is carried. Prints "event=delaypipe.ready" and "event=delaypipe.delay ms=N".
"""
import argparse
import asyncio
import fcntl
import os
import signal
import struct
import subprocess
import sys

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def sh(*cmd):
    subprocess.run(cmd, check=True)


def read_delay(path):
    try:
        with open(path) as f:
            return max(0.0, float(f.read().strip() or 0) / 1000)
    except (OSError, ValueError):
        return 0.0


async def main(a):
    loop = asyncio.get_running_loop()
    here, there = f"dp-{a.name}", f"dq-{a.name}"
    fd_app, fd_node = tun(here), tun(there)
    sh("ip", "link", "set", there, "netns", a.netns)
    sh("sysctl", "-qw", f"net.ipv6.conf.{here}.disable_ipv6=1")
    sh("ip", "link", "set", here, "up")
    sh("ip", "route", "add", f"{a.node_addr}/32", "dev", here)
    sh("ip", "-n", a.netns, "link", "set", there, "up")
    sh("ip", "-n", a.netns, "route", "add", f"{a.app_addr}/32", "dev", there, "src", a.node_addr)
    delay = read_delay(a.delay_file)
    mtime = None

    def send(fd, pkt):
        try:
            os.write(fd, pkt)
        except OSError:
            pass  # a full queue drops, as a link would

    def from_node():
        while True:
            try:
                pkt = os.read(fd_node, 65536)
            except BlockingIOError:
                return
            if pkt and pkt[0] >> 4 == 4:
                if delay > 0:
                    loop.call_later(delay, send, fd_app, pkt)
                else:
                    send(fd_app, pkt)

    def from_app():
        while True:
            try:
                pkt = os.read(fd_app, 65536)
            except BlockingIOError:
                return
            if pkt and pkt[0] >> 4 == 4:
                send(fd_node, pkt)

    loop.add_reader(fd_node, from_node)
    loop.add_reader(fd_app, from_app)
    stop = asyncio.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    print(f"event=delaypipe.ready name={a.name} delay_ms={delay * 1000:.0f}", flush=True)
    while not stop.is_set():
        try:
            m = os.stat(a.delay_file).st_mtime_ns
        except OSError:
            m = None
        if m != mtime:
            mtime = m
            delay = read_delay(a.delay_file)
            print(f"event=delaypipe.delay name={a.name} ms={delay * 1000:.0f}", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), 0.05)
        except asyncio.TimeoutError:
            pass
    os.close(fd_node)
    os.close(fd_app)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="short tag for the device names (<= 12 chars)")
    ap.add_argument("--netns", required=True, help="the other namespace (ip netns name)")
    ap.add_argument("--node-addr", required=True)
    ap.add_argument("--app-addr", required=True)
    ap.add_argument("--delay-file", required=True)
    sys.exit(asyncio.run(main(ap.parse_args())))
