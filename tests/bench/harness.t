#!/usr/bin/env bash
# tools/bench in a tiny configuration (one round, one second per figure), so the harness
# cannot rot: every mode and metric gets a figure or an explicit skip (the proxy modes
# included: squid, mitmproxy, inspect, with direct as their baseline), and nothing it
# started outlives it (processes, namespaces, the mtun mode's cgroup and bpffs), also when
# it is terminated. Asserts no speed.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
tmp=$(mktemp -d /tmp/mtunb-test.XXXXXX)
id1="t$$a" id2="t$$b"
bench_pid=""
n=0 failed=0
py=/usr/bin/python3
[ -x "$py" ] || py=python3

ok() { # ok COND-STATUS DESCRIPTION [DIAGNOSTIC]
	n=$((n + 1))
	if [ "$1" -eq 0 ]; then
		echo "ok $n - $2"
	else
		failed=$((failed + 1))
		echo "not ok $n - $2"
		[ -n "${3:-}" ] && sed 's/^/# /' <<<"$3"
	fi
}
cleanup() {
	[ -n "$bench_pid" ] && kill -TERM "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

if [ "$(id -u)" -ne 0 ]; then
	echo "1..0 # SKIP needs root (network namespaces)"
	exit 0
fi

# Record "PID STARTTIME" of every process in the run's namespaces while it runs.
watch_run() { # watch_run ID PID
	local id=$1 pid=$2 ns pids more
	while kill -0 "$pid" 2>/dev/null; do
		pids=()
		for ns in client edge conn app; do
			read -r -a more <<<"$(ip netns pids "mtunb-$id-$ns" 2>/dev/null | tr "\n" " ")"
			pids+=("${more[@]}")
		done
		[ ${#pids[@]} -gt 0 ] && (cd /proc && awk '{ p = $1; sub(/^.*\) /, ""); print p, $20 }' \
			"${pids[@]/%//stat}" 2>/dev/null)
		sleep 0.5
	done | sort -u >"$tmp/seen-$id"
}
leftovers() { # leftovers ID: processes seen during the run that are still alive
	local id=$1 p start now
	while read -r p start; do
		# A zombie is dead already (its reaper may be slow): only running ones count.
		now=$(awk '{ c = $0; sub(/^.*\) /, ""); if ($1 != "Z") print $20, c }' \
			"/proc/$p/stat" 2>/dev/null)
		[ "${now%% *}" = "$start" ] && echo "$p ${now#* }"
	done <"$tmp/seen-$id"
	for p in /run/netns/mtunb-"$id"-*; do
		[ -e "$p" ] && echo "namespace ${p##*/}"
	done
	p=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)
	[ -n "$p" ] && [ -e "$p/mtunb-$id" ] && echo "cgroup $p/mtunb-$id"
	awk -v src="mtunb-$id-bpf" '$1 == src { print "bpffs " $2 }' /proc/self/mounts
}

echo "1..8"

# 1-5: a full tiny run.
MTUN_BENCH_ID=$id1 MTUN_BUILD=$build "$top/tools/bench" --rounds 1 --seconds 1 \
	--json "$tmp/b.json" >"$tmp/out" 2>"$tmp/err" &
bench_pid=$!
watch_run "$id1" "$bench_pid" &
watcher=$!
wait "$bench_pid"
rc=$?
bench_pid=""
wait "$watcher"
ok $rc "tools/bench --rounds 1 --seconds 1 exits 0" "$(tail -n 20 "$tmp/err")"

missing=""
for m in direct mtun mtun-forward ssh stunnel wireguard squid mitmproxy inspect crypto codec tls ca mint policy; do
	grep -qE "^$m( |$)" "$tmp/out" || missing+=" $m"
done
ok "$([ -z "$missing" ] && echo 0 || echo 1)" "the table has a row for every mode" \
	"missing:$missing"$'\n'"$(cat "$tmp/out")"

check=$("$py" - "$tmp/b.json" <<'PY' 2>&1
import json, sys
doc = json.load(open(sys.argv[1]))
recs = doc["records"]
def find(mode, metric):
    return [r for r in recs if r["mode"] == mode and
            (r["metric"] == metric or (r.get("skipped") and metric.startswith(r["metric"])) or
             (r.get("skipped") and r["metric"] == "all"))]
bad = []
net = ["tput1_gbps", "tput4_gbps", "rr_p50_us", "rr_p99_us", "cps", "cps_p99_ms"]
want = {m: net for m in ("direct", "ssh", "stunnel", "wireguard", "mtun", "mtun-forward")}
for m in ("ssh", "stunnel", "wireguard"):
    want[m] = net + ["cpu_s_per_gb"]
# A running mtun-forward or mtun is measured like a peer (its processes' CPU included).
measured = lambda m: any(not r.get("skipped") and r["metric"] == "tput1_gbps" for r in recs
                         if r["mode"] == m)
for m in ("mtun-forward", "mtun"):
    if measured(m):
        want[m] = net + ["cpu_s_per_gb"]
for m in ("codec", "tls", "ca", "mint", "policy"):
    want[m] = [None]
want["crypto"] = ["aes128gcm_16k_MBps", "ecdsap256_sign_per_s", "rsa2048_sign_per_s"]
# HTTPS through explicit proxies, and straight to the origin as their baseline
https = ["https_first_sps", "https_repeat_sps", "https_dl_gbps"]
want["direct"] = net + https
for m in ("squid", "mitmproxy", "inspect"):
    want[m] = https
for mode, metrics in want.items():
    for metric in metrics:
        rs = [r for r in recs if r["mode"] == mode] if metric is None else find(mode, metric)
        if not rs:
            bad.append("no record for %s %s" % (mode, metric))
            continue
        for r in rs:
            if r.get("skipped"):
                if not r.get("reason"):
                    bad.append("skip without a reason: %s %s" % (mode, r["metric"]))
            elif not isinstance(r.get("median"), (int, float)) or r["median"] <= 0:
                bad.append("no positive median: %s %s" % (mode, r["metric"]))
            elif mode in ("ssh", "stunnel", "wireguard", "mtun-forward", "mtun") and \
                    metric in net and not isinstance(r["ratios"].get("direct"), (int, float)):
                bad.append("no ratio to direct: %s %s" % (mode, r["metric"]))
            elif mode == "mtun" and metric in net and measured("mtun-forward") and \
                    not isinstance(r["ratios"].get("mtun-forward"), (int, float)):
                bad.append("no ratio to mtun-forward: %s %s" % (mode, r["metric"]))
            elif mode in ("squid", "mitmproxy", "inspect") and \
                    not isinstance(r["ratios"].get("direct"), (int, float)):
                bad.append("no ratio to direct: %s %s" % (mode, r["metric"]))
for m in ("mtun", "mtun-forward"):
    if any(not r.get("skipped") for r in recs if r["mode"] == m):
        continue
    if not any(r.get("skipped") for r in recs if r["mode"] == m):
        bad.append("%s neither measured nor skipped" % m)
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
)
ok $? "the JSON has a figure or a reasoned skip for every mode and metric" "$check"

peers=$("$py" -c '
import json, sys
recs = json.load(open(sys.argv[1]))["records"]
print(" ".join(sorted({r["mode"] for r in recs if not r.get("skipped") and r["metric"] == "tput1_gbps"
                       and not r["mode"].startswith("mtun")})))
' "$tmp/b.json" 2>&1)
ok "$([ "$peers" = "direct ssh stunnel wireguard" ] && echo 0 || echo 1)" \
	"every peer mode carried traffic" "measured: $peers"
# What mtun-forward and mtun did (measured, or skipped and why), for the reader.
"$py" -c '
import json, sys
for m in ("mtun-forward", "mtun"):
    recs = [r for r in json.load(open(sys.argv[1]))["records"] if r["mode"] == m]
    got = ["%s=%s" % (r["metric"], r["median"]) for r in recs if not r.get("skipped")]
    why = sorted({r["reason"] for r in recs if r.get("skipped")})
    print("# %s: " % m + (" ".join(got) if got else "skipped: " + "; ".join(why)))
' "$tmp/b.json" 2>/dev/null

left=$(leftovers "$id1")
ok "$([ -z "$left" ] && [ -s "$tmp/seen-$id1" ] && echo 0 || echo 1)" \
	"nothing left behind ($(wc -l <"$tmp/seen-$id1") processes seen in the run's namespaces)" \
	"${left:-no process was seen during the run}"

# 6-8: terminated in the middle of a round.
MTUN_BENCH_ID=$id2 MTUN_BUILD=$build "$top/tools/bench" --rounds 3 --seconds 5 \
	--modes direct,ssh --json "$tmp/t.json" >"$tmp/out2" 2>"$tmp/err2" &
bench_pid=$!
watch_run "$id2" "$bench_pid" &
watcher=$!
for _ in $(seq 600); do
	grep -q 'round 1/3: ssh' "$tmp/err2" && break
	kill -0 "$bench_pid" 2>/dev/null || break
	sleep 0.1
done
grep -q 'round 1/3: ssh' "$tmp/err2"
ok $? "the second run reaches its ssh round" "$(tail -n 20 "$tmp/err2")"
kill -TERM "$bench_pid"
for _ in $(seq 600); do
	kill -0 "$bench_pid" 2>/dev/null || break
	sleep 0.1
done
wait "$bench_pid"
rc=$?
bench_pid=""
wait "$watcher"
ok "$([ "$rc" -ne 0 ] && echo 0 || echo 1)" "terminated, it exits non-zero (status $rc)"
left=$(leftovers "$id2")
ok "$([ -z "$left" ] && [ -s "$tmp/seen-$id2" ] && echo 0 || echo 1)" \
	"terminated, it leaves no namespace or process behind" "$left"

[ "$failed" -eq 0 ]
