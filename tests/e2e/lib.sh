# Shared by the tests/e2e/*.t scripts (sourced, bash): a lab instance of the test's own
# (tools/lab, MTUN_LAB=<prefix><pid>), TAP output, daemons started by PID and stopped by
# PID, readiness by polling, extra namespaces beside the lab's, and cleanup on any exit.
#
# Usage: . lib.sh; e2e_init PREFIX (sets everything below); lab_up; ... ; finish
# Environment: MTUN_BUILD (default: build) names the build directory; MTUN_E2E_LAB another
# tools/lab to use (default: this tree's).

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
e2e_dir=$top/tests/e2e
build=${MTUN_BUILD:-$top/build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
export MTUN_BUILD=$build
# MTUN_E2E_LAB: another tools/lab (e.g. a snapshot's); its .lab/ holds the state.
lab=${MTUN_E2E_LAB:-$top/tools/lab}
labtop=$(cd "$(dirname "$lab")/.." && pwd)
broker=$build/broker/mtun-broker
connector=$build/connector/mtun-connector
agent=$build/agent/mtun-agent
ctl=$build/tools/mtunctl
svc=198.18.0.1 # the edge service address (CA on :8443, the lab's own broker on :9443)
app_ip=198.19.1.10
bport=9444 # the tests' brokers: beside the lab's own, which they leave alone
py=${PYTHON:-python3}

n=0
failed=0
pids=()
extra_ns=()
T=

ok() {
	n=$((n + 1))
	echo "ok $n - $*"
}
not_ok() {
	n=$((n + 1))
	failed=$((failed + 1))
	echo "not ok $n - $*"
}
# check DESC CMD...: ok when CMD succeeds.
check() {
	local d=$1
	shift
	if "$@"; then ok "$d"; else not_ok "$d"; fi
}
note() { echo "# $*"; }
show() { tail -n 30 "$@" 2>&1 | sed 's/^/# /'; }

e2e_cleanup() {
	local p ns
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null
	done
	for ns in "${extra_ns[@]}"; do
		ip netns del "$ns" 2>/dev/null
	done
	"$lab" down >/dev/null 2>&1
	[ -z "$T" ] || rm -rf "$T"
}

# e2e_init PREFIX: the instance is PREFIX$$ (unique); skips the whole test (exit 0) when
# the programs are not built or namespaces cannot be made.
e2e_init() {
	local b
	export MTUN_LAB="$1$$"
	state="$labtop/.lab/$MTUN_LAB"
	for b in "$broker" "$connector" "$agent" "$ctl"; do
		if [ ! -x "$b" ]; then
			echo "1..0 # SKIP $b not built (set MTUN_BUILD)"
			exit 0
		fi
	done
	if [ "$(id -u)" -ne 0 ]; then
		echo "1..0 # SKIP needs root (network namespaces)"
		exit 0
	fi
	T=$(mktemp -d /tmp/mtun-e2e.XXXXXX)
	trap e2e_cleanup EXIT
	trap 'exit 130' INT TERM
	t_start=$SECONDS
}

finish() {
	echo "1..$n"
	note "$(basename "$0"): $((SECONDS - t_start)) s"
	if [ $failed -ne 0 ]; then
		mkdir -p "/tmp/mtun-e2e-logs.$$" && cp "$T"/*.log "/tmp/mtun-e2e-logs.$$/" 2>/dev/null
		note "logs kept in /tmp/mtun-e2e-logs.$$"
	fi
	[ $failed -eq 0 ]
	exit $?
}

# wait_log FILE PATTERN PID [SECONDS]: poll until FILE matches (default 10 s), failing early
# if PID exits.
wait_log() {
	local i
	for i in $(seq $((${4:-10} * 20))); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		kill -0 "$3" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
# wait_count FILE PATTERN COUNT [SECONDS]: until PATTERN occurs at least COUNT times.
wait_count() {
	local i
	for i in $(seq $((${4:-10} * 20))); do
		[ "$(grep -c -- "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0
		sleep 0.05
	done
	return 1
}
# wait_listen NODE PORT PID: NODE is a lab node or an extra one (node_add).
wait_listen() {
	local i
	for i in $(seq 200); do
		ip netns exec "mtun-$MTUN_LAB-$1" ss -Hltn "sport = :$2" | grep -q LISTEN && return 0
		kill -0 "$3" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
# wait_gone PID SECONDS: until PID has exited.
wait_gone() {
	local _
	for _ in $(seq $(($2 * 20))); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	return 1
}
in_node() { "$lab" exec "$@"; }

# node_exec NODE CMD...: exec CMD in NODE: a lab node through tools/lab exec, an extra
# node (node_add) in its netns with its own /etc/hosts and resolv.conf bound in a private
# mount namespace. Every step execs, so the PID is CMD's.
node_exec() {
	local node=$1
	shift
	[ "${1:-}" != -- ] || shift
	if [ -d "$T/node-$node" ]; then
		# shellcheck disable=SC2016 # expanded by the inner sh
		exec nsenter --net="/run/netns/mtun-$MTUN_LAB-$node" -- \
			unshare --mount --propagation private -- /bin/sh -c \
			'mount -n --bind "$1/hosts" /etc/hosts && mount -n --bind "$1/resolv.conf" /etc/resolv.conf && shift && exec "$@"' \
			sh "$T/node-$node" "$@"
	fi
	exec "$lab" exec "$node" -- "$@"
}

# start NODE NAME CMD...: a daemon in NODE, logging to $T/NAME.log (appended); its PID
# in $last, and in pids for cleanup.
start() {
	local node=$1 name=$2
	shift 2
	(node_exec "$node" "$@") </dev/null >>"$T/$name.log" 2>&1 &
	last=$!
	pids+=("$last")
}

# stop PID: SIGTERM, wait; returns its exit status and forgets it.
stop() {
	local rc
	kill -TERM "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	rc=$?
	forget "$1"
	return $rc
}
# kill9 PID: SIGKILL, reaped and forgotten.
kill9() {
	kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	forget "$1"
}
forget() {
	local p rest=()
	for p in "${pids[@]}"; do [ "$p" = "$1" ] || rest+=("$p"); done
	pids=("${rest[@]}")
}

# lab_up: tools/lab up for this instance (CA in edge, broker/connector/agent enrolled);
# stops the test when it fails.
lab_up() {
	local d
	if ! "$lab" up >"$T/up.log" 2>&1; then
		not_ok "tools/lab up"
		show "$T/up.log"
		finish
	fi
	for d in edge/broker conn/connector client/agent; do
		if [ ! -s "$state/$d/cert.pem" ]; then
			not_ok "the lab enrolled $d"
			finish
		fi
	done
	ok "lab $MTUN_LAB is up with broker, connector and agent (alice) enrolled"
}

# token ROLE [--user U]: a one-time enrollment token from the lab's CA.
token() {
	local role=$1
	shift
	in_node edge -- "$ctl" token create --tenant lab --role "$role" "$@" --ttl 10m
}

# enroll_agent USER DIR: an agent identity for USER in client, in $state/client/DIR.
enroll_agent() {
	local tok
	tok=$(token agent --user "$1" 2>>"$T/enroll.log") || return 1
	in_node client -- "$agent" enroll --ca "$svc:8443" --ca-fingerprint "$(cat "$state/ca.fingerprint")" \
		--token "$tok" --user "$1" --id "client-$1" --state "$state/client/$2" \
		--identity-source "$state/client/identity" >>"$T/enroll.log" 2>&1
}

# node_add NAME NET: an extra namespace mtun-$MTUN_LAB-NAME beside the lab's nodes, joined
# to edge by a veth on 198.18.NET.0/24 (NAME at .2, edge at .1) with a route to the edge
# service address only: it cannot reach the app unless the test gives it a way. Its own
# hosts (server01.corp.example -> the app's address) and resolv.conf (the app's DNS),
# and a machine identity in $T/node-NAME/identity. Removed at exit.
node_add() {
	local name=$1 net=$2 ns="mtun-$MTUN_LAB-$1" d="$T/node-$1"
	ip netns add "$ns" || return 1
	extra_ns+=("$ns")
	mkdir -p "$d/identity"
	chmod 700 "$d"
	openssl rand -hex 16 >"$d/identity/machine-id"
	cat /proc/sys/kernel/random/uuid >"$d/identity/product_uuid"
	printf '127.0.0.1\tlocalhost\n%s\tserver01.corp.example server01\n' "$app_ip" >"$d/hosts"
	printf 'nameserver %s\noptions timeout:1 attempts:1\n' "$app_ip" >"$d/resolv.conf"
	ip netns exec "$ns" ip link set lo up &&
		ip link add "to-$name" netns "mtun-$MTUN_LAB-edge" type veth peer name to-edge netns "$ns" &&
		ip netns exec "mtun-$MTUN_LAB-edge" ip addr add "198.18.$net.1/24" dev "to-$name" &&
		ip netns exec "mtun-$MTUN_LAB-edge" ip link set "to-$name" up &&
		ip netns exec "$ns" ip addr add "198.18.$net.2/24" dev to-edge &&
		ip netns exec "$ns" ip link set to-edge up &&
		ip netns exec "$ns" ip route add "$svc/32" via "198.18.$net.1" &&
		ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=0
}

# enroll_connector NODE ID DIR: a connector identity ID enrolled from NODE (a lab node or
# an extra one) into DIR, sealed to IDSRC.
enroll_connector() {
	local node=$1 id=$2 dir=$3 idsrc=$4 tok
	tok=$(token connector 2>>"$T/enroll.log") || return 1
	(node_exec "$node" "$connector" enroll --ca "$svc:8443" \
		--ca-fingerprint "$(cat "$state/ca.fingerprint")" --token "$tok" --id "$id" \
		--state "$dir" --identity-source "$idsrc") >>"$T/enroll.log" 2>&1
}

# broker_conf_one FILE PORT [RULE]: a broker configuration with one segment (server01 on
# tcp/PORT, connector group dc1) that user alice (group eng) may reach, or RULE instead.
broker_conf_one() {
	local rule=${3:-'{ id = 1; name = "eng-to-server01"; action = "allow"; groups = [ "eng" ]; segments = [ 10 ]; }'}
	cat >"$1" <<CONF
broker = {
	listen = "$svc:$bport";
	tenant = "lab";
	state = "$state/edge/broker";
	identity_source = "$state/edge/identity";
};
connector_groups = ( { id = 1; name = "dc1"; } );
segments = (
	{ id = 10; name = "server01"; hosts = [ "server01.corp.example" ];
	  ports = [ "tcp/$2" ]; connector_groups = [ "dc1" ]; }
);
users = ( { name = "alice"; groups = [ "eng" ]; } );
rules = (
	$rule
);
CONF
}

# connector_conf FILE STATE IDSRC [GROUP]: a connector configuration dialing the test broker.
connector_conf() {
	cat >"$1" <<CONF
connector = {
	state = "$2";
	identity_source = "$3";
	group = "${4:-dc1}";
	location = "lab";
	brokers = [ "$svc:$bport" ];
};
CONF
}

# start_broker CONF [NAME]: mtun-broker run in edge; waits until it listens.
start_broker() {
	start edge "${2:-broker}" "$broker" run --config "$1"
	bpid=$last
	wait_listen edge "$bport" "$bpid"
}
# start_connector NODE NAME CONF ID: waits until the broker logs its control session.
start_connector() {
	local before
	before=$(grep -c "event=broker.connector.up connector=$4 " "$T/broker.log" 2>/dev/null)
	start "$1" "$2" "$connector" run --config "$3"
	wait_count "$T/broker.log" "event=broker.connector.up connector=$4 " $((before + 1)) 10
}
# forward NAME STATEDIR LISTEN TO [ARGS...]: mtun-agent forward in client; waits for its
# session and its listener. Its PID in $last.
forward() {
	local name=$1 st=$2 listen=$3 to=$4
	shift 4
	start client "$name" "$agent" forward --broker "$svc:$bport" --state "$state/client/$st" \
		--identity-source "$state/client/identity" --listen "$listen" --to "$to" "$@"
	wait_log "$T/$name.log" "event=agent.session.up" "$last" && wait_listen client "${listen##*:}" "$last"
}

# sshc PORT ARGS...: ssh from client through a forward on 127.0.0.1:PORT to server01.
sshc() { in_node client -- ssh -p "$1" -o HostKeyAlias=server01.corp.example root@127.0.0.1 "${@:2}"; }

# blob ARGS...: tests/e2e/blob.py (the test traffic's client and server).
blob_server() { # blob_server NAME PORT...: in app, one listener per port
	local name=$1
	shift
	start app "$name" "$py" "$e2e_dir/blob.py" server --addr "$app_ip" --status "$T/status" "$@"
	blobpid=$last
	local p
	for p in "$@"; do
		wait_listen app "$p" "$blobpid" || return 1
	done
}

# no_sanitizer_reports: ok unless a log in $T holds an ASan/UBSan/LSan report.
no_sanitizer_reports() {
	if grep -q "Sanitizer\|runtime error:" "$T"/*.log; then
		not_ok "no sanitizer reports"
		grep -h -A5 "Sanitizer\|runtime error:" "$T"/*.log | head -n 20 | sed 's/^/# /'
		grep -h -A8 "Direct leak" "$T"/*.log | head -n 40 | sed 's/^/# /'
	else
		ok "no sanitizer reports"
	fi
}
