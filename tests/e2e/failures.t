#!/usr/bin/env bash
# Failures as a user sees them (issue 4, acceptance), through forward mode from client:
#   - a denied user (bob): OPEN refused with a reason, logged by the agent and the broker;
#     the client's connection is closed without data;
#   - a closed port: OPEN_FAIL refused; an address the connector has no route to: OPEN_FAIL
#     unreachable; both close the client's connection;
#   - the connector killed (SIGKILL) mid-transfer: the client's connection is reset within 5 s;
#   - a broker restart: the connector and the forward agent reconnect, new mtunnels work;
#   - a connector certificate presented as an agent (an agent's HELLO over the connector's
#     certificate, tests/e2e/hello_as.c) is refused, with a reason in the broker's log;
#   - a revoked connector (mtunctl revoke) is disconnected within seconds and no longer used.
# Prints TAP. Environment: MTUN_BUILD (default: build).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init x
lab_up

fail_setup() {
	not_ok "$1"
	show "$T"/*.log
	finish
}
enroll_agent bob bob || fail_setup "agent of user bob enrolls"

cat >"$T/broker.conf" <<CONF
broker = {
	listen = "$svc:$bport";
	tenant = "lab";
	state = "$state/edge/broker";
	identity_source = "$state/edge/identity";
};
connector_groups = ( { id = 1; name = "dc1"; } );
segments = (
	{ id = 10; name = "server01"; hosts = [ "server01.corp.example" ];
	  ports = [ "tcp/22", "tcp/81", "tcp/5001" ]; connector_groups = [ "dc1" ]; },
	{ id = 11; name = "nowhere"; hosts = [ "198.19.9.0/24" ];
	  ports = [ "tcp/22" ]; connector_groups = [ "dc1" ]; }
);
users = ( { name = "alice"; groups = [ "eng" ]; }, { name = "bob"; groups = [ "sales" ]; } );
rules = (
	{ id = 1; name = "eng-to-servers"; action = "allow"; groups = [ "eng" ]; segments = [ 10, 11 ]; }
);
CONF
connector_conf "$T/connector.conf" "$state/conn/connector" "$state/conn/identity"

start_broker "$T/broker.conf" || fail_setup "mtun-broker listens"
start_connector conn connector "$T/connector.conf" conn || fail_setup "the connector's control session is up"
cpid=$last
forward fwd-ssh agent 127.0.0.1:2222 server01.corp.example:22 || fail_setup "forward to :22"
fwdpid=$last
forward fwd-bob bob 127.0.0.1:2223 server01.corp.example:22 || fail_setup "forward of bob"
forward fwd-closed agent 127.0.0.1:2281 server01.corp.example:81 || fail_setup "forward to :81"
forward fwd-unreach agent 127.0.0.1:2299 198.19.9.9:22 || fail_setup "forward to 198.19.9.9"
forward fwd-blob agent 127.0.0.1:5001 server01.corp.example:5001 || fail_setup "forward to :5001"
blobfwd=$last
blob_server blob 5001 || fail_setup "blob server"
ok "broker, connector, five forwards and the blob server are up"

# expect_close PORT: a client connection through the forward is closed, no data, within 5 s.
expect_close() { in_node client -- "$py" "$e2e_dir/blob.py" expect-close --port "$1" --within 5; }

# A denied user.
out=$(expect_close 2223 2>&1)
if [ $? -eq 0 ] && wait_log "$T/fwd-bob.log" 'event=mtunnel.refused .*status=denied reason="[^"]' "$blobfwd" 5 &&
	grep -q "event=mtunnel.denied user=bob .*reason=\"[^\"]" "$T/broker.log"; then
	ok "user bob: OPEN refused (denied) with a reason, logged by agent and broker; the client's connection is $out"
	grep -h "event=mtunnel.refused\|event=mtunnel.denied" "$T/fwd-bob.log" "$T/broker.log" | sed 's/^/# /'
else
	not_ok "user bob: OPEN refused (denied) with a reason; client connection closed ($out)"
	show "$T/fwd-bob.log" "$T/broker.log"
fi

# A closed port, an unreachable address.
out=$(expect_close 2281 2>&1)
if [ $? -eq 0 ] && wait_log "$T/fwd-closed.log" 'event=mtunnel.refused .*status=refused' "$blobfwd" 5; then
	ok "a closed port: OPEN_FAIL refused; the client's connection is $out"
else
	not_ok "a closed port: OPEN_FAIL refused ($out)"
	show "$T/fwd-closed.log" "$T/connector.log"
fi
out=$(expect_close 2299 2>&1)
if [ $? -eq 0 ] && wait_log "$T/fwd-unreach.log" 'event=mtunnel.refused .*status=unreachable' "$blobfwd" 5; then
	ok "an address the connector has no route to: OPEN_FAIL unreachable; the client's connection is $out"
else
	not_ok "an address the connector has no route to: OPEN_FAIL unreachable ($out)"
	show "$T/fwd-unreach.log" "$T/connector.log"
fi

# The connector dies mid-transfer: the client's connection is reset within 5 s.
(in_node client -- "$py" "$e2e_dir/blob.py" run --port 5001 --min 1k --max 1k --down 4g \
	--timeout 120 >"$T/killed.out" 2>&1) &
xfer=$!
moving=no
for _ in $(seq 400); do
	[ "$(cat "$T/status/1" 2>/dev/null | tr -d ' ')" -gt $((8 << 20)) ] 2>/dev/null && moving=yes && break
	kill -0 $xfer 2>/dev/null || break
	sleep 0.05
done
kill9 "$cpid"
t0=$(date +%s.%N)
if [ $moving = yes ] && wait_gone $xfer 5; then
	wait $xfer
	rc=$?
	dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
	if [ $rc -ne 0 ] && grep -q "ConnectionResetError" "$T/killed.out"; then
		ok "the connector killed mid-transfer: the client's connection is reset after $dt s"
	elif [ $rc -ne 0 ]; then
		not_ok "the connector killed mid-transfer: the client's connection is reset (it ended after $dt s, but with a clean FIN: a truncated download looks complete)"
	else
		not_ok "the connector killed mid-transfer: the transfer still completed?"
	fi
else
	not_ok "the connector killed mid-transfer resets the client's connection within 5 s (moving: $moving)"
	kill $xfer 2>/dev/null
	wait $xfer
fi
sed 's/^/# /' "$T/killed.out"

# The connector comes back; then the broker restarts: both reconnect, new mtunnels work.
start_connector conn connector "$T/connector.conf" conn || not_ok "the connector restarts"
cpid=$last
ups_c=$(grep -c "event=broker.connector.up connector=conn " "$T/broker.log")
ups_a=$(grep -c "event=agent.session.up" "$T/fwd-ssh.log")
stop "$bpid"
rc=$?
if [ $rc -eq 0 ]; then ok "the broker exits 0 on SIGTERM"; else not_ok "the broker exits 0 on SIGTERM (exit $rc)"; fi
mv "$T/broker.log" "$T/broker-1.log"
if start_broker "$T/broker.conf" &&
	wait_log "$T/broker.log" "event=broker.connector.up connector=conn " "$bpid" 30 &&
	wait_count "$T/fwd-ssh.log" "event=agent.session.up" $((ups_a + 1)) 30; then
	ok "after a broker restart the connector and the forward agent reconnect"
else
	not_ok "after a broker restart the connector and the forward agent reconnect"
	show "$T/broker.log" "$T/connector.log" "$T/fwd-ssh.log"
fi
out=$(sshc 2222 hostname 2>"$T/ssh.err")
if [ "$out" = server01 ]; then ok "a new mtunnel works after the broker restart"; else
	not_ok "a new mtunnel works after the broker restart (got '$out')"
	show "$T/ssh.err" "$T/fwd-ssh.log" "$T/broker.log"
fi
note "reconnects: connector $ups_c -> broker restarted, agent $ups_a -> $(grep -c "event=agent.session.up" "$T/fwd-ssh.log")"

# A connector certificate presented as an agent (an agent's HELLO over the connector's
# certificate, from the test tool hello_as): the broker closes it and says why.
refusals=$(grep -c 'peer=conn .*\(refused\|denied\).*reason="[^"]' "$T/broker.log")
refusal='peer=conn .*\(refused\|denied\).*reason="[^"]'
in_node client -- "$build/tests/e2e/hello_as" --broker "$svc:$bport" --state "$state/conn/connector" \
	--identity-source "$state/conn/identity" >"$T/impostor.out" 2>&1
imp_rc=$?
if [ $imp_rc -eq 0 ] && grep -q "^closed status=denied" "$T/impostor.out" &&
	wait_count "$T/broker.log" "$refusal" $((refusals + 1)) 10; then
	ok "a connector certificate presented as an agent is refused, with a reason in the broker's log"
	sed 's/^/# impostor: /' "$T/impostor.out"
	grep "$refusal" "$T/broker.log" | tail -n 1 | sed 's/^/# /'
else
	not_ok "a connector certificate presented as an agent is refused, with a reason in the broker's log (rc $imp_rc)"
	show "$T/impostor.out" "$T/broker.log"
fi

# A revoked connector is disconnected within seconds and no longer used.
serial=$(openssl x509 -in "$state/conn/connector/cert.pem" -noout -serial | cut -d= -f2)
downs=$(grep -c "event=broker.connector.down connector=conn \|event=broker.session.down peer=conn " "$T/broker.log")
if in_node edge -- "$ctl" revoke --tenant lab connector/conn >"$T/revoke.log" 2>&1; then
	ok "mtunctl revoke connector/conn (serial $serial)"
else
	not_ok "mtunctl revoke connector/conn"
	show "$T/revoke.log"
fi
t0=$SECONDS
if wait_count "$T/broker.log" "event=broker.connector.down connector=conn \|event=broker.session.down peer=conn \|event=broker.session.revoked peer=conn " $((downs + 1)) 15; then
	ok "the broker disconnects the revoked connector within $((SECONDS - t0)) s"
	grep "revoked" "$T/broker.log" | tail -n 2 | sed 's/^/# /'
else
	not_ok "the broker disconnects the revoked connector within 15 s"
	show "$T/broker.log"
fi
out=$(expect_close 2222 2>&1)
rc=$?
opens=$(grep -c "event=mtunnel.open " "$T/broker.log")
if [ $rc -eq 0 ] && ! grep -q "event=mtunnel.bind .*connector=conn " <(sed -n '/event=broker.session.revoked\|event=broker.connector.down/,$p' "$T/broker.log"); then
	ok "after revocation no mtunnel is bound to the revoked connector; the client's connection is $out"
else
	not_ok "after revocation no mtunnel is bound to the revoked connector ($out)"
	show "$T/broker.log"
fi
note "$opens mtunnels opened in all"

stopped=0
for p in "$fwdpid" "$bpid"; do
	stop "$p"
	rc=$?
	[ $rc -eq 0 ] && stopped=$((stopped + 1)) || note "pid $p exited $rc"
done
check "broker and agent exit 0 on SIGTERM" [ $stopped -eq 2 ]
no_sanitizer_reports
finish
