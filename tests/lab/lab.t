#!/usr/bin/env bash
# tools/lab end to end: brings up a lab instance of its own (t$$), checks what a user
# would (ssh, curl, dig, routes, the cgroup, the CA and the identities it enrolled, a
# clean host), tears it down; prints TAP. MTUN_BUILD (default build) is passed to up.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
lab="$top/tools/lab"
export MTUN_LAB="t$$"
prefix="mtun-$MTUN_LAB"
state="$top/.lab/$MTUN_LAB"
app_ip=198.19.1.10
inet_ip=198.18.2.2
edge_svc=198.18.0.1
scan=$top/tests/ca/keyscan.py
build=${MTUN_BUILD:-$top/build}
case $build in /*) ;; *) build=$top/$build ;; esac
n=0
tmp=$(mktemp -d /tmp/mtun-lab-t.XXXXXX)

cleanup() {
	"$lab" down >/dev/null 2>&1
	MTUN_LAB="f$$" "$lab" down >/dev/null 2>&1
	MTUN_LAB="b$$" "$lab" down >/dev/null 2>&1
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
# running PID [STARTTIME]: PID runs (a zombie does not; its parent, often init, reaps it).
running() {
	local stat f
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	read -r -a f <<<"${stat##*) }"
	[ "${f[0]}" != Z ] && { [ -z "${2:-}" ] || [ "${f[19]}" = "$2" ]; }
}

checks=("up succeeds" "every node has its namespace" "ssh from conn reaches server01"
	"curl from conn gets server01's page" "client cannot connect to the app's sshd"
	"no route from client or edge to the app network; conn does not forward"
	"client resolves www.public.example to inet" "outside the agent's cgroup, client gets NXDOMAIN for server01.corp.example"
	"conn resolves server01.corp.example to the app" "app's sshd refuses password-only logins"
	"exec returns the command's exit status" "exec client runs in the lab's client cgroup"
	"the CA answers on 198.18.0.1:8443 in edge with the fingerprint in ca.fingerprint"
	"broker, connector and agent (alice, client's device) are enrolled and verify to the lab root"
	"the key-encryption secret is 0600 in the 0700 state dir, in no output, log or command line"
	"no unencrypted private key in the CA's or the components' files"
	"status shows the CA (pid, address, tenant) and the enrolled identities"
	"broker (198.18.0.1:9443) and connector (control session up) run after up, and status shows them"
	"up ends with ssh server01.corp.example hostname from client, through the agent, printing server01"
	"the agent runs in client with 10 programs on the client cgroup and its pins in the lab's bpffs"
	"a forward-mode agent in client carries ssh hostname to server01 through broker and connector"
	"no sanitizer report in the lab's logs while it runs"
	"a second up is a no-op success" "down removes namespaces, cgroup, processes and state"
	"down leaves neither mtun-ca nor its signer running"
	"down leaves neither the broker nor the connector running"
	"down detaches the agent's programs and unmounts the lab's bpffs" "a second down succeeds"
	"a failed build stops up with the compiler's output and makes nothing"
	"a failed up says why and removes what it made"
	"the host's resolv.conf, hosts, ssh_config, ~/.ssh and /run/sshd are unchanged"
	"the host's routes and interfaces are unchanged")
skip_all() {
	local c
	for c in "${checks[@]}"; do
		skip "$c" "$1"
	done
	echo "1..$n"
	exit 0
}

[ "$(id -u)" -eq 0 ] || skip_all "needs root"
unshare --net true 2>/dev/null || skip_all "no network namespaces"
cg_root=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)

host_sum() {
	sha256sum /etc/resolv.conf /etc/hosts /etc/ssh/ssh_config 2>&1
	ls -ld /root/.ssh /run/sshd 2>&1
}
host_net() {
	ip -4 route show table all
	ip -6 route show table all
	ip -br link show | awk '{ print $1 }'
}
host_sum >"$tmp/sum.before"
host_net >"$tmp/net.before"

# 1. up
up_ok() {
	if ! "$lab" up >"$tmp/up.out" 2>"$tmp/up.err"; then
		diag "$tmp/up.err"
		return 1
	fi
	grep -q "is up" "$tmp/up.out"
}
ok "up succeeds" up_ok
if [ ! -f "$state/up" ]; then
	for c in "${checks[@]:1}"; do
		n=$((n + 1))
		echo "not ok $n - $c # lab is not up"
	done
	echo "1..$n"
	exit 1
fi

all_ns() {
	local node
	for node in client edge conn app inet; do
		[ -e "/run/netns/$prefix-$node" ] || return 1
	done
}
ok "every node has its namespace" all_ns

ssh_hostname() {
	local out
	out=$("$lab" exec conn -- ssh server01.corp.example hostname 2>"$tmp/ssh.err")
	[ "$out" = server01 ] || { diag "$tmp/ssh.err"; echo "# got: '$out'" >&2; return 1; }
}
ok "ssh from conn reaches server01" ssh_hostname

page() {
	"$lab" exec conn -- curl -s --max-time 5 http://server01.corp.example/ |
		grep -q '<h1>server01.corp.example</h1>'
}
ok "curl from conn gets server01's page" page

no_connect() { ! "$lab" exec client -- nc -z -w 2 "$app_ip" 22 2>/dev/null; }
ok "client cannot connect to the app's sshd" no_connect

no_route() {
	! "$lab" exec client -- ip route get "$app_ip" >/dev/null 2>&1 &&
		! "$lab" exec edge -- ip route get "$app_ip" >/dev/null 2>&1 &&
		[ "$("$lab" exec conn -- sysctl -n net.ipv4.ip_forward)" = 0 ]
}
ok "no route from client or edge to the app network; conn does not forward" no_route

public_name() { [ "$("$lab" exec client -- dig +short www.public.example)" = "$inet_ip" ]; }
ok "client resolves www.public.example to inet" public_name

# Outside the cgroup the agent intercepts, client's resolver is inet's, which knows nothing of
# corp.example (inside, tests/agent/intercept.t checks the agent's answers).
private_nx() {
	nsenter --net="/run/netns/$prefix-client" -- dig @"$inet_ip" server01.corp.example |
		grep -q 'status: NXDOMAIN'
}
ok "outside the agent's cgroup, client gets NXDOMAIN for server01.corp.example" private_nx

conn_resolves() { [ "$("$lab" exec conn -- dig +short server01.corp.example)" = "$app_ip" ]; }
ok "conn resolves server01.corp.example to the app" conn_resolves

no_password() {
	! "$lab" exec conn -- ssh -o PubkeyAuthentication=no server01.corp.example true \
		2>"$tmp/pw.err" && grep -q 'Permission denied (publickey)' "$tmp/pw.err"
}
ok "app's sshd refuses password-only logins" no_password

exit_status() {
	"$lab" exec edge -- sh -c 'exit 7'
	[ $? -eq 7 ]
}
ok "exec returns the command's exit status" exit_status

in_cgroup() {
	local want="0::/$prefix/client"
	[ "$("$lab" exec client -- cat /proc/self/cgroup | grep '^0::')" = "$want" ] &&
		[ "$(cat "$cg_root/$prefix/client/cgroup.procs")" = "" ]
}
if [ -n "$cg_root" ]; then
	ok "exec client runs in the lab's client cgroup" in_cgroup
else
	skip "exec client runs in the lab's client cgroup" "no cgroup v2 mounted"
fi

# mtun: the CA in edge and the identities it enrolled.
ca_answers() {
	local served want
	want=$(cat "$state/ca.fingerprint")
	served=$("$lab" exec edge -- openssl s_client -connect "$edge_svc:8443" </dev/null 2>/dev/null |
		openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2 | tr -d : | tr A-F a-f)
	if [ -z "$served" ] || [ "sha256:$served" != "$want" ]; then
		echo "# served '$served', exported '$want'" >&2
		return 1
	fi
}
ok "the CA answers on 198.18.0.1:8443 in edge with the fingerprint in ca.fingerprint" ca_answers

# uri DIR: the URI in the certificate of an enrollment directory.
uri() { openssl x509 -in "$1/cert.pem" -noout -ext subjectAltName 2>/dev/null | sed -n 's/.*URI://p'; }
identities() {
	local d bad=0 root="$state/ca-root.pem" id device
	openssl x509 -in "$root" -noout -subject 2>/dev/null | grep -q "O = lab, OU = mtun" ||
		{ echo "# ca-root.pem is not the lab tenant's root" >&2; return 1; }
	for d in edge/broker conn/connector client/agent; do
		openssl verify -CAfile "$root" -untrusted "$state/$d/cert.pem" "$state/$d/cert.pem" \
			>"$tmp/verify.out" 2>&1 || { diag "$tmp/verify.out"; bad=1; }
	done
	[ "$(uri "$state/edge/broker")" = mtun://lab/broker/edge ] || bad=1
	[ "$(uri "$state/conn/connector")" = mtun://lab/connector/conn ] || bad=1
	# the agent's device is the one of client's own identity source
	id=$state/client/identity
	device=$(printf 'mtun device id v1\nmachine-id=%s\nproduct_uuid=%s\n' \
		"$(cat "$id/machine-id")" "$(cat "$id/product_uuid")" | sha256sum | cut -d' ' -f1)
	[ "$(uri "$state/client/agent")" = "mtun://lab/agent/client?user=alice&device=$device" ] ||
		{ echo "# agent: $(uri "$state/client/agent"), device $device" >&2; bad=1; }
	return $bad
}
ok "broker, connector and agent (alice, client's device) are enrolled and verify to the lab root" identities

kek_secret() {
	local kek="$state/edge/ca.kek" secret pid start name
	if [ "$(stat -c %a "$kek")" != 600 ] || [ "$(stat -c %a "$state")" != 700 ]; then
		echo "# modes: $(stat -c '%a %n' "$kek" "$state")" >&2
		return 1
	fi
	secret=$(tr -d '\n' <"$kek")
	[ ${#secret} -ge 32 ] || return 1
	read -r pid start name <"$state/pids/ca"
	! grep -rqF -- "$secret" "$tmp/up.out" "$tmp/up.err" "$state/logs" "$state/edge/ca-init.out" \
		"/proc/$pid/cmdline" "/proc/$pid/environ"
}
ok "the key-encryption secret is 0600 in the 0700 state dir, in no output, log or command line" kek_secret

no_plain_key() {
	python3 "$scan" "$state/edge" "$state/conn" "$state/client" "$state/ca-root.pem" \
		>"$tmp/scan.out" 2>&1 || { diag "$tmp/scan.out"; return 1; }
	# and the scanner does flag a plain key: the lab's own ssh client key
	! python3 "$scan" "$state/ssh/id_ed25519" >/dev/null 2>&1
}
ok "no unencrypted private key in the CA's or the components' files" no_plain_key

status_ca() {
	local pid start name bad=0
	"$lab" status >"$tmp/status.out" 2>&1 || { diag "$tmp/status.out"; return 1; }
	read -r pid start name <"$state/pids/ca"
	grep -Eq "^  ca +edge/ca +pid $pid \(signer [0-9]+\), answering on 198\.18\.0\.1:8443, tenant lab$" \
		"$tmp/status.out" || bad=1
	grep -Eq "^  ident +edge/broker +mtun://lab/broker/edge " "$tmp/status.out" || bad=1
	grep -Eq "^  ident +conn/connector +mtun://lab/connector/conn " "$tmp/status.out" || bad=1
	grep -Eq "^  ident +client/agent +mtun://lab/agent/client\?user=alice&device=" "$tmp/status.out" || bad=1
	[ $bad -eq 0 ] || diag "$tmp/status.out"
	return $bad
}
ok "status shows the CA (pid, address, tenant) and the enrolled identities" status_ca

# mtun: the broker in edge and the connector in conn, started by up.
daemons_up() {
	local f pid start name bad=0
	for f in broker connector; do
		read -r pid start name <"$state/pids/$f" 2>/dev/null || { echo "# no record of $f" >&2; return 1; }
		running "$pid" "$start" || { echo "# $name ($pid) is not running" >&2; bad=1; }
	done
	read -r pid start name <"$state/pids/broker"
	[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mtun-broker ] || bad=1
	ip netns exec "$prefix-edge" ss -Hltnp "src $edge_svc and sport = :9443" |
		grep -q "pid=$pid," || { echo "# the broker does not listen on $edge_svc:9443" >&2; bad=1; }
	grep -q "event=broker.connector.up connector=conn" "$state/logs/broker.log" ||
		{ diag "$state/logs/broker.log"; bad=1; }
	grep -q "event=connector.control.up" "$state/logs/connector.log" ||
		{ diag "$state/logs/connector.log"; bad=1; }
	"$lab" status >"$tmp/status2.out" 2>&1 || bad=1
	grep -Eq "^  mtun +edge/broker +pid $pid, listening on 198\.18\.0\.1:9443" "$tmp/status2.out" || bad=1
	read -r pid start name <"$state/pids/connector"
	grep -Eq "^  mtun +conn/connector +pid $pid, control session up to 198\.18\.0\.1:9443" \
		"$tmp/status2.out" || bad=1
	[ $bad -eq 0 ] || diag "$tmp/status2.out"
	return $bad
}
ok "broker (198.18.0.1:9443) and connector (control session up) run after up, and status shows them" daemons_up

up_ssh() {
	tail -n 1 "$tmp/up.out" | grep -q 'ssh server01.corp.example hostname.*: server01$' ||
		{ diag "$tmp/up.out"; return 1; }
}
ok "up ends with ssh server01.corp.example hostname from client, through the agent, printing server01" up_ssh

agent_up() {
	local pid start name bad=0 cg
	read -r pid start name <"$state/pids/agent" 2>/dev/null || { echo "# no record of the agent" >&2; return 1; }
	running "$pid" "$start" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mtun-agent ] ||
		{ echo "# the agent ($pid) is not running" >&2; bad=1; }
	cg=$(cat "$state/cgroup")
	[ "$(bpftool cgroup show "$cg/client" | grep -c intercept_)" = 10 ] ||
		{ bpftool cgroup show "$cg/client" >&2; bad=1; }
	[ "$(find "$state/bpf/mtun/$MTUN_LAB" -type f | wc -l)" = 10 ] || { echo "# pins" >&2; bad=1; }
	grep -q "^0::/$prefix/agent" "/proc/$pid/cgroup" || { echo "# the agent is not in $prefix/agent" >&2; bad=1; }
	"$lab" status >"$tmp/status3.out" 2>&1
	grep -Eq "^  mtun +client/agent +pid $pid, session up" "$tmp/status3.out" ||
		{ diag "$tmp/status3.out"; bad=1; }
	return $bad
}
ok "the agent runs in client with 10 programs on the client cgroup and its pins in the lab's bpffs" agent_up

# The agent's forward mode, as the summary of up shows it.
forward_ssh() {
	local fpid out bad=0
	(exec "$lab" exec client -- "$build/agent/mtun-agent" forward --broker "$edge_svc:9443" \
		--state "$state/client/agent" --listen 127.0.0.1:2222 \
		--to server01.corp.example:22) </dev/null >"$tmp/fwd.log" 2>&1 &
	fpid=$!
	for _ in $(seq 200); do
		grep -q "event=agent.session.up" "$tmp/fwd.log" &&
			ip netns exec "$prefix-client" ss -Hltn "sport = :2222" | grep -q LISTEN && break
		kill -0 "$fpid" 2>/dev/null || break
		sleep 0.05
	done
	out=$("$lab" exec client -- ssh -p 2222 -o HostKeyAlias=server01.corp.example root@127.0.0.1 \
		hostname 2>"$tmp/fwd-ssh.err")
	[ "$out" = server01 ] || { echo "# got: '$out'" >&2; diag "$tmp/fwd-ssh.err" "$tmp/fwd.log"; bad=1; }
	grep -q "event=mtunnel.open" "$state/logs/broker.log" || { echo "# the broker logged no mtunnel" >&2; bad=1; }
	# stopped by its PID (exec keeps it): it exits 0 on SIGTERM
	kill -TERM "$fpid" 2>/dev/null
	wait "$fpid" || { echo "# the agent exited $? on SIGTERM" >&2; bad=1; }
	return $bad
}
if [ -x "$build/agent/mtun-agent" ]; then
	ok "a forward-mode agent in client carries ssh hostname to server01 through broker and connector" forward_ssh
else
	skip "a forward-mode agent in client carries ssh hostname to server01 through broker and connector" \
		"$build/agent/mtun-agent not built"
fi

# A sanitizer build (MTUN_BUILD) reports into the daemons' logs while they run.
no_sanitizer() {
	local hit
	hit=$(grep -l "Sanitizer\|runtime error:" "$state"/logs/*.log "$tmp/fwd.log" 2>/dev/null)
	[ -z "$hit" ] || { echo "# sanitizer report in: $hit" >&2; return 1; }
}
ok "no sanitizer report in the lab's logs while it runs" no_sanitizer

# The recorded servers, before the second up and before down.
cat "$state"/pids/* >"$tmp/pids"
agent_cg=$(cat "$state/cgroup")/client
second_up() {
	"$lab" up >"$tmp/up2.out" 2>&1 && grep -q "already up" "$tmp/up2.out" &&
		cat "$state"/pids/* | cmp -s - "$tmp/pids"
}
ok "a second up is a no-op success" second_up

# A process started through exec must go with the lab too.
"$lab" exec client -- sleep 600 &
stray=$!
"$lab" exec conn -- sleep 600 &
stray2=$!
while ! grep -q "^0::/$prefix/client" "/proc/$stray/cgroup" 2>/dev/null; do
	[ -e "/proc/$stray" ] || break
	sleep 0.05
done

down_clean() {
	local pid start name f bad=0
	"$lab" down >"$tmp/down.out" 2>&1 || { diag "$tmp/down.out"; bad=1; }
	for f in /run/netns/"$prefix"-*; do
		[ -e "$f" ] && { echo "# namespace $f left" >&2; bad=1; }
	done
	[ -n "$cg_root" ] && [ -e "$cg_root/$prefix" ] && { echo "# cgroup left" >&2; bad=1; }
	while read -r pid start name; do
		running "$pid" "$start" && { echo "# $name ($pid) still running" >&2; bad=1; }
	done <"$tmp/pids"
	if running "$stray" || running "$stray2"; then
		echo "# a process started by exec is left" >&2
		bad=1
	fi
	[ -e "$state" ] && { echo "# state left" >&2; bad=1; }
	return $bad
}
ok "down removes namespaces, cgroup, processes and state" down_clean

agent_gone() {
	! mountpoint -q "$state/bpf" 2>/dev/null && ! grep -q " $state/bpf " /proc/self/mounts &&
		[ ! -e "$agent_cg" ]
}
ok "down detaches the agent's programs and unmounts the lab's bpffs" agent_gone

no_ca_left() {
	local pid start name found=0 bad=0 p
	while read -r pid start name; do
		case $name in
		edge/ca | edge/ca-signer)
			found=$((found + 1))
			running "$pid" "$start" && { echo "# $name ($pid) still running" >&2; bad=1; }
			;;
		esac
	done <"$tmp/pids"
	[ $found -eq 2 ] || { echo "# up recorded $found of mtun-ca and its signer" >&2; return 1; }
	# nor any other mtun-ca serving from this instance's state
	p=$(pgrep -f -- "serve --state $state/edge/ca ") && { echo "# $p still serve the lab's CA" >&2; bad=1; }
	return $bad
}
ok "down leaves neither mtun-ca nor its signer running" no_ca_left

no_daemon_left() {
	local pid start name found=0 bad=0 p
	while read -r pid start name; do
		case $name in
		edge/broker | conn/connector)
			found=$((found + 1))
			running "$pid" "$start" && { echo "# $name ($pid) still running" >&2; bad=1; }
			;;
		esac
	done <"$tmp/pids"
	[ $found -eq 2 ] || { echo "# up recorded $found of the broker and the connector" >&2; return 1; }
	p=$(pgrep -f -- "run --config $state/") && { echo "# $p still run from the lab's configs" >&2; bad=1; }
	return $bad
}
ok "down leaves neither the broker nor the connector running" no_daemon_left

second_down() { "$lab" down >&2; }
ok "a second down succeeds" second_down

# A build that fails (here: a ninja that reports a compiler error) stops up before it
# makes anything, and shows what the compiler said.
failed_build() {
	local inst="b$$" bad=0 f
	mkdir -p "$tmp/bin-ninja"
	cat >"$tmp/bin-ninja/ninja" <<'NINJA'
#!/bin/sh
echo "[1/2] Compiling C object ca/mtun-ca.p/main.c.o"
echo "FAILED: ca/mtun-ca.p/main.c.o"
echo "cc -Ica -c ../ca/main.c"
echo "../ca/main.c:12:5: error: 'lab_test_undeclared' undeclared (first use in this function)"
echo "ninja: build stopped: subcommand failed."
exit 1
NINJA
	chmod +x "$tmp/bin-ninja/ninja"
	if PATH="$tmp/bin-ninja:$PATH" MTUN_LAB=$inst "$lab" up >"$tmp/build.out" 2>"$tmp/build.err"; then
		echo "# up succeeded with a failing build" >&2
		MTUN_LAB=$inst "$lab" down >/dev/null 2>&1
		return 1
	fi
	if ! grep -qF "main.c:12:5: error: 'lab_test_undeclared' undeclared" "$tmp/build.err" ||
		! grep -q "building mtun failed" "$tmp/build.err"; then
		diag "$tmp/build.err"
		bad=1
	fi
	for f in /run/netns/"mtun-$inst"-* "$top/.lab/$inst" ${cg_root:+"$cg_root/mtun-$inst"}; do
		[ -e "$f" ] && { echo "# $f left after a failed build" >&2; bad=1; }
	done
	return $bad
}
ok "a failed build stops up with the compiler's output and makes nothing" failed_build

# An up that fails (here: a dnsmasq that exits at once) says why and leaves nothing.
failed_up() {
	local inst="f$$" bad=0
	mkdir -p "$tmp/bin"
	printf '#!/bin/sh\necho "fake dnsmasq: refusing" >&2\nexit 1\n' >"$tmp/bin/dnsmasq"
	chmod +x "$tmp/bin/dnsmasq"
	if PATH="$tmp/bin:$PATH" MTUN_LAB=$inst "$lab" up >"$tmp/fail.out" 2>"$tmp/fail.err"; then
		echo "# up succeeded with a broken dnsmasq" >&2
		MTUN_LAB=$inst "$lab" down >/dev/null 2>&1
		return 1
	fi
	grep -q "app-dns exited before app's DNS was ready" "$tmp/fail.err" || { diag "$tmp/fail.err"; bad=1; }
	for f in /run/netns/"mtun-$inst"-* "$top/.lab/$inst" ${cg_root:+"$cg_root/mtun-$inst"}; do
		[ -e "$f" ] && { echo "# $f left after a failed up" >&2; bad=1; }
	done
	return $bad
}
ok "a failed up says why and removes what it made" failed_up

host_sum >"$tmp/sum.after"
host_net >"$tmp/net.after"
ok "the host's resolv.conf, hosts, ssh_config, ~/.ssh and /run/sshd are unchanged" cmp -s "$tmp/sum.before" "$tmp/sum.after"
ok "the host's routes and interfaces are unchanged" cmp -s "$tmp/net.before" "$tmp/net.after"

echo "1..$n"
