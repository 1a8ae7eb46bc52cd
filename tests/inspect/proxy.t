#!/usr/bin/env bash
# The inspection node end to end in a lab of its own (tools/lab, MTUN_LAB=i<pid>): a CA with
# inspection custody in edge, `mtun-broker inspect` in edge, HTTPS origins in inet with
# certificates from a test public CA, and real curl in client. Issue 7's acceptance:
# inspection with a leaf from the tenant's intermediate, bypass, block, bad upstream
# certificates, CA down, no key, private-only tenants, rotation with scans of the store and
# backups, a core dump under load and every file written scanned for the tenant key, leaf
# keys and a plaintext marker, the key gone from memory after the idle timeout, and rotation
# and revocation reaching the node within seconds through the CRL the CA pushes. TAP.
#
# Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
export MTUN_BUILD=$build
lab=$top/tools/lab
ca=$build/ca/mtun-ca
ctl=$build/tools/mtunctl
broker=$build/broker/mtun-broker
ik=$build/broker/mtun-ca-inspkey
keyscan=$top/tests/ca/keyscan.py
memscan=$top/tests/inspect/memscan.py
node_ip=198.18.1.1 # edge, as the client sees it
inet_ip=198.18.2.2
ca_addr=127.0.0.1:18443 # our own CA, inside edge (the lab's CA has no wrapping key)

n=0
failed=0
pids=()
T=
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
note() { echo "# $*"; }
show() { tail -n 25 "$@" 2>&1 | sed 's/^/# /'; }
check() { # check DESC CMD...
	local d=$1
	shift
	if "$@" >"$T/out" 2>&1; then ok "$d"; else
		not_ok "$d"
		show "$T/out"
	fi
}

for b in "$ca" "$ctl" "$broker" "$ik"; do
	if [ ! -x "$b" ]; then
		echo "1..0 # SKIP $b not built (set MTUN_BUILD)"
		exit 0
	fi
done
if [ "$(id -u)" -ne 0 ]; then
	echo "1..0 # SKIP needs root (network namespaces)"
	exit 0
fi
for c in curl openssl python3 gcore; do
	command -v $c >/dev/null || { echo "1..0 # SKIP $c missing (tools/deps build lab)"; exit 0; }
done

export MTUN_LAB="i$$"
state=$top/.lab/$MTUN_LAB
T=$(mktemp -d /tmp/mtun-inspect.XXXXXX)
cleanup() {
	local p
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
	for p in 1 2 3; do "$lab" down >/dev/null 2>&1 && break; done # the lock may be busy
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
t_start=$SECONDS

finish() {
	echo "1..$n"
	note "$(basename "$0"): $((SECONDS - t_start)) s"
	if [ $failed -ne 0 ]; then
		mkdir -p "/tmp/mtun-inspect-logs.$$" && cp "$T"/*.log "/tmp/mtun-inspect-logs.$$/" 2>/dev/null
		note "logs kept in /tmp/mtun-inspect-logs.$$"
	fi
	[ $failed -eq 0 ]
	exit $?
}

in_node() { "$lab" exec "$@"; }
# spawn NODE LOG CMD...: a daemon in NODE; tools/lab exec keeps the PID, so $last is it.
spawn() {
	local node=$1 log=$2
	shift 2
	(exec "$lab" exec "$node" -- "$@") </dev/null >"$log" 2>&1 &
	last=$!
	pids+=("$last")
}
wait_listen() { # NODE ADDR:PORT PID
	local i
	for i in $(seq 200); do
		in_node "$1" -- ss -Hltn "src = $2" 2>/dev/null | grep -q LISTEN && return 0
		kill -0 "$3" 2>/dev/null || return 1
		sleep 0.05
	done
	return 1
}
wait_log() { # FILE PATTERN [SECONDS]
	local i
	for i in $(seq $((${3:-10} * 20))); do
		grep -q -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.05
	done
	return 1
}
wait_count() { # FILE PATTERN COUNT [SECONDS]
	local i
	for i in $(seq $((${4:-10} * 20))); do
		[ "$(grep -c -- "$2" "$1" 2>/dev/null)" -ge "$3" ] && return 0
		sleep 0.05
	done
	return 1
}
stop() { # PID: stops a daemon we started and waits for it
	kill "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	return 0
}

if ! "$lab" up >"$T/up.log" 2>&1; then
	not_ok "tools/lab up"
	show "$T/up.log"
	finish
fi
ok "lab $MTUN_LAB is up"

# --- our CA, with inspection custody, in edge ---------------------------------------------
kek="test-kek-$(openssl rand -hex 24)"
mkdir -p "$T/nodes" "$T/root" "$T/pub" "$T/backups" "$T/www/blocked"
openssl genpkey -algorithm X25519 -out "$T/nodes/wrap.key" 2>/dev/null
openssl pkey -in "$T/nodes/wrap.key" -pubout -out "$T/wrap.pub" 2>/dev/null
printf '%s\n' "$kek" >"$T/kek"
mtun_ca() { "$ca" "$@" --state "$T/ca" --kek-fd 3 3<"$T/kek"; }
check "CA init (tenant ops, the inspectors')" mtun_ca init --tenant ops
pin=$(sed -n 's/^ca-fingerprint=//p' "$T/out")
for t in acme bank; do mtun_ca init --tenant $t >/dev/null 2>&1; done
start_ca() {
	spawn edge "$T/ca.log.$1" "$ca" serve --state "$T/ca" --kek-fd 3 --listen "$ca_addr" \
		--admin-socket "$T/admin.sock" --wrap-key "$T/wrap.pub" 3<"$T/kek"
	ca_pid=$last
	wait_listen edge "$ca_addr" "$ca_pid" && [ -S "$T/admin.sock" ]
}
if start_ca 1; then ok "mtun-ca serves with the nodes' wrapping public key"; else
	not_ok "mtun-ca serves"
	show "$T/ca.log.1"
	finish
fi
export MTUN_CA_ADMIN=$T/admin.sock
tok=$("$ctl" token create --tenant ops --role inspector)
check "inspector edge-1 enrolls" in_node edge -- "$broker" enroll --ca "$ca_addr" \
	--ca-fingerprint "$pin" --token "$tok" --inspector --id edge-1 --state "$T/edge-1" \
	--identity-source "$state/edge/identity"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/root/root.key" \
	-subj "/O=Acme/CN=Acme Root" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$T/root/root.pem" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$T/root/ca.ext"
sign() { # CSR OUT
	openssl x509 -req -in "$1" -CA "$T/root/root.pem" -CAkey "$T/root/root.key" \
		-CAcreateserial -days 20 -extfile "$T/root/ca.ext" -out "$2" 2>/dev/null
}
for t in acme bank; do
	"$ctl" inspection csr --tenant $t 2>/dev/null | sed '/^key id/d' >"$T/$t.csr"
	sign "$T/$t.csr" "$T/$t.pem"
	check "tenant $t's inspection key is active" "$ctl" inspection import --tenant $t "$T/$t.pem" "$T/root/root.pem"
done
check "bank is private-only" "$ctl" inspection tenant --tenant bank private-only
check "edge-1 is a public node" "$ctl" inspection mark ops/edge-1 public
in_node edge -- "$ik" --state "$T/edge-1" --identity-source "$state/edge/identity" --tenant acme --wrap-key-fd 4 \
	--save-envelope "$T/acme-old.env" --print-secret 4<"$T/nodes/wrap.key" >"$T/ik.out" 2>&1
acme_secret=$(sed -n 's/^secret_hex=//p' "$T/ik.out")
acme_old=$(sed -n 's/^granted key=\([0-9a-f]*\) .*/\1/p' "$T/ik.out")
[ ${#acme_secret} -eq 64 ] && ok "the test knows acme's key ($acme_old) to look for it" ||
	{ not_ok "the test knows acme's key"; show "$T/ik.out"; }
for i in 1 2; do
	mtun_ca backup "$T/backups" >/dev/null 2>&1
	[ $i = 1 ] && sleep 1 # backups are named by the second
done
[ "$(ls "$T/backups" | wc -l)" -eq 2 ] && ok "two CA backups" || not_ok "two CA backups"

# --- the origins in inet: a test public CA the node trusts, and one it does not ----------
pubca() { # NAME DIR
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$2/$1.key" \
		-subj "/CN=$1" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
		-addext "keyUsage=critical,keyCertSign" -out "$2/$1.pem" 2>/dev/null
}
leaf() { # CA NAME SANS
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/pub/$2.key" \
		-subj "/CN=$2" -out "$T/pub/$2.csr" 2>/dev/null
	printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$3" >"$T/pub/$2.ext"
	openssl x509 -req -in "$T/pub/$2.csr" -CA "$T/pub/$1.pem" -CAkey "$T/pub/$1.key" \
		-CAcreateserial -days 10 -extfile "$T/pub/$2.ext" -out "$T/pub/$2.pem" 2>/dev/null
}
pubca "Test Public CA" "$T/pub" && mv "$T/pub/Test Public CA.pem" "$T/pub/ca.pem" &&
	mv "$T/pub/Test Public CA.key" "$T/pub/ca.key"
pubca rogue "$T/pub"
leaf ca origin "DNS:www.public.example,DNS:pinned.public.example"
leaf rogue bad "DNS:bad.public.example"
marker=MARKER-$(openssl rand -hex 12)
printf '<h1>www.public.example</h1>\n<p>%s</p>\n' "$marker" >"$T/www/index.html"
echo "not for you" >"$T/www/blocked/secret.html"
head -c 4M /dev/urandom >"$T/www/big.bin"
cat >"$T/origin.py" <<'PY'
import http.server, os, ssl, sys
os.chdir(sys.argv[1])
http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
s = http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), http.server.SimpleHTTPRequestHandler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[4], sys.argv[5])
ctx.set_alpn_protocols(["http/1.1"])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
PY
spawn inet "$T/origin.log" python3 "$T/origin.py" "$T/www" "$inet_ip" 443 "$T/pub/origin.pem" "$T/pub/origin.key"
o1=$last
spawn inet "$T/bad.log" python3 "$T/origin.py" "$T/www" "$inet_ip" 8443 "$T/pub/bad.pem" "$T/pub/bad.key"
o2=$last
wait_listen inet "$inet_ip:443" $o1 && wait_listen inet "$inet_ip:8443" $o2 &&
	ok "HTTPS origins in inet (:443 public CA, :8443 a CA nobody trusts)" ||
	{ not_ok "HTTPS origins in inet"; show "$T/origin.log"; finish; }
# edge resolves through inet's DNS, which knows www.public.example only
printf '%s pinned.public.example bad.public.example\n' "$inet_ip" >>"$state/etc/edge/hosts"

# --- the node -------------------------------------------------------------------------------
idle=15
grep -q __asan_init "$broker" && idle=45 # memory scans of an ASan process are slow
cat >"$T/node.conf" <<CONF
inspect = {
	state = "$T/edge-1";
	identity_source = "$state/edge/identity";
	listen = [ "$node_ip:3128", "$node_ip:3129", "$node_ip:3130", "$node_ip:3131" ];
	upstream_ca = "$T/pub/ca.pem";
	ports = [ 443, 8443 ];
	key_idle = "${idle}s";
	key_refresh = "1h";
	ca_retry = "1s";
	ca_timeout = "1s";
	buffers = 128;
};
tenants = (
	{ name = "acme"; listen = [ "$node_ip:3128" ]; sources = [ "198.18.1.0/24" ];
	  bypass = [ "pinned.public.example" ]; block = [ "www.public.example/blocked/" ]; },
	{ name = "cafe"; listen = [ "$node_ip:3129" ]; fail = "open"; },
	{ name = "bank"; listen = [ "$node_ip:3130" ]; },
	{ name = "dark"; listen = [ "$node_ip:3131" ]; fail = "closed"; }
);
CONF
refused_dump() {
	! MTUN_TEST= "$broker" inspect --config "$T/node.conf" --test-allow-dump >"$T/out" 2>&1 &&
		grep -q "for tests only" "$T/out"
}
check "--test-allow-dump is refused outside a test" refused_dump
start_node() {
	(exec "$lab" exec edge -- env MTUN_TEST=1 MTUN_TEST_LEAF_KEYS_FD=5 "$broker" inspect \
		--config "$T/node.conf" --wrap-key-fd 4 --test-allow-dump 4<"$T/nodes/wrap.key" \
		5> >(cat >>"$T/leafkeys")) </dev/null >"$T/node.log" 2>&1 &
	node_pid=$!
	pids+=("$node_pid")
	wait_listen edge "$node_ip:3131" "$node_pid"
}
if start_node; then ok "mtun-broker inspect listens"; else
	not_ok "mtun-broker inspect listens"
	show "$T/node.log"
	finish
fi

# curl in client through the node: PORT URL CURL-ARGS...; the output and -v in $T/c.out
pcurl() {
	local port=$1 url=$2
	shift 2
	in_node client -- curl -sS -v --max-time 10 --proxy "http://$node_ip:$port" "$@" "$url" >"$T/c.body" 2>"$T/c.err"
}
issuer_is() { grep -q "issuer: $1" "$T/c.err"; }

if pcurl 3128 https://www.public.example/ --cacert "$T/root/root.pem" &&
	grep -q "$marker" "$T/c.body" && issuer_is "O=acme; OU=mtun inspection; CN=mtun acme inspection CA" &&
	grep -q "subject: CN=www.public.example" "$T/c.err"; then
	ok "curl trusting only acme's root gets the page; the leaf for the host is from acme's intermediate"
else
	not_ok "inspected page with acme's leaf"
	show "$T/c.err" "$T/node.log"
fi
grep -q 'ALPN, server accepted to use http/1.1\|ALPN: server accepted http/1.1' "$T/c.err" &&
	ok "ALPN http/1.1 is mirrored" || not_ok "ALPN http/1.1 is mirrored"
grep -q "event=proxy.http tenant=acme client=198.18.1.2 method=GET host=www.public.example path=/ status=200" "$T/node.log" &&
	ok "the node logs method, host, path and status" || { not_ok "HTTP log line"; show "$T/node.log"; }
if pcurl 3128 https://pinned.public.example/ --cacert "$T/pub/ca.pem" && grep -q "$marker" "$T/c.body" &&
	issuer_is "CN=Test Public CA"; then
	ok "a bypass host shows the origin's own certificate"
else
	not_ok "bypass host"
	show "$T/c.err"
fi
pcurl 3128 https://www.public.example/blocked/secret.html --cacert "$T/root/root.pem" -o /dev/null -w '%{http_code}'
code=$(cat "$T/c.body")
[ "$code" = 403 ] && ! grep -q "not for you" "$T/c.body" && ok "a blocked path gets 403" || not_ok "blocked path: $code"
pcurl 3128 https://www.public.example/blocked/secret.html --cacert "$T/root/root.pem"
grep -q "Blocked" "$T/c.body" && ok "... with a page saying so" || not_ok "403 page"
pcurl 3128 https://www.public.example/big.bin --cacert "$T/root/root.pem" -o - >/dev/null
cmp -s "$T/c.body" "$T/www/big.bin" && ok "4 MiB download through inspection is intact" ||
	not_ok "4 MiB download intact"
if ! pcurl 3128 https://bad.public.example:8443/ --cacert "$T/root/root.pem" && ! grep -q "$marker" "$T/c.body" &&
	grep -q 'event=proxy.upstream_refused tenant=acme .*host=bad.public.example' "$T/node.log"; then
	ok "an upstream with a certificate from an untrusted CA is refused"
else
	not_ok "bad upstream certificate refused"
	show "$T/c.err" "$T/node.log"
fi
in_node client -- openssl s_client -proxy "$node_ip:3128" -connect www.public.example:443 \
	-servername pinned.public.example </dev/null >"$T/sc0.out" 2>&1
grep -q "event=proxy.sni_mismatch tenant=acme .*host=www.public.example sni=pinned.public.example" "$T/node.log" &&
	! grep -q "issuer=CN = Test Public CA" "$T/sc0.out" &&
	ok "a ClientHello for another name than the CONNECT's (a bypass host) is refused" ||
	{ not_ok "SNI other than the CONNECT host"; show "$T/sc0.out"; }
if pcurl 3129 https://www.public.example/ --cacert "$T/pub/ca.pem" && grep -q "$marker" "$T/c.body" &&
	issuer_is "CN=Test Public CA" && grep -q "proxy.tunnel tenant=cafe .*why=no-key" "$T/node.log"; then
	ok "a tenant with no key is relayed without decryption"
else
	not_ok "no key: relayed"
	show "$T/c.err" "$T/node.log"
fi
if pcurl 3130 https://www.public.example/ --cacert "$T/pub/ca.pem" && issuer_is "CN=Test Public CA" &&
	grep -q 'event=inspection.key_fetch_failed tenant=bank .*private-only' "$T/node.log"; then
	ok "a private-only tenant's key is refused to a public node: relayed without decryption"
else
	not_ok "private-only tenant from a public node"
	show "$T/c.err" "$T/node.log"
fi
grep -q 'event=inspection.key_handout node=ops/edge-1 tenant=bank .*granted=0' "$T/ca.log.1" &&
	ok "... and the CA audits the refusal" || { not_ok "refusal audited"; show "$T/ca.log.1"; }
audit=$(python3 -c '
import sqlite3, sys
print(sqlite3.connect(sys.argv[1]).execute(
    "SELECT count(*) FROM insp_handout WHERE node = ? AND tenant = ? AND granted = 0",
    ("ops/edge-1", "bank")).fetchone()[0])' "$T/ca/ca.db")
[ "${audit:-0}" -ge 1 ] && ok "... in the hand-out table" || not_ok "audit row ($audit)"

# --- under load: a core dump of the node, and every file node and CA wrote ----------------
load() {
	local i
	for i in $(seq 40); do
		in_node client -- curl -s --max-time 10 --proxy "http://$node_ip:3128" --cacert "$T/root/root.pem" \
			https://www.public.example/ https://www.public.example/big.bin -o /dev/null -o /dev/null
	done
}
if grep -q __asan_init "$broker"; then
	# ASan reserves terabytes of shadow memory: a core of it is neither useful nor small
	ok "gcore under load # SKIP $broker is built with AddressSanitizer"
else
load &
lpid=$!
wait_log "$T/node.log" "path=/big.bin status=200" 10
sleep 0.5
gcore -o "$T/core" "$node_pid" >"$T/gcore.log" 2>&1
wait $lpid
core=$T/core.$node_pid
if [ -s "$core" ]; then ok "gcore of the node under load ($(($(stat -c %s "$core") / 1048576)) MiB)"; else
	not_ok "gcore of the node"
	show "$T/gcore.log"
fi
sort -u "$T/leafkeys" | awk '{print $2}' >"$T/leafhex"
# the intermediate's TBS bytes (OpenSSL keeps a parsed certificate's TBS encoding)
inter_hex=$(openssl x509 -in "$T/acme.pem" -outform DER | xxd -p | tr -d '\n' | cut -c 17-216)
python3 "$memscan" --files "$core" -- "$inter_hex" >/dev/null
[ $? -eq 1 ] && ok "the scan finds what is there: acme's (public) intermediate is in the core" ||
	not_ok "control: the intermediate certificate in the core"
marker_hex=$(printf '%s' "$marker" | xxd -p | tr -d '\n')
[ -s "$T/leafhex" ] && ok "leaf keys to look for: $(wc -l <"$T/leafhex")" || not_ok "no leaf keys recorded"
check "the core holds neither acme's key, nor a leaf key, nor the plaintext marker" \
	python3 "$memscan" --files "$core" -- "$acme_secret" "$marker_hex" $(cat "$T/leafhex")
check "the core holds no private key structure (keyscan)" python3 "$keyscan" "$core"
rm -f "$core"
fi
marker_hex=$(printf '%s' "$marker" | xxd -p | tr -d '\n')
sort -u "$T/leafkeys" | awk '{print $2}' >"$T/leafhex"
written=("$T/ca" "$T/backups" "$T/node.log" "$T/ca.log.1" "$T/edge-1")
check "no file the node or the CA wrote holds acme's key, a leaf key or the marker" \
	python3 "$memscan" --files "${written[@]}" -- "$acme_secret" "$marker_hex" $(cat "$T/leafhex")
check "... nor any unencrypted private key but the inspector's sealed identity (keyscan)" \
	python3 "$keyscan" "$T/ca" "$T/backups" "$T/node.log" "$T/ca.log.1"

# --- the CA stopped -------------------------------------------------------------------------
pcurl 3128 https://www.public.example/ --cacert "$T/root/root.pem" # acme's key in use: held
drops=$(grep -c "event=inspection.key_dropped tenant=acme" "$T/node.log")
stop "$ca_pid"
if pcurl 3128 https://www.public.example/ --cacert "$T/root/root.pem" && grep -q "$marker" "$T/c.body" &&
	issuer_is "O=acme; OU=mtun inspection"; then
	ok "CA stopped: inspection goes on for acme, whose key is held"
else
	not_ok "CA stopped: inspection goes on"
	show "$T/c.err" "$T/node.log"
fi
if ! pcurl 3131 https://www.public.example/ --cacert "$T/pub/ca.pem" &&
	grep -q "proxy.refused tenant=dark .*why=fail-closed" "$T/node.log"; then
	ok "CA stopped, no key held, tenant fail-closed: refused"
else
	not_ok "fail-closed tenant refused"
	show "$T/c.err" "$T/node.log"
fi
pcurl 3129 https://www.public.example/ --cacert "$T/pub/ca.pem" && issuer_is "CN=Test Public CA" &&
	ok "CA stopped, no key held, tenant fail-open: relayed without decryption" ||
	{ not_ok "fail-open tenant relayed"; show "$T/c.err"; }

# --- the idle timeout -----------------------------------------------------------------------
pcurl 3128 https://www.public.example/ --cacert "$T/root/root.pem" # in use again: held for $idle s
python3 "$memscan" --pid "$node_pid" "$acme_secret" >"$T/scan.out"
[ $? -eq 1 ] && ok "while held, acme's key is found in /proc/PID/mem (the scan works)" ||
	{ not_ok "control: key found in memory while held"; show "$T/scan.out"; }
if wait_count "$T/node.log" "event=inspection.key_dropped tenant=acme key=$acme_old reason=idle" \
	$((drops + 1)) $((idle + 10)); then
	ok "acme's key is dropped after the idle timeout"
else
	not_ok "key dropped when idle"
	show "$T/node.log"
fi
check "... and is no longer in the node's memory (/proc/PID/mem)" python3 "$memscan" --pid "$node_pid" "$acme_secret"
pcurl 3128 https://www.public.example/ --cacert "$T/pub/ca.pem" && issuer_is "CN=Test Public CA" &&
	ok "CA down and the key dropped: acme is relayed without decryption" ||
	{ not_ok "dropped key, CA down: relayed"; show "$T/c.err"; }

# --- rotation: the CA pushes acme's CRL, the node drops the old key and fetches the new ------
if start_ca 2; then ok "mtun-ca is back"; else
	not_ok "mtun-ca restarts"
	show "$T/ca.log.2"
	finish
fi
subs=$(grep -c "event=inspection.crl_subscribed tenant=acme" "$T/node.log")
sleep 1.1 # ca_retry: the failed fetch while the CA was down is not repeated sooner
pcurl 3128 https://www.public.example/ --cacert "$T/root/root.pem"
if issuer_is "O=acme; OU=mtun inspection" &&
	wait_count "$T/node.log" "event=inspection.crl_subscribed tenant=acme" $((subs + 1)) 10; then
	ok "the node holds acme's key again and subscribes to acme's CRL at the CA"
else
	not_ok "key held again and acme's CRL watched"
	show "$T/c.err" "$T/node.log"
fi
"$ctl" inspection rotate --tenant acme >"$T/rot.out" 2>&1
sed '/^key id/d' "$T/rot.out" >"$T/acme2.csr"
acme_new=$(sed -n 's/^key id //p' "$T/rot.out")
sign "$T/acme2.csr" "$T/acme2.pem"
"$ctl" inspection import --tenant acme "$T/acme2.pem" "$T/root/root.pem" >"$T/imp.out" 2>&1
grep -q "old key $acme_old deleted from the store and from 2 backup(s)" "$T/imp.out" &&
	ok "rotation: the old key is deleted from the store and both backups" ||
	{ not_ok "rotation says what it deleted"; show "$T/imp.out"; }
# key_refresh is 1 h: only the pushed CRL can bring the new key this soon
if wait_log "$T/node.log" "event=inspection.key_held tenant=acme key=$acme_new" 5 &&
	grep -q "event=inspection.key_revoked tenant=acme key=$acme_old" "$T/node.log" &&
	grep -q "event=inspection.key_dropped tenant=acme key=$acme_old reason=revoked" "$T/node.log"; then
	ok "rotation reaches the node within seconds: the old key is dropped (its intermediate is in the CRL) and the new one fetched"
else
	not_ok "rotation reaches the node through the CRL push"
	show "$T/node.log"
fi
in_node client -- openssl s_client -proxy "$node_ip:3128" -connect www.public.example:443 \
	-servername www.public.example -showcerts -CAfile "$T/root/root.pem" </dev/null >"$T/sc.out" 2>&1
awk '/BEGIN CERT/{n++} n==1{print > "'"$T"'/leaf.pem"} n==2{print > "'"$T"'/sent.pem"} /END CERT/{if(n==2)n=3}' "$T/sc.out"
if openssl verify -CAfile "$T/root/root.pem" -untrusted "$T/acme2.pem" "$T/leaf.pem" >/dev/null 2>&1 &&
	! openssl verify -CAfile "$T/root/root.pem" -untrusted "$T/acme.pem" "$T/leaf.pem" >/dev/null 2>&1 &&
	cmp -s <(openssl x509 -in "$T/sent.pem" -outform DER) <(openssl x509 -in "$T/acme2.pem" -outform DER); then
	ok "after rotation the new intermediate ($acme_new) signs the leaves"
else
	not_ok "new intermediate signs leaves"
	show "$T/sc.out" "$T/node.log"
fi
python3 "$memscan" --files "$T/ca" "$T/backups" -- "$acme_secret" >"$T/out"
rc1=$?
python3 - "$T/acme-old.env" "$T/ca" "$T/backups" >"$T/out2" <<'PY'
import os, sys
needle = open(sys.argv[1], "rb").read()
hit = [os.path.join(r, f) for p in sys.argv[2:] for r, _, fs in os.walk(p) for f in fs
       if needle in open(os.path.join(r, f), "rb").read()]
print("\n".join(hit))
sys.exit(1 if hit else 0)
PY
rc2=$?
[ $rc1 -eq 0 ] && [ $rc2 -eq 0 ] && [ -s "$T/acme-old.env" ] &&
	ok "the old key, wrapped or not, is in no file of the store or the backups (scan)" ||
	{ not_ok "old key left in store/backups"; show "$T/out" "$T/out2"; }

# --- revocation: within seconds the node stops minting with the revoked intermediate ---------
t0=$(date +%s%N)
"$ctl" inspection revoke --tenant acme >"$T/rev.out" 2>&1
if wait_log "$T/node.log" "event=inspection.key_revoked tenant=acme key=$acme_new" 5; then
	ok "inspection revoke: the node drops acme's key after $((($(date +%s%N) - t0) / 1000000)) ms (the CRL push)"
else
	not_ok "the node drops the revoked key"
	show "$T/rev.out" "$T/node.log"
fi
if pcurl 3128 https://www.public.example/ --cacert "$T/pub/ca.pem" && grep -q "$marker" "$T/c.body" &&
	issuer_is "CN=Test Public CA" && grep -q 'event=inspection.key_fetch_failed tenant=acme .*no active' "$T/node.log"; then
	ok "... then a CONNECT is relayed without decryption: the client sees the origin's certificate"
else
	not_ok "after revoke: relayed without decryption"
	show "$T/c.err" "$T/node.log"
fi

grep -q "Sanitizer\|runtime error:" "$T/node.log" "$T"/ca.log.* && not_ok "sanitizer reports" ||
	ok "node and CA ran sanitizer-clean"
finish
