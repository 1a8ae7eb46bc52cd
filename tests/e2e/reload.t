#!/usr/bin/env bash
# The broker without the admin model (file mode): SIGHUP reloads the file whole, and a live
# mtunnel the new rules no longer allow is closed with its reason and one activity record.
# Prints TAP. Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init h
lab_up
conf() { # conf RULE: the one-segment file with RULE and the activity log
	broker_conf_one "$T/broker.conf" 22 "$1"
	echo "activity = { sink = \"file:$T/activity.jsonl\"; };" >>"$T/broker.conf"
}
conf '{ id = 1; name = "eng-ssh"; action = "allow"; groups = [ "eng" ]; segments = [ 10 ]; }'
connector_conf "$T/connector.conf" "$state/conn/connector" "$state/conn/identity"
start_broker "$T/broker.conf" && ok "broker up" || { not_ok "broker"; show "$T/broker.log"; finish; }
start_connector conn connector "$T/connector.conf" conn && ok "connector" || { not_ok connector; finish; }
forward fwd-ssh agent 127.0.0.1:2222 server01.corp.example:22 && ok "forward" || { not_ok forward; finish; }
(sshc 2222 sleep 30 >/dev/null 2>&1) & spid=$!
wait_count "$T/broker.log" "event=mtunnel.open " 1 10 && ok "ssh open" || not_ok "ssh open"
conf '{ id = 2; name = "sales"; action = "allow"; groups = [ "sales" ]; segments = [ 10 ]; }'
kill -HUP "$bpid"
wait_log "$T/broker.log" "event=mtunnel.revoked .*policy changed: no rule allows" "$bpid" && ok "SIGHUP closes it" || { not_ok "HUP close"; show "$T/broker.log"; }
wait_gone $spid 5 && ok "ssh ended" || not_ok "ssh ended"
grep -h "broker.reload\|model.applied\|config.sent" "$T/broker.log" | sed 's/^/# /'
grep -q "event=broker.reload status=ok" "$T/broker.log" && ok "reload ok" || not_ok "reload ok"
grep -q '"reason":"policy changed: no rule allows"' "$T/activity.jsonl" &&
	ok "the closed mtunnel's activity record gives the reason" ||
	{ not_ok "activity record of the closed mtunnel"; show "$T/activity.jsonl"; }
stop "$bpid" && ok "exit 0" || not_ok "exit"
grep -i "sanitizer\|runtime error" "$T"/*.log && not_ok "sanitizer" || ok "no sanitizer reports"
finish
