#!/usr/bin/env bash
# Bulk integrity through forward mode (issue 4, acceptance): from client, 1 GiB through one
# mtunnel arrives at the app with the same SHA-256; then 100 concurrent mtunnels of seeded
# random sizes (1 KiB..8 MiB, both ways) all arrive intact, each checked by its own digests.
# Traffic: tests/e2e/blob.py (server in app on 198.19.1.10:5001, clients in client).
# Prints TAP. Environment: MTUN_BUILD (default: build); MTUN_BULK_SEED (default 4).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init b
seed=${MTUN_BULK_SEED:-4}
lab_up

broker_conf_one "$T/broker.conf" "5001"
connector_conf "$T/connector.conf" "$state/conn/connector" "$state/conn/identity"

if start_broker "$T/broker.conf" && start_connector conn connector "$T/connector.conf" conn &&
	forward fwd agent 127.0.0.1:5001 server01.corp.example:5001 && fpid=$last &&
	blob_server blob 5001; then
	ok "broker, connector, forward agent and the blob server are up"
else
	not_ok "broker, connector, forward agent and the blob server are up"
	show "$T"/*.log
	finish
fi

# blob ARGS: blob.py run from client through the forward, output in $T/run.out.
blob() { in_node client -- "$py" "$e2e_dir/blob.py" run --port 5001 "$@" >"$T/run.out" 2>&1; }

t0=$SECONDS
if blob --n 1 --min 1g --max 1g --down 1m --seed "$seed" --timeout 600; then
	ok "1 GiB client -> server01 through one mtunnel arrives with the same SHA-256 ($((SECONDS - t0)) s)"
else
	not_ok "1 GiB client -> server01 through one mtunnel arrives with the same SHA-256"
	show "$T/run.out" "$T/fwd.log" "$T/blob.log"
fi
sed 's/^/# /' "$T/run.out"

t0=$SECONDS
if blob --n 100 --min 1k --max 8m --seed "$seed" --timeout 600; then
	ok "100 concurrent mtunnels of random sizes (1 KiB..8 MiB each way, seed $seed) all arrive intact ($((SECONDS - t0)) s)"
else
	not_ok "100 concurrent mtunnels of random sizes (seed $seed) all arrive intact"
	show "$T/run.out" "$T/fwd.log" "$T/broker.log" "$T/blob.log"
fi
sed 's/^/# /' "$T/run.out" | tail -n 5

# Every mtunnel ended and was counted: 101 opened, 101 ended at the broker.
if wait_count "$T/broker.log" "event=mtunnel.end" 101 10; then
	ok "the broker ended all 101 mtunnels"
else
	not_ok "the broker ended all 101 mtunnels ($(grep -c "event=mtunnel.end" "$T/broker.log") ended)"
fi

alive=0
for p in "$bpid" "$fpid"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
check "broker and forward agent still run" [ $alive -eq 2 ]
stopped=0
for p in "$fpid" "$bpid"; do
	stop "$p"
	rc=$?
	[ $rc -eq 0 ] && stopped=$((stopped + 1)) || note "pid $p exited $rc"
done
check "broker and agent exit 0 on SIGTERM" [ $stopped -eq 2 ]
no_sanitizer_reports
finish
