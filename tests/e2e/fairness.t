#!/usr/bin/env bash
# Fairness (issue 4, acceptance): two mtunnels on the same agent session (one mtun-agent
# forward, so one TLS connection agent-broker and one data session broker-connector).
# A's reader stops for 10 s; first A's sender must block (every window and buffer on A's
# path is full, so A's frames could stall the shared connection if flow control were
# per connection only), then B must move >= 100 MB intact before A's pause ends; then A
# reads everything, intact. Traffic: tests/e2e/blob.py fair.
# Prints TAP. Environment: MTUN_BUILD (default: build).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init f
lab_up

broker_conf_one "$T/broker.conf" "5001"
connector_conf "$T/connector.conf" "$state/conn/connector" "$state/conn/identity"

if start_broker "$T/broker.conf" && start_connector conn connector "$T/connector.conf" conn &&
	forward fwd agent 127.0.0.1:5001 server01.corp.example:5001 && fpid=$last &&
	blob_server blob 5001; then
	ok "broker, connector, one forward agent and the blob server are up"
else
	not_ok "broker, connector, one forward agent and the blob server are up"
	show "$T"/*.log
	finish
fi

t0=$SECONDS
in_node client -- "$py" "$e2e_dir/blob.py" fair --port 5001 --status "$T/status" \
	--pause 10 --a 256m --b 100000000 >"$T/fair.out" 2>&1
rc=$?
sed 's/^/# /' "$T/fair.out"
if grep -q "^A blocked after" "$T/fair.out" && ! grep -q "FAIL: A's sender" "$T/fair.out"; then
	ok "A's sender is held back by flow control while its reader is paused"
else
	not_ok "A's sender is held back by flow control while its reader is paused"
fi
if grep -q "^B moved .* intact" "$T/fair.out"; then
	ok "B moves 100 MB intact on the same session while A's reader is stopped for 10 s"
else
	not_ok "B moves 100 MB intact on the same session while A's reader is stopped for 10 s"
	show "$T/fwd.log" "$T/broker.log"
fi
if grep -q "^A: all .* intact" "$T/fair.out"; then
	ok "A's 256 MiB all arrive intact once its reader resumes"
else
	not_ok "A's 256 MiB all arrive intact once its reader resumes"
fi
[ $rc -eq 0 ] || note "blob.py fair exited $rc after $((SECONDS - t0)) s"

# Both mtunnels were on the agent's one session: the agent logged one session up.
check "both mtunnels ran on one agent session" [ "$(grep -c "event=agent.session.up" "$T/fwd.log")" -eq 1 ]
stopped=0
for p in "$fpid" "$bpid"; do
	stop "$p"
	rc=$?
	[ $rc -eq 0 ] && stopped=$((stopped + 1)) || note "pid $p exited $rc"
done
check "broker and agent exit 0 on SIGTERM" [ $stopped -eq 2 ]
no_sanitizer_reports
finish
