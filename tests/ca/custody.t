#!/usr/bin/env bash
# Inspection key custody end to end on loopback: mtun-ca refuses a private wrapping key;
# csr -> signed by the tenant's (test) root -> import -> active; inspection nodes ask over
# mTLS and unwrap; a public node is refused a private-only tenant's key (audited); backups,
# then rotation deletes the old key from the store and every backup (byte scans) and puts
# the old intermediate's serial into the tenant's CRL; revocation lists the new one there
# too and deletes its key, and says that a root mtun-ca does not hold must list it itself;
# with a root mtun-ca does hold (tenant init), `inspection sign` has it sign the CSR and
# revocation puts the intermediate into the root's authority CRL, which `openssl verify
# -crl_check_all` applies; no file mtun-ca wrote holds an unencrypted private key. TAP.
#
# Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
ca=$build/ca/mtun-ca
ctl=$build/tools/mtunctl
broker=$build/broker/mtun-broker
ik=$build/broker/mtun-ca-inspkey
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

for b in "$ca" "$ctl" "$broker" "$ik"; do
	if [ ! -x "$b" ]; then
		echo "1..0 # SKIP $b not built (set MTUN_BUILD)"
		exit 0
	fi
done
command -v openssl >/dev/null || { echo "1..0 # SKIP openssl CLI missing"; exit 0; }
command -v python3 >/dev/null || { echo "1..0 # SKIP python3 missing"; exit 0; }

T=$(mktemp -d /tmp/mtun-custody-test.XXXXXX)
ca_pid=
cleanup() {
	[ -n "$ca_pid" ] && kill "$ca_pid" 2>/dev/null && wait "$ca_pid" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

kek="test-kek-$(openssl rand -hex 24)"
mtun_ca() { "$ca" "$@" --state "$T/ca" --kek-fd 3 3<<<"$kek"; }

# The inspection nodes' wrapping key pair: made by the operator, never by mtun. mtun-ca gets
# the public half only; nodes get the private half through a file descriptor.
mkdir -p "$T/nodes" "$T/root" "$T/backups" "$T/m1"
openssl genpkey -algorithm X25519 -out "$T/nodes/wrap.key" 2>/dev/null
openssl pkey -in "$T/nodes/wrap.key" -pubout -out "$T/wrap.pub" 2>/dev/null
openssl rand -hex 16 >"$T/m1/machine-id"
inspkey() { "$ik" --wrap-key-fd 4 --identity-source "$T/m1" "$@" 4<"$T/nodes/wrap.key"; }

check "init tenant ops (the inspectors' tenant)" mtun_ca init --tenant ops
pin=$(sed -n 's/^ca-fingerprint=//p' "$T/out")
check "init tenant acme" mtun_ca init --tenant acme
check "init tenant bank" mtun_ca init --tenant bank
check "init tenant shop (its root made and held by mtun-ca)" mtun_ca init --tenant shop
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/ext.key" \
	-subj "/O=ext/CN=Ext CA" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$T/ext.pem" 2>/dev/null
check "import tenant ext (its own CA: mtun-ca holds no root key)" \
	mtun_ca init --tenant ext --import-ca "$T/ext.pem" "$T/ext.key"

refused "mtun-ca refuses a wrapping key file that holds the private key" "holds a private key" \
	timeout 10 "$ca" serve --state "$T/ca" --kek-fd 3 --listen 127.0.0.1:0 \
	--admin-socket "$T/admin.sock" --wrap-key "$T/nodes/wrap.key" 3<<<"$kek"

"$ca" serve --state "$T/ca" --kek-fd 3 --listen 127.0.0.1:0 --admin-socket "$T/admin.sock" \
	--wrap-key "$T/wrap.pub" 3<<<"$kek" 2>"$T/ca.log" &
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
addr=127.0.0.1:$port
export MTUN_CA_ADMIN=$T/admin.sock

for node in edge-1 bank-1; do
	tok=$("$ctl" token create --tenant ops --role inspector)
	check "inspector $node enrolls" "$broker" enroll --ca "$addr" --ca-fingerprint "$pin" \
		--token "$tok" --inspector --id "$node" --state "$T/$node" --identity-source "$T/m1"
done

# A tenant's own root (here a test one) signs the inspection CA's CSR.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/root/root.key" \
	-subj "/O=Test Corp/CN=Test Root" -days 30 -addext "basicConstraints=critical,CA:TRUE" \
	-addext "keyUsage=critical,keyCertSign,cRLSign" -out "$T/root/root.pem" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$T/root/ca.ext"
printf 'basicConstraints=critical,CA:FALSE\n' >"$T/root/leaf.ext"
sign() { # sign CSR OUT [EXTFILE]
	openssl x509 -req -in "$1" -CA "$T/root/root.pem" -CAkey "$T/root/root.key" \
		-CAcreateserial -days 20 -extfile "${3:-$T/root/ca.ext}" -out "$2" 2>/dev/null
}

check "inspection csr (acme, P-256)" "$ctl" inspection csr --tenant acme --expires 2030-01-01
cp "$T/out" "$T/acme.csr"
grep -q "BEGIN CERTIFICATE REQUEST" "$T/acme.csr" && ok "csr prints the CSR" || not_ok "csr prints the CSR"
check "inspection csr (bank, RSA 2048)" "$ctl" inspection csr --tenant bank --key rsa2048
cp "$T/out" "$T/bank.csr"
openssl req -in "$T/bank.csr" -noout -text 2>/dev/null | grep -q "Public-Key: (2048 bit)" &&
	ok "--key rsa2048 makes an RSA 2048 key" || not_ok "--key rsa2048 makes an RSA 2048 key"
sed -i '/^key id/d' "$T/acme.csr" "$T/bank.csr"
sign "$T/acme.csr" "$T/acme.pem"
check "import finishes acme (certificate, then the root)" \
	"$ctl" inspection import --tenant acme "$T/acme.pem" "$T/root/root.pem"
grep -q "active" "$T/out" && ok "import says the key is active" || not_ok "import says the key is active"
refused "csr on a tenant with an active key is refused" "use rotate" \
	"$ctl" inspection csr --tenant acme
sign "$T/bank.csr" "$T/bank-leaf.pem" "$T/root/leaf.ext"
refused "import refuses a certificate that is not a CA" "CA:TRUE" \
	"$ctl" inspection import --tenant bank "$T/bank-leaf.pem" "$T/root/root.pem"
refused "import refuses a certificate for another key" "not the pending key" \
	"$ctl" inspection import --tenant bank "$T/acme.pem" "$T/root/root.pem"
sign "$T/bank.csr" "$T/bank.pem"
check "import finishes bank" "$ctl" inspection import --tenant bank "$T/bank.pem" "$T/root/root.pem"
check "inspection status" "$ctl" inspection status
grep -q "^acme [0-9a-f]\{32\} active" "$T/out" && grep -q "^bank [0-9a-f]\{32\} active" "$T/out" &&
	ok "status: both tenants' keys are active" || { not_ok "status: both active"; sed 's/^/# /' "$T/out"; }

check "bank is private-only" "$ctl" inspection tenant --tenant bank private-only
check "mark ops/edge-1 public" "$ctl" inspection mark ops/edge-1 public
check "mark ops/bank-1 private for bank" "$ctl" inspection mark ops/bank-1 private:bank
refused "a malformed mark is refused" "public or private:TENANT" \
	"$ctl" inspection mark ops/edge-1 private

check "public node gets a public tenant's key and unwraps it" inspkey --state "$T/edge-1" --tenant acme \
	--save-envelope "$T/old.env" --print-secret
old_key=$(sed -n 's/^granted key=\([0-9a-f]*\) .*/\1/p' "$T/out")
grep -q "leaf_verifies=yes" "$T/out" && ok "a leaf signed with the unwrapped key verifies up to the root" ||
	not_ok "a leaf signed with the unwrapped key verifies up to the root"
old_secret=$(sed -n 's/^secret_hex=//p' "$T/out")
[ ${#old_key} -eq 32 ] && [ ${#old_secret} -eq 64 ] && ok "the node holds key $old_key" ||
	not_ok "the node holds the key ($old_key)"
refused "public node is refused a private-only tenant's key" "private-only" \
	inspkey --state "$T/edge-1" --tenant bank
check "private node for bank gets bank's key" inspkey --state "$T/bank-1" --tenant bank
refused "private node for bank is refused acme's key" "private to another tenant" \
	inspkey --state "$T/bank-1" --tenant acme
refused "the wrong wrapping key cannot open the envelope" "unwrap failed" \
	bash -c "openssl genpkey -algorithm X25519 -out '$T/other.key' 2>/dev/null; '$ik' --state '$T/edge-1' --identity-source '$T/m1' --tenant acme --wrap-key-fd 4 4<'$T/other.key'"
grep -q 'event=inspection.key_handout node=ops/edge-1 tenant=bank .*granted=0 reason="the tenant is private-only' "$T/ca.log" &&
	ok "the refusal is logged" || not_ok "the refusal is logged"
audit=$(python3 -c '
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(" ".join("%s:%s:%d" % r for r in db.execute(
    "SELECT node, tenant, granted FROM insp_handout ORDER BY rowid")))' "$T/ca/ca.db")
[ "$audit" = "ops/edge-1:acme:1 ops/edge-1:bank:0 ops/bank-1:bank:1 ops/bank-1:acme:0 ops/edge-1:acme:1" ] &&
	ok "every hand-out, granted or refused, is an audit row" || not_ok "hand-out audit rows ($audit)"

check "mtun-ca backup (1)" "$ca" backup "$T/backups" --state "$T/ca"
sleep 1 # backups are named by the second
check "mtun-ca backup (2)" "$ca" backup "$T/backups" --state "$T/ca"
[ "$(ls "$T/backups" | wc -l)" -eq 2 ] && ok "two backups written" || not_ok "two backups written"
has_bytes() { # has_bytes HEX|@FILE PATH...: 0 if any file holds the bytes
	python3 - "$@" <<'PY'
import os, sys
try:
    needle = open(sys.argv[1][1:], "rb").read() if sys.argv[1][0] == "@" else bytes.fromhex(sys.argv[1])
except (OSError, ValueError, IndexError):
    sys.exit(2)
if len(needle) < 16:
    sys.exit(2)
found = False
for p in sys.argv[2:]:
    for root, _, files in (os.walk(p) if os.path.isdir(p) else [(os.path.dirname(p), [], [os.path.basename(p)])]):
        for f in files:
            full = os.path.join(root, f)
            if needle in open(full, "rb").read():
                print("found in", full)
                found = True
sys.exit(0 if found else 1)
PY
}
absent() { # absent "description" HEX|@FILE PATH...: the bytes are in none of the files
	local what=$1 rc
	shift
	has_bytes "$@" >"$T/out" 2>&1
	rc=$?
	if [ $rc -eq 1 ]; then ok "$what"; else
		not_ok "$what (rc $rc)"
		sed 's/^/# /' "$T/out"
	fi
}
has_bytes "@$T/old.env" "$T/backups" >/dev/null && ok "the backups hold the old (wrapped) key" ||
	not_ok "the backups hold the old (wrapped) key"

check "inspection rotate (acme)" "$ctl" inspection rotate --tenant acme
sed '/^key id/d' "$T/out" >"$T/acme2.csr"
new_key=$(sed -n 's/^key id //p' "$T/out")
check "the old key still serves until the new certificate is in" inspkey --state "$T/edge-1" --tenant acme
grep -q "key=$old_key" "$T/out" && ok "... it is the old key" || not_ok "... it is the old key"
sign "$T/acme2.csr" "$T/acme2.pem"
check "import the rotated certificate" "$ctl" inspection import --tenant acme "$T/acme2.pem" "$T/root/root.pem"
cp "$T/out" "$T/import.out"
grep -q "old key $old_key deleted from the store and from 2 backup(s)" "$T/out" &&
	ok "import says the old key is deleted from the store and 2 backups" ||
	{ not_ok "import says what it deleted"; sed 's/^/# /' "$T/out"; }
check "the node now gets the new key" inspkey --state "$T/edge-1" --tenant acme \
	--save-envelope "$T/new.env"
grep -q "granted key=$new_key .*leaf_verifies=yes" "$T/out" && [ "$new_key" != "$old_key" ] &&
	ok "... the new intermediate ($new_key): a leaf it signs verifies up to the root" ||
	not_ok "... the new intermediate ($new_key)"
check "status shows only the new key for acme" "$ctl" inspection status --tenant acme
[ "$(grep -c . "$T/out")" -eq 1 ] && grep -q "$new_key active" "$T/out" && ! grep -q "$old_key" "$T/out" &&
	ok "... one key, active" || { not_ok "... one key, active"; sed 's/^/# /' "$T/out"; }
left=$(python3 -c '
import sqlite3, sys
n = 0
for p in sys.argv[2:]:
    n += sqlite3.connect(p).execute("SELECT count(*) FROM insp_key WHERE key_id = ?", (sys.argv[1],)).fetchone()[0]
print(n)' "$old_key" "$T/ca/ca.db" "$T"/backups/*.db)
[ "$left" = 0 ] && ok "no row of the old key in the store or any backup" || not_ok "old key rows left: $left"
absent "the old wrapped key's bytes are gone from every file (scan)" "@$T/old.env" "$T/ca" "$T/backups"
absent "the old private key's bytes are in no file (scan)" "$old_secret" "$T/ca" "$T/backups"

# Revocation, through the tenant's CRL: rotation revoked the old intermediate, and
# `inspection revoke` revokes the current one and deletes its key.
serial_of() { openssl x509 -in "$1" -noout -serial | sed 's/^serial=//'; }
crl_lists() { # crl_lists SERIAL: the tenant's current CRL (openssl crl -text) lists it
	"$ctl" crl --tenant acme --out "$T/acme.crl" >"$T/out" 2>&1 &&
		openssl crl -in "$T/acme.crl" -noout -text >"$T/crl.txt" 2>&1 &&
		grep -q "Serial Number: $1\$" "$T/crl.txt"
}
old_serial=$(serial_of "$T/acme.pem")
new_serial=$(serial_of "$T/acme2.pem")
grep -q "old intermediate $(tr 'A-F' 'a-f' <<<"$old_serial") revoked" "$T/import.out" &&
	ok "the rotating import says the old intermediate is revoked" ||
	{ not_ok "the rotating import says the old intermediate is revoked"; sed 's/^/# /' "$T/import.out"; }
grep -q "the root's owner must list serial $(tr 'A-F' 'a-f' <<<"$old_serial") in the root's CRL" "$T/import.out" &&
	ok "... and, its root being a test root outside mtun-ca, that the root's owner must list it" ||
	{ not_ok "the import names the root owner's part"; sed 's/^/# /' "$T/import.out"; }
crl_lists "$old_serial" && ok "after rotation the tenant's CRL lists the old intermediate ($old_serial)" ||
	{ not_ok "after rotation the CRL lists the old intermediate ($old_serial)"; sed 's/^/# /' "$T/crl.txt"; }
crl_lists "$new_serial" && not_ok "the CRL does not list the new intermediate yet" ||
	ok "the CRL does not list the new intermediate yet"
check "inspection revoke (acme)" "$ctl" inspection revoke --tenant acme
grep -q "intermediate $(tr 'A-F' 'a-f' <<<"$new_serial") (key $new_key) revoked" "$T/out" &&
	ok "revoke names the intermediate and its key" || { not_ok "revoke names the intermediate"; sed 's/^/# /' "$T/out"; }
grep -q "root is not held by mtun-ca: the root's owner must list serial $(tr 'A-F' 'a-f' <<<"$new_serial")" "$T/out" &&
	ok "... and says plainly that the (external) root's owner must list its serial" ||
	{ not_ok "revoke names the root owner's part"; sed 's/^/# /' "$T/out"; }
crl_lists "$new_serial" && crl_lists "$old_serial" &&
	ok "after revoke the tenant's CRL lists both intermediates (openssl crl -text)" ||
	{ not_ok "after revoke the CRL lists both intermediates"; sed 's/^/# /' "$T/crl.txt"; }
openssl crl -in "$T/acme.crl" -noout -text 2>/dev/null | grep -q "Issuer: .*acme" &&
	ok "the CRL is the tenant's (issuer names acme)" || not_ok "the CRL is the tenant's"
grep -q "event=inspection.revoke tenant=acme" "$T/ca.log" && ok "the revocation is logged" ||
	not_ok "the revocation is logged"
revoked_audit=$(python3 -c '
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
print(db.execute("SELECT count(*) FROM audit WHERE event = ? AND tenant = ?", ("inspection.revoke", "acme")).fetchone()[0])' "$T/ca/ca.db")
[ "$revoked_audit" = 2 ] && ok "both revocations are audit rows" || not_ok "revocation audit rows: $revoked_audit"
refused "a node gets no key for acme after revoke" "no active" \
	inspkey --state "$T/edge-1" --tenant acme
refused "revoking again finds nothing to revoke" "no inspection intermediate to revoke" \
	"$ctl" inspection revoke --tenant acme
absent "the revoked key's wrapped bytes are gone from every file (scan)" "@$T/new.env" "$T/ca" "$T/backups"

# The authority revocation list. shop's root was made by mtun-ca (init) and is held sealed;
# `inspection sign` has it sign shop's inspection CSR in the signer process. Revoking the
# intermediate then lists it in the root's own CRL: the one RFC 5280 path validation applies
# to a certificate the root issued (the tenant's CRL is the issuing CA's).
check "inspection csr (shop)" "$ctl" inspection csr --tenant shop
check "inspection sign: shop's root in mtun-ca signs the CSR; the key is active" \
	"$ctl" inspection sign --tenant shop
cp "$T/out" "$T/sign.out"
awk '/BEGIN CERT/{n++} n==1{print > "'"$T"'/shop-int.pem"} n==2{print > "'"$T"'/shop-root.pem"} /END CERT/{if(n==2)n=3}' "$T/sign.out"
grep -q "key [0-9a-f]\{32\} active" "$T/sign.out" &&
	openssl x509 -in "$T/shop-root.pem" -noout -subject 2>/dev/null | grep -q "shop" &&
	openssl x509 -in "$T/shop-int.pem" -noout -ext basicConstraints 2>/dev/null | grep -q "CA:TRUE, pathlen:0" &&
	ok "sign prints the intermediate (CA:TRUE, pathlen:0) and shop's root" ||
	{ not_ok "sign prints the intermediate and the root"; sed 's/^/# /' "$T/sign.out"; }
refused "sign with no pending CSR is refused" "no pending inspection key" \
	"$ctl" inspection sign --tenant shop
refused "sign for a tenant mtun-ca does not know is refused" "unknown tenant" \
	"$ctl" inspection sign --tenant nosuch
check "a node gets shop's key" inspkey --state "$T/edge-1" --tenant shop
grep -q "leaf_verifies=yes" "$T/out" && ok "... a leaf it signs verifies up to shop's root" ||
	{ not_ok "... a leaf it signs verifies up to shop's root"; sed 's/^/# /' "$T/out"; }
crls() { # the tenant's CRL and its authority CRL, as mtunctl prints them
	"$ctl" crl --tenant shop --out "$T/shop.crl" >"$T/crl.out" 2>&1 &&
		"$ctl" crl --tenant shop --authority --out "$T/shop.arl" >>"$T/crl.out" 2>&1
}
verify_int() { # openssl's RFC 5280 check of shop's intermediate, every CRL on the path
	openssl verify -crl_check_all -CAfile "$T/shop-root.pem" -CRLfile "$T/shop.crl" \
		-CRLfile "$T/shop.arl" "$T/shop-int.pem"
}
check "mtunctl crl --authority prints the authority CRL" crls
[ "$(openssl crl -in "$T/shop.arl" -noout -issuer 2>/dev/null | sed 's/^issuer=//')" = \
	"$(openssl x509 -in "$T/shop-root.pem" -noout -subject 2>/dev/null | sed 's/^subject=//')" ] &&
	openssl crl -in "$T/shop.arl" -noout -verify -CAfile "$T/shop-root.pem" 2>&1 | grep -q "verify OK" &&
	ok "the authority CRL is issued and signed by shop's root" ||
	{ not_ok "the authority CRL is the root's"; openssl crl -in "$T/shop.arl" -noout -text 2>&1 | sed 's/^/# /'; }
check "before revoke: openssl verify -crl_check_all (root, tenant CRL, authority CRL) accepts the intermediate" verify_int
shop_serial=$(serial_of "$T/shop-int.pem")
check "inspection revoke (shop)" "$ctl" inspection revoke --tenant shop
grep -q "the tenant's authority CRL, signed by its root, lists it" "$T/out" &&
	ok "revoke says the root's authority CRL lists the intermediate" ||
	{ not_ok "revoke names the authority CRL"; sed 's/^/# /' "$T/out"; }
grep -q "event=inspection.arl tenant=shop" "$T/ca.log" && ok "the authority CRL is rebuilt at once (logged)" ||
	not_ok "the authority CRL is rebuilt at once"
check "the new CRLs" crls
openssl crl -in "$T/shop.arl" -noout -text 2>/dev/null | grep -q "Serial Number: $shop_serial\$" &&
	ok "the authority CRL lists the intermediate ($shop_serial)" ||
	{ not_ok "the authority CRL lists the intermediate"; openssl crl -in "$T/shop.arl" -noout -text 2>&1 | sed 's/^/# /'; }
refused "after revoke: openssl verify -crl_check_all says the intermediate is revoked" "certificate revoked" \
	verify_int
refused "the authority CRL of a tenant whose root mtun-ca does not hold is refused, saying why" \
	"does not hold this tenant's root" "$ctl" crl --tenant ext --authority
refused "sign for a tenant whose root mtun-ca does not hold is refused, saying why" \
	"does not hold this tenant's root" "$ctl" inspection sign --tenant ext
check "no file mtun-ca wrote holds an unencrypted private key" python3 "$scan" "$T/ca" "$T/backups"
grep -q "Sanitizer\|runtime error:" "$T/ca.log" && not_ok "mtun-ca ran sanitizer-clean" ||
	ok "mtun-ca ran sanitizer-clean"

echo "1..$n"
[ "$failed" -eq 0 ]
