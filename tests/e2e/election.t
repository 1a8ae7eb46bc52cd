#!/usr/bin/env bash
# Connector election (issue 4, acceptance), with two connectors c2 and c3 of one group in
# namespaces of their own beside the lab (joined to edge only). Each reaches the app only
# through tests/e2e/delaypipe.py, a TUN path that delays packets toward the app by a
# settable number of milliseconds (the kernel has no netem):
#   1. c2 has no path to the app, c3 has one: every OPEN goes through c3, c2 is never
#      elected (nor sent a BIND).
#   2. both can reach the app: for name a.corp.example c3's path is slowed by 150 ms and
#      c2 wins; for b.corp.example c2's is slowed and c3 wins (latency decides, in both
#      directions, not the order of the connectors).
#   3. killing the elected connector (c3, SIGKILL) makes the next OPEN to b.corp.example
#      succeed through c2.
# The broker's `event=mtunnel.open ... connector=ID host=NAME` lines say which connector
# carried each mtunnel. Prints TAP. Environment: MTUN_BUILD (default: build).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init l
lab_up

fail_setup() {
	not_ok "$1"
	show "$T"/*.log
	finish
}

# Two extra connector nodes: c2 on 198.18.20.0/24, c3 on 198.18.21.0/24.
for i in 2 3; do
	node_add "c$i" "2$((i - 2))" || fail_setup "namespace for connector c$i"
	printf '%s\ta.corp.example b.corp.example\n' "$app_ip" >>"$T/node-c$i/hosts"
	enroll_connector "c$i" "c$i" "$T/node-c$i/connector" "$T/node-c$i/identity" ||
		fail_setup "connector c$i enrolls"
	connector_conf "$T/c$i.conf" "$T/node-c$i/connector" "$T/node-c$i/identity"
done
ok "two more connector nodes (c2, c3) with their own namespaces and enrolled identities"

cat >"$T/broker.conf" <<CONF
broker = {
	listen = "$svc:$bport";
	tenant = "lab";
	state = "$state/edge/broker";
	identity_source = "$state/edge/identity";
};
connector_groups = ( { id = 1; name = "dc1"; } );
segments = (
	{ id = 10; name = "corp"; hosts = [ "server01.corp.example", "*.corp.example" ];
	  ports = [ "tcp/22" ]; connector_groups = [ "dc1" ]; }
);
users = ( { name = "alice"; groups = [ "eng" ]; } );
rules = (
	{ id = 1; name = "eng-to-corp"; action = "allow"; groups = [ "eng" ]; segments = [ 10 ]; }
);
CONF

# pipe NODE: the delaying path from NODE (c2: .20, c3: .21) to the app; its delay in
# $T/delay-NODE (ms).
pipe() {
	local node=$1 net=$((${1#c} + 18))
	echo "${2:-0}" >"$T/delay-$node"
	start app "pipe-$node" "$py" "$e2e_dir/delaypipe.py" --name "$node" \
		--netns "mtun-$MTUN_LAB-$node" --node-addr "198.18.$net.2" --app-addr "$app_ip" \
		--delay-file "$T/delay-$node"
	wait_log "$T/pipe-$node.log" "event=delaypipe.ready" "$last"
}
# set_delay NODE MS: waits until the pipe has taken it.
set_delay() {
	local before
	before=$(grep -c "event=delaypipe.delay name=$1 ms=$2\$" "$T/pipe-$1.log")
	echo "$2" >"$T/delay-$1"
	wait_count "$T/pipe-$1.log" "event=delaypipe.delay name=$1 ms=$2\$" $((before + 1)) 5
}
reaches() { (node_exec "$1" nc -z -w 3 "$app_ip" 22) >/dev/null 2>&1; }
# opens_via NAME CONNECTOR: mtunnels to NAME the broker opened through CONNECTOR.
opens_via() { grep "event=mtunnel.open " "$T/broker.log" | grep " host=$1 " | grep -c " connector=$2 "; }
binds_to() { grep "event=mtunnel.bind " "$T/broker.log" | grep -c " connector=$1 "; }

pipe c3 0 || fail_setup "a path from c3 to the app"
if reaches c3 && ! reaches c2; then
	ok "c3 reaches the app (through its path); c2 cannot"
else
	not_ok "c3 reaches the app (through its path); c2 cannot"
fi

start_broker "$T/broker.conf" || fail_setup "mtun-broker listens"
start_connector c2 conn-c2 "$T/c2.conf" c2 || fail_setup "connector c2's control session is up"
c2pid=$last
start_connector c3 conn-c3 "$T/c3.conf" c3 || fail_setup "connector c3's control session is up"
c3pid=$last
ok "broker and both connectors are up"

forward fwd-s agent 127.0.0.1:2201 server01.corp.example:22 || fail_setup "forward to server01"
forward fwd-a agent 127.0.0.1:2202 a.corp.example:22 || fail_setup "forward to a"
forward fwd-b agent 127.0.0.1:2203 b.corp.example:22 || fail_setup "forward to b"

# 1. The one that cannot reach the app is never elected. The OPENs overlap (each ssh
# stays 2 s), so a broker that spread them by load would use c2 too.
good=0
sp=()
for i in $(seq 6); do
	(sshc 2201 'hostname; sleep 2' >"$T/ssh-$i.out" 2>>"$T/ssh.err") &
	sp+=($!)
done
for i in $(seq 6); do
	wait "${sp[$((i - 1))]}"
	[ "$(cat "$T/ssh-$i.out")" = server01 ] && good=$((good + 1))
done
if [ $good -eq 6 ] && [ "$(opens_via server01.corp.example c3)" -eq 6 ] &&
	[ "$(opens_via server01.corp.example c2)" -eq 0 ] && [ "$(binds_to c2)" -eq 0 ]; then
	ok "6 of 6 overlapping OPENs to server01 go through c3; c2, which cannot reach it, is never elected nor bound"
else
	not_ok "6 overlapping OPENs to server01 all through c3 ($good ssh ok; via c3: $(opens_via server01.corp.example c3), via c2: $(opens_via server01.corp.example c2), BINDs to c2: $(binds_to c2))"
	show "$T/ssh.err" "$T/broker.log" "$T/conn-c2.log"
fi

# 2. Both able: the lower probe latency wins, either way round.
if pipe c2 0 && reaches c2; then ok "c2 now reaches the app too"; else not_ok "c2 now reaches the app too"; fi
if set_delay c3 150 && [ "$(sshc 2202 hostname 2>>"$T/ssh.err")" = server01 ] &&
	[ "$(opens_via a.corp.example c2)" -eq 1 ] && [ "$(opens_via a.corp.example c3)" -eq 0 ]; then
	ok "with c3's path 150 ms slower, the OPEN to a.corp.example is elected to c2"
else
	not_ok "with c3's path 150 ms slower, the OPEN to a.corp.example is elected to c2 (via c2: $(opens_via a.corp.example c2), via c3: $(opens_via a.corp.example c3))"
	show "$T/ssh.err" "$T/broker.log"
fi
if set_delay c3 0 && set_delay c2 150 && [ "$(sshc 2203 hostname 2>>"$T/ssh.err")" = server01 ] &&
	[ "$(opens_via b.corp.example c3)" -eq 1 ] && [ "$(opens_via b.corp.example c2)" -eq 0 ]; then
	ok "with c2's path 150 ms slower, the OPEN to b.corp.example is elected to c3"
else
	not_ok "with c2's path 150 ms slower, the OPEN to b.corp.example is elected to c3 (via c3: $(opens_via b.corp.example c3), via c2: $(opens_via b.corp.example c2))"
	show "$T/ssh.err" "$T/broker.log"
fi

# 3. The elected connector dies: the next OPEN succeeds through the other.
kill9 "$c3pid"
out=$(sshc 2203 hostname 2>>"$T/ssh.err")
if [ "$out" = server01 ] && [ "$(opens_via b.corp.example c2)" -eq 1 ]; then
	ok "after c3 is killed, the next OPEN to b.corp.example succeeds through c2"
else
	not_ok "after c3 is killed, the next OPEN to b.corp.example succeeds through c2 (ssh: '$out', via c2: $(opens_via b.corp.example c2))"
	show "$T/ssh.err" "$T/broker.log" "$T/fwd-b.log"
fi
grep "event=mtunnel.open " "$T/broker.log" | sed 's/^/# /'

stopped=0
for p in "$c2pid" "$bpid"; do
	stop "$p"
	rc=$?
	[ $rc -eq 0 ] && stopped=$((stopped + 1)) || note "pid $p exited $rc"
done
check "broker and connector c2 exit 0 on SIGTERM" [ $stopped -eq 2 ]
no_sanitizer_reports
finish
