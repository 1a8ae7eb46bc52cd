#!/usr/bin/env bash
# The interception programs end to end, with intercept_probe standing in for the agent;
# prints TAP. Needs root, cgroup v2, BTF and a build (MTUN_BUILD, default build/).
#
#   cgroup v2 root ── mtun-bpf-t$$/        clients join it; the probe (agent) does not
#                  └─ mtun-bpf-t$$-b/      where a restart moves the links
#   netns mtun-bpf-t$$ (lo only, no routes beyond 127/8)
#     probe serve ── TCP listener 127.0.0.1:7001, DNS stub 127.0.0.1:7053, ctl socket
#     socat       ── a plain TCP service on 127.0.0.1:7080 (normal traffic)
#     clients     ── 100.64.1.2:22, ::ffff:100.64.1.2, range segments, dig @10.53.0.1
#
# Nothing leaves the namespace: the redirected destinations have no route there, so a
# connection that is not redirected fails with ENETUNREACH at once.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
probe=$build/bpf/intercept_probe
ns=mtun-bpf-t$$
inst=bpf-t$$
port=7001
dns_port=7053
plain_port=7080
mark=0x4d54
hooks=10 # connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6, sockops, cgroup_skb egress
tmp=$(mktemp -d /tmp/mtun-bpf-t.XXXXXX)
ctl=$tmp/ctl
pin_root=/sys/fs/bpf
pin_dir=$pin_root/mtun/$inst
n=0
cg=
cg2=
serve_pid=
plain_pid=

cleanup() {
	[ -n "$serve_pid" ] && kill -9 "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
	[ -n "$plain_pid" ] && kill "$plain_pid" 2>/dev/null && wait "$plain_pid" 2>/dev/null
	[ -x "$probe" ] && "$probe" --instance "$inst" purge 2>/dev/null
	[ -n "$cg" ] && [ -d "$cg" ] && rmdir "$cg" 2>/dev/null
	[ -n "$cg2" ] && [ -d "$cg2" ] && rmdir "$cg2" 2>/dev/null
	ip netns del "$ns" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() { # ok DESCRIPTION CMD...: one TAP line, from CMD's status
	local what=$1
	shift
	n=$((n + 1))
	if "$@"; then
		echo "ok $n - $what"
	else
		echo "not ok $n - $what"
	fi
}
skip() {
	n=$((n + 1))
	echo "ok $n - $1 # SKIP $2"
}
diag() { sed 's/^/# /' "$@" >&2; }

checks=("the probe attaches one program per hook to the test cgroup and pins each link"
	"a client in the cgroup connecting to 100.64.1.2:22 lands on the listener; it recovers it"
	"getpeername in the client shows 100.64.1.2:22"
	"an AF_INET6 socket to ::ffff:100.64.1.2 is redirected and its destination recovered"
	"traffic the hooks do not want (a plain loopback service) is untouched"
	"an address outside every range is not redirected"
	"an address in a range added at run time is redirected"
	"a range limited to port 443 redirects 443 and not 80"
	"a deleted range is no longer redirected"
	"dig @10.53.0.1 (connected UDP) is answered by the stub and accepts the reply's source"
	"glibc's resolver (getent hosts with a resolv.conf naming 10.53.0.4) gets the stub's answer"
	"an unconnected sendto to 10.53.0.2:53 is answered, from 10.53.0.2:53"
	"an unconnected v4-mapped sendto to port 53 is answered, from ::ffff:10.53.0.3"
	"the stub recovers each query's original resolver (dig, unconnected, v4-mapped, glibc)"
	"a socket with the agent's exempt mark is not redirected"
	"a process not in the cgroup is not intercepted"
	"BPF_PROG_TEST_RUN is refused (ENOTSUPP) by the sock_addr and sock_ops programs here"
	"BPF_PROG_TEST_RUN: cgroup_skb egress passes DNS, TCP, truncated, IPv6; records nothing"
	"after kill -9 the links stay attached and pinned"
	"a restart after kill -9 takes over all links: new programs, no duplicates"
	"after the takeover interception works"
	"two more restarts (clean, then kill -9) leave exactly one set of programs and pins"
	"stopping (SIGTERM) exits 0, detaches everything and removes the pins"
	"after the stop normal networking works and nothing is redirected"
	"purge removes what a killed instance left behind"
	"a restart on another cgroup after kill -9 moves the links; the old cgroup keeps none"
	"bad settings (listener port 0, instance ../x) are refused and attach nothing"
	"the loader's default cgroup is the cgroup v2 mount")
skip_all() {
	local c
	for c in "${checks[@]}"; do
		skip "$c" "$1"
	done
	echo "1..$n"
	exit 0
}

[ "$(id -u)" -eq 0 ] || skip_all "needs root"
[ -x "$probe" ] || skip_all "no $probe (build first, or set MTUN_BUILD)"
command -v bpftool >/dev/null || skip_all "no bpftool"
command -v socat >/dev/null || skip_all "no socat (tools/deps bench)"
[ -r /sys/kernel/btf/vmlinux ] || skip_all "kernel without BTF"
unshare --net true 2>/dev/null || skip_all "no network namespaces"
cg_root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
[ -n "$cg_root" ] || skip_all "no cgroup v2 mount"
cg=$cg_root/mtun-bpf-t$$
mkdir "$cg" || skip_all "cannot create a cgroup under $cg_root"
cg2=$cg_root/mtun-bpf-t$$-b
mkdir "$cg2" || skip_all "cannot create a cgroup under $cg_root"
ip netns add "$ns" || skip_all "cannot create a network namespace"
ip -n "$ns" link set lo up

in_cg() { # in_cg CMD...: CMD in the test cgroup and the test netns (nsenter: /sys stays)
	sh -c 'echo $$ >"$0/cgroup.procs" && n=$1 && shift && exec nsenter --net="$n" "$@"' \
		"$cg" "/run/netns/$ns" "$@"
}
in_ns() { nsenter --net="/run/netns/$ns" "$@"; }

serve_start() { # serve_start [OPTS]: the probe as the agent, inside the netns
	: >"$tmp/serve.out"
	# nsenter execs the probe, so $! is the probe's pid
	nsenter --net="/run/netns/$ns" "$probe" --cgroup "$cg" --instance "$inst" --port $port \
		--dns-port $dns_port --mark $mark --ctl "$ctl" "$@" serve \
		>"$tmp/serve.out" 2>>"$tmp/serve.err" &
	serve_pid=$!
	for _ in $(seq 100); do
		grep -q '^ready' "$tmp/serve.out" && return 0
		kill -0 "$serve_pid" 2>/dev/null || break
		sleep 0.1
	done
	[ -n "${quiet:-}" ] || diag "$tmp/serve.err"
	return 1
}
serve_kill() { # serve_kill SIGNAL: the probe's exit status
	local rc
	kill "-$1" "$serve_pid" 2>/dev/null
	wait "$serve_pid" 2>/dev/null
	rc=$?
	serve_pid=
	return $rc
}
prog_ids() { bpftool cgroup show "$cg" | awk 'NR > 1 { print $1 }' | sort; }
prog_count() { bpftool cgroup show "$cg" | awk 'NR > 1' | wc -l; }
pin_count() { find "$pin_dir" -mindepth 1 2>/dev/null | wc -l; }

# connect_in [OPTS] ADDR PORT: the probe's client in the cgroup; its output in $tmp/c
connect_in() { in_cg "$probe" "${@:1:$#-2}" connect "${@: -2}" >"$tmp/c" 2>&1; }
connect_out() { in_ns "$probe" connect "$@" >"$tmp/c" 2>&1; }
has() { grep -qxF "$1" "$tmp/c" || { diag "$tmp/c"; return 1; }; }
unreachable() { grep -q '^error=Network is unreachable' "$tmp/c" || { diag "$tmp/c"; return 1; }; }

# a plain service in the netns, for traffic the hooks must leave alone
nsenter --net="/run/netns/$ns" socat "TCP-LISTEN:$plain_port,bind=127.0.0.1,reuseaddr,fork" \
	SYSTEM:'echo plain' 2>/dev/null &
plain_pid=$!
for _ in $(seq 100); do
	in_ns ss -Hltn "sport = :$plain_port" | grep -q . && break
	sleep 0.1
done

# attach
attached() {
	serve_start || return 1
	[ "$(prog_count)" -eq $hooks ] && [ "$(pin_count)" -eq $hooks ] ||
		{ bpftool cgroup show "$cg" >&2; ls "$pin_dir" >&2; return 1; }
}
ok "${checks[0]}" attached

# the synthetic range
connect_in 100.64.1.2 22
ok "${checks[1]}" has "orig=100.64.1.2:22"
ok "${checks[2]}" has "peer=100.64.1.2:22"
v4mapped() {
	connect_in ::ffff:100.64.1.2 22
	has "orig=100.64.1.2:22" && has "peer=[::ffff:100.64.1.2]:22"
}
ok "${checks[3]}" v4mapped
plain() { connect_in 127.0.0.1 $plain_port && has "plain" && has "peer=127.0.0.1:$plain_port"; }
ok "${checks[4]}" plain

# IP-range segments
connect_in 198.51.100.7 80
ok "${checks[5]}" unreachable
ctl() { "$probe" --ctl "$ctl" ctl "$1" >/dev/null; }
range_added() {
	ctl "add 198.51.100.0/24" || return 1
	connect_in 198.51.100.7 80 && has "orig=198.51.100.7:80" && has "peer=198.51.100.7:80" &&
		connect_in 198.51.101.7 80
	unreachable
}
ok "${checks[6]}" range_added
range_ports() {
	ctl "add 203.0.113.0/24 443 443" || return 1
	connect_in 203.0.113.9 443 && has "orig=203.0.113.9:443" || return 1
	connect_in 203.0.113.9 80
	unreachable
}
ok "${checks[7]}" range_ports
range_deleted() {
	ctl "del 198.51.100.0/24" || return 1
	connect_in 198.51.100.7 80
	unreachable
}
ok "${checks[8]}" range_deleted

# DNS
if command -v dig >/dev/null; then
	dig_ok() {
		in_cg dig @10.53.0.1 server01.corp.example A +tries=1 +time=3 >"$tmp/dig" 2>&1
		grep -q 'SERVER: 10.53.0.1#53' "$tmp/dig" &&
			grep -qE '^server01\.corp\.example\.[[:space:]].*A[[:space:]]+192\.0\.2\.53$' "$tmp/dig" &&
			! grep -q 'unexpected source' "$tmp/dig" || { diag "$tmp/dig"; return 1; }
	}
	ok "${checks[9]}" dig_ok
else
	skip "${checks[9]}" "no dig"
fi
dns() { in_cg "$probe" dns "$1" >"$tmp/c" 2>&1; }
glibc() {
	# a private mount namespace gives getent its own resolv.conf; the host's is untouched
	echo "nameserver 10.53.0.4" >"$tmp/resolv.conf"
	in_cg unshare --mount sh -c 'mount --bind "$1" /etc/resolv.conf &&
		exec getent hosts server01.corp.example' sh "$tmp/resolv.conf" >"$tmp/c" 2>&1
	grep -qE '^192\.0\.2\.53[[:space:]]+server01\.corp\.example$' "$tmp/c" ||
		{ diag "$tmp/c"; return 1; }
}
ok "${checks[10]}" glibc
ok "${checks[11]}" eval 'dns 10.53.0.2; has "from=10.53.0.2:53 answer=192.0.2.53"'
ok "${checks[12]}" eval 'dns ::ffff:10.53.0.3; has "from=[::ffff:10.53.0.3]:53 answer=192.0.2.53"'

resolvers() {
	grep -q '^dns client=127.0.0.1:[0-9]* orig=10.53.0.1:53$' "$tmp/serve.out" &&
		grep -q '^dns client=127.0.0.1:[0-9]* orig=10.53.0.2:53$' "$tmp/serve.out" &&
		grep -q '^dns client=127.0.0.1:[0-9]* orig=10.53.0.3:53$' "$tmp/serve.out" &&
		grep -q '^dns client=127.0.0.1:[0-9]* orig=10.53.0.4:53$' "$tmp/serve.out" &&
		! grep -q 'orig=none' "$tmp/serve.out" || { diag "$tmp/serve.out"; return 1; }
}
ok "${checks[13]}" resolvers

# what is not intercepted
connect_in --mark $mark 100.64.1.2 22
ok "${checks[14]}" unreachable
connect_out 100.64.1.2 22
ok "${checks[15]}" unreachable

# BPF_PROG_TEST_RUN
testrun_enotsupp() {
	"$probe" testrun >"$tmp/tr" 2>&1
	[ "$(grep -c ' ENOTSUPP$' "$tmp/tr")" -eq $((hooks - 1)) ] || { diag "$tmp/tr"; return 1; }
}
testrun_skb() {
	[ "$(grep -c '^intercept_dns_egress .* retval=1$' "$tmp/tr")" -eq 4 ] &&
		grep -qx 'dns_clients empty' "$tmp/tr" || { diag "$tmp/tr"; return 1; }
}
ok "${checks[16]}" testrun_enotsupp
ok "${checks[17]}" testrun_skb

# crash and recovery
ids_before=$(prog_ids)
crashed() {
	serve_kill KILL
	[ "$(prog_count)" -eq $hooks ] && [ "$(pin_count)" -eq $hooks ]
}
ok "${checks[18]}" crashed
taken_over() {
	serve_start || return 1
	grep -qx "ready recovered=$hooks" "$tmp/serve.out" && [ "$(prog_count)" -eq $hooks ] &&
		[ "$(pin_count)" -eq $hooks ] || return 1
	# every program replaced: no id in common with the killed run's
	[ -z "$(comm -12 <(echo "$ids_before") <(prog_ids))" ]
}
ok "${checks[19]}" taken_over
connect_in 100.64.1.2 22
ok "${checks[20]}" has "orig=100.64.1.2:22"
two_restarts() {
	serve_kill TERM
	serve_start || return 1
	serve_kill KILL
	serve_start || return 1
	connect_in 100.64.1.2 22
	has "orig=100.64.1.2:22" && [ "$(prog_count)" -eq $hooks ] && [ "$(pin_count)" -eq $hooks ]
}
ok "${checks[21]}" two_restarts

# clean stop
stopped() {
	serve_kill TERM || { diag "$tmp/serve.err"; return 1; }
	! grep -qE 'Sanitizer|runtime error' "$tmp/serve.err" || { diag "$tmp/serve.err"; return 1; }
	[ "$(prog_count)" -eq 0 ] && [ ! -e "$pin_dir" ] ||
		{ bpftool cgroup show "$cg" >&2; ls -R "$pin_root/mtun" >&2; return 1; }
}
ok "${checks[22]}" stopped
after_stop() {
	connect_in 100.64.1.2 22
	unreachable && plain
}
ok "${checks[23]}" after_stop

# purge
purged() {
	serve_start || return 1
	serve_kill KILL
	[ "$(prog_count)" -eq $hooks ] || return 1
	"$probe" --instance "$inst" purge || return 1
	[ "$(prog_count)" -eq 0 ] && [ ! -e "$pin_dir" ]
}
ok "${checks[24]}" purged

# a changed cgroup across a crash; refused settings
moved() {
	serve_start || return 1
	serve_kill KILL
	serve_start --cgroup "$cg2" || return 1
	grep -qx 'ready recovered=0' "$tmp/serve.out" && [ "$(prog_count)" -eq 0 ] &&
		[ "$(bpftool cgroup show "$cg2" | awk 'NR > 1' | wc -l)" -eq $hooks ] &&
		[ "$(pin_count)" -eq $hooks ] || return 1
	serve_kill TERM && [ ! -e "$pin_dir" ]
}
ok "${checks[25]}" moved
refused() {
	quiet=1 serve_start --port 0 && return 1
	serve_kill KILL
	quiet=1 serve_start --instance ../x && return 1
	serve_kill KILL
	[ "$(prog_count)" -eq 0 ] && [ ! -e "$pin_dir" ] && [ ! -e "$pin_root/x" ] &&
		grep -q 'bad instance name' "$tmp/serve.err"
}
ok "${checks[26]}" refused
ok "${checks[27]}" eval '[ "$("$probe" cgroup-root)" = "$cg_root" ]'

echo "1..$n"
