#!/usr/bin/env bash
# mtun-agent run end to end (issue 5's acceptance) in a lab instance of its own (a<pid>):
# real ssh, curl and dig in the client cgroup reach server01 by name through the agent's
# BPF interception, DNS stub and mtunnels; public DNS is unchanged; wildcard and IP-range
# segments serve; outside the cgroup nothing is intercepted; stop, kill -9 and restarts
# leave exactly one set of programs and pins (bpftool); bad DNS is answered or dropped.
# Prints TAP. Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
case $build in /*) ;; *) build=$top/$build ;; esac
export MTUN_BUILD=$build
export MTUN_LAB=a$$
lab=$top/tools/lab
state=$top/.lab/$MTUN_LAB
agent=$build/agent/mtun-agent
inet_ip=198.18.2.2
app_ip=198.19.1.10
n=0
failed=0
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
note() { echo "# $*"; }
show() { tail -n 25 "$@" 2>&1 | sed 's/^/# /'; }
finish() {
	echo "1..$n"
	[ $failed -eq 0 ]
	exit $?
}

if [ "$(id -u)" -ne 0 ]; then
	echo "1..0 # SKIP needs root (namespaces, cgroups, BPF)"
	exit 0
fi
cleanup() {
	local p
	[ -z "${apid:-}" ] || kill "$apid" 2>/dev/null
	"$lab" down >/dev/null 2>&1
	[ -z "$T" ] || rm -rf "$T"
}
T=$(mktemp -d /tmp/mtun-agent-t.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM

# in the client cgroup (intercepted) and outside it (same netns, not intercepted)
cl() { "$lab" exec client -- "$@"; }
outside() { nsenter --net="/run/netns/mtun-$MTUN_LAB-client" -- "$@"; }
progs() { bpftool cgroup show "$cg/client" 2>/dev/null | grep -c 'intercept_' || true; }
pins() { find "$state/bpf/mtun" -type f 2>/dev/null | wc -l; }
gone() { # gone ID...: none of these programs is loaded any more (freed after RCU: poll)
	local id i
	for id in "$@"; do
		for i in $(seq 40); do
			bpftool prog show id "$id" >/dev/null 2>&1 || continue 2
			sleep 0.05
		done
		return 1
	done
}
count_log() {
	local c
	c=$(grep -c -- "$1" "$T/agent.log" 2>/dev/null)
	echo "${c:-0}"
}

if "$lab" up >"$T/up.out" 2>"$T/up.err"; then
	ok "tools/lab up"
else
	not_ok "tools/lab up"
	show "$T/up.out" "$T/up.err"
	finish
fi
if tail -n 1 "$T/up.out" | grep -q 'ssh server01.corp.example hostname.*: server01$'; then
	ok "up ends with ssh server01.corp.example hostname from client printing server01"
else
	not_ok "up ends with ssh server01.corp.example hostname from client printing server01"
	show "$T/up.out"
fi
cg=$(cat "$state/cgroup")
read -r apid _ <"$state/pids/agent"
alog=$state/logs/agent.log

# --- the user's view ---
out=$(cl ssh server01.corp.example 'echo via-mtun; hostname' 2>"$T/ssh.err" | tr '\n' ' ')
if [ "$out" = "via-mtun server01 " ]; then ok "ssh server01.corp.example (key auth) runs a command"; else
	not_ok "ssh server01.corp.example runs a command (got '$out')"
	show "$T/ssh.err" "$alog"
fi
if cl curl -sf --max-time 10 http://server01.corp.example/ 2>&1 | grep -q '<h1>server01.corp.example</h1>'; then
	ok "curl http://server01.corp.example/ gets the page"
else
	not_ok "curl http://server01.corp.example/ gets the page"
fi
a=$(cl dig +short +time=3 +tries=1 server01.corp.example A)
if [[ $a =~ ^100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])\.[0-9]+\.[0-9]+$ ]]; then
	ok "dig server01.corp.example answers from the synthetic range ($a)"
else
	not_ok "dig server01.corp.example answers from the synthetic range (got '$a')"
fi
ttl=$(cl dig +noall +answer +time=3 +tries=1 server01.corp.example A | awk '{print $2}')
if [ -n "$ttl" ] && [ "$ttl" -le 10 ]; then ok "the synthetic answer has a short TTL ($ttl s)"; else
	not_ok "the synthetic answer has a short TTL (got '$ttl')"
fi
a2=$(cl dig +short +time=3 +tries=1 SERVER01.Corp.Example. A)
if [ "$a2" = "$a" ]; then ok "case and trailing dot do not matter, the address is stable"; else
	not_ok "case and trailing dot do not matter (got '$a2', first '$a')"
fi
aaaa=$(cl dig +time=3 +tries=1 server01.corp.example AAAA | grep -c 'status: NOERROR')
if [ "$aaaa" = 1 ] && [ -z "$(cl dig +short +time=3 +tries=1 server01.corp.example AAAA)" ]; then
	ok "AAAA for a private name: NOERROR, no records"
else
	not_ok "AAAA for a private name: NOERROR, no records"
fi

# public DNS through the stub equals the resolver's own answer
# all but what differs by nature: timing, the server line, the id
strip() {
	grep -Ev '^;; (Query time|WHEN|MSG SIZE|SERVER)|^; <<>>|^;; global|^; \(.* found\)|->>HEADER<<-' |
		sed '/^$/d'
}
q0=$(sed -n 's/^dns_forwarded=//p' "$state/client/agent.status")
via=$(cl dig +time=3 +tries=1 www.public.example A | strip)
direct=$(outside dig @"$inet_ip" +time=3 +tries=1 www.public.example A | strip)
if [ -n "$via" ] && [ "$via" = "$direct" ] && grep -q "198.18.2.2" <<<"$via"; then
	ok "dig www.public.example answers the real address, unchanged (same as asking the resolver)"
else
	not_ok "dig www.public.example answers unchanged"
	note "via the stub:"
	sed 's/^/#   /' <<<"$via"
	note "direct:"
	sed 's/^/#   /' <<<"$direct"
fi
# The status file is rewritten 4 times a second: poll it for the new count (up to 10 s).
for _ in $(seq 200); do
	q1=$(sed -n 's/^dns_forwarded=//p' "$state/client/agent.status")
	[ -n "$q0" ] && [ -n "$q1" ] && [ "$q1" -gt "$q0" ] && break
	sleep 0.05
done
if [ -n "$q0" ] && [ -n "$q1" ] && [ "$q1" -gt "$q0" ]; then
	ok "the public query went through the agent's stub (forwarded $q0 -> $q1)"
else
	not_ok "the public query went through the agent's stub (forwarded '$q0' -> '$q1')"
fi
tcp=$(cl dig +tcp +short +time=3 +tries=1 server01.corp.example A)
if [ "$tcp" = "$a" ]; then ok "dig +tcp server01.corp.example: the same synthetic answer over TCP"; else
	not_ok "dig +tcp server01.corp.example: the same synthetic answer over TCP (got '$tcp')"
fi
big_via=$(cl dig +time=3 +tries=1 big.public.example TXT 2>&1)
big_direct=$(outside dig +tcp @"$inet_ip" +time=3 +tries=1 big.public.example TXT 2>&1)
if grep -q 'Truncated, retrying in TCP mode' <<<"$big_via" &&
	[ "$(grep -c 'IN.TXT.*mtun-lab-mtun-lab' <<<"$big_via")" = 6 ] &&
	[ "$(grep -A6 'ANSWER SECTION' <<<"$big_via")" = "$(grep -A6 'ANSWER SECTION' <<<"$big_direct")" ]; then
	ok "a truncated public answer is retried over TCP through the stub and arrives unchanged"
else
	not_ok "a truncated public answer is retried over TCP through the stub and arrives unchanged"
	sed 's/^/#   /' <<<"$big_via" | head -20
fi
nx=$(cl dig +time=3 +tries=1 nothing.public.example A | grep -o 'status: [A-Z]*')
if [ "$nx" = "status: NXDOMAIN" ]; then ok "a public NXDOMAIN comes back as NXDOMAIN"; else
	not_ok "a public NXDOMAIN comes back as NXDOMAIN (got '$nx')"
fi
if cl curl -sf --max-time 10 http://www.public.example/ | grep -q '<h1>www.public.example</h1>'; then
	ok "curl http://www.public.example/ (not in the forwarding set) goes its normal way"
else
	not_ok "curl http://www.public.example/ goes its normal way"
fi

if cl curl -sf --max-time 10 http://wiki.apps.corp.example/ | grep -q '<h1>server01.corp.example</h1>'; then
	ok "the wildcard segment *.apps.corp.example serves wiki.apps.corp.example"
else
	not_ok "the wildcard segment *.apps.corp.example serves wiki.apps.corp.example"
	show "$alog"
fi
if cl curl -sf --max-time 10 "http://$app_ip/" | grep -q '<h1>server01.corp.example</h1>' &&
	grep -q "event=mtunnel.open id=[0-9]* to=$app_ip:80" "$alog"; then
	ok "the IP-range segment 198.19.1.0/24 serves http://$app_ip/ (OPEN of the IP literal)"
else
	not_ok "the IP-range segment 198.19.1.0/24 serves http://$app_ip/"
	show "$alog"
fi
if ! cl nc -z -w 3 "$app_ip" 22 2>/dev/null; then
	ok "port 22 of the range (not in the segment) is not carried"
else
	not_ok "port 22 of the range (not in the segment) is not carried"
fi

# outside the cgroup: nothing is intercepted
onx=$(outside dig +time=3 +tries=1 @"$inet_ip" server01.corp.example A | grep -o 'status: [A-Z]*')
if [ "$onx" = "status: NXDOMAIN" ] && ! outside curl -s --max-time 3 "http://$app_ip/" >/dev/null 2>&1 &&
	! outside curl -s --max-time 3 "http://$a/" >/dev/null 2>&1; then
	ok "a process outside the cgroup is not intercepted (NXDOMAIN, no path to the app or $a)"
else
	not_ok "a process outside the cgroup is not intercepted ($onx)"
fi
if ! outside ip route get "$app_ip" >/dev/null 2>&1 && ! outside ip route get "$a" >/dev/null 2>&1; then
	ok "client still has no route to the app network nor to the synthetic range"
else
	not_ok "client still has no route to the app network nor to the synthetic range"
fi

st=$("$agent" status --file "$state/client/agent.status" 2>&1)
if grep -q '^session=up' <<<"$st" && grep -q '^user=alice' <<<"$st" &&
	grep -q '^broker=198.18.0.1:9443' <<<"$st" && grep -Eq '^device=[0-9a-f]{64}' <<<"$st" &&
	grep -Eq '^forwarding_set=[3-9]' <<<"$st" && grep -Eq '^bytes_up=[1-9]' <<<"$st" &&
	grep -Eq '^bytes_down=[1-9]' <<<"$st" && grep -q '^open_mtunnels=' <<<"$st"; then
	ok "mtun-agent status: broker, user, device, forwarding set, mtunnels, bytes each way"
else
	not_ok "mtun-agent status shows the agent"
	sed 's/^/#   /' <<<"$st"
fi

# --- bad input to the stub ---
bad() { cl python3 "$top/tests/agent/dnsbad.py" "$@" 2>&1; }
check_bad() { # check_bad EXPECTED KIND [NAME]
	local want=$1 got
	shift
	got=$(bad "$1" "$inet_ip" "${2:-server01.corp.example}")
	if [ "$got" = "$want" ]; then ok "DNS $1: $want"; else not_ok "DNS $1: $want (got '$got')"; fi
}
check_bad none short
check_bad FORMERR truncated
check_bad FORMERR longlabel
check_bad FORMERR longname
check_bad FORMERR loop
check_bad FORMERR loop2
check_bad FORMERR badptr
check_bad REFUSED class
check_bad FORMERR twoq
check_bad none response
check_bad NOTIMP notify
got=$(bad class "$inet_ip" www.public.example)
if [ "$got" = REFUSED ] || [ "$got" = NOTIMP ] || [ "$got" = NOERROR ]; then
	ok "DNS unknown class for a public name is forwarded and answered ($got)"
else
	not_ok "DNS unknown class for a public name is forwarded and answered (got '$got')"
fi
for i in 1 2 3 4 5 6 7 8; do bad garbage "$inet_ip" x 0.3 >/dev/null; done
if kill -0 "$apid" 2>/dev/null && [ "$(bad good "$inet_ip" server01.corp.example)" = NOERROR ]; then
	ok "after garbage the agent still runs and answers"
else
	not_ok "after garbage the agent still runs and answers"
fi

# --- stop, crash, restarts ---
start_agent() { # in client's netns, in the lab's agent cgroup, logging to $T/agent.log
	(
		echo "$BASHPID" >"$cg/agent/cgroup.procs"
		exec nsenter --net="/run/netns/mtun-$MTUN_LAB-client" -- \
			"$agent" run --config "$state/client/agent.conf"
	) >>"$T/agent.log" 2>&1 </dev/null &
	apid=$!
}
wait_ready() { # wait_ready COUNT: until the log has COUNT agent.config events
	local i
	for i in $(seq 200); do
		[ "$(count_log 'event=agent.config ')" -ge "$1" ] && return 0
		kill -0 "$apid" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
stop_agent() { # SIGTERM, and its exit status
	local i
	kill -TERM "$apid" 2>/dev/null
	for i in $(seq 100); do
		kill -0 "$apid" 2>/dev/null || break
		sleep 0.05
	done
	wait "$apid" 2>/dev/null
}

p=$(progs)
if [ "$p" = 10 ] && [ "$(pins)" = 10 ]; then ok "running: 10 programs on the client cgroup, 10 pins"; else
	not_ok "running: 10 programs on the client cgroup, 10 pins (got $p, $(pins))"
fi
# The lab's own agent is not our child: TERM it and poll.
kill -TERM "$apid"
for i in $(seq 100); do
	kill -0 "$apid" 2>/dev/null || break
	sleep 0.05
done
apid=
if [ "$(progs)" = 0 ] && [ "$(pins)" = 0 ] && [ ! -e "$state/bpf/mtun" ] &&
	grep -q 'event=agent.detached' "$alog"; then
	ok "SIGTERM: every program detached, every pin removed"
else
	not_ok "SIGTERM: every program detached, every pin removed (progs $(progs), pins $(pins))"
	bpftool cgroup show "$cg/client" | sed 's/^/#   /'
fi
if cl curl -sf --max-time 5 http://www.public.example/ >/dev/null &&
	[ "$(cl dig +short +time=2 +tries=1 www.public.example)" = "$inet_ip" ] &&
	cl dig +time=2 +tries=1 server01.corp.example | grep -q 'status: NXDOMAIN'; then
	ok "agent stopped: normal networking works (public DNS and HTTP; private names are NXDOMAIN)"
else
	not_ok "agent stopped: normal networking works"
fi

start_agent
if wait_ready 1 && [ "$(progs)" = 10 ] &&
	[ "$(cl ssh server01.corp.example hostname 2>/dev/null)" = server01 ]; then
	ok "a restarted agent attaches again and ssh works"
else
	not_ok "a restarted agent attaches again and ssh works"
	show "$T/agent.log"
fi
old=$(bpftool cgroup show "$cg/client" | awk '/intercept_/ {print $1}' | sort | tr '\n' ' ')
kill -KILL "$apid"
wait "$apid" 2>/dev/null
if [ "$(progs)" = 10 ] && [ "$(pins)" = 10 ]; then
	ok "kill -9 leaves the programs attached and pinned (10, 10)"
else
	not_ok "kill -9 leaves the programs attached and pinned (got $(progs), $(pins))"
fi
start_agent
if wait_ready 2 && grep -q 'recovered=10' "$T/agent.log" && [ "$(progs)" = 10 ] &&
	[ "$(pins)" = 10 ] && [ "$(cl ssh server01.corp.example hostname 2>/dev/null)" = server01 ]; then
	ok "restart after kill -9 takes over the 10 pinned links (recovered=10) and ssh works"
else
	not_ok "restart after kill -9 takes over the 10 pinned links and ssh works (progs $(progs))"
	show "$T/agent.log"
fi
new=$(bpftool cgroup show "$cg/client" | awk '/intercept_/ {print $1}' | sort | tr '\n' ' ')
if [ -n "$new" ] && [ "$new" != "$old" ]; then ok "the links now run the new programs"; else
	not_ok "the links now run the new programs (old '$old', new '$new')"
fi
stop_agent
rc1=$?
start_agent
wait_ready 3
stop_agent
rc2=$?
start_agent
if wait_ready 4 && [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ "$(progs)" = 10 ] && [ "$(pins)" = 10 ] &&
	gone $new; then
	ok "two restarts in a row: exactly one set of programs and pins (bpftool)"
else
	not_ok "two restarts in a row: exactly one set (progs $(progs), pins $(pins), exits $rc1 $rc2)"
fi
last=$(bpftool cgroup show "$cg/client" | awk '/intercept_/ {print $1}')
stop_agent
if [ "$(progs)" = 0 ] && [ "$(pins)" = 0 ] && gone $last; then
	ok "after the last stop no program of the agent is loaded or attached"
else
	not_ok "after the last stop no program of the agent is loaded or attached"
fi
apid=

hit=$(grep -l "Sanitizer\|runtime error:" "$state"/logs/*.log "$T/agent.log" 2>/dev/null)
if [ -z "$hit" ]; then ok "no sanitizer report in the agent's or the lab's logs"; else
	not_ok "no sanitizer report in the agent's or the lab's logs ($hit)"
	show $hit
fi

if "$lab" down >"$T/down.out" 2>&1 && ! grep -q " $state/bpf " /proc/self/mounts &&
	[ ! -e "$state" ] && [ ! -d "$cg" ]; then
	ok "tools/lab down removes the lab, its cgroup and its bpffs"
else
	not_ok "tools/lab down removes the lab, its cgroup and its bpffs"
	show "$T/down.out"
	grep " $state/bpf " /proc/self/mounts | sed 's/^/# /'
	ls -d "$state" "$cg" 2>&1 | sed 's/^/# /'
fi
finish
