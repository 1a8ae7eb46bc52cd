#!/usr/bin/env bash
# The first end-to-end slice in a lab of its own (e$$): ssh and HTTP from client through
# mtun-agent forward -> mtun-broker (edge) -> mtun-connector (conn) -> app, all over mTLS
# with identities from the lab's mtun-ca; 64 MiB each way with matching SHA-256; a user
# the broker's rules do not allow is refused (denied); a closed port fails (refused).
# Prints TAP. Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
export MTUN_BUILD=$build
lab="$top/tools/lab"
export MTUN_LAB="e$$"
state="$top/.lab/$MTUN_LAB"
broker=$build/broker/mtun-broker
connector=$build/connector/mtun-connector
agent=$build/agent/mtun-agent
ctl=$build/tools/mtunctl
svc=198.18.0.1
bport=9444

for b in "$broker" "$connector" "$agent" "$ctl"; do
	if [ ! -x "$b" ]; then
		echo "1..0 # SKIP $b not built (set MTUN_BUILD)"
		exit 0
	fi
done
[ "$(id -u)" -eq 0 ] || {
	echo "1..0 # SKIP needs root (network namespaces)"
	exit 0
}

T=$(mktemp -d /tmp/mtun-e2e.XXXXXX)
pids=()
cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null
	done
	"$lab" down >/dev/null 2>&1
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

n=0
failed=0
ok() {
	n=$((n + 1))
	echo "ok $n - $*"
}
not_ok() {
	n=$((n + 1))
	failed=$((failed + 1))
	echo "not ok $n - $*"
}
show() { tail -n 30 "$@" 2>&1 | sed 's/^/# /'; }
finish() {
	echo "1..$n"
	if [ $failed -ne 0 ]; then
		mkdir -p "/tmp/mtun-e2e-logs.$$" && cp "$T"/*.log "/tmp/mtun-e2e-logs.$$/"
		echo "# logs kept in /tmp/mtun-e2e-logs.$$"
	fi
	[ $failed -eq 0 ]
	exit $?
}
# wait_log FILE PATTERN PID: poll until FILE matches (10 s), failing early if PID exits.
wait_log() {
	local i
	for i in $(seq 200); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		kill -0 "$3" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
wait_listen() { # wait_listen NODE PORT PID
	local i
	for i in $(seq 200); do
		ip netns exec "mtun-$MTUN_LAB-$1" ss -Hltn "sport = :$2" | grep -q LISTEN && return 0
		kill -0 "$3" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
in_node() { "$lab" exec "$@"; }
# start NODE NAME CMD...: a daemon in NODE, logging to $T/NAME.log; its PID in $last.
start() {
	local node=$1 name=$2
	shift 2
	# exec all the way down (tools/lab exec keeps the PID), so $! is the daemon itself.
	(exec "$lab" exec "$node" -- "$@") </dev/null >"$T/$name.log" 2>&1 &
	last=$!
	pids+=("$last")
}

if ! "$lab" up >"$T/up.log" 2>&1; then
	not_ok "tools/lab up"
	show "$T/up.log"
	finish
fi
ok "lab $MTUN_LAB is up"
for d in edge/broker conn/connector client/agent; do
	if [ ! -s "$state/$d/cert.pem" ]; then
		not_ok "the lab enrolled $d"
		finish
	fi
done
ok "the lab's mtun-ca enrolled broker, connector and agent (alice)"

# A second agent identity, for a user no rule allows.
tok=$(in_node edge -- "$ctl" token create --tenant lab --role agent --user bob --ttl 10m 2>"$T/tok.log")
if in_node client -- "$agent" enroll --ca "$svc:8443" --ca-fingerprint "$(cat "$state/ca.fingerprint")" \
	--token "$tok" --user bob --id client-bob --state "$state/client/bob" \
	--identity-source "$state/client/identity" >"$T/bob.log" 2>&1; then
	ok "agent of user bob enrolls"
else
	not_ok "agent of user bob enrolls"
	show "$T/tok.log" "$T/bob.log"
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
cat >"$T/connector.conf" <<CONF
connector = {
	state = "$state/conn/connector";
	identity_source = "$state/conn/identity";
	group = "dc1";
	location = "lab";
	brokers = [ "$svc:$bport" ];
};
CONF

# A typo in a setting is refused, not ignored.
sed 's/tenant = "lab";/tenant = "lab"; tennant = "x";/' "$T/broker.conf" >"$T/typo.conf"
if ! "$broker" run --config "$T/typo.conf" >"$T/typo.log" 2>&1 &&
	grep -q "unknown setting 'tennant'" "$T/typo.log"; then
	ok "mtun-broker refuses an unknown setting"
else
	not_ok "mtun-broker refuses an unknown setting"
	show "$T/typo.log"
fi

start edge broker "$broker" run --config "$T/broker.conf"
bpid=$last
if wait_listen edge "$bport" "$bpid"; then ok "mtun-broker listens on $svc:$bport"; else
	not_ok "mtun-broker listens on $svc:$bport"
	show "$T/broker.log"
	finish
fi
start conn connector "$connector" run --config "$T/connector.conf"
cpid=$last
if wait_log "$T/broker.log" "event=broker.connector.up connector=conn" "$cpid"; then
	ok "the connector's control session is up"
else
	not_ok "the connector's control session is up"
	show "$T/connector.log" "$T/broker.log"
	finish
fi

# forward NAME STATE LISTEN TO: an agent in client.
forward() {
	start client "$1" "$agent" forward --broker "$svc:$bport" --state "$state/client/$2" \
		--identity-source "$state/client/identity" --listen "$3" --to "$4"
	wait_log "$T/$1.log" "event=agent.session.up" "$last" && wait_listen client "${3##*:}" "$last"
}
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

sshc() { in_node client -- ssh -p "$1" -o HostKeyAlias=server01.corp.example root@127.0.0.1 "${@:2}"; }
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
rest=()
for p in "${pids[@]}"; do [ "$p" = "$cpid" ] || rest+=("$p"); done
pids=("${rest[@]}")

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
if grep -q "Sanitizer\|runtime error:" "$T"/*.log; then
	not_ok "no sanitizer reports"
	grep -h -A5 "Sanitizer\|runtime error:" "$T"/*.log | head -n 20 | sed 's/^/# /'
	grep -h -A8 "Direct leak" "$T"/*.log | head -n 40 | sed 's/^/# /'
else
	ok "no sanitizer reports"
fi
finish
