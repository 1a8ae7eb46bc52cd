#!/usr/bin/env bash
# The admin API end to end on loopback: a real mtun-ca issues the server's (broker) and the
# admins' certificates, mtun-admin serves the API over mutual TLS, and every endpoint is
# driven through mtunctl: CRUD of every kind, each bad-input class, version conflicts,
# references, batch and import all-or-nothing, the policy test, and who is refused.
# Prints TAP.
#
#   mtunctl --HTTPS, admin cert--> mtun-admin serve (127.0.0.1:random) --> sqlite file
#      \--enroll--> mtun-ca (127.0.0.1:random) <--enroll-- mtun-admin enroll (broker id)
#
# Environment: MTUN_BUILD (default: build) names the build directory.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
build=${MTUN_BUILD:-$top/build}
case "$build" in /*) ;; *) build=$top/$build ;; esac
ca=$build/ca/mtun-ca
ctl=$build/tools/mtunctl
admin=$build/admin/mtun-admin

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
# check_out "description" "text the output must contain" command...
check_out() {
	local what=$1 want=$2
	shift 2
	if "$@" >"$T/out" 2>&1 && sanitizer_clean && grep -qF -- "$want" "$T/out"; then
		ok "$what"
	else
		not_ok "$what (no '$want')"
		sed 's/^/# /' "$T/out"
	fi
}
refused() { # refused "description" "expected message" command...
	local what=$1 msg=$2
	shift 2
	if "$@" >"$T/out" 2>&1; then
		not_ok "$what (accepted)"
		sed 's/^/# /' "$T/out"
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

for b in "$ca" "$ctl" "$admin"; do
	if [ ! -x "$b" ]; then
		echo "1..0 # SKIP $b not built (set MTUN_BUILD)"
		exit 0
	fi
done
command -v openssl >/dev/null || { echo "1..0 # SKIP openssl CLI missing"; exit 0; }

T=$(mktemp -d /tmp/mtun-admin-api.XXXXXX)
ca_pid=
api_pid=
cleanup() {
	[ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
	[ -n "$ca_pid" ] && kill "$ca_pid" 2>/dev/null && wait "$ca_pid" 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT

kek="test-kek-$(openssl rand -hex 24)"
mtun_ca() { "$ca" "$@" --state "$T/ca" --kek-fd 3 3<<<"$kek"; }
mkdir -p "$T/m"
openssl rand -hex 16 >"$T/m/machine-id"
export MTUN_IDENTITY_SOURCE=$T/m

# wait_port LOG EVENT PID: the port the process logged as ready, polling its log.
wait_port() {
	local p=''
	for _ in $(seq 200); do
		p=$(sed -n "s/.*event=$2 .*port=\([0-9]*\).*/\1/p" "$1")
		[ -n "$p" ] && ss -ltn "sport = :$p" | grep -q LISTEN && break
		p=
		kill -0 "$3" 2>/dev/null || break
		sleep 0.05
	done
	echo "$p"
}

check "mtun-ca init tenant acme" mtun_ca init --tenant acme
pin=$(sed -n 's/^ca-fingerprint=//p' "$T/out")
check "mtun-ca init tenant beta" mtun_ca init --tenant beta
"$ca" serve --state "$T/ca" --kek-fd 3 --listen 127.0.0.1:0 --admin-socket "$T/ca.sock" \
	3<<<"$kek" 2>"$T/ca.log" &
ca_pid=$!
caport=$(wait_port "$T/ca.log" ca.ready "$ca_pid")
if [ -z "$caport" ]; then
	not_ok "mtun-ca is ready"
	sed 's/^/# /' "$T/ca.log"
	echo "1..$n"
	exit 1
fi
export MTUN_CA_ADMIN=$T/ca.sock
enroll() { # enroll PROGRAM TENANT ROLE ID DIR
	local tok
	tok=$("$ctl" token create --tenant "$2" --role "$3") || return 1
	"$1" enroll --ca "127.0.0.1:$caport" --ca-fingerprint "$pin" --token "$tok" --id "$4" \
		--state "$5"
}
check "the API server enrolls as a broker (mtun-admin enroll)" \
	enroll "$admin" acme broker admin-api "$T/srv"
check "an admin enrolls (mtunctl enroll)" enroll "$ctl" acme admin ops-1 "$T/adm"
check "a second broker identity enrolls (not an admin)" enroll "$admin" acme broker edge-2 "$T/brk"
tokb=$("$ctl" token create --tenant beta --role admin)
check "an admin of tenant beta enrolls" "$ctl" enroll --ca "127.0.0.1:$caport" \
	--ca-fingerprint "$pin" --token "$tokb" --id ops-b --state "$T/admb"

check "a second admin enrolls (to be revoked)" enroll "$ctl" acme admin ops-2 "$T/adm2"

"$admin" serve --db "$T/admin.db" --listen 127.0.0.1:0 --state "$T/srv" --crl-subscribe \
	2>"$T/api.log" &
api_pid=$!
port=$(wait_port "$T/api.log" admin.ready "$api_pid")
if [ -z "$port" ]; then
	not_ok "mtun-admin serve is ready"
	sed 's/^/# /' "$T/api.log"
	echo "1..$n"
	exit 1
fi
ok "mtun-admin serve is ready on port $port"
export MTUN_ADMIN_SERVER=127.0.0.1:$port MTUN_ADMIN_STATE=$T/adm
m() { "$ctl" "$@"; }

# Who may talk to it.
if command -v curl >/dev/null; then
	code=$(curl -sk -o "$T/out" -w '%{http_code}' "https://127.0.0.1:$port/v1/users")
	[ "$code" = 401 ] && grep -q "client certificate is required" "$T/out" &&
		ok "no client certificate: 401" || not_ok "no client certificate: 401 ($code)"
fi
refused "a broker's certificate is not an admin's: 403" "HTTP 403: role broker is not admin" \
	m user list --state "$T/brk"
refused "an admin of another tenant (another root CA) is refused" "failed" \
	m user list --state "$T/admb"

# Revocation: the server follows the tenant's CRL (pushed by mtun-ca).
for _ in $(seq 100); do grep -q "event=admin.crl" "$T/api.log" && break; sleep 0.05; done
grep -q "event=admin.crl tenant=acme" "$T/api.log" && ok "the server has the tenant's CRL" ||
	not_ok "the server has the tenant's CRL"
check "the second admin is served" m user list --state "$T/adm2"
check "mtunctl revoke admin/ops-2" "$ctl" revoke --tenant acme admin/ops-2
for _ in $(seq 100); do
	[ "$(grep -c "event=admin.crl tenant=acme" "$T/api.log")" -ge 2 ] && break
	sleep 0.05
done
refused "a revoked admin is refused (403)" "HTTP 403: client certificate not trusted: certificate revoked" \
	m user list --state "$T/adm2"
check "the other admin is still served" m user list

# Every kind: create, get, list, update, delete.
check_out "connector-group create" "version            1" m connector-group create paris \
	location:='{"region":"eu-west","lat":48.85,"lon":2.35}' description=Paris
check "connector-group create (second)" m connector-group create tokyo \
	location:='{"region":"ap","lat":35.68,"lon":139.69}'
check_out "server-group create" "paris" m server-group create corp-servers \
	connector_groups+=paris
check "segment-group create" m segment-group create internal description="Internal apps"
check "group create" m group create eng
check "user create alice (group eng)" m user create alice groups+=eng display_name="Alice A"
check "user create bob" m user create bob
check_out "segment create *.corp.example tcp/22" "*.corp.example" m segment create corp \
	hosts+='*.corp.example' ports+=tcp/22 server_groups+=corp-servers segment_group=internal \
	double_encrypt:=true health_check=on-access
check "segment create an IP range" m segment create lab hosts+=10.20.0.0/16 \
	hosts+=fd00:20::/64 ports+=tcp/1-1024 ports+=udp/53 server_groups+=corp-servers
check "timeout create" m timeout create short max_age_s:=5 idle_s:=2
check "tenant create (default timeout)" m tenant create acme timeout=short
check "posture create (file with SHA-256)" m posture create managed kernel_min=5.10 \
	files:='[{"path":"/etc/corp.conf","sha256":"'"$(printf x | sha256sum | cut -c1-64)"'"}]'
check "broker create" m broker create edge-paris address=edge.example:443 \
	location:='{"lat":48.86,"lon":2.34}'
check_out "rule create (allow eng to corp)" "eng-ssh" m rule create eng-ssh priority:=100 \
	action=allow groups+=eng segments+=corp
check "rule create (posture-gated)" m rule create managed-lab priority:=50 action=allow \
	users+=alice segments+=lab postures+=managed
check "rule create (time window)" m rule create night priority:=10 action=deny \
	segment_groups+=internal \
	window:='{"days":["sun","mon","tue","wed","thu","fri","sat"],"start":"23:00","end":"23:30"}'

for k in tenant user group segment segment-group server-group connector-group broker posture \
	rule timeout; do
	check "$k list (table)" m "$k" list
done
check_out "list shows a table header" "NAME  VERSION  HOSTS" m segment list
check_out "rules list in evaluation order" '"night"' m rule list -o json
grep -n '"name"' "$T/out" | head -3 | tr '\n' ' ' | grep -q 'night.*managed-lab.*eng-ssh' &&
	ok "rules come by priority" || not_ok "rules come by priority"
check_out "get -o json" '"double_encrypt":true' sh -c "$ctl segment get corp -o json | tr -d ' \n'"
check_out "update changes a field and the version" "version            2" \
	m user update bob display_name="Bob B"
check_out "update --version with the current version" "version            3" \
	m user update bob --version 2 email=bob@example.com
refused "update with a stale version: 409" "HTTP 409: user 'bob' is at version 3, not 2" \
	m user update bob --version 2 email=x@example.com
refused "get a missing object: 404" "HTTP 404: no segment named 'nope'" m segment get nope
refused "update a missing object: 404" "HTTP 404" m group update nope --version 1 description=x
refused "delete a missing object: 404" "HTTP 404" m group delete nope
refused "create an existing object: 409" "HTTP 409: group 'eng' exists already" m group create eng
refused "delete an object in use: 409" "HTTP 409: segment 'corp' is used by rule 'eng-ssh'" \
	m segment delete corp
refused "delete with a stale version: 409" "is at version 1, not 9" \
	m connector-group delete tokyo --version 9
check "delete with the right version" m connector-group delete tokyo --version 1
refused "deleted means gone" "HTTP 404" m connector-group get tokyo

# docs/admin-api.yaml matches: a path per kind, and every field the API returns is in the
# kind's schema (and the schema forbids others).
if python3 -c 'import yaml' 2>/dev/null; then
	for k in tenant user group segment segment-group server-group connector-group broker \
		posture rule timeout; do
		"$ctl" "$k" list -o json >"$T/list-$k.json" 2>/dev/null || echo "{}" >"$T/list-$k.json"
	done
	if python3 - "$top/docs/admin-api.yaml" "$T" >"$T/out" 2>&1 <<'EOF'
import json, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
bad = []
kinds = ['tenant', 'user', 'group', 'segment', 'segment-group', 'server-group',
         'connector-group', 'broker', 'posture', 'rule', 'timeout']
for k in kinds:
    schema = doc['components']['schemas'][''.join(p.capitalize() for p in k.split('-'))]
    path = '/v1/' + (k + 's')
    if path not in doc['paths'] or path + '/{name}' not in doc['paths']:
        bad.append('no path ' + path)
    if schema.get('additionalProperties') is not False:
        bad.append(k + ': schema allows unknown fields')
    items = json.load(open(sys.argv[2] + '/list-' + k + '.json')).get('items', [])
    if not items:
        bad.append(k + ': nothing listed')
    for o in items:
        for f in o:
            if f not in schema['properties']:
                bad.append(k + ': field ' + f + ' not in the OpenAPI schema')
print('\n'.join(bad))
sys.exit(1 if bad else 0)
EOF
	then ok "docs/admin-api.yaml has every kind and every field the API returns"; else
		not_ok "docs/admin-api.yaml has every kind and every field the API returns"
		sed 's/^/# /' "$T/out"
	fi
fi

# The bad-input classes, each a 400 with a precise message.
refused "invalid CIDR: 400" "HTTP 400: segment 'bad': hosts[0]: invalid CIDR" \
	m segment create bad hosts+=10.0.0.0/33 ports+=tcp/22 server_groups+=corp-servers
refused "CIDR with host bits: 400" "host bits set after the prefix length" \
	m segment create bad hosts+=10.0.0.1/8 ports+=tcp/22 server_groups+=corp-servers
refused "bad wildcard: 400" "hosts[0]: bad wildcard" \
	m segment create bad hosts+='*corp.example' ports+=tcp/22 server_groups+=corp-servers
refused "wildcard inside a name: 400" "bad wildcard" \
	m segment create bad hosts+='a.*.example' ports+=tcp/22 server_groups+=corp-servers
refused "overlapping segments: 400 naming both" "corp" \
	m segment create bad hosts+='*.corp.example' ports+=tcp/20-23 server_groups+=corp-servers
grep -q "bad" "$T/out" && ok "the overlap message names the new segment too" ||
	not_ok "the overlap message names the new segment too"
refused "unknown field: 400" "HTTP 400: segment 'bad': unknown field 'colour'" \
	m segment create bad hosts+=a.example ports+=tcp/22 server_groups+=corp-servers colour=red
refused "wrong type: 400" "hosts: expected a list, got a string" \
	m segment create bad hosts=a.example ports+=tcp/22 server_groups+=corp-servers
refused "wrong type (boolean): 400" "double_encrypt: expected a boolean, got a string" \
	m segment create bad hosts+=a.example ports+=tcp/22 server_groups+=corp-servers \
	double_encrypt=yes
refused "reference to a missing object: 400" "server_groups[0]: no server-group named 'ghost'" \
	m segment create bad hosts+=a.example ports+=tcp/22 server_groups+=ghost
refused "rule naming a missing user: 400" "users[0]: no user named 'carol'" \
	m rule create bad priority:=1 action=allow users+=carol
refused "bad port range: 400" "ports[0]: bad port range" \
	m segment create bad hosts+=a.example ports+=tcp/70000 server_groups+=corp-servers
refused "missing required field: 400" "field 'action' is required" \
	m rule create bad priority:=1
refused "bad enum: 400" "is not one of allow, deny" \
	m rule create bad priority:=1 action=maybe
refused "bad time window: 400" "window.start: a time of day is HH:MM" \
	m rule create bad priority:=1 action=deny window:='{"days":["mon"],"start":"9am","end":"17:00"}'
refused "bad location: 400" "location.lat: must be -90..90" \
	m connector-group create bad location:='{"lat":123,"lon":0}'
refused "bad posture hash: 400" "files[0].sha256: a SHA-256 is 64 lowercase hex digits" \
	m posture create bad files:='[{"path":"/x","sha256":"abc"}]'
refused "another tenant's settings: 400" "you administer tenant 'acme' only" m tenant create beta
printf '{"name":"bad","hosts":["a.example"],' >"$T/trunc.json"
refused "not JSON: 400" "HTTP 400: body is not JSON" m batch "$T/trunc.json"
refused "none of the refused creates left an object" "HTTP 404" m segment get bad

# Batch and import: all or nothing.
cat >"$T/batch-bad.json" <<'EOF'
{"ops": [
 {"op": "create", "kind": "group", "object": {"name": "qa"}},
 {"op": "update", "kind": "user", "name": "bob", "version": 3, "object": {"groups": ["qa"]}},
 {"op": "create", "kind": "segment", "object": {"name": "b2", "hosts": ["10.0.0.0/33"],
  "ports": ["tcp/22"], "server_groups": ["corp-servers"]}}
]}
EOF
refused "a batch with one bad operation: 400 naming it" "ops[2]: segment 'b2': hosts[0]: invalid CIDR" \
	m batch "$T/batch-bad.json"
refused "...and none of it was applied" "HTTP 404: no group named 'qa'" m group get qa
check_out "...bob is unchanged" "version            3" m user get bob
sed 's/10.0.0.0\/33/10.9.0.0\/16/' "$T/batch-bad.json" >"$T/batch.json"
check_out "the corrected batch applies whole" "batch applied" m batch "$T/batch.json"
check_out "...bob is in qa now" "qa" m user get bob
cat >"$T/users.csv" <<'EOF'
name,groups,display_name,email
carol,eng;sales,"Carol, C",carol@example.com
dave,,Dave,
EOF
check_out "user import from CSV (creates missing groups)" '"groups_created":1' \
	m user import "$T/users.csv" -o json
check_out "...imported user with her groups" "eng,sales" m user get carol
printf 'name,groups\nerin,eng\nbad name!,eng\n' >"$T/bad.csv"
refused "a CSV with a bad row: 400 naming it" "users[1]" m user import "$T/bad.csv"
refused "...and erin was not imported" "HTTP 404" m user get erin
printf '{"users":[{"name":"frank","groups":["ops"]}],"groups":[{"name":"ops"}]}' >"$T/users.json"
check "user import from JSON" m user import "$T/users.json"
check_out "...frank is in ops" "ops" m user get frank

# The policy test names the rule.
check_out "policy test: alice reaches *.corp.example:22" "rule:     eng-ssh" \
	m policy test --user alice --app server01.corp.example:22 --time 2026-11-24T12:00:00Z
grep -q "decision: allow" "$T/out" && ok "...and it is an allow" || not_ok "...and it is an allow"
check_out "policy test: bob is refused with the reason" "reason:   no rule allows" \
	m policy test --user bob --app server01.corp.example:22 --time 2026-11-24T12:00:00Z
grep -q "decision: deny" "$T/out" && ok "...and it is a deny" || not_ok "...and it is a deny"
check_out "policy test: the time window rule denies at 23:10" "rule:     night" \
	m policy test --user alice --app server01.corp.example:22 --time 2026-11-24T23:10:00Z
check_out "policy test: posture profile required (absent: deny)" "decision: deny" \
	m policy test --user alice --app 10.20.1.1:22 --time 2026-11-24T12:00:00Z
check_out "policy test: posture profile satisfied (allow)" "rule:     managed-lab" \
	m policy test --user alice --app 10.20.1.1:22 --posture managed --time 2026-11-24T12:00:00Z
check_out "policy test: the timeout policy applies" "max age 5 s, idle 2 s" \
	m policy test --user alice --app server01.corp.example:22 --time 2026-11-24T12:00:00Z
check_out "policy test -o json" '"rule":"eng-ssh"' sh -c "$ctl policy test --user alice \
	--app server01.corp.example:22 --time 1795521600 -o json | tr -d ' \n'"
check_out "policy test: no segment" "no segment matches" \
	m policy test --user alice --app www.example.org:443
refused "policy test without a port: 400" "NAME:PORT" m policy test --user alice --app x.corp.example

# json-c would keep the last of two equal keys: the API refuses them.
printf '{"ops":[{"op":"create","kind":"group","object":{"name":"dupk","description":"a","description":"b"}}]}' >"$T/dup.json"
refused "a duplicate key: 400" "HTTP 400: duplicate key 'description' in object" m batch "$T/dup.json"
refused "nothing of the refused batch was applied" "HTTP 404" m group get dupk
# Live sessions belong to a broker: mtun-admin serve has none to list.
refused "sessions without a broker: 503" "HTTP 503: no broker attached" m sessions
refused "sessions -o json without a broker: 503" "HTTP 503: no broker attached" m sessions -o json
check_out "sessions --help names the columns" "ID USER DEVICE APP PORT CONNECTOR STATE UP DOWN AGE IDLE RULE" m sessions --help
# The compiled snapshot follows every change.
check_out "snapshot: segments and rules compiled" '"segments":3' sh -c "$ctl snapshot -o json | tr -d ' \n'"
grep -q '"rules":3' "$T/out" && ok "snapshot: three rules" || not_ok "snapshot: three rules"
grep -q "event=admin.change .*by=mtun://acme/admin/ops-1" "$T/api.log" &&
	ok "changes are logged with the admin's identity" ||
	not_ok "changes are logged with the admin's identity"
grep -q "event=admin.snapshot tenant=acme" "$T/api.log" &&
	ok "the change callback compiled a snapshot" || not_ok "the change callback compiled a snapshot"

# Every kind through its whole life: create, get, update, get again, delete, gone.
declare -A make=(
	[user]="display_name=T"
	[group]="description=T"
	[segment]="hosts+=tmp.example ports+=tcp/9 server_groups+=corp-servers"
	[segment-group]="description=T"
	[server-group]="connector_groups+=paris"
	[connector-group]="location:={\"lat\":1,\"lon\":2}"
	[broker]="location:={\"lat\":1,\"lon\":2} address=b.example:443"
	[posture]="kernel_min=5.4"
	[rule]="priority:=900 action=deny"
	[timeout]="max_age_s:=60 idle_s:=30"
)
for k in user group segment segment-group server-group connector-group broker posture rule \
	timeout; do
	# shellcheck disable=SC2086 # the fields are words on purpose
	m "$k" create "tmp-$k" ${make[$k]} >"$T/out" 2>&1
	m "$k" get "tmp-$k" -o json >>"$T/out" 2>&1
	# Kinds without a description update their first field, to the same value.
	m "$k" update "tmp-$k" description=changed >>"$T/out" 2>&1 ||
		m "$k" update "tmp-$k" ${make[$k]%% *} >>"$T/out" 2>&1
	if m "$k" get "tmp-$k" >"$T/out2" 2>&1 && grep -q "^version  *2$" "$T/out2" &&
		m "$k" delete "tmp-$k" --version 2 >>"$T/out" 2>&1 &&
		! m "$k" get "tmp-$k" >>"$T/out" 2>&1 && sanitizer_clean; then
		ok "$k: create, get, update (version 2), delete"
	else
		not_ok "$k: create, get, update (version 2), delete"
		sed 's/^/# /' "$T/out" "$T/out2"
	fi
done
check_out "tenant get" "timeout            short" m tenant get acme
check_out "tenant update" "version            2" m tenant update acme description="ACME Corp"

# Help and clean-up of what was made.
check_out "segment --help lists the fields" "hosts+=FQDN" m segment --help
check_out "policy --help" "--user U --app NAME:PORT" m policy --help
check "rule delete" m rule delete night
check "segment-group delete once unused" m segment update corp segment_group:=null
check "segment-group delete" m segment-group delete internal
cp "$T/users.csv" "$T/users.txt"
refused "import of a CSV file sent as JSON: 400" "body is not JSON" m user import "$T/users.txt"

if ! grep -q "Sanitizer\|runtime error:" "$T/api.log"; then
	ok "the server's log has no sanitizer report"
else
	not_ok "the server's log has no sanitizer report"
	grep -A20 "Sanitizer\|runtime error:" "$T/api.log" | sed 's/^/# /'
fi
kill "$api_pid" && wait "$api_pid"
rc=$?
api_pid=
[ "$rc" = 0 ] && ok "mtun-admin stops cleanly on SIGTERM" || not_ok "mtun-admin stops cleanly on SIGTERM ($rc)"

echo "1..$n"
[ "$failed" -eq 0 ]
