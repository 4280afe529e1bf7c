#!/bin/sh
# The fake-provider walk-through of README's "OAuth providers" section, as a
# script: from a fresh clone, with Go, curl and fetchmail installed,
#
#   sh testdata/oauth/walkthrough.sh
#
# builds popbridge and fakeoauth, starts the fake OAuth provider and its
# OAuth-only IMAP server (auto-approving every sign-in as alice@example.com),
# enrolls alice@example.com with the device-code flow through
# `popbridge account add`, serves it over POP3, reads its mail with curl and
# fetchmail using the app password popbridge issued, revokes the grant at
# the provider and shows that the next POP3 login gets -ERR [AUTH], and
# that `popbridge account list` says re-consent is needed.
#
# Everything stays on loopback and in a temporary directory (WALK_DIR to
# choose it; it is kept on failure). The ports are WALK_PROVIDER_PORT,
# WALK_IMAP_PORT and WALK_POP3_PORT (default 18080, 11143, 11110). Exits 0
# only when every step did what it should.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
provider_port=${WALK_PROVIDER_PORT:-18080}
imap_port=${WALK_IMAP_PORT:-11143}
pop3_port=${WALK_POP3_PORT:-11110}
dir=${WALK_DIR:-$(mktemp -d)}
mkdir -p "$dir"
user=alice@example.com
pids=""

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'walkthrough FAILED: %s (files in %s)\n' "$*" "$dir" >&2; exit 1; }
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# wait_for FILE TEXT: until FILE holds TEXT (10 s).
wait_for() {
	i=0
	until grep -q "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -lt 100 ] || fail "timed out waiting for \"$2\" in $1"
		sleep 0.1
	done
}

step "build popbridge and the fake provider"
(cd "$repo" && go build -o "$dir/popbridge" ./cmd/popbridge && go build -o "$dir/fakeoauth" ./internal/oauthtest/cmd/fakeoauth)

step "start the fake OAuth provider and the OAuth-only IMAP server"
"$dir/fakeoauth" -provider-listen "127.0.0.1:$provider_port" -imap-listen "127.0.0.1:$imap_port" \
	-auto-approve -messages 3 >"$dir/fakeoauth.log" 2>&1 &
pids="$pids $!"
wait_for "$dir/fakeoauth.log" "OAuth-only IMAP on"
provider="http://127.0.0.1:$provider_port"
head -1 "$dir/fakeoauth.log"

step "write the configuration"
cat >"$dir/popbridge.toml" <<TOML
[server]
listen = "127.0.0.1:$pop3_port"

[auth]
# The walk-through runs on loopback without TLS; never do this elsewhere.
allow_insecure_auth = true

[state]
path = "$dir/popbridge.db"

[accounts]
# Only enrolled accounts: there is no pass-through [upstream].
passthrough = false

[[upstreams]]
name = "fake"
provider = "generic"
address = "127.0.0.1:$imap_port"
security = "none"

[upstreams.oauth]
client_id = "popbridge-public"
flow = "device"
auth_url = "$provider/authorize"
token_url = "$provider/token"
device_auth_url = "$provider/devicecode"
scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", "offline_access"]
mechanism = "XOAUTH2"
TOML
grep -q "$provider/token" "$dir/fakeoauth.log" || fail "the fake provider's endpoints are not the ones configured (see $dir/fakeoauth.log)"
cat "$dir/popbridge.toml"

step "enroll $user with the device-code flow"
"$dir/popbridge" account add "$user" -config "$dir/popbridge.toml" -upstream fake | tee "$dir/add.out"
pw=$(sed -n 's/^app password "default" (shown once): //p' "$dir/add.out")
[ -n "$pw" ] || fail "account add printed no app password"
"$dir/popbridge" account list -config "$dir/popbridge.toml" | tee "$dir/list1.out"
grep -q "^$user .* ok " "$dir/list1.out" || fail "account list does not show the grant ok"

step "serve POP3"
"$dir/popbridge" serve -config "$dir/popbridge.toml" >"$dir/serve.log" 2>&1 &
serve_pid=$!
pids="$pids $serve_pid"
wait_for "$dir/serve.log" "popbridge started"

step "curl lists and reads the mail with the app password"
curl -sS "pop3://127.0.0.1:$pop3_port/" -u "$user:$pw" | tee "$dir/curl-list.out"
[ "$(wc -l <"$dir/curl-list.out")" -eq 3 ] || fail "curl listed $(wc -l <"$dir/curl-list.out") messages, want 3"
curl -sS "pop3://127.0.0.1:$pop3_port/1" -u "$user#curl:$pw" >"$dir/curl-1.eml"
grep -q '^Subject: Sample message 1' "$dir/curl-1.eml" || fail "curl's RETR 1 is not sample message 1"
grep '^Subject:' "$dir/curl-1.eml"

step "fetchmail fetches the mail (keep) with the app password"
mkdir -p "$dir/fetchmail"
cat >"$dir/fetchmail/fetchmailrc" <<RC
set no bouncemail
set no syslog
poll 127.0.0.1 protocol POP3 service $pop3_port uidl
  user "$user#fetchmail" there with password "$pw"
  keep
  sslproto ''
  mda "cat >> $dir/fetchmail/mbox"
RC
chmod 600 "$dir/fetchmail/fetchmailrc"
HOME="$dir/fetchmail" FETCHMAILHOME="$dir/fetchmail" fetchmail -f "$dir/fetchmail/fetchmailrc" \
	--pidfile "$dir/fetchmail/pid" --idfile "$dir/fetchmail/ids" 2>&1 | tee "$dir/fetchmail.out" || true
n=$(grep -c '^Subject: Sample message' "$dir/fetchmail/mbox" 2>/dev/null || true)
[ "$n" = 3 ] || fail "fetchmail delivered ${n:-0} messages, want 3"
echo "fetchmail delivered $n messages"

step "a wrong app password is refused (and never reaches the upstream)"
if curl -sS "pop3://127.0.0.1:$pop3_port/" -u "$user:not-the-app-password" >/dev/null 2>&1; then
	fail "a wrong app password was accepted"
fi

step "revoke the grant at the provider: the next login gets -ERR [AUTH]"
curl -sS -d "user=$user" "$provider/fake/revoke"; echo
curl -sS -d "user=$user" "$provider/fake/expire"; echo
curl -v "pop3://127.0.0.1:$pop3_port/" -u "$user:$pw" >"$dir/curl-revoked.out" 2>&1 || true
grep -- '-ERR \[AUTH\]' "$dir/curl-revoked.out" || fail "after the revocation: no -ERR [AUTH] (see $dir/curl-revoked.out)"

step "stop popbridge; account list shows re-consent needed"
kill "$serve_pid"
wait "$serve_pid" 2>/dev/null || true
"$dir/popbridge" account list -config "$dir/popbridge.toml" | tee "$dir/list2.out"
grep -q "^$user .* reconsent-needed " "$dir/list2.out" || fail "account list does not show reconsent-needed"

printf '\nwalkthrough OK (files in %s)\n' "$dir"
