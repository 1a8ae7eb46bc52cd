#!/usr/bin/env bash
# Issue 6's acceptance in a lab of its own (pol<pid>): one mtun-broker with the admin model
# (admin = {...}) and an activity file, configured only through mtunctl against the broker's
# admin API; a connector beside server01's sshd and a byte counter (blob.py); agents
# (forward mode) for alice (group eng) and bob. alice reaches *.corp.example:22 by ssh, bob
# is refused with the reason; a posture profile requiring a file flips alice's access (her
# live mtunnel is closed naming the profile); a time window rule; the timeout policy closes
# a long mtunnel; policy test names the rule; sessions lists a live mtunnel; a change reaches
# the agent's forwarding set within a second without reconnecting; one activity record per
# mtunnel with exact byte counts; bad input is a 400. Prints TAP.
# Environment: MTUN_BUILD (default: build) names the build directory; MTUN_KEEP_LOGS=DIR
# keeps the daemons' logs and the activity file there even when every check passes.
set -uo pipefail
. "$(dirname "$0")/../e2e/lib.sh"
e2e_init pol
aport=9445 # the broker's admin API, on the edge service address
act=$T/activity.jsonl
actpy=$top/tests/admin/policy/activity.py
posture_file=$T/posture/corp-managed.conf

now_ms() { date +%s%3N; }
# m ARGS...: mtunctl in edge, against the broker's admin API, as admin ops-1 (nsenter
# alone: its own time is what the live-change check measures).
m() {
	nsenter --net="/run/netns/mtun-$MTUN_LAB-edge" -- env MTUN_ADMIN_SERVER="$svc:$aport" \
		MTUN_ADMIN_STATE="$T/admin" MTUN_IDENTITY_SOURCE="$state/edge/identity" "$ctl" "$@"
}
# model DESC ARGS...: one change through mtunctl; ok or not, with mtunctl's output.
model() {
	local d=$1
	shift
	if m "$@" >"$T/m.out" 2>&1; then ok "mtunctl $d"; else
		not_ok "mtunctl $d"
		show "$T/m.out"
	fi
}
# within MS CMD...: poll CMD until it succeeds, at most MS milliseconds.
within() {
	local end=$(($(now_ms) + $1))
	shift
	while :; do
		"$@" && return 0
		[ "$(now_ms)" -lt "$end" ] || return 1
		sleep 0.1
	done
}
# alice's and bob's ssh through their forwards (2222, 2223) to server01 (key auth).
ssh_at() { in_node client -- ssh -p "$1" -o HostKeyAlias=server01.corp.example -o BatchMode=yes \
	-o ConnectTimeout=5 root@127.0.0.1 "${@:2}"; }
alice_ssh() { [ "$(ssh_at 2222 hostname 2>>"$T/ssh.err")" = server01 ]; }
# After the first real ssh, access is probed by sshd's banner through alice's forward (the
# agent closes the socket without data when the OPEN is refused): no key exchange, so
# polling stays cheap on a loaded machine.
banner() {
	in_node client -- timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/2222 && head -c 7 <&3' \
		2>>"$T/ssh.err"
}
alice_in() { [ "$(banner)" = SSH-2.0 ]; }
# alice_out: refused, and her agent logged one more refusal (not a hang).
alice_out() {
	local r
	r=$(count "$T/fwd-ssh.log" "event=mtunnel.refused .*status=denied")
	[ -z "$(banner)" ] && [ "$(count "$T/fwd-ssh.log" "event=mtunnel.refused .*status=denied")" -gt "$r" ]
}
# norm: the activity file checked, and normalized into $T/act.norm (sorted keys, compact);
# sel FRAGMENT...: its records holding every fragment ('"user":"bob"', '"port":22,').
norm() { "$py" "$actpy" check "$act" "$T/act.norm" >"$T/check.out" 2>&1; }
sel() {
	local f
	cp "$T/act.norm" "$T/sel"
	for f in "$@"; do
		grep -F -- "$f" "$T/sel" >"$T/sel.2"
		mv "$T/sel.2" "$T/sel"
	done
	cat "$T/sel"
}
count() {
	local c
	c=$(grep -c -- "$2" "$1" 2>/dev/null)
	echo "${c:-0}"
}
# live_ssh SECONDS: alice's ssh running sleep in the background, its PID in $lpid, once
# her agent logged the mtunnel open.
live_ssh() {
	local before
	before=$(count "$T/fwd-ssh.log" "event=mtunnel.open ")
	("$lab" exec client -- ssh -p 2222 -o HostKeyAlias=server01.corp.example -o BatchMode=yes \
		root@127.0.0.1 sleep "$1") </dev/null >>"$T/live.log" 2>&1 &
	lpid=$!
	pids+=("$lpid")
	wait_count "$T/fwd-ssh.log" "event=mtunnel.open " $((before + 1)) 10
}
# ts_ms LINE: a log line's ts= as milliseconds since the epoch.
ts_ms() { date -d "$(sed -n 's/^ts=\([^ ]*\).*/\1/p' <<<"$1")" +%s%3N; }
# sessions_now: agent sessions the broker has accepted, and alice's agent's own count.
sessions_now() {
	echo "$(count "$T/broker.log" "event=broker.agent.up ") $(count "$T/fwd-ssh.log" "event=agent.session.up")"
}

lab_up
note "$((SECONDS - t_start)) s: the lab is up"

if enroll_agent bob bob; then ok "agent of user bob enrolls"; else
	not_ok "agent of user bob enrolls"
	show "$T/enroll.log"
fi
# The administrator: an admin identity from the lab's CA, used from edge.
if tok=$(token admin 2>>"$T/enroll.log") &&
	in_node edge -- "$ctl" enroll --ca "$svc:8443" --ca-fingerprint "$(cat "$state/ca.fingerprint")" \
		--token "$tok" --id ops-1 --state "$T/admin" >>"$T/enroll.log" 2>&1; then
	ok "an admin (ops-1) enrolls with mtunctl enroll"
else
	not_ok "an admin (ops-1) enrolls with mtunctl enroll"
	show "$T/enroll.log"
	finish
fi

cat >"$T/broker.conf" <<CONF
broker = {
	listen = "$svc:$bport";
	tenant = "lab";
	state = "$state/edge/broker";
	identity_source = "$state/edge/identity";
};
admin = {
	listen = "$svc:$aport";
	store = "$T/admin.db";
};
activity = { sink = "file:$act"; };
CONF
connector_conf "$T/connector.conf" "$state/conn/connector" "$state/conn/identity"
if start_broker "$T/broker.conf" && wait_listen edge "$aport" "$bpid"; then
	ok "mtun-broker with the admin model listens on $svc:$bport, its admin API on :$aport"
else
	not_ok "mtun-broker with the admin model listens on $svc:$bport, its admin API on :$aport"
	show "$T/broker.log"
	finish
fi

# The model, all through mtunctl against the broker's API.
model "connector-group create dc1" connector-group create dc1 \
	location:='{"region":"lab","lat":48.85,"lon":2.35}'
model "server-group create corp-servers" server-group create corp-servers connector_groups+=dc1
model "group create eng" group create eng
model "user create alice (eng)" user create alice groups+=eng
model "user create bob" user create bob
model "segment create corp (*.corp.example tcp/22, tcp/9000)" segment create corp \
	hosts+='*.corp.example' ports+=tcp/22 ports+=tcp/9000 server_groups+=corp-servers
model "rule create eng-ssh (allow eng to corp)" rule create eng-ssh priority:=100 action=allow \
	groups+=eng segments+=corp

if start_connector conn connector "$T/connector.conf" conn; then
	ok "the connector (group dc1 from the admin model) has its control session"
else
	not_ok "the connector (group dc1 from the admin model) has its control session"
	show "$T/connector.log" "$T/broker.log"
	finish
fi
if blob_server blob 9000; then ok "the byte counter listens on server01:9000"; else
	not_ok "the byte counter listens on server01:9000"
	show "$T/blob.log"
fi
if forward fwd-ssh agent 127.0.0.1:2222 server01.corp.example:22 &&
	forward fwd-blob agent 127.0.0.1:9000 server01.corp.example:9000 &&
	forward fwd-bob bob 127.0.0.1:2223 server01.corp.example:22; then
	ok "agents of alice (ssh, bytes) and bob are up with sessions to the broker"
	bobpid=$last
else
	not_ok "agents of alice (ssh, bytes) and bob are up with sessions to the broker"
	show "$T"/fwd-*.log "$T/broker.log"
	finish
fi

# --- alice in, bob out ---
note "$((SECONDS - t_start)) s: alice in"
if alice_ssh; then ok "alice: ssh server01.corp.example (under *.corp.example, key auth) runs hostname"; else
	not_ok "alice: ssh server01.corp.example (under *.corp.example, key auth) runs hostname"
	show "$T/ssh.err" "$T/fwd-ssh.log" "$T/broker.log"
fi
if ssh_at 2223 hostname >"$T/bob.err" 2>&1; then
	not_ok "bob is refused (ssh succeeded)"
elif wait_log "$T/fwd-bob.log" 'event=mtunnel.refused .*status=denied reason="[^"]' "$bobpid" 5; then
	ok "bob is refused: denied, with the reason in his agent's log"
	grep "event=mtunnel.refused" "$T/fwd-bob.log" | head -n 1 | sed 's/.*\(event=.*\)/# \1/'
else
	not_ok "bob is refused: denied, with the reason in his agent's log"
	show "$T/fwd-bob.log" "$T/broker.log"
fi

# --- policy test, bad input ---
note "$((SECONDS - t_start)) s: policy test"
if m policy test --user alice --app server01.corp.example:22 >"$T/pt.out" 2>&1 &&
	grep -q "decision: allow" "$T/pt.out" && grep -q "rule: *eng-ssh" "$T/pt.out"; then
	ok "mtunctl policy test --user alice --app server01.corp.example:22: allow, rule eng-ssh"
else
	not_ok "mtunctl policy test --user alice --app server01.corp.example:22: allow, rule eng-ssh"
	show "$T/pt.out"
fi
if m policy test --user bob --app server01.corp.example:22 >"$T/pt.out" 2>&1 &&
	grep -q "decision: deny" "$T/pt.out" && grep -q "reason: *." "$T/pt.out"; then
	ok "mtunctl policy test --user bob: deny, with the reason"
	grep "reason:" "$T/pt.out" | sed 's/^/# /'
else
	not_ok "mtunctl policy test --user bob: deny, with the reason"
	show "$T/pt.out"
fi
if ! m segment create bad hosts+=10.0.0.0/33 ports+=tcp/22 server_groups+=corp-servers \
	>"$T/bad.out" 2>&1 && grep -q "HTTP 400: .*invalid CIDR" "$T/bad.out"; then
	ok "bad input through the broker's API: HTTP 400 with the reason"
else
	not_ok "bad input through the broker's API: HTTP 400 with the reason"
	show "$T/bad.out"
fi

# --- a live change reaches alice's forwarding set within a second, nobody reconnects ---
note "$((SECONDS - t_start)) s: a live change reaches alice's forwarding set within a second"
wait_log "$T/fwd-ssh.log" "event=agent.config " "$bpid" 5
sess0=$(sessions_now)
v0=$(sed -n 's/.*event=agent\.config version=\([0-9]*\).*/\1/p' "$T/fwd-ssh.log" | tail -n 1)
c_start=$(now_ms)
if m segment update corp ports+=tcp/8080 >"$T/m.out" 2>&1; then
	t_ret=$(now_ms)
	newer() { sed -n 's/.*event=agent\.config version=\([0-9]*\).*/\1/p' "$T/fwd-ssh.log" |
		tail -n 1 | { read -r v && [ "${v:-0}" -gt "${v0:-0}" ]; }; }
	if within 3000 newer; then
		line=$(grep "event=agent\.config " "$T/fwd-ssh.log" | tail -n 1)
		t_ev=$(ts_ms "$line")
		note "change: mtunctl took $((t_ret - c_start)) ms; agent CONFIG $((t_ev - t_ret)) ms after" \
			"mtunctl returned ($((t_ev - c_start)) ms after it started): ${line##*event=}"
		grep "event=broker\.model\.applied " "$T/broker.log" | tail -n 1 | sed 's/.*event=/# broker: /'
		if [ $((t_ev - t_ret)) -le 1000 ]; then
			ok "a change through mtunctl reaches alice's forwarding set within 1 s ($((t_ev - t_ret)) ms)"
		else
			not_ok "a change through mtunctl reaches alice's forwarding set within 1 s ($((t_ev - t_ret)) ms)"
		fi
	else
		not_ok "a change through mtunctl reaches alice's forwarding set (no new CONFIG in 3 s)"
		show "$T/fwd-ssh.log" "$T/broker.log"
	fi
else
	not_ok "mtunctl segment update corp ports+=tcp/8080"
	show "$T/m.out"
fi
sess1=$(sessions_now)
if [ "$sess1" = "$sess0" ]; then ok "...without a new agent session (broker and agent: $sess1)"; else
	not_ok "...without a new agent session (before $sess0, after $sess1)"
fi

# --- bytes: one mtunnel carrying exactly N up and M down, and its record ---
note "$((SECONDS - t_start)) s: bytes"
up=100000 down=300000
if in_node client -- "$py" "$e2e_dir/blob.py" run --port 9000 --n 1 --min $up --max $up \
	--down $down --timeout 30 >"$T/blob-run.out" 2>&1; then
	ok "alice moves $up bytes up and $down down through the mtunnel, intact"
else
	not_ok "alice moves $up bytes up and $down down through the mtunnel, intact"
	show "$T/blob-run.out" "$T/fwd-blob.log"
fi
# blob.py adds a 32-byte header up and a 72-byte trailer down.
nup=$((up + 32)) ndown=$((down + 72))
rec() { grep -Eq '"port": ?9000,' "$act" 2>/dev/null; }
within 5000 rec
norm
sel '"user":"alice"}' '"port":9000,' >"$T/rec.out"
if [ "$(wc -l <"$T/rec.out")" = 1 ] && grep -qF "\"bytes_up\":$nup," "$T/rec.out" &&
	grep -qF "\"bytes_down\":$ndown," "$T/rec.out"; then
	ok "one activity record for that mtunnel: bytes_up $nup, bytes_down $ndown"
else
	not_ok "one activity record for that mtunnel with bytes_up $nup, bytes_down $ndown"
	show "$T/rec.out" "$act"
fi

# --- posture: a file with its SHA-256 on alice's rule ---
note "$((SECONDS - t_start)) s: posture"
mkdir -p "${posture_file%/*}"
echo "managed by corp IT" >"$posture_file"
sum=$(sha256sum "$posture_file" | cut -c1-64)
model "posture create managed (file $posture_file with its SHA-256)" posture create managed \
	files:='[{"path":"'"$posture_file"'","sha256":"'"$sum"'"}]'
# Both of alice's agents answer the new query at once; the broker logs what they satisfy.
wait_count "$T/broker.log" "event=agent.posture .*user=alice .*satisfied=\"[^\"]*managed" 2 5 ||
	note "the broker did not log alice's agents satisfying managed"
model "rule update eng-ssh postures+=managed" rule update eng-ssh postures+=managed
if within 5000 alice_in; then ok "posture: alice (file present) is allowed"; else
	not_ok "posture: alice (file present) is allowed"
	show "$T/ssh.err" "$T/fwd-ssh.log" "$T/broker.log"
fi

# A live mtunnel of alice's, listed by mtunctl sessions.
if live_ssh 60; then
	ok "alice's long ssh has its mtunnel open"
else
	not_ok "alice's long ssh has its mtunnel open"
	show "$T/live.log" "$T/fwd-ssh.log"
fi
if m sessions >"$T/sess.out" 2>&1 && grep -E "alice .*server01\.corp\.example +22 " "$T/sess.out" |
	grep -q " conn "; then
	ok "mtunctl sessions lists alice's live mtunnel (user, app, port, connector)"
	sed 's/^/# /' "$T/sess.out"
else
	not_ok "mtunctl sessions lists alice's live mtunnel (user, app, port, connector)"
	show "$T/sess.out"
fi
if m sessions -o json >"$T/sess.json" 2>&1 &&
	"$py" -c 'import json,sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if any(i.get("user") == "alice" and i.get("app") == "server01.corp.example" and
                  i.get("port") == 22 and i.get("rule") == "eng-ssh" for i in d["items"]) else 1)' \
		"$T/sess.json" 2>"$T/sess.err"; then
	ok "mtunctl sessions -o json: alice, server01.corp.example, 22, rule eng-ssh"
else
	not_ok "mtunctl sessions -o json: alice, server01.corp.example, 22, rule eng-ssh"
	show "$T/sess.json"
fi

t0=$(now_ms)
rm -f "$posture_file"
if wait_gone "$lpid" 10; then
	t1=$(now_ms)
	if grep -q "event=mtunnel.close .*status=denied .*reason=\"[^\"]*'managed'" "$T/fwd-ssh.log"; then
		ok "file removed: alice's live mtunnel is closed in $((t1 - t0)) ms, the reason names profile 'managed'"
		grep "event=mtunnel.close .*managed" "$T/fwd-ssh.log" | tail -n 1 | sed 's/.*\(event=.*\)/# \1/'
	else
		not_ok "file removed: alice's live mtunnel is closed ($((t1 - t0)) ms) with a reason naming 'managed'"
		show "$T/fwd-ssh.log"
	fi
else
	not_ok "file removed: alice's live mtunnel is closed within 10 s"
	show "$T/fwd-ssh.log" "$T/broker.log"
fi
wait "$lpid" 2>/dev/null
forget "$lpid"
if alice_out; then
	ok "file removed: a new connection of alice is refused (denied)"
	grep "event=mtunnel.refused" "$T/fwd-ssh.log" | tail -n 1 | sed 's/.*\(event=.*\)/# \1/'
else
	not_ok "file removed: a new connection of alice is refused (denied)"
	show "$T/fwd-ssh.log"
fi
echo "managed by corp IT" >"$posture_file"
t0=$(now_ms)
if within 8000 alice_in; then ok "file restored: alice is allowed again ($(($(now_ms) - t0)) ms)"; else
	not_ok "file restored: alice is allowed again"
	show "$T/fwd-ssh.log" "$T/broker.log"
fi
model "rule update eng-ssh postures:=[] (posture off again)" rule update eng-ssh postures:='[]'

# --- time window: live, nobody reconnects ---
note "$((SECONDS - t_start)) s: time window"
sess0=$(sessions_now)
days='["mon","tue","wed","thu","fri","sat","sun"]'
h=$((10#$(date -u +%H)))
out_win=$(printf '{"days":%s,"start":"%02d:00","end":"%02d:00"}' "$days" $(((h + 2) % 24)) $(((h + 3) % 24)))
model "rule update eng-ssh with a window excluding now (UTC $out_win)" rule update eng-ssh \
	window:="$out_win"
if within 3000 alice_out; then ok "time window excluding now: alice is denied"; else
	not_ok "time window excluding now: alice is denied"
	show "$T/fwd-ssh.log"
fi
model "rule update eng-ssh with a window including now (00:00-24:00)" rule update eng-ssh \
	window:='{"days":'"$days"',"start":"00:00","end":"24:00"}'
if within 3000 alice_in; then ok "time window including now: alice is allowed"; else
	not_ok "time window including now: alice is allowed"
	show "$T/fwd-ssh.log"
fi
sess1=$(sessions_now)
if [ "$sess1" = "$sess0" ]; then ok "...the window changes applied without a new agent session ($sess1)"; else
	not_ok "...the window changes applied without a new agent session (before $sess0, after $sess1)"
fi
model "rule update eng-ssh window:=null" rule update eng-ssh window:=null

# --- timeout policy: maximum age 3 s ---
note "$((SECONDS - t_start)) s: timeout policy"
model "timeout create short (max_age_s 3)" timeout create short max_age_s:=3 idle_s:=0
model "rule update eng-ssh timeout=short" rule update eng-ssh timeout=short
if live_ssh 60; then
	t0=$(now_ms)
	if wait_gone "$lpid" 10; then
		t1=$(now_ms)
		if grep -q "event=mtunnel.close .*status=timeout .*reason=\"[^\"]*age" "$T/fwd-ssh.log" &&
			[ $((t1 - t0)) -ge 1500 ]; then
			ok "the timeout policy closes a long mtunnel past its age ($((t1 - t0)) ms after open) with the reason"
			grep "event=mtunnel.close .*status=timeout" "$T/fwd-ssh.log" | tail -n 1 |
				sed 's/.*\(event=.*\)/# \1/'
		else
			not_ok "the timeout policy closes a long mtunnel past its age with the reason ($((t1 - t0)) ms)"
			show "$T/fwd-ssh.log"
		fi
	else
		not_ok "the timeout policy closes a long mtunnel past its age (still open after 10 s)"
		show "$T/fwd-ssh.log" "$T/broker.log"
	fi
	wait "$lpid" 2>/dev/null
	forget "$lpid"
else
	not_ok "the timeout policy: alice's long ssh has its mtunnel open"
	show "$T/live.log" "$T/fwd-ssh.log"
fi
model "rule update eng-ssh timeout:=null" rule update eng-ssh timeout:=null

# --- activity: one record per OPEN, every record whole ---
note "$((SECONDS - t_start)) s: activity"
# OPENs answered at the agents: opened or refused (each logs one of the two).
opens() { cat "$@" | grep -c "event=mtunnel\.\(open\|refused\) "; }
recs() { [ -s "$act" ] && wc -l <"$act" || echo 0; }
all_in() { [ "$(recs)" -ge "$(opens "$T"/fwd-*.log)" ]; }
within 5000 all_in
if norm; then
	ok "every activity record is JSON with every key (RFC 3339 times, counts as numbers)"
else
	not_ok "every activity record is JSON with every key"
	show "$T/check.out"
fi
na=$(opens "$T/fwd-ssh.log" "$T/fwd-blob.log") nb=$(opens "$T/fwd-bob.log")
ra=$(sel '"user":"alice"}' | wc -l) rb=$(sel '"user":"bob"}' | wc -l)
if [ "$(recs)" = $((na + nb)) ] && [ "$ra" = "$na" ] && [ "$rb" = "$nb" ] && [ "$na" -gt 0 ]; then
	ok "one activity record per mtunnel: alice $ra for $na OPENs, bob $rb for $nb, $(recs) in all"
else
	not_ok "one activity record per mtunnel: alice $ra for $na OPENs, bob $rb for $nb, $(recs) in all"
	show "$act"
fi
nref=$(cat "$T"/fwd-*.log | grep -c "event=mtunnel\.refused ")
sel '"connector":""' >"$T/refused.rec"
if [ "$(wc -l <"$T/refused.rec")" = "$nref" ] && ! grep -q '"reason":""' "$T/refused.rec" &&
	! grep -vq '"bytes_down":0,"bytes_up":0,' "$T/refused.rec" &&
	! grep -vq '"status":"denied"' "$T/refused.rec"; then
	ok "each of the $nref refused OPENs has its record: denied, with the reason, no connector, no bytes"
	sel '"user":"bob"}' | head -n 1 | sed 's/^/# /'
else
	not_ok "each of the $nref refused OPENs has its record: denied, with the reason, no connector, no bytes"
	show "$T/refused.rec"
fi
sel '"user":"alice"}' '"status":"ok"' >"$T/alice.rec"
if [ -s "$T/alice.rec" ] && ! grep -vq '"rule":"eng-ssh"' "$T/alice.rec" &&
	! grep -vq '"connector":"conn"' "$T/alice.rec" && ! grep -vq '"tenant":"lab"' "$T/alice.rec" &&
	! grep -vq '"segment":"corp"' "$T/alice.rec"; then
	ok "alice's mtunnels' records name tenant lab, rule eng-ssh, segment corp, connector conn"
else
	not_ok "alice's mtunnels' records name tenant lab, rule eng-ssh, segment corp, connector conn"
	show "$T/alice.rec"
fi
if [ "$(sel '"user":"alice"}' '"status":"denied"' '"connector":"conn"' \
	"posture profile 'managed' no longer satisfied" | wc -l)" = 1 ]; then
	ok "the mtunnel the posture change closed has one record: denied, naming the profile"
else
	not_ok "the mtunnel the posture change closed has one record: denied, naming the profile"
	show "$T/act.norm"
fi
if [ "$(sel '"user":"alice"}' '"status":"timeout"' '"reason":"maximum session age 3s reached"' |
	wc -l)" = 1 ]; then
	ok "the mtunnel the timeout policy closed has one record: timeout, maximum session age 3s"
else
	not_ok "the mtunnel the timeout policy closed has one record: timeout, maximum session age 3s"
	show "$T/act.norm"
fi

# --- the end: SIGTERM ---
note "$((SECONDS - t_start)) s: the end"
kill9 "$blobpid"
stopped=0 total=${#pids[@]}
for p in "${pids[@]}"; do
	kill -TERM "$p" 2>/dev/null
	wait "$p"
	rc=$?
	[ $rc -eq 0 ] && stopped=$((stopped + 1)) || echo "# pid $p exited $rc"
done
pids=()
if [ "$stopped" -eq "$total" ]; then ok "broker, connector and agents exit 0 on SIGTERM"; else
	not_ok "broker, connector and agents exit 0 on SIGTERM ($stopped of $total)"
fi
no_sanitizer_reports
# MTUN_KEEP_LOGS=DIR keeps the logs and the activity file of a passing run too.
[ -z "${MTUN_KEEP_LOGS:-}" ] || { mkdir -p "$MTUN_KEEP_LOGS" && cp "$T"/*.log "$act" "$MTUN_KEEP_LOGS/"; }
finish
