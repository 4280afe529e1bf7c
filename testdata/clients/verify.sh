#!/usr/bin/env bash
# Drive every real POP3 client (curl, python3 poplib, fetchmail, mpop) against
# a POP3 server with the command lines from README.md, leaving mail on the
# server, and compare what each delivered with what RETR sent.
#
#   testdata/clients/verify.sh HOST PORT USER PASS [WORKDIR]
#
# The reference is curl's RETR of each message (dot-unstuffed, CRLF line ends,
# without the terminating dot). Expected per client:
#   poplib_fetch.py                       identical
#   fetchmail keep+uidl (TOP n 99999999)  identical (invisible, no stripcr, no rewrite)
#   fetchmail fetchall (RETR)             a Received: header (3 lines, CRLF) + identical
#   mpop --delivery=mda                   identical after CRLF -> LF
#   mpop --delivery=maildir               identical after CRLF -> LF
# Then it checks that a second fetchmail and mpop run fetch nothing and that
# the server still has every message (STAT unchanged).
# The server must hold at least one message; passwords must not contain " or \.
# Exit status 0 when everything matched.
set -euo pipefail

[[ $# -ge 4 ]] || {
	echo "usage: $0 HOST PORT USER PASS [WORKDIR]" >&2
	exit 2
}
host=$1 port=$2 user=$3 pass=$4
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
work="${5:-$(mktemp -d /tmp/popbridge-clients.XXXXXX)}"
mkdir -p "$work"
work="$(cd "$work" && pwd -P)"
url="pop3://$host:$port"
fail=0
ok() { echo "ok    $*"; }
bad() {
	echo "FAIL  $*"
	fail=1
}

# compare DIR_A DIR_B LABEL [transform]: every ref/NNN.eml against DIR/NNN.eml
compare() {
	local got=$1 label=$2 transform=${3:-cat} f n=0 miss=0
	for f in "$work"/ref/*.eml; do
		n=$((n + 1))
		# shellcheck disable=SC2094 # reads two different files
		if ! "$transform" <"$f" | cmp -s - "$got/$(basename "$f")"; then
			bad "$label: $(basename "$f") differs ($(wc -c <"$f") ref bytes, $(wc -c <"$got/$(basename "$f")" 2>/dev/null || echo no) got)"
			miss=1
		fi
	done
	[[ $(find "$got" -maxdepth 1 -name '*.eml' | wc -l) == "$n" ]] || {
		bad "$label: expected $n files in $got"
		miss=1
	}
	((miss)) || ok "$label: $n messages match"
}
# shellcheck disable=SC2317 # called through compare's transform argument
crlf_to_lf() { sed 's/\r$//'; }

echo "== work dir $work"

# --- reference: curl -----------------------------------------------------------
mkdir -p "$work/ref"
curl -sS --max-time 30 "$url/" -u "$user:$pass" | tr -d '\r' >"$work/ref/list.txt"
curl -sS --max-time 30 "$url/" -u "$user:$pass" -X UIDL | tr -d '\r' >"$work/ref/uidl.txt"
stat_before="$(curl -sS --max-time 30 -v "$url/" -u "$user:$pass" -X STAT -I 2>&1 | sed -n 's/^< +OK \([0-9]* [0-9]*\).*/\1/p')"
count=$(wc -l <"$work/ref/list.txt")
((count > 0)) || {
	echo "the mailbox is empty: put some mail in first" >&2
	exit 2
}
while read -r n _; do
	curl -sS --max-time 30 "$url/$n" -u "$user:$pass" -o "$(printf '%s/ref/%03d.eml' "$work" "$n")"
done <"$work/ref/list.txt"
ok "curl: $count messages (STAT $stat_before), UIDL and RETR read"

# --- python3 poplib --------------------------------------------------------------
if python3 "$here/poplib_fetch.py" "$host" "$port" "$user" "$pass" "$work/poplib"; then
	compare "$work/poplib" "poplib"
	if cmp -s "$work/poplib/uidl.txt" "$work/ref/uidl.txt"; then
		ok "poplib: UIDL equals curl's"
	else
		bad "poplib: UIDL differs from curl's"
	fi
else
	bad "poplib_fetch.py failed"
fi

# --- fetchmail ---------------------------------------------------------------------
# fetchmail_run NAME EXTRA_GLOBAL EXTRA_POLL: rcfile in $work/NAME, mail in $work/NAME/out
fetchmail_run() {
	local d="$work/$1"
	mkdir -p "$d/out"
	cat >"$d/fetchmailrc" <<EOF
set no bouncemail
set no syslog
$2
poll $host protocol POP3 service $port uidl
  user "$user" there with password "$pass"
  keep
  sslproto ''
  no rewrite
  no stripcr
  $3
  mda "$here/mda-to-dir.sh $d/out"
EOF
	chmod 0600 "$d/fetchmailrc"
	FETCHMAILHOME="$d" timeout 120 fetchmail -f "$d/fetchmailrc" \
		--pidfile "$d/fetchmail.pid" --idfile "$d/fetchids" </dev/null >>"$d/log" 2>&1
}
rc=0
fetchmail_run fetchmail-top "set invisible" "" || rc=$?
if ((rc == 0)); then
	compare "$work/fetchmail-top/out" "fetchmail keep+uidl (TOP)"
	rc=0
	fetchmail_run fetchmail-top "set invisible" "" || rc=$?
	if ((rc == 1)) && [[ $(find "$work/fetchmail-top/out" -name '*.eml' | wc -l) == "$count" ]]; then
		ok "fetchmail: second run exits 1 (no new mail), delivers nothing"
	else
		bad "fetchmail: second run rc=$rc (want 1), see $work/fetchmail-top/log"
	fi
else
	bad "fetchmail (TOP) rc=$rc, see $work/fetchmail-top/log"
fi
rc=0
fetchmail_run fetchmail-retr "" "fetchall" || rc=$?
if ((rc == 0)); then
	# Drop the Received: header fetchmail prepends (first line plus its continuations).
	mkdir -p "$work/fetchmail-retr/stripped"
	for f in "$work"/fetchmail-retr/out/*.eml; do
		head -n 1 "$f" | grep -q '^Received: from ' || bad "fetchmail (RETR): $(basename "$f") has no leading Received:"
		LC_ALL=C awk 'NR==1 {skip=1; next} skip && /^[ \t]/ {next} {skip=0; print}' ORS='\n' RS='\n' "$f" >"$work/fetchmail-retr/stripped/$(basename "$f")"
	done
	compare "$work/fetchmail-retr/stripped" "fetchmail fetchall (RETR) minus Received:"
else
	bad "fetchmail (RETR) rc=$rc, see $work/fetchmail-retr/log"
fi

# --- mpop ------------------------------------------------------------------------------
mpop_run() { # NAME DELIVERY
	HOME="$work/$1" timeout 120 mpop -q --host="$host" --port="$port" --user="$user" \
		--passwordeval="printf '%s' '$pass'" --auth=user --tls=off \
		--keep=on --only-new=on --received-header=off \
		--uidls-file="$work/$1/uidls" --delivery="$2" </dev/null >>"$work/$1/log" 2>&1
}
mkdir -p "$work/mpop-mda/out"
if mpop_run mpop-mda "mda,$here/mda-to-dir.sh $work/mpop-mda/out"; then
	compare "$work/mpop-mda/out" "mpop mda (CRLF->LF)" crlf_to_lf
	if mpop_run mpop-mda "mda,$here/mda-to-dir.sh $work/mpop-mda/out" &&
		[[ $(find "$work/mpop-mda/out" -name '*.eml' | wc -l) == "$count" ]]; then
		ok "mpop: second run exits 0, delivers nothing"
	else
		bad "mpop: second run delivered again or failed, see $work/mpop-mda/log"
	fi
else
	bad "mpop (mda) failed, see $work/mpop-mda/log"
fi
mkdir -p "$work/mpop-maildir/md/new" "$work/mpop-maildir/md/cur" "$work/mpop-maildir/md/tmp" "$work/mpop-maildir/out"
if mpop_run mpop-maildir "maildir,$work/mpop-maildir/md"; then
	# maildir names end in Q<n>.<hostname>; n counts deliveries in this run.
	for f in "$work"/mpop-maildir/md/new/*; do
		q=$(basename "$f" | sed -n 's/.*Q\([0-9]*\)\..*/\1/p')
		cp "$f" "$(printf '%s/mpop-maildir/out/%03d.eml' "$work" "$q")"
	done
	compare "$work/mpop-maildir/out" "mpop maildir (CRLF->LF)" crlf_to_lf
else
	bad "mpop (maildir) failed, see $work/mpop-maildir/log"
fi

# --- nothing was deleted ---------------------------------------------------------------------
stat_after="$(curl -sS --max-time 30 -v "$url/" -u "$user:$pass" -X STAT -I 2>&1 | sed -n 's/^< +OK \([0-9]* [0-9]*\).*/\1/p')"
if [[ "$stat_after" == "$stat_before" ]]; then
	ok "server still holds everything (STAT $stat_after)"
else
	bad "STAT was '$stat_before', now '$stat_after'"
fi

((fail == 0)) && echo "== all clients match" || echo "== MISMATCHES, see $work"
exit "$fail"
