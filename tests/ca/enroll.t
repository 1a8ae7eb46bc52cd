#!/usr/bin/env bash
# mtun-ca end to end on loopback: tenants (internal, RSA, imported, externally signed),
# enrollment of agent, connector and broker, mTLS between the issued identities, refused
# tokens, a key file on another "machine", renewal, revocation and the CRL, the audit
# trail, and a scan of every written file for unencrypted private keys. Prints TAP.
#
#   mtunctl --admin socket--> mtun-ca (127.0.0.1:random) <--TLS, pinned-- mtun-{agent,...} enroll
#
# Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
ca=$build/ca/mtun-ca
ctl=$build/tools/mtunctl
agent=$build/agent/mtun-agent
connector=$build/connector/mtun-connector
broker=$build/broker/mtun-broker
pair=$build/ca/mtun-ca-tlspair
watch=$build/ca/mtun-ca-crlwatch
scan=$top/tests/ca/keyscan.py

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $*"; }
sanitizer_clean() { ! grep -q "Sanitizer\|runtime error:" "$T/out"; }
check() { # check "description" command...
	local what=$1
	shift
	if "$@" >"$T/out" 2>&1 && sanitizer_clean; then ok "$what"; else
		not_ok "$what"
		sed 's/^/# /' "$T/out"
	fi
}
refused() { # refused "description" "expected message" command...
	local what=$1 msg=$2
	shift 2
	if "$@" >"$T/out" 2>&1; then
		not_ok "$what (accepted)"
	elif ! sanitizer_clean; then
		not_ok "$what (sanitizer report)"
		sed 's/^/# /' "$T/out"
	elif grep -qF -- "$msg" "$T/out"; then
		ok "$what"
	else
		not_ok "$what (no '$msg')"
		sed 's/^/# /' "$T/out"
	fi
}

for b in "$ca" "$ctl" "$agent" "$connector" "$broker" "$pair" "$watch"; do
	if [ ! -x "$b" ]; then
		echo "1..0 # SKIP $b not built (set MTUN_BUILD)"
		exit 0
	fi
done
command -v openssl >/dev/null || { echo "1..0 # SKIP openssl CLI missing"; exit 0; }

T=$(mktemp -d /tmp/mtun-ca-test.XXXXXX)
ca_pid=
watch_pid=
cleanup() {
	[ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null && wait "$watch_pid" 2>/dev/null
	[ -n "$ca_pid" ] && kill "$ca_pid" 2>/dev/null && wait "$ca_pid" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

# The key-encryption secret reaches the CA through a file descriptor, never a file it writes.
kek="test-kek-$(openssl rand -hex 24)"
export MTUN_CA_IMPORT_PASS="tenant-own-ca-pass-$RANDOM"
mtun_ca() { "$ca" "$@" --state "$T/ca" --kek-fd 3 3<<<"$kek"; }

# Two "machines": each an identity source directory with its own machine-id.
mkdir -p "$T/m1" "$T/m2"
openssl rand -hex 16 >"$T/m1/machine-id"
openssl rand -hex 16 >"$T/m2/machine-id"
echo "4C4C4544-0042-3510-8048-B4C04F565931" >"$T/m1/product_uuid"

check "init tenant acme (P-256)" mtun_ca init --tenant acme
pin=$(sed -n 's/^ca-fingerprint=//p' "$T/out")
[[ $pin =~ ^sha256:[0-9a-f]{64}$ ]] && ok "init shows the CA's fingerprint" ||
	not_ok "init shows the CA's fingerprint ($pin)"
grep -q "BEGIN CERTIFICATE" "$T/out" && ok "init prints the tenant root" || not_ok "init prints the tenant root"
check "init tenant beta (RSA)" mtun_ca init --tenant beta --key-alg rsa
refused "init refuses an existing tenant" "exists already" mtun_ca init --tenant acme
refused "init refuses a wrong key-encryption secret" "wrong secret" \
	"$ca" init --tenant gamma --state "$T/ca" --kek-fd 3 3<<<"another-secret-0123456789"

# Custom CA: the tenant's own root and issuing CA, keys encrypted by the tenant.
mkdir -p "$T/own"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$T/own/root.key" \
	-passout env:MTUN_CA_IMPORT_PASS -subj "/O=Custom Corp/CN=Custom Root" -days 30 \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
	-out "$T/own/root.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -keyout "$T/own/issuer.key" \
	-passout env:MTUN_CA_IMPORT_PASS -subj "/O=Custom Corp/CN=Custom Issuing" \
	-out "$T/own/issuer.csr" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$T/own/ca.ext"
openssl x509 -req -in "$T/own/issuer.csr" -CA "$T/own/root.pem" -CAkey "$T/own/root.key" \
	-passin env:MTUN_CA_IMPORT_PASS -CAcreateserial -days 30 -extfile "$T/own/ca.ext" \
	-out "$T/own/issuer.pem" 2>/dev/null
cat "$T/own/issuer.pem" "$T/own/root.pem" >"$T/own/bundle.pem"
check "init --import-ca with the tenant's own CA" \
	mtun_ca init --tenant custom --import-ca "$T/own/bundle.pem" "$T/own/issuer.key"
refused "import refuses a key that is not the CA's" "does not match" \
	mtun_ca init --tenant custom2 --import-ca "$T/own/bundle.pem" "$T/own/root.key"

# External signing: the CA makes the CSR, the tenant's root signs it.
check "init --external writes a CSR" mtun_ca init --tenant ext --external --csr-out "$T/own/ext.csr"
openssl x509 -req -in "$T/own/ext.csr" -CA "$T/own/root.pem" -CAkey "$T/own/root.key" \
	-passin env:MTUN_CA_IMPORT_PASS -CAcreateserial -days 30 -extfile "$T/own/ca.ext" \
	-out "$T/own/ext.pem" 2>/dev/null
refused "import-signed refuses a certificate for another key" "not for this tenant's pending key" \
	mtun_ca import-signed --tenant ext --cert "$T/own/issuer.pem" --root "$T/own/root.pem"
check "import-signed finishes the external flow" \
	mtun_ca import-signed --tenant ext --cert "$T/own/ext.pem" --root "$T/own/root.pem"

# The CA itself, on a random loopback port.
"$ca" serve --state "$T/ca" --kek-fd 3 --listen 127.0.0.1:0 --admin-socket "$T/admin.sock" \
	3<<<"$kek" 2>"$T/ca.log" &
ca_pid=$!
port=
for _ in $(seq 100); do
	port=$(sed -n 's/.*event=ca.ready .*port=\([0-9]*\).*/\1/p' "$T/ca.log")
	[ -n "$port" ] && [ -S "$T/admin.sock" ] && ss -ltn "sport = :$port" | grep -q LISTEN && break
	kill -0 "$ca_pid" 2>/dev/null || break
	sleep 0.05
done
if [ -z "$port" ]; then
	not_ok "mtun-ca serve is ready"
	cat "$T/ca.log" >&2
	echo "1..$n"
	exit 1
fi
ok "mtun-ca serve is ready on port $port"
signer_pid=$(sed -n 's/.*event=signer.start pid=\([0-9]*\).*/\1/p' "$T/ca.log")
if [ -n "$signer_pid" ] && [ "$(ps -o ppid= -p "$signer_pid" | tr -d ' ')" = "$ca_pid" ]; then
	ok "the issuing keys live in a separate signer process ($signer_pid)"
else
	not_ok "the issuing keys live in a separate signer process"
fi
addr=127.0.0.1:$port
export MTUN_CA_ADMIN=$T/admin.sock

refused "a second mtun-ca cannot take over the admin socket" "in use by another running mtun-ca" \
	timeout 10 "$ca" serve --state "$T/ca" --kek-fd 3 --listen 127.0.0.1:0 \
	--admin-socket "$T/admin.sock" 3<<<"$kek"
check "the first mtun-ca still answers on it" "$ctl" token list --tenant acme

token() { "$ctl" token create "$@"; }
tok_agent=$(token --tenant acme --role agent --user alice --groups eng,ops --ttl 1h)
tok_conn=$(token --tenant acme --role connector)
tok_broker=$(token --tenant acme --role broker)
[[ $tok_agent == mtt1.acme.* && ${#tok_agent} -eq 53 ]] && ok "token create prints a one-time token" ||
	not_ok "token create prints a one-time token ($tok_agent)"

served=$(openssl s_client -connect "$addr" </dev/null 2>/dev/null |
	openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2 | tr -d : | tr A-F a-f)
[ "sha256:$served" = "$pin" ] && ok "the fingerprint shown at init is the served certificate's" ||
	not_ok "the fingerprint shown at init is the served certificate's ($served)"

# A client that connects and sends nothing must not hold up the others.
exec 5<>"/dev/tcp/127.0.0.1/$port"
check "agent enrolls (while an idle connection is open)" timeout 4 "$agent" enroll --ca "$addr" --ca-fingerprint "$pin" --token "$tok_agent" \
	--user alice --id laptop-1 --state "$T/agent" --identity-source "$T/m1"
exec 5>&-
check "connector enrolls" "$connector" enroll --ca "$addr" --ca-fingerprint "$pin" \
	--token "$tok_conn" --id conn-1 --state "$T/connector" --identity-source "$T/m1"
check "broker enrolls" "$broker" enroll --ca "$addr" --ca-fingerprint "$pin" \
	--token "$tok_broker" --id edge-1 --state "$T/broker" --identity-source "$T/m2"

tok=$(token --tenant acme --role inspector)
check "an inspector enrolls (mtun-broker enroll --inspector)" "$broker" enroll --ca "$addr" \
	--ca-fingerprint "$pin" --token "$tok" --inspector --id inspect-1 --state "$T/inspector" \
	--identity-source "$T/m2"
openssl x509 -in "$T/inspector/cert.pem" -noout -ext subjectAltName 2>/dev/null |
	grep -q "URI:mtun://acme/inspector/inspect-1$" && ok "the inspector's certificate says inspector" ||
	not_ok "the inspector's certificate says inspector"
uri=$(openssl x509 -in "$T/agent/cert.pem" -noout -ext subjectAltName 2>/dev/null | sed -n 's/.*URI://p')
[[ $uri =~ ^mtun://acme/agent/laptop-1\?user=alice\&device=[0-9a-f]{64}$ ]] &&
	ok "agent certificate carries tenant, role, id, user and device" ||
	not_ok "agent certificate carries tenant, role, id, user and device ($uri)"
perm=$(stat -c %a "$T/agent/key.sealed")
[ "$perm" = 600 ] && ok "agent key file is mode 0600" || not_ok "agent key file is mode 0600 ($perm)"
check "agent chain verifies to the tenant root" \
	openssl verify -CAfile "$T/agent/ca.pem" -untrusted "$T/agent/cert.pem" "$T/agent/cert.pem"

check "mTLS agent <-> broker with the issued certificates" "$pair" \
	--server "$T/broker" --server-identity-source "$T/m2" \
	--client "$T/agent" --client-identity-source "$T/m1"
grep -q "server peer=mtun://acme/agent/laptop-1?user=alice" "$T/out" &&
	grep -q "client peer=mtun://acme/broker/edge-1 role=broker" "$T/out" &&
	ok "each side sees the other's identity" || not_ok "each side sees the other's identity"
check "mTLS connector <-> broker" "$pair" --server "$T/broker" --server-identity-source "$T/m2" \
	--client "$T/connector" --client-identity-source "$T/m1"

# Refusals.
refused "a spent token is refused" "enrollment token already used" \
	"$agent" enroll --ca "$addr" --ca-fingerprint "$pin" --token "$tok_agent" --user alice \
	--id laptop-2 --state "$T/agent2" --identity-source "$T/m1"
tok_exp=$(token --tenant acme --role connector --ttl 1m)
python3 - "$T/ca/ca.db" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("UPDATE token SET expires = ? WHERE role = 'connector' AND spent = 0", (int(time.time()) - 1,))
db.commit()
PY
refused "an expired token is refused" "enrollment token expired" \
	"$connector" enroll --ca "$addr" --ca-fingerprint "$pin" --token "$tok_exp" --id conn-x \
	--state "$T/conn-x" --identity-source "$T/m1"
tok_beta=$(token --tenant beta --role connector)
refused "a wrong-tenant token is refused" "enrollment token belongs to another tenant" \
	"$connector" enroll --ca "$addr" --ca-fingerprint "$pin" --token "mtt1.acme.${tok_beta##*.}" \
	--id conn-y --state "$T/conn-y" --identity-source "$T/m1"
refused "a made-up token is refused" "unknown enrollment token" \
	"$connector" enroll --ca "$addr" --ca-fingerprint "$pin" \
	--token "mtt1.acme.$(openssl rand -base64 32 | tr '+/' '-_' | cut -c1-42)A" \
	--id conn-z --state "$T/conn-z" --identity-source "$T/m1"
refused "a CA with another fingerprint is refused" "does not match the pinned fingerprint" \
	"$connector" enroll --ca "$addr" --ca-fingerprint "sha256:$(openssl rand -hex 32)" \
	--token "$tok_beta" --id conn-b --state "$T/conn-b" --identity-source "$T/m1"
check "the beta token still works after those refusals" "$connector" enroll --ca "$addr" \
	--ca-fingerprint "$pin" --token "$tok_beta" --id conn-b --state "$T/conn-b" \
	--identity-source "$T/m1"

tok=$(token --tenant acme --role connector)
refused "enroll does not overwrite an existing enrollment" "holds an enrollment already" \
	"$connector" enroll --ca "$addr" --ca-fingerprint "$pin" --token "$tok" --id conn-9 \
	--state "$T/connector" --identity-source "$T/m1"

# The agent's key file copied to another machine.
cp -a "$T/agent" "$T/agent-copy"
refused "a copied agent key does not load on another machine" \
	"key file was sealed on another machine (device fingerprint differs)" \
	"$pair" --server "$T/broker" --server-identity-source "$T/m2" \
	--client "$T/agent-copy" --client-identity-source "$T/m2"
refused "renew from the other machine fails the same way" "sealed on another machine" \
	"$agent" renew --state "$T/agent-copy" --identity-source "$T/m2" --force

# Renewal over mTLS with the current certificate.
old=$(openssl x509 -in "$T/agent/cert.pem" -noout -serial)
check "renew says not due yet" "$agent" renew --state "$T/agent" --identity-source "$T/m1"
grep -q "not yet due" "$T/out" && ok "renew waits until a third of the lifetime is left" ||
	not_ok "renew waits until a third of the lifetime is left"
check "renew --force renews over mTLS" "$agent" renew --state "$T/agent" --identity-source "$T/m1" --force
new=$(openssl x509 -in "$T/agent/cert.pem" -noout -serial)
[ "$old" != "$new" ] && ok "renewal installed a new certificate" || not_ok "renewal installed a new certificate"
check "renewed agent still completes mTLS" "$pair" --server "$T/broker" \
	--server-identity-source "$T/m2" --client "$T/agent" --client-identity-source "$T/m1"

# Revocation: the serial is in the served CRL, and a CRL-checking peer refuses it.
serial=$(openssl x509 -in "$T/connector/cert.pem" -noout -serial | cut -d= -f2)
"$watch" --state "$T/broker" --identity-source "$T/m2" --count 2 >"$T/watch" 2>"$T/watch.err" &
watch_pid=$!
wait_lines() { # wait_lines FILE N: poll until FILE has N lines (10 s at most)
	for _ in $(seq 200); do
		[ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
		sleep 0.05
	done
	return 1
}
wait_lines "$T/watch" 1 && ok "a broker subscribes to the CRL over mTLS" ||
	{ not_ok "a broker subscribes to the CRL over mTLS"; sed 's/^/# /' "$T/watch.err"; }
check "mtunctl revoke connector/conn-1" "$ctl" revoke --tenant acme connector/conn-1
if wait_lines "$T/watch" 2 && sed -n 2p "$T/watch" | grep -qi "revoked=.*$serial"; then
	ok "the revocation is pushed to the subscribed broker"
else
	not_ok "the revocation is pushed to the subscribed broker"
	sed 's/^/# /' "$T/watch" "$T/watch.err"
fi
wait "$watch_pid"
watch_pid=
check "mtunctl crl serves the tenant's CRL" "$ctl" crl --tenant acme --out "$T/crl.pem"
openssl crl -in "$T/crl.pem" -noout -text 2>/dev/null | grep -qi "Serial Number: *$serial" &&
	ok "the revoked serial is in the served CRL" || not_ok "the revoked serial is in the served CRL"
check "the CRL verifies under the tenant's issuing CA" \
	openssl crl -in "$T/crl.pem" -noout -CAfile "$T/connector/cert.pem" -verify
refused "a revoked connector fails mTLS with a CRL-checking broker" "handshake=failed" \
	"$pair" --server "$T/broker" --server-identity-source "$T/m2" --client "$T/connector" \
	--client-identity-source "$T/m1" --crl "$T/crl.pem"
check "a valid agent passes the same CRL check" "$pair" --server "$T/broker" \
	--server-identity-source "$T/m2" --client "$T/agent" --client-identity-source "$T/m1" \
	--crl "$T/crl.pem"
refused "a revoked connector cannot renew" "client certificate is revoked" \
	"$connector" renew --state "$T/connector" --identity-source "$T/m1" --force

# Custom and external CAs: components chain to the tenant's own root.
tok=$(token --tenant custom --role connector)
check "enroll under the imported CA" "$connector" enroll --ca "$addr" --ca-fingerprint "$pin" \
	--token "$tok" --id c1 --state "$T/custom-conn" --identity-source "$T/m1"
check "its chain verifies to the tenant's own root" openssl verify -CAfile "$T/own/root.pem" \
	-untrusted "$T/custom-conn/cert.pem" "$T/custom-conn/cert.pem"
tok=$(token --tenant ext --role broker)
check "enroll under the externally signed CA" "$broker" enroll --ca "$addr" --ca-fingerprint "$pin" \
	--token "$tok" --id b1 --state "$T/ext-broker" --identity-source "$T/m1"
check "its chain verifies to the tenant's own root" openssl verify -CAfile "$T/own/root.pem" \
	-untrusted "$T/ext-broker/cert.pem" "$T/ext-broker/cert.pem"
if cmp -s "$T/ext-broker/ca.pem" "$T/own/root.pem"; then ok "the CA hands out the tenant's own root"; else
	not_ok "the CA hands out the tenant's own root"; fi

# Bad input over the wire: garbage instead of a request gets a clear answer, no crash.
head -c 3000 /dev/urandom | timeout 10 openssl s_client -quiet -connect "$addr" >/dev/null 2>&1
kill -0 "$ca_pid" && ok "the CA survives a garbage request" || not_ok "the CA survives a garbage request"

# Audit: every kind of event is a row in the store and a log line.
python3 - "$T/ca/ca.db" >"$T/audit" <<'PY'
import sqlite3, sys
for ev, n in sqlite3.connect(sys.argv[1]).execute("SELECT event, count(*) FROM audit GROUP BY event"):
    print(ev, n)
PY
for ev in token.create enroll.ok enroll.fail renew.ok renew.fail revoke; do
	if grep -q "^$ev [1-9]" "$T/audit" && grep -q "event=$ev " "$T/ca.log"; then
		ok "audit: $ev is a store row and a log line"
	else
		not_ok "audit: $ev is a store row and a log line"
		sed 's/^/# /' "$T/audit"
	fi
done

# Tokens are stored as hashes only.
if grep -rqF "${tok_broker##*.}" "$T/ca" "$T/ca.log"; then not_ok "no token secret in the store or log"; else
	ok "no token secret in the store or log"; fi

# No unencrypted private key in anything mtun wrote (the scanner must see a plain key).
if openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -outform DER 2>/dev/null |
	python3 "$scan" - >/dev/null; then
	not_ok "the key scanner detects a plain DER key"
else
	ok "the key scanner detects a plain DER key"
fi
kill "$ca_pid"
wait "$ca_pid"
rc=$?
ca_pid=
if [ $rc -eq 0 ] && ! grep -q "Sanitizer\|runtime error:" "$T/ca.log" &&
	! kill -0 "$signer_pid" 2>/dev/null; then
	ok "mtun-ca and its signer shut down cleanly on SIGTERM"
else
	not_ok "mtun-ca and its signer shut down cleanly on SIGTERM (status $rc)"
	grep -A5 "Sanitizer\|runtime error:" "$T/ca.log" | sed 's/^/# /'
fi
# Everything under $T: the CA's store, logs, CSR and CRL files, every component's state
# (the tenant's own CA keys in $T/own are passphrase-encrypted PKCS#8, which is allowed).
check "no unencrypted private key in any file the CA and the components wrote" \
	python3 "$scan" "$T"

echo "1..$n"
[ $failed -eq 0 ]
