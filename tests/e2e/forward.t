#!/usr/bin/env bash
# The first end-to-end slice in a lab of its own (e$$): ssh and HTTP from client through
# mtun-agent forward -> mtun-broker (edge) -> mtun-connector (conn) -> app, all over mTLS
# with identities from the lab's mtun-ca; 64 MiB each way with matching SHA-256; a user
# the broker's rules do not allow is refused (denied); a closed port fails (refused).
# Prints TAP. Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init e
lab_up

# A second agent identity, for a user no rule allows.
if enroll_agent bob bob; then
	ok "agent of user bob enrolls"
else
	not_ok "agent of user bob enrolls"
	show "$T/enroll.log"
fi

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
	  ports = [ "tcp/22", "tcp/80-81" ]; connector_groups = [ "dc1" ]; }
);
users = ( { name = "alice"; groups = [ "eng" ]; }, { name = "bob"; groups = [ "sales" ]; } );
rules = (
	{ id = 1; name = "eng-to-server01"; action = "allow"; groups = [ "eng" ]; segments = [ 10 ]; }
);
CONF
connector_conf "$T/connector.conf" "$state/conn/connector" "$state/conn/identity"

# A typo in a setting is refused, not ignored.
sed 's/tenant = "lab";/tenant = "lab"; tennant = "x";/' "$T/broker.conf" >"$T/typo.conf"
if ! "$broker" run --config "$T/typo.conf" >"$T/typo.log" 2>&1 &&
	grep -q "unknown setting 'tennant'" "$T/typo.log"; then
	ok "mtun-broker refuses an unknown setting"
else
	not_ok "mtun-broker refuses an unknown setting"
	show "$T/typo.log"
fi

if start_broker "$T/broker.conf"; then ok "mtun-broker listens on $svc:$bport"; else
	not_ok "mtun-broker listens on $svc:$bport"
	show "$T/broker.log"
	finish
fi
if start_connector conn connector "$T/connector.conf" conn; then
	ok "the connector's control session is up"
	cpid=$last
else
	not_ok "the connector's control session is up"
	show "$T/connector.log" "$T/broker.log"
	finish
fi

if forward fwd-ssh agent 127.0.0.1:2222 server01.corp.example:22 &&
	forward fwd-http agent 127.0.0.1:8080 server01.corp.example:80 &&
	forward fwd-closed agent 127.0.0.1:2281 server01.corp.example:81 &&
	forward fwd-bob bob 127.0.0.1:2223 server01.corp.example:22; then
	ok "four agent forwards are up with sessions to the broker"
else
	not_ok "four agent forwards are up with sessions to the broker"
	show "$T"/fwd-*.log
	finish
fi
bobpid=$last

out=$(sshc 2222 hostname 2>"$T/ssh.err")
if [ "$out" = server01 ]; then ok "ssh through the mtunnel runs hostname on server01"; else
	not_ok "ssh through the mtunnel runs hostname on server01 (got '$out')"
	show "$T/ssh.err" "$T/fwd-ssh.log" "$T/broker.log" "$T/connector.log"
fi
if in_node client -- curl -sf --max-time 10 http://127.0.0.1:8080/ >"$T/page" 2>"$T/curl.err" &&
	grep -q "server01.corp.example" "$T/page"; then
	ok "curl through a second forward gets server01's page"
else
	not_ok "curl through a second forward gets server01's page"
	show "$T/curl.err" "$T/fwd-http.log"
fi

head -c 64M /dev/urandom >"$T/blob"
want=$(sha256sum <"$T/blob" | cut -d' ' -f1)
got=$(sshc 2222 sha256sum <"$T/blob" 2>"$T/up.err" | cut -d' ' -f1)
if [ "$got" = "$want" ]; then ok "64 MiB client -> server01 arrive with the same SHA-256"; else
	not_ok "64 MiB client -> server01 arrive with the same SHA-256 ($got)"
	show "$T/up.err" "$T/fwd-ssh.log"
fi
got=$(sshc 2222 cat "$T/blob" 2>"$T/down.err" | sha256sum | cut -d' ' -f1)
if [ "$got" = "$want" ]; then ok "64 MiB server01 -> client arrive with the same SHA-256"; else
	not_ok "64 MiB server01 -> client arrive with the same SHA-256 ($got)"
	show "$T/down.err" "$T/fwd-ssh.log"
fi

if out=$(sshc 2223 hostname 2>"$T/bob.err"); then
	not_ok "user bob is refused (ssh succeeded: $out)"
elif wait_log "$T/fwd-bob.log" "event=mtunnel.refused .*status=denied" "$bobpid" &&
	grep -q "event=mtunnel.denied user=bob" "$T/broker.log"; then
	ok "user bob is refused: OPEN_REPLY denied, the agent closes the socket and logs why"
	grep "event=mtunnel.refused" "$T/fwd-bob.log" | head -n 1 | sed 's/^/# /'
else
	not_ok "user bob is refused with denied"
	show "$T/fwd-bob.log" "$T/broker.log"
fi

if in_node client -- curl -sf --max-time 10 http://127.0.0.1:2281/ >/dev/null 2>&1; then
	not_ok "a closed port on server01 fails (curl succeeded)"
elif grep -q "event=mtunnel.refused .*status=refused" "$T/fwd-closed.log"; then
	ok "a closed port on server01 fails: OPEN_REPLY refused"
	grep "event=mtunnel.refused" "$T/fwd-closed.log" | head -n 1 | sed 's/^/# /'
else
	not_ok "a closed port on server01 fails: OPEN_REPLY refused"
	show "$T/fwd-closed.log" "$T/connector.log"
fi

alive=0
for p in "$bpid" "$cpid"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
[ $alive -eq 2 ] && ok "broker and connector still run" || not_ok "broker and connector still run"

# The connector goes away under a live ssh: the broker resets its mtunnels at the agent.
opens=$(grep -c "event=mtunnel.open" "$T/broker.log")
sshc 2222 sleep 60 >/dev/null 2>&1 &
sshpid=$!
for _ in $(seq 200); do
	[ "$(grep -c "event=mtunnel.open" "$T/broker.log")" -gt "$opens" ] && break
	sleep 0.05
done
kill -TERM "$cpid"
wait "$cpid"
crc=$?
gone=no
for _ in $(seq 200); do
	kill -0 "$sshpid" 2>/dev/null || {
		gone=yes
		break
	}
	sleep 0.05
done
if [ $gone = yes ] && [ $crc -eq 0 ] &&
	grep -q "event=mtunnel.close id=[0-9]* status=error .*reason=\"connector" "$T/fwd-ssh.log"; then
	ok "a stopped connector (exit 0) resets its live mtunnel at the agent at once"
else
	not_ok "a stopped connector (exit $crc) resets its live mtunnel at the agent (ssh gone: $gone)"
	kill "$sshpid" 2>/dev/null
	show "$T/fwd-ssh.log" "$T/broker.log"
fi
wait "$sshpid" 2>/dev/null
forget "$cpid"

# SIGTERM: each daemon stops its ring and exits 0; LeakSanitizer reports at exit.
stopped=0
for p in "${pids[@]}"; do
	kill -TERM "$p" 2>/dev/null
	wait "$p"
	rc=$?
	[ $rc -eq 0 ] && stopped=$((stopped + 1)) || echo "# pid $p exited $rc"
done
pids=()
[ $stopped -eq 5 ] && ok "broker and agents exit 0 on SIGTERM" || not_ok "broker and agents exit 0 on SIGTERM ($stopped of 5)"
no_sanitizer_reports
finish
