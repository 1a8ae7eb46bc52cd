#!/usr/bin/env bash
# The mtunnel data path in a lab of its own (dp$$): applications that abort with data in
# flight (RST while the agent still holds payload for them, in both directions) must not
# use up a session's connection window: after many such aborts, transfers back to back
# through the same agent and connector sessions still arrive intact; and mtunnels closed
# by FIN both ways deliver every byte (the broker once reset both ends behind the last FIN,
# cutting off what an end was still writing). Prints TAP. Environment: MTUN_BUILD.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init dp

fport=2281 # the forward's listener in client
bport_app=7301

lab_up
broker_conf_one "$T/broker.conf" "$bport_app"
connector_conf "$T/connector.conf" "$state/conn/connector" "$state/conn/identity"

if start_broker "$T/broker.conf" && start_connector conn connector "$T/connector.conf" conn &&
	forward fwd agent "127.0.0.1:$fport" "server01.corp.example:$bport_app" &&
	blob_server blob "$bport_app"; then
	ok "broker, connector, forward and the blob server are up"
else
	not_ok "broker, connector, forward and the blob server are up"
	show "$T"/*.log
	finish
fi
fwdpid=$last

# abort N DOWN UP: N connections through the forward, each asking for DOWN bytes and
# sending UP, that read 64 KiB and then close with RST (SO_LINGER 0) while payload is
# still in flight towards them (and from them).
abort() {
	in_node client -- "$py" - "$fport" "$@" <<'EOF'
import socket, struct, sys
port, n, down, up = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(struct.pack("!IIQQQ", 0x6D74756E, 1000 + i, i + 1, up, down))
    if up:
        s.sendall(b"u" * min(up, 1 << 20))
    got = 0
    while got < 65536:
        b = s.recv(65536)
        if not b:
            sys.exit(f"connection {i}: EOF after {got} bytes")
        got += len(b)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
EOF
}
blobc() { in_node client -- "$py" "$e2e_dir/blob.py" run --port "$fport" "$@"; }

# Each abort leaves up to one mtunnel window (256 KiB) unwritten at the agent; the agent
# session's connection window is 1 MiB: 24 aborts were enough to stall it for good.
if abort 24 $((64 << 20)) 0 >"$T/abort1.out" 2>&1; then
	ok "24 mtunnels aborted by the application with 64 MiB on their way down"
else
	not_ok "24 mtunnels aborted by the application with 64 MiB on their way down"
	show "$T/abort1.out"
fi
if abort 8 $((64 << 20)) $((1 << 20)) >"$T/abort2.out" 2>&1; then
	ok "8 more aborted while sending 1 MiB up"
else
	not_ok "8 more aborted while sending 1 MiB up"
	show "$T/abort2.out"
fi

good=0
for r in 1 2 3; do
	if blobc --n 1 --seed "$r" --min 16m --max 16m --timeout 30 >"$T/round$r.out" 2>&1; then
		good=$((good + 1))
	else
		show "$T/round$r.out"
	fi
done
if [ $good -eq 3 ]; then
	ok "then 3 rounds of 16 MiB each way, back to back, arrive intact"
else
	not_ok "then 3 rounds of 16 MiB each way, back to back, arrive intact ($good of 3)"
	show "$T/fwd.log" "$T/connector.log"
fi
# Each mtunnel ends with FIN both ways: nothing may cut off what an end still writes.
good=0
for r in 1 2 3 4 5; do
	if blobc --n 4 --seed $((10 + r)) --min 8m --max 8m --timeout 60 >"$T/par$r.out" 2>&1; then
		good=$((good + 1))
	else
		show "$T/par$r.out"
	fi
done
if [ $good -eq 5 ]; then
	ok "5 rounds of 4 parallel mtunnels of 8 MiB each way on one session arrive whole"
else
	not_ok "5 rounds of 4 parallel mtunnels of 8 MiB each way on one session arrive whole ($good of 5)"
fi
if ! grep "event=mtunnel.close" "$T/fwd.log" | grep -v "id=\(1\|[1-9]\|[12][0-9]\|3[0-2]\) " | grep -qv "status=ok"; then
	ok "every mtunnel after the aborted ones closed with status ok at the agent"
else
	not_ok "every mtunnel after the aborted ones closed with status ok at the agent"
	grep "event=mtunnel.close" "$T/fwd.log" | grep -v "status=ok" | tail -n 5 | sed 's/^/# /'
fi
if kill -0 "$fwdpid" 2>/dev/null && [ "$(grep -c 'event=agent.session.down' "$T/fwd.log")" -eq 0 ]; then
	ok "the agent kept its one session throughout"
else
	not_ok "the agent kept its one session throughout"
fi
no_sanitizer_reports
finish
