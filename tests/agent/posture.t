#!/usr/bin/env bash
# Posture end to end in a lab instance of its own (p<pid>): mtun-agent forward in client
# answers a stand-in broker's POSTURE_QUERY (agent/tests/posture_broker) at once with the
# kernel, the OS, the SHA-256 of a queried file and the queried processes running; sends
# again only when a fact changes (file edited or removed, process started or stopped);
# answers a new query at once; a broker that asks nothing gets nothing. The broker here is
# a stand-in that speaks the agent's side of the protocol only; the real broker's posture
# evaluation is tests/admin/policy.t.
# Prints TAP. Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail
. "$(dirname "$0")/../../tests/e2e/lib.sh"
pbroker=$build/agent/posture_broker
if [ ! -x "$pbroker" ]; then
	echo "1..0 # SKIP $pbroker not built (set MTUN_BUILD)"
	exit 0
fi
e2e_init p
lab_up

pname=mtunpz$$ # a process name nothing else has
marker=$T/marker
echo v1 >"$marker"
posts() { grep -c "^POSTURE " "$T/pbroker.log"; }
last_post() { grep "^POSTURE " "$T/pbroker.log" | tail -n 1; }

start edge pbroker "$pbroker" --listen "$svc:$bport" --state "$state/edge/broker" \
	--identity-source "$state/edge/identity" --file "$marker" --file "$T/absent" \
	--process "$pname"
pbpid=$last
if ! wait_listen edge "$bport" "$pbpid"; then
	not_ok "the stand-in broker listens"
	show "$T/pbroker.log"
	finish
fi
if forward fwd agent 127.0.0.1:2222 server01.corp.example:22 --posture-interval 200ms &&
	wait_log "$T/pbroker.log" "^POSTURE version=1 " "$pbpid"; then
	ok "the agent answers POSTURE_QUERY at once"
else
	not_ok "the agent answers POSTURE_QUERY at once"
	show "$T/fwd.log" "$T/pbroker.log"
	finish
fi
fpid=$last
grep -q "^UP user=alice caps=1$" "$T/pbroker.log" && ok "the agent's HELLO announces MT_CAP_POSTURE" ||
	not_ok "the agent's HELLO announces MT_CAP_POSTURE"

line=$(last_post)
want="file=$marker:$(sha256sum <"$marker" | cut -d' ' -f1)"
os=$(. /etc/os-release && echo "$PRETTY_NAME")
if [[ " $line " == *" kernel=$(uname -r) "* && "$line" == *"os=\"$os\""* &&
	" $line " == *" $want "* && "$line" != *absent* && "$line" != *process=* ]]; then
	ok "the report holds the kernel, the OS, the file's SHA-256; not the missing file, no process"
else
	not_ok "the report holds the kernel, the OS and the file's SHA-256 (got: $line)"
fi
disk=$(sed 's/.* disk=\([01]\).*/\1/' <<<"$line")
note "disk encryption of / reported as $disk"
if grep -q "event=agent.posture.sent version=1 why=query kernel=.* files=1/2 processes=0/1" "$T/fwd.log"; then
	ok "the agent logs agent.posture.sent with a summary"
else
	not_ok "the agent logs agent.posture.sent with a summary"
	show "$T/fwd.log"
fi

# Nothing changes for five intervals: nothing is sent.
t0=$(posts)
wait_count "$T/pbroker.log" "^POSTURE " $((t0 + 1)) 1
[ "$(posts)" -eq "$t0" ] && ok "no change, no new report (1 s at 200ms)" ||
	not_ok "no change, no new report ($(posts) reports)"

echo v2 >"$marker"
want="file=$marker:$(sha256sum <"$marker" | cut -d' ' -f1)"
if wait_count "$T/pbroker.log" "^POSTURE " $((t0 + 1)) 5 && [[ " $(last_post) " == *" $want "* ]]; then
	ok "an edited file is reported again with its new SHA-256"
else
	not_ok "an edited file is reported again with its new SHA-256 ($(last_post))"
fi

cp /bin/sleep "$T/$pname"
"$T/$pname" 300 &
spid=$!
if wait_count "$T/pbroker.log" "^POSTURE " $((t0 + 2)) 5 && [[ " $(last_post) " == *" process=$pname "* ]]; then
	ok "a queried process that starts is reported"
else
	not_ok "a queried process that starts is reported ($(last_post))"
fi
kill "$spid"
wait "$spid" 2>/dev/null
if wait_count "$T/pbroker.log" "^POSTURE " $((t0 + 3)) 5 && [[ "$(last_post)" != *process=* ]]; then
	ok "a queried process that stops is no longer reported"
else
	not_ok "a queried process that stops is no longer reported ($(last_post))"
fi

rm -f "$marker"
if wait_count "$T/pbroker.log" "^POSTURE " $((t0 + 4)) 5 && [[ "$(last_post)" != *file=* ]]; then
	ok "a removed file is no longer reported"
else
	not_ok "a removed file is no longer reported ($(last_post))"
fi

kill -USR1 "$pbpid"
if wait_log "$T/pbroker.log" "^POSTURE version=2 " "$pbpid" 5; then
	ok "a new query is answered at once"
else
	not_ok "a new query is answered at once"
	show "$T/pbroker.log"
fi

# A broker that never asks: the agent reports nothing (older brokers keep working).
start edge nq "$pbroker" --listen "$svc:9445" --state "$state/edge/broker" \
	--identity-source "$state/edge/identity" --no-query
nqpid=$last
if wait_listen edge 9445 "$nqpid"; then
	start client fwd2 "$agent" forward --broker "$svc:9445" --state "$state/client/agent" \
		--identity-source "$state/client/identity" --listen 127.0.0.1:2223 \
		--to server01.corp.example:22 --posture-interval 200ms
	f2pid=$last
	if wait_log "$T/fwd2.log" "event=agent.session.up" "$f2pid" &&
		! wait_log "$T/nq.log" "^POSTURE" "$f2pid" 1 &&
		! grep -q "agent.posture.sent" "$T/fwd2.log" && grep -q "^UP " "$T/nq.log"; then
		ok "a broker that sends no query gets no POSTURE"
	else
		not_ok "a broker that sends no query gets no POSTURE"
		show "$T/nq.log" "$T/fwd2.log"
	fi
else
	not_ok "a second stand-in broker listens"
fi

stopped=0
for p in "$fpid" "${f2pid:-}"; do
	[ -n "$p" ] || continue
	stop "$p" && stopped=$((stopped + 1))
done
[ $stopped -eq 2 ] && ok "both agents exit 0 on SIGTERM" || not_ok "both agents exit 0 on SIGTERM ($stopped of 2)"
if grep -q "Sanitizer\|runtime error:" "$T"/fwd*.log; then
	not_ok "no sanitizer reports in the agents' logs"
	show "$T"/fwd*.log
else
	ok "no sanitizer reports in the agents' logs"
fi
finish
