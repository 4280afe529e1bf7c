#!/usr/bin/env bash
# Side-by-side benchmark of the speed targets on one machine (docs/benchmarks.md):
#
#   upstream   a private Dovecot 2.3 (.ci/dovecot-start): IMAP, and its own
#              POP3 on the same maildirs ("native")
#   imapc      a second Dovecot: pop3 + imapc over that IMAP ("imapc")
#   popbridge  over that IMAP ("popbridge")
#
# It writes the mailboxes straight into the upstream's maildirs (popbench
# gen-maildir), starts everything, runs popbench against each server, and
# prints Markdown tables with the ratios popbridge's speed targets are stated in.
#
#   sudo testdata/bench/run.sh              # as root (Dovecot needs it); ~8 minutes on 2 cores
#   BENCH_QUICK=1 testdata/bench/run.sh     # small mailboxes, a smoke test of the script
#
# Parts (BENCH_PARTS, default all four, in this order):
#   classic  unchanged polls, upstream octets, sequential RETR, memory of 50
#            sessions, UIDVALIDITY change (the first table)
#   cold     first poll with everything cold: popbridge's state empty, the
#            upstream Dovecot stopped, its index files of the mailbox
#            deleted, the page cache dropped, Dovecot started again; also a
#            bare IMAP UID FETCH 1:* (UID RFC822.SIZE), native POP3 and
#            pop3+imapc (its own index deleted too) made cold the same way
#   fleet    BENCH_FLEET_ACCOUNTS accounts polled by BENCH_FLEET_CONC
#            sessions at once for BENCH_FLEET_DURATION: sessions/s, latency,
#            CPU and upstream logins per 1,000 sessions, memory
#   wan      popbridge and pop3+imapc behind a proxy that delays every
#            chunk by BENCH_WAN_DELAY (20ms) each way: one unchanged poll of
#            a synced 200-message mailbox, median of BENCH_WAN_ROUNDS (20)
# POPBENCH_WARM='warm_ttl = "60s"' (TOML lines for [upstream]) adds a
# popbridge with those settings to the fleet and wan parts ("popbridge
# warm"); when the build refuses them, those columns say so and the rest
# runs. A build with warm upstream connections runs every other popbridge
# with them off (warm_ttl = "0s"), and POPBENCH_WARM defaults to
# warm_ttl = "60s" for it.
#
# Options (environment): BENCH_REV=COMMIT builds popbridge from that commit
# (git archive) instead of the working tree; BENCH_PASSES (3) passes of the
# timed measurements; BENCH_WAIT_QUIET=SECONDS waits for a quiet machine
# first; BENCH_KEEP=1 leaves everything running; ports: see below (all
# configurable, e.g. the 16xxx range:
#   POPBRIDGE_DOVECOT_IMAP_PORT=16143 POPBRIDGE_DOVECOT_POP3_PORT=16110
#   POPBRIDGE_DOVECOT_IMAPS_PORT=16993 POPBRIDGE_DOVECOT_POP3S_PORT=16995
#   BENCH_PORT_PREFIX=16 (the script's own ports 13111... become 16111...)).
#
# Everything listens on 127.0.0.1 and lives under BENCH_WORK (default
# /tmp/pbbench) and BENCH_DOVECOT_DIR (default /tmp/pbdove-bench, at most 60
# characters). Every step has a time limit; the processes it starts are
# stopped at the end by their PIDs (BENCH_KEEP=1 leaves them running).
# Results: BENCH_WORK/results/ (raw popbench output, key=value summaries,
# table.md for the classic part, table-cold-fleet-wan.md for the others).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
work="${BENCH_WORK:-/tmp/pbbench}"
dove="${BENCH_DOVECOT_DIR:-/tmp/pbdove-bench}"
quick="${BENCH_QUICK:-0}"

# Ports (127.0.0.1). The upstream's own come from dovecot-start's variables.
export POPBRIDGE_DOVECOT_IMAP_PORT="${POPBRIDGE_DOVECOT_IMAP_PORT:-13143}"
export POPBRIDGE_DOVECOT_POP3_PORT="${POPBRIDGE_DOVECOT_POP3_PORT:-13110}"
export POPBRIDGE_DOVECOT_IMAPS_PORT="${POPBRIDGE_DOVECOT_IMAPS_PORT:-13993}"
export POPBRIDGE_DOVECOT_POP3S_PORT="${POPBRIDGE_DOVECOT_POP3S_PORT:-13995}"
imap_port=$POPBRIDGE_DOVECOT_IMAP_PORT
native_port=$POPBRIDGE_DOVECOT_POP3_PORT
pp="${BENCH_PORT_PREFIX:-13}"                       # the first digits of the ports below
imapc_port="${BENCH_IMAPC_PORT:-${pp}111}"          # pop3+imapc, IMAP direct
pb_port="${BENCH_POPBRIDGE_PORT:-${pp}112}"         # popbridge, IMAP direct
pbb_port="${BENCH_POPBRIDGE_BYTES_PORT:-${pp}113}"  # popbridge through a counting proxy
imapcb_port="${BENCH_IMAPC_BYTES_PORT:-${pp}114}"   # pop3+imapc through a counting proxy
pbc_port="${BENCH_POPBRIDGE_COLD_PORT:-${pp}115}"   # popbridge restarted with empty state (cold)
pbw_port="${BENCH_POPBRIDGE_WARM_PORT:-${pp}116}"   # popbridge with POPBENCH_WARM (fleet)
wanpb_port="${BENCH_WAN_POPBRIDGE_PORT:-${pp}117}"  # popbridge behind the delaying proxy
wanpbw_port="${BENCH_WAN_WARM_PORT:-${pp}118}"      # the same with POPBENCH_WARM
wanimapc_port="${BENCH_WAN_IMAPC_PORT:-${pp}119}"   # pop3+imapc behind the delaying proxy
pbproxy_port="${BENCH_PROXY_PB_PORT:-${pp}144}"
imapcproxy_port="${BENCH_PROXY_IMAPC_PORT:-${pp}145}"
wanproxy_port="${BENCH_PROXY_WAN_PORT:-${pp}146}"
parts=" ${BENCH_PARTS:-classic cold fleet wan} "
want() { [[ "$parts" == *" $1 "* ]]; }
warm_toml="${POPBENCH_WARM:-}"
# off_toml turns warm upstream connections off in the plain popbridge
# instances (set below for builds that have them), so that "popbridge"
# and "popbridge warm" compare the same build with and without them.
off_toml=""

if ((quick)); then
	n1k=200 n20k=2000 n100k=10000 nuv=50
	poll20_rounds=2 poll100_rounds=2 conc_duration=5s
	fleet_n=20 fleet_msgs=50 fleet_conc=5 fleet_duration=5s wan_rounds=5
else
	n1k=1000 n20k=20000 n100k=100000 nuv=300
	poll20_rounds=7 poll100_rounds=4 conc_duration=20s
	fleet_n=200 fleet_msgs=200 fleet_conc=40 fleet_duration=20s wan_rounds=20
fi
fleet_n="${BENCH_FLEET_ACCOUNTS:-$fleet_n}" fleet_msgs="${BENCH_FLEET_MESSAGES:-$fleet_msgs}"
fleet_conc="${BENCH_FLEET_CONC:-$fleet_conc}" fleet_duration="${BENCH_FLEET_DURATION:-$fleet_duration}"
wan_rounds="${BENCH_WAN_ROUNDS:-$wan_rounds}" wan_delay="${BENCH_WAN_DELAY:-20ms}" wan_msgs=200
u1k="b1k@dyn.example.com" u20k="b20k@dyn.example.com" u100k="b100k@dyn.example.com" uuv="buv@dyn.example.com"
uwan="bwan@dyn.example.com"
pass=pass

log() { printf '%s run.sh: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
[[ "$(id -u)" == 0 ]] || die "must run as root (Dovecot)"
for c in dovecot doveadm go fetchmail mpop timeout; do
	command -v "$c" >/dev/null || die "$c not found (apt-get install dovecot-core dovecot-imapd dovecot-pop3d fetchmail mpop; Go)"
done

[[ "$work" == /* && "$work" != / ]] || die "BENCH_WORK must be an absolute directory other than /"
# Dovecots left running by an earlier run with BENCH_KEEP=1 (the upstream's
# is stopped by dovecot-start).
for d in "$work/imapc" "$work/imapcb" "$work/imapcw"; do
	if [[ -s "$d/run/master.pid" ]]; then timeout 20 "$repo/.ci/dovecot-stop" "$d" >&2 || true; fi
done
rm -rf "${work:?}"
mkdir -p "$work/bin" "$work/results"
res="$work/results"
pids=() # processes this script started, stopped at exit

cleanup() {
	local rc=$?
	if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
		log "BENCH_KEEP=1: leaving pids ${pids[*]:-} and the Dovecots running"
		exit $rc
	fi
	for p in "${pids[@]:-}"; do
		if [[ -n "$p" ]]; then kill "$p" 2>/dev/null || true; fi
	done
	for d in "$work/imapc" "$work/imapcb" "$work/imapcw"; do
		if [[ -s "$d/run/master.pid" ]]; then timeout 20 "$repo/.ci/dovecot-stop" "$d" >&2 || true; fi
	done
	timeout 20 "$repo/.ci/dovecot-stop" "$dove" >&2 || true
	exit $rc
}
trap cleanup EXIT

# --- build ---------------------------------------------------------------------
# popbridge from the working tree, or from commit BENCH_REV (git archive);
# popbench always from the working tree.
untracked=0
if [[ -n "${BENCH_REV:-}" ]]; then
	log "building popbridge from commit $BENCH_REV, popbench from $repo"
	mkdir -p "$work/src"
	git -C "$repo" archive "$BENCH_REV" | tar -x -C "$work/src"
	(cd "$work/src" && timeout 300 go build -o "$work/bin/popbridge" ./cmd/popbridge)
	rev="$(git -C "$repo" rev-parse --short "$BENCH_REV")" dirty=0 pb_src="$work/src"
else
	log "building popbridge and popbench from $repo"
	(cd "$repo" && timeout 300 go build -o "$work/bin/popbridge" ./cmd/popbridge)
	rev="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
	dirty="$(git -C "$repo" status --porcelain 2>/dev/null | grep -vc '^??' || true)"
	untracked="$(git -C "$repo" status --porcelain 2>/dev/null | grep -c '^??' || true)"
	pb_src="$repo"
fi
(cd "$repo" && timeout 300 go build -o "$work/bin/popbench" ./cmd/popbench)
pb="$work/bin/popbridge" bench="$work/bin/popbench"

# --- upstream Dovecot and the mailboxes ----------------------------------------
log "starting the upstream Dovecot in $dove (fresh)"
eval "$(timeout 60 "$repo/.ci/dovecot-start" --fresh "$dove")"
C=$POPBRIDGE_TEST_DOVECOT_CONF
mail_uid=$(id -u nobody) mail_gid=$(id -g nobody)
# The test config allows 200 processes a service. A fleet with warm
# upstream connections may hold an IMAP process per account besides the
# sessions': give the upstream more room.
cat >>"$C" <<'CONF'

# Added by testdata/bench/run.sh: room for fleets with warm connections.
service imap {
  process_limit = 2000
}
service imap-login {
  process_limit = 400
}
CONF
doveconf -c "$C" -n >/dev/null || die "doveconf rejects $C with the bench's additions"

# upstream_start starts the upstream Dovecot from $C and waits (bounded)
# until its IMAP and POP3 greet.
upstream_start() {
	dovecot -c "$C" || die "the upstream Dovecot did not start (see $dove/dovecot.log)"
	local deadline=$((SECONDS + 20)) l1 l2
	until l1="$( (exec 3<>"/dev/tcp/127.0.0.1/$imap_port" && IFS= read -r -t 2 l <&3 && printf '%s' "$l") 2>/dev/null)" &&
		l2="$( (exec 3<>"/dev/tcp/127.0.0.1/$native_port" && IFS= read -r -t 2 l <&3 && printf '%s' "$l") 2>/dev/null)" &&
		[[ "$l1" == "* OK"* && "$l2" == "+OK"* ]]; do
		((SECONDS < deadline)) || die "the upstream Dovecot does not greet within 20 s"
		sleep 0.2
	done
	upstream_master=$(cat "$dove/run/master.pid")
}
timeout 20 "$repo/.ci/dovecot-stop" "$dove" >&2
upstream_start

gen() { # user count sizes
	local home="$dove/home/$1"
	mkdir -p "$home"
	timeout 600 "$bench" gen-maildir -dir "$home/Maildir" -n "$2" -sizes "$3" -id "${1%%@*}" -owner "$mail_uid:$mail_gid" >&2
	chown "$mail_uid:$mail_gid" "$home"
	timeout 600 doveadm -c "$C" force-resync -u "$1" INBOX
	timeout 120 doveadm -c "$C" -f tab mailbox status -u "$1" 'messages vsize uidvalidity uidnext highestmodseq' INBOX | tail -1
}
log "writing the mailboxes (parts:$parts): $n1k mixed, $n20k small, $n100k small, $nuv small (UIDVALIDITY test), $wan_msgs small (WAN)"
{
	echo "user	mailbox	messages	uidnext	uidvalidity	highestmodseq	vsize"
	if want classic; then echo "$u1k	$(gen "$u1k" "$n1k" mixed)"; fi
	if want classic || want cold; then
		echo "$u20k	$(gen "$u20k" "$n20k" small)"
		echo "$u100k	$(gen "$u100k" "$n100k" small)"
	fi
	if want classic; then echo "$uuv	$(gen "$uuv" "$nuv" small)"; fi
	if want wan; then echo "$uwan	$(gen "$uwan" "$wan_msgs" small)"; fi
} | tee "$res/mailboxes.tsv" >&2
# The fleet's accounts, f0001@... f0200@...: Dovecot indexes each at its
# first access (the warm-up polls).
if want fleet; then
	log "writing the fleet: $fleet_n accounts of $fleet_msgs small messages"
	: >"$work/fleet.users"
	for ((i = 1; i <= fleet_n; i++)); do
		u=$(printf 'f%04d@dyn.example.com' "$i")
		mkdir -p "$dove/home/$u"
		timeout 120 "$bench" gen-maildir -dir "$dove/home/$u/Maildir" -n "$fleet_msgs" -sizes small -seed "$i" -id "${u%%@*}" -owner "$mail_uid:$mail_gid" >/dev/null
		chown "$mail_uid:$mail_gid" "$dove/home/$u"
		echo "$u:$pass" >>"$work/fleet.users"
	done
fi

# --- the second Dovecot: pop3 + imapc --------------------------------------------
imapc_start() { # dir pop3-port upstream-port
	local d=$1
	mkdir -p "$d/run" "$d/state" "$d/home"
	chmod 0755 "$d" "$d/state"
	chown "$mail_uid:$mail_gid" "$d/home"
	cat >"$d/dovecot.conf" <<EOF
# Dovecot as a POP3 server over a remote IMAP account (pop3 + imapc), the
# reference of the speed targets. Generated by testdata/bench/run.sh.
instance_name = popbench-imapc-$2
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
info_log_path = $d/dovecot.log
protocols = pop3
listen = 127.0.0.1
default_internal_user = dovecot
default_login_user = dovenull
default_process_limit = 200
default_client_limit = 2000
auth_failure_delay = 0
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
ssl = no
auth_mechanisms = plain login
disable_plaintext_auth = no
# The POP3 password is checked by logging in upstream, and passed on to imapc.
passdb {
  driver = imap
  args = host=127.0.0.1 port=$3
  default_fields = userdb_imapc_user=%u userdb_imapc_password=%w
}
userdb {
  driver = prefetch
}
mail_uid = $mail_uid
mail_gid = $mail_gid
mail_home = $d/home/%u
# Local index files per user (the faster imapc setup).
mail_location = imapc:~/imapc
imapc_host = 127.0.0.1
imapc_port = $3
# rfc822.size: sizes from RFC822.SIZE instead of fetching whole messages.
imapc_features = rfc822.size fetch-headers modseq search
pop3_uidl_format = %08Xu%08Xv
protocol pop3 {
  mail_max_userip_connections = 1000
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $2
  }
  inet_listener pop3s {
    port = 0
  }
}
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    port = 0
  }
}
EOF
	doveconf -c "$d/dovecot.conf" -n >/dev/null || die "doveconf rejects $d/dovecot.conf"
	dovecot -c "$d/dovecot.conf" || die "imapc Dovecot did not start (see $d/dovecot.log)"
	wait_port "$2"
}

wait_port() { # port: wait (bounded) for a POP3 greeting
	local deadline=$((SECONDS + 20)) line
	until line="$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 2 l <&3 && printf '%s' "$l") 2>/dev/null)" && [[ "$line" == "+OK"* ]]; do
		((SECONDS < deadline)) || die "no POP3 greeting on 127.0.0.1:$1 within 20 s"
		sleep 0.2
	done
}

# greets PORT PREFIX: a server on 127.0.0.1:PORT greets with PREFIX.
greets() {
	local line
	line="$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 2 l <&3 && printf '%s' "$l") 2>/dev/null)" && [[ "$line" == "$2"* ]]
}

# popbridge_start NAME POP3-PORT UPSTREAM-PORT [UPSTREAM-TOML]: writes
# $work/NAME/popbridge.toml (UPSTREAM-TOML: more lines for [upstream],
# e.g. POPBENCH_WARM) and starts popbridge. Returns 1 when popbridge exits
# (a build that does not know a setting refuses its config) or does not
# greet within 20 s.
popbridge_start() {
	local d="$work/$1"
	mkdir -p "$d"
	cat >"$d/popbridge.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
[upstream]
address = "127.0.0.1:$3"
security = "none"
timeout = "${BENCH_UPSTREAM_TIMEOUT:-300s}"
${4:-}
[auth]
allow_insecure_auth = true
[delete]
policy = "hide"
[state]
path = "$d/state.db"
[log]
level = "warn"
EOF
	# Builds with [limits]: here 50 sessions of one account log in at once,
	# and the per-account budget of failed logins counts the logins in
	# flight, so it refuses the 31st concurrent login; the per-account
	# session cap (10 by default) refuses the 11th session.
	if grep -q max_login_failures_per_account "$pb_src/config.toml.example" 2>/dev/null; then
		printf '[limits]\nmax_login_failures_per_account = 0\n' >>"$d/popbridge.toml"
		if grep -q max_sessions_per_account "$pb_src/config.toml.example"; then
			printf 'max_sessions_per_account = 0\n' >>"$d/popbridge.toml"
		fi
	fi
	"$pb" serve -config "$d/popbridge.toml" >"$d/popbridge.log" 2>&1 &
	local pid=$!
	pids+=("$pid")
	echo "$pid" >"$d/pid"
	local deadline=$((SECONDS + 20))
	until greets "$2" "+OK"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "popbridge $1 exited: $(tail -n 3 "$d/popbridge.log" | tr '\n' ' ')"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "popbridge $1: no POP3 greeting on 127.0.0.1:$2 within 20 s"
			return 1
		fi
		sleep 0.2
	done
}

# popbridge_stop NAME: stops the popbridge that popbridge_start NAME
# started (by its PID), and waits for it to end.
popbridge_stop() {
	local pid q
	pid=$(cat "$work/$1/pid")
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$pid" 2>/dev/null && die "popbridge $1 (pid $pid) does not stop"
	local keep=()
	for q in "${pids[@]}"; do [[ "$q" == "$pid" ]] || keep+=("$q"); done
	pids=("${keep[@]}")
}

proxy_start() { # name listen-port [popbench proxy flags...]
	local name=$1 port=$2
	shift 2
	"$bench" proxy -listen "127.0.0.1:$port" -to "127.0.0.1:$imap_port" -stats "$work/$name.stats" -max-time 2h "$@" >"$work/$name.log" 2>&1 &
	pids+=($!)
	local deadline=$((SECONDS + 10))
	until [[ -s "$work/$name.stats" ]]; do
		((SECONDS < deadline)) || die "proxy $name did not start"
		sleep 0.1
	done
}

log "starting pop3+imapc (:$imapc_port, and :$imapcb_port through a counting proxy), popbridge (:$pb_port, and :$pbb_port through a counting proxy)"
proxy_start proxy-pb "$pbproxy_port"
proxy_start proxy-imapc "$imapcproxy_port"
imapc_start "$work/imapc" "$imapc_port" "$imap_port"
imapc_start "$work/imapcb" "$imapcb_port" "$imapcproxy_port"
if grep -Eq '^#? *warm_ttl *=' "$pb_src/config.toml.example" 2>/dev/null; then
	off_toml='warm_ttl = "0s"'
	[[ -n "$warm_toml" ]] || warm_toml='warm_ttl = "60s"'
fi
popbridge_start popbridge "$pb_port" "$imap_port" "$off_toml" || die "popbridge did not start"
popbridge_start popbridge-bytes "$pbb_port" "$pbproxy_port" "$off_toml" || die "popbridge did not start"
imapc_master=$(cat "$work/imapc/run/master.pid")
pb_pid=$(cat "$work/popbridge/pid")
# With POPBENCH_WARM: a popbridge with those [upstream] settings, for the
# fleet. warm_state says why there is none.
warm_state="POPBENCH_WARM unset"
if [[ -n "$warm_toml" ]] && want fleet; then
	if popbridge_start popbridge-warm "$pbw_port" "$imap_port" "$warm_toml"; then
		warm_state=ok
		pbw_pid=$(cat "$work/popbridge-warm/pid")
	else
		warm_state="this build refuses POPBENCH_WARM"
	fi
fi
if want wan; then
	log "starting the WAN proxy (:$wanproxy_port, $wan_delay each way), pop3+imapc (:$wanimapc_port) and popbridge (:$wanpb_port) behind it"
	proxy_start proxy-wan "$wanproxy_port" -delay "$wan_delay"
	imapc_start "$work/imapcw" "$wanimapc_port" "$wanproxy_port"
	popbridge_start popbridge-wan "$wanpb_port" "$wanproxy_port" "$off_toml" || die "popbridge did not start"
	wan_warm_state="POPBENCH_WARM unset"
	if [[ -n "$warm_toml" ]]; then
		if popbridge_start popbridge-wan-warm "$wanpbw_port" "$wanproxy_port" "$warm_toml"; then
			wan_warm_state=ok
		else
			wan_warm_state="this build refuses POPBENCH_WARM"
		fi
	fi
fi

# popbench NAME ARGS...: one measurement, raw output in results/NAME.out,
# figures in results/NAME.txt.
popbench() {
	local name=$1
	shift
	log "popbench $name: $*"
	if ! timeout 1800 "$bench" -label "$name" -summary "$res/$name.txt" -max-time 25m -timeout 2m "$@" >"$res/$name.out" 2>&1; then
		cat "$res/$name.out" >&2
		die "popbench $name failed"
	fi
	cat "$res/$name.out" >&2
}
get() { sed -n "s/^$2=//p" "$res/$1.txt"; } # NAME KEY
# med NAME KEY: the median of KEY over the passes NAME-p1, NAME-p2 ...
med() {
	for f in "$res/$1"-p*.txt; do sed -n "s/^$2=//p" "$f"; done | sort -g |
		awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# The machine may be shared and noisy: the timed measurements (2 and 3) run
# in BENCH_PASSES passes, each server in turn within a pass, and the table
# shows the median of the passes.
passes="${BENCH_PASSES:-3}"

# BENCH_WAIT_QUIET=SECONDS: first wait (at most that long) until the
# machine's 1-minute load average is below 1.5.
if [[ -n "${BENCH_WAIT_QUIET:-}" ]]; then
	quiet_deadline=$((SECONDS + BENCH_WAIT_QUIET))
	until awk '{ exit !($1 < 1.5) }' /proc/loadavg || ((SECONDS >= quiet_deadline)); do
		sleep 5
	done
	log "load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

# The parts "classic" (1 to 5, and the first table), "cold" (6), "fleet"
# (7) and "wan" (8) run when BENCH_PARTS names them (all by default).
if want classic; then

# --- 1. upstream octets of an unchanged poll (1k, 100k) --------------------------
for u in "$u1k" "$u100k"; do
	n=${u%%@*}
	popbench "bytes-first-popbridge-$n" -addr "127.0.0.1:$pbb_port" -users "$u:$pass" -rounds 1 -proxy-stats "$work/proxy-pb.stats"
	popbench "bytes-popbridge-$n" -addr "127.0.0.1:$pbb_port" -users "$u:$pass" -warmup -rounds 3 -proxy-stats "$work/proxy-pb.stats"
	popbench "bytes-first-imapc-$n" -addr "127.0.0.1:$imapcb_port" -users "$u:$pass" -rounds 1 -proxy-stats "$work/proxy-imapc.stats"
	popbench "bytes-imapc-$n" -addr "127.0.0.1:$imapcb_port" -users "$u:$pass" -warmup -rounds 3 -proxy-stats "$work/proxy-imapc.stats"
done

# --- 2. poll of an unchanged mailbox (20k, 100k), one session after another -----
for ((p = 1; p <= passes; p++)); do
	for spec in "$u20k:$poll20_rounds" "$u100k:$poll100_rounds"; do
		u=${spec%%:*} rounds=${spec##*:} n=${u%%@*}
		popbench "poll-native-$n-p$p" -addr "127.0.0.1:$native_port" -users "$u:$pass" -warmup -rounds "$rounds"
		popbench "poll-imapc-$n-p$p" -addr "127.0.0.1:$imapc_port" -users "$u:$pass" -warmup -rounds "$rounds"
		popbench "poll-popbridge-$n-p$p" -addr "127.0.0.1:$pb_port" -users "$u:$pass" -warmup -rounds "$rounds"
	done
done

# --- 3. sequential RETR of every message in one session (1k mixed, 20k small) ----
# (Dovecot's POP3 sets \Seen on RETR; the warm-up poll of the next server
# absorbs that flag change, so each measured session starts synced.)
for u in "$u1k" "$u20k"; do
	n=${u%%@*}
	for ((p = 1; p <= passes; p++)); do
		popbench "retr-native-$n-p$p" -addr "127.0.0.1:$native_port" -users "$u:$pass" -warmup -mode retr -rounds 1
		popbench "retr-imapc-$n-p$p" -addr "127.0.0.1:$imapc_port" -users "$u:$pass" -warmup -mode retr -rounds 1
		popbench "retr-popbridge-$n-p$p" -addr "127.0.0.1:$pb_port" -users "$u:$pass" -warmup -mode retr -rounds 1
	done
done

# --- 4. 50 concurrent sessions polling the 100k mailbox: peak memory -------------
popbench conc-native-b100k -addr "127.0.0.1:$native_port" -users "$u100k:$pass" -warmup -sessions 50 -duration "$conc_duration" \
	-mem-children "$upstream_master" -mem-comm pop3
popbench conc-imapc-b100k -addr "127.0.0.1:$imapc_port" -users "$u100k:$pass" -warmup -sessions 50 -duration "$conc_duration" \
	-mem-children "$imapc_master" -mem-comm pop3
# popbridge: one device tag per session (its maildrop lock is per device).
popbench conc-popbridge-b100k -addr "127.0.0.1:$pb_port" -users "$u100k:$pass" -tag '#' -warmup -sessions 50 -duration "$conc_duration" \
	-mem-pid "$pb_pid"

# --- 5. UIDVALIDITY change: do fetchmail and mpop download again? ----------------
fetchmail_run() { # name port: prints the number of messages delivered
	local d="$work/clients/fetchmail-$1"
	mkdir -p "$d/out"
	rm -f "$d/out"/*.eml
	cat >"$d/fetchmailrc" <<EOF
set no bouncemail
set no syslog
set invisible
poll 127.0.0.1 protocol POP3 service $2 uidl
  user "$uuv" there with password "$pass"
  keep
  sslproto ''
  no rewrite
  no stripcr
  mda "$repo/testdata/clients/mda-to-dir.sh $d/out"
EOF
	chmod 0600 "$d/fetchmailrc"
	FETCHMAILHOME="$d" timeout 600 fetchmail -f "$d/fetchmailrc" --pidfile "$d/fetchmail.pid" --idfile "$d/fetchids" </dev/null >>"$d/log" 2>&1 || true
	find "$d/out" -maxdepth 1 -name '*.eml' | wc -l
}
mpop_run() { # name port
	local d="$work/clients/mpop-$1"
	mkdir -p "$d/out"
	rm -f "$d/out"/*.eml
	HOME="$d" timeout 600 mpop -q --host=127.0.0.1 --port="$2" --user="$uuv" --passwordeval="printf '%s' '$pass'" \
		--auth=user --tls=off --keep=on --only-new=on --received-header=off \
		--uidls-file="$d/uidls" --delivery="mda,$repo/testdata/clients/mda-to-dir.sh $d/out" </dev/null >>"$d/log" 2>&1 || true
	find "$d/out" -maxdepth 1 -name '*.eml' | wc -l
}
uv_status() { timeout 60 doveadm -c "$C" -f tab mailbox status -u "$uuv" 'messages uidvalidity uidnext' INBOX | tail -1; }
log "UIDVALIDITY test on $uuv ($nuv messages): first downloads"
declare -A first second
for s in native:$native_port imapc:$imapc_port popbridge:$pb_port; do
	name=${s%%:*} port=${s##*:}
	first[fetchmail-$name]=$(fetchmail_run "$name" "$port")
	first[mpop-$name]=$(mpop_run "$name" "$port")
done
before="$(uv_status)"
log "recreating $uuv's INBOX index: same messages, new UIDVALIDITY and UIDs (testdata/dovecot/README.md, reset 3)"
timeout 30 doveadm -c "$C" kick "$uuv" >/dev/null 2>&1 || true
rm -f "$dove/home/$uuv/Maildir/dovecot-uidlist" "$dove/home/$uuv/Maildir/"dovecot.index*
after="$(uv_status)"
for s in native:$native_port imapc:$imapc_port popbridge:$pb_port; do
	name=${s%%:*} port=${s##*:}
	second[fetchmail-$name]=$(fetchmail_run "$name" "$port")
	second[mpop-$name]=$(mpop_run "$name" "$port")
done
{
	echo "before	$before"
	echo "after	$after"
	for k in "${!first[@]}"; do echo "$k	${first[$k]}	${second[$k]}"; done
} >"$res/uidvalidity.tsv"

fi # classic

# imaplist NAME ARGS...: one "popbench imap-list", like popbench above.
imaplist() {
	local name=$1
	shift
	log "popbench imap-list $name: $*"
	if ! timeout 1800 "$bench" imap-list -label "$name" -summary "$res/$name.txt" -timeout 10m "$@" >"$res/$name.out" 2>&1; then
		cat "$res/$name.out" >&2
		die "popbench imap-list $name failed"
	fi
	cat "$res/$name.out" >&2
}

# cpu_ticks PID: the CPU time process PID used so far (clock ticks).
cpu_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# settle LIMIT NAME=PID[,...]: waits until those process trees together use
# less than 5 % of a core over a second, at most LIMIT seconds (popbench
# settle): the work popbridge, and the upstream it reads from, may go on
# with after a poll has answered.
settle() {
	timeout $(($1 + 60)) "$bench" settle -cpu "$2" -max-time "${1}s" >&2 || die "popbench settle failed"
}

# --- 6. cold first poll (20k, 100k) ----------------------------------------------
# make_cold USER [IMAPC-DIR]: stops the upstream Dovecot, deletes its index
# files of USER's INBOX (dovecot.index, .index.log, .index.cache; the
# dovecot-uidlist stays, so the UIDs and the UIDVALIDITY stay too) and,
# with IMAPC-DIR, that pop3+imapc Dovecot's own index of USER; drops the
# page cache (sync; echo 3 > /proc/sys/vm/drop_caches) and starts the
# upstream again. The next access reads the maildir from the disk and
# rebuilds the index, as at the first login after a restore or a move.
cold_note="page cache dropped before each"
make_cold() {
	timeout 20 "$repo/.ci/dovecot-stop" "$dove" 2>/dev/null
	rm -f "$dove/home/$1/Maildir/"dovecot.index* "$dove/home/$1/Maildir/"dovecot.list.index*
	if [[ -n "${2:-}" ]]; then rm -rf "${2:?}/home/$1"; fi
	sync
	if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
		cold_note="the page cache could NOT be dropped (/proc/sys/vm/drop_caches not writable): index files deleted only"
	fi
	upstream_start
}
if want cold; then
	for u in "$u20k" "$u100k"; do
		n=${u%%@*}
		make_cold "$u"
		imaplist "cold-imap-$n" -addr "127.0.0.1:$imap_port" -user "$u" -pass "$pass"
		make_cold "$u"
		popbench "cold-native-$n" -timeout 10m -addr "127.0.0.1:$native_port" -users "$u:$pass" -rounds 1
		make_cold "$u" "$work/imapc"
		popbench "cold-imapc-$n" -timeout 10m -addr "127.0.0.1:$imapc_port" -users "$u:$pass" -rounds 1
		# popbridge: a new instance with an empty state file.
		if [[ -s "$work/popbridge-cold/pid" ]]; then popbridge_stop popbridge-cold; fi
		rm -rf "${work:?}/popbridge-cold"
		popbridge_start popbridge-cold "$pbc_port" "$imap_port" "$off_toml" || die "popbridge did not start"
		pbc_pid=$(cat "$work/popbridge-cold/pid")
		make_cold "$u"
		c0=$(cpu_ticks "$pbc_pid") t0=$(now)
		popbench "cold-popbridge-$n" -timeout 10m -addr "127.0.0.1:$pbc_port" -users "$u:$pass" -rounds 1 -cpu "popbridge=$pbc_pid" -mem-pid "$pbc_pid"
		# Work it goes on with after the answer (fingerprints in the
		# background, in builds that do so), then the next poll.
		settle 900 "popbridge=$pbc_pid,upstream=$upstream_master"
		{
			echo "settled_s=$(since "$t0")"
			echo "settled_cpu_s=$(awk -v a="$c0" -v b="$(cpu_ticks "$pbc_pid")" 'BEGIN { printf "%.2f", (b - a) / 100 }')"
		} >>"$res/cold-popbridge-$n.txt"
		popbench "cold-popbridge-next-$n" -addr "127.0.0.1:$pbc_port" -users "$u:$pass" -rounds 1
	done
	popbridge_stop popbridge-cold
fi

# --- 7. a fleet: many accounts, many sessions at once ------------------------------
# Each session takes the next account not in session (-rotate); the
# warm-up polls every account once first (unmeasured). CPU: the server's
# process tree and the upstream Dovecot's (exited children included);
# upstream logins: Dovecot's "imap-login: Info: Login:" lines.
if want fleet; then
	fl=(-user-file "$work/fleet.users" -rotate -sessions "$fleet_conc" -duration "$fleet_duration" -warmup -login-log "$dove/dovecot.log")
	popbench fleet-native "${fl[@]}" -addr "127.0.0.1:$native_port" -cpu "server=$upstream_master" \
		-mem-children "$upstream_master" -mem-comm pop3
	popbench fleet-imapc "${fl[@]}" -addr "127.0.0.1:$imapc_port" -cpu "server=$imapc_master,upstream=$upstream_master" \
		-mem-children "$imapc_master" -mem-comm pop3
	popbench fleet-popbridge "${fl[@]}" -addr "127.0.0.1:$pb_port" -cpu "server=$pb_pid,upstream=$upstream_master" -mem-pid "$pb_pid"
	if [[ "$warm_state" == ok ]]; then
		popbench fleet-popbridge-warm "${fl[@]}" -addr "127.0.0.1:$pbw_port" -cpu "server=$pbw_pid,upstream=$upstream_master" -mem-pid "$pbw_pid"
	fi
fi

# --- 8. an unchanged poll over a WAN ---------------------------------------------
# popbridge and pop3+imapc reach the upstream through "popbench proxy
# -delay": every chunk in either direction is forwarded $wan_delay after it
# arrived, so each upstream round trip gains 2 × $wan_delay. The POP3 client
# stays on the loopback. Each poll follows the one before at once (within
# any warm_ttl); the first (warm-up) poll is not measured.
if want wan; then
	popbench wan-native -addr "127.0.0.1:$native_port" -users "$uwan:$pass" -warmup -rounds "$wan_rounds"
	popbench wan-lan-popbridge -addr "127.0.0.1:$pb_port" -users "$uwan:$pass" -warmup -rounds "$wan_rounds"
	popbench wan-imapc -addr "127.0.0.1:$wanimapc_port" -users "$uwan:$pass" -warmup -rounds "$wan_rounds"
	popbench wan-popbridge -addr "127.0.0.1:$wanpb_port" -users "$uwan:$pass" -warmup -rounds "$wan_rounds"
	if [[ "$wan_warm_state" == ok ]]; then
		popbench wan-popbridge-warm -addr "127.0.0.1:$wanpbw_port" -users "$uwan:$pass" -warmup -rounds "$wan_rounds"
	fi
fi

# --- the table -------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
check() { awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN { if (v == "n/a") print "?"; else if ((op == "<=" && v + 0 <= t + 0) || (op == ">=" && v + 0 >= t + 0)) print "met"; else print "MISSED" }'; }
mbs() { med "$1" retr_mb_s_session_p50; }
if want classic; then
{
	echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(dovecot --version | cut -d' ' -f1) (Debian), popbridge $rev$( ((dirty + untracked > 0)) && echo " + uncommitted changes ($dirty files changed, $untracked new)")"
	((quick)) && echo "BENCH_QUICK=1: small mailboxes ($n1k, $n20k, $n100k): not the sizes of the targets"
	echo
	echo "| measure | native POP3 | pop3+imapc | popbridge | popbridge / imapc | popbridge / native | target | |"
	echo "|---|---|---|---|---|---|---|---|"
	for n in b20k b100k; do
		nat=$(med "poll-native-$n" session_p50_ms) imc=$(med "poll-imapc-$n" session_p50_ms) pbv=$(med "poll-popbridge-$n" session_p50_ms)
		r1=$(ratio "$pbv" "$imc") r2=$(ratio "$pbv" "$nat")
		c1=$(check "$r1" "<=" 0.5) c2=$(check "$r2" "<=" 1.0)
		echo "| poll, unchanged, $(get "poll-native-$n-p1" messages_listed) msgs: p50 ms | $nat | $imc | $pbv | $r1 | $r2 | ≤ 0.5 / ≤ 1.0 | $c1 / $c2 |"
		nat=$(med "poll-native-$n" session_mean_ms) imc=$(med "poll-imapc-$n" session_mean_ms) pbv=$(med "poll-popbridge-$n" session_mean_ms)
		echo "| (same, mean ms) | $nat | $imc | $pbv | $(ratio "$pbv" "$imc") | $(ratio "$pbv" "$nat") | | |"
	done
	for n in b1k b100k; do
		imc=$(get "bytes-imapc-$n" upstream_per_session) pbv=$(get "bytes-popbridge-$n" upstream_per_session)
		echo "| upstream octets, unchanged poll, $(get "bytes-popbridge-$n" messages_listed) msgs | – | $imc | $pbv | $(ratio "$pbv" "$imc") | – | same at 1k and 100k | |"
	done
	for n in b1k b100k; do
		echo "| (upstream octets, first poll, $(get "bytes-first-popbridge-$n" messages_listed) msgs) | – | $(get "bytes-first-imapc-$n" upstream_per_session) | $(get "bytes-first-popbridge-$n" upstream_per_session) | | | | |"
	done
	b1=$(get bytes-popbridge-b1k upstream_per_session) b2=$(get bytes-popbridge-b100k upstream_per_session)
	echo "| popbridge: upstream octets 100k / 1k | | | $(ratio "$b2" "$b1") | | | 1.00 (± digits) | $(awk -v a="$b1" -v b="$b2" 'BEGIN { d = b - a; if (d < 0) d = -d; print (d <= 16 ? "met" : "MISSED") }') |"
	for n in b1k b20k; do
		nat=$(mbs "retr-native-$n") imc=$(mbs "retr-imapc-$n") pbv=$(mbs "retr-popbridge-$n")
		r1=$(ratio "$pbv" "$imc") r2=$(ratio "$pbv" "$nat")
		echo "| sequential RETR, $(get "retr-native-$n-p1" messages_listed) msgs ($(awk -v o="$(get "retr-native-$n-p1" retr_octets)" -v r="$(get "retr-native-$n-p1" ok)" 'BEGIN { printf "%.0f MB", o / r / 1e6 }')): MB/s | $nat | $imc | $pbv | $r1 | $r2 | ≥ 2 / ≥ 0.75 | $(check "$r1" ">=" 2) / $(check "$r2" ">=" 0.75) |"
	done
	nat=$(get conc-native-b100k mem_children_peak_rss_kb) imc=$(get conc-imapc-b100k mem_children_peak_rss_kb) pbv=$(get conc-popbridge-b100k mem_pid_hwm_kb)
	mb() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
	echo "| 50 sessions on $(get conc-native-b100k messages_listed) msgs: peak memory MB (Dovecot: sum of pop3 processes' RSS; popbridge: VmHWM) | $(mb "$nat") | $(mb "$imc") | $(mb "$pbv") | $(ratio "$pbv" "$imc") | $(ratio "$pbv" "$nat") | popbridge ≤ 100 MB | $(check "$(mb "$pbv")" "<=" 100) |"
	for k in native imapc popbridge; do eval "p50_$k=\$(get conc-$k-b100k session_p50_ms) rate_$k=\$(get conc-$k-b100k sessions_per_s) err_$k=\$(get conc-$k-b100k failed)"; done
	# shellcheck disable=SC2154 # set by the eval above
	echo "| (same: poll p50 ms, sessions/s, failed) | $p50_native, $rate_native, $err_native | $p50_imapc, $rate_imapc, $err_imapc | $p50_popbridge, $rate_popbridge, $err_popbridge | | | | |"
	echo "| after a new UIDVALIDITY ($nuv msgs): fetchmail / mpop downloads | ${second[fetchmail-native]} / ${second[mpop-native]} | ${second[fetchmail-imapc]} / ${second[mpop-imapc]} | ${second[fetchmail-popbridge]} / ${second[mpop-popbridge]} | | | popbridge 0 / 0 | $([[ "${second[fetchmail-popbridge]}/${second[mpop-popbridge]}" == "0/0" ]] && echo met || echo MISSED) |"
	echo
	echo "UIDVALIDITY test: first runs delivered fetchmail/mpop: native ${first[fetchmail-native]}/${first[mpop-native]}, imapc ${first[fetchmail-imapc]}/${first[mpop-imapc]}, popbridge ${first[fetchmail-popbridge]}/${first[mpop-popbridge]}; INBOX (mailbox, messages, uidnext, uidvalidity) before: $before; after: $after."
	errs="$(cat "$res"/*.txt | sed -n 's/^errors=//p' | grep -v '^$' | sort | uniq -c | tr -s ' \n' ' ;' || true)"
	echo "Failed sessions in any run: ${errs:-none}. Timed runs: $passes passes, medians shown; 1-minute load average at their starts: $(cat "$res"/poll-*.txt "$res"/retr-*.txt | sed -n 's/^load_before=//p' | sort -g | sed -n '1p;$p' | paste -sd- -) (2 cores)."
} | tee "$res/table.md"
fi # classic

# --- the table of the cold, fleet and WAN parts -----------------------------------
# g NAME KEY: like get, "n/a" when there is no such run.
g() {
	local v=""
	[[ -s "$res/$1.txt" ]] && v=$(get "$1" "$2")
	echo "${v:-n/a}"
}
secs() { awk -v m="$1" 'BEGIN { if (m == "n/a") print "n/a"; else printf "%.3f", m / 1000 }'; }
mbk() { awk -v k="$1" 'BEGIN { if (k == "n/a" || k == "") print "n/a"; else printf "%.0f", k / 1024 }'; }
{
	echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores, $(dovecot --version | cut -d' ' -f1) (Debian), popbridge $rev$( ((dirty + untracked > 0)) && echo " + uncommitted changes")"
	((quick)) && echo "BENCH_QUICK=1: small sizes, not those of the targets"
	if want cold; then
		echo
		echo "Cold first poll ($cold_note; each measurement on a cold upstream; popbridge with an empty state file):"
		echo
		echo "| first poll, cold: seconds | IMAP UID FETCH 1:* (UID RFC822.SIZE) | native POP3 | pop3+imapc | popbridge | popbridge / UID FETCH | popbridge / native | popbridge / imapc |"
		echo "|---|---|---|---|---|---|---|---|"
		for n in b20k b100k; do
			im=$(g "cold-imap-$n" total_ms) nat=$(g "cold-native-$n" session_p50_ms)
			imc=$(g "cold-imapc-$n" session_p50_ms) pbv=$(g "cold-popbridge-$n" session_p50_ms)
			echo "| $(g "cold-native-$n" messages_listed) msgs | $(secs "$im") | $(secs "$nat") | $(secs "$imc") | $(secs "$pbv") | $(ratio "$pbv" "$im") | $(ratio "$pbv" "$nat") | $(ratio "$pbv" "$imc") |"
		done
		for n in b20k b100k; do
			echo "| ($(g "cold-native-$n" messages_listed) msgs: UID FETCH alone $(secs "$(g "cold-imap-$n" fetch_ms)") s; popbridge: CPU $(g "cold-popbridge-$n" cpu_popbridge_s) s in the poll, quiet again after $(g "cold-popbridge-$n" settled_s) s and $(g "cold-popbridge-$n" settled_cpu_s) s CPU, peak $(mbk "$(g "cold-popbridge-$n" mem_pid_hwm_kb)") MB; its next poll $(g "cold-popbridge-next-$n" session_p50_ms) ms) | | | | | | | |"
		done
	fi
	if want fleet; then
		echo
		echo "Fleet: $fleet_n accounts of $fleet_msgs messages, $fleet_conc sessions at once for $fleet_duration, each session the next account not in session (POP3 login, STAT, UIDL, QUIT)."
		echo "popbridge: $([[ -n "$off_toml" ]] && echo "$off_toml" || echo "this build has no warm connections"); popbridge warm: $([[ "$warm_state" == ok ]] && echo "POPBENCH_WARM = $warm_toml" || echo "$warm_state")."
		echo
		echo "| fleet | native POP3 | pop3+imapc | popbridge | popbridge warm |"
		echo "|---|---|---|---|---|"
		row() { # title key [fn]
			local out="| $1 |" k v
			for k in native imapc popbridge popbridge-warm; do
				v=$(g "fleet-$k" "$2")
				[[ -n "${3:-}" ]] && v=$($3 "$v")
				out+=" $v |"
			done
			echo "$out"
		}
		row "sessions/s" sessions_per_s
		row "session p50 ms" session_p50_ms
		row "session p99 ms" session_p99_ms
		row "server CPU s per 1,000 sessions (popbridge; Dovecot: all its processes)" cpu_server_s_per_1000
		row "upstream Dovecot CPU s per 1,000 sessions" cpu_upstream_s_per_1000
		row "upstream IMAP logins per 1,000 sessions" upstream_logins_per_1000
		nat=$(mbk "$(g fleet-native mem_children_peak_rss_kb)") imc=$(mbk "$(g fleet-imapc mem_children_peak_rss_kb)")
		echo "| peak memory MB (popbridge: VmHWM; Dovecot: summed RSS of its pop3 processes) | $nat | $imc | $(mbk "$(g fleet-popbridge mem_pid_hwm_kb)") | $(mbk "$(g fleet-popbridge-warm mem_pid_hwm_kb)") |"
		row "sessions ok" ok
		echo "| (failed) | $(g fleet-native failed) | $(g fleet-imapc failed) | $(g fleet-popbridge failed) | $(g fleet-popbridge-warm failed) |"
	fi
	if want wan; then
		echo
		echo "WAN: the upstream behind \`popbench proxy -delay $wan_delay\` (each chunk forwarded $wan_delay after it arrived, each way); an unchanged poll (login, STAT, UIDL, QUIT) of a synced $wan_msgs-message mailbox, $wan_rounds polls one after another, after one unmeasured poll."
		echo
		echo "| unchanged poll, $wan_msgs msgs | pop3+imapc via WAN | popbridge via WAN | popbridge warm via WAN | (LAN: native POP3) | (LAN: popbridge) |"
		echo "|---|---|---|---|---|---|"
		for k in session_p50_ms:"poll p50 ms" session_p99_ms:"poll p99 ms" login_p50_ms:"of which login (connect to PASS answered) p50 ms"; do
			t=${k#*:} k=${k%%:*}
			echo "| $t | $(g wan-imapc "$k") | $(g wan-popbridge "$k") | $(g wan-popbridge-warm "$k") | $(g wan-native "$k") | $(g wan-lan-popbridge "$k") |"
		done
		[[ "${wan_warm_state:-}" == ok ]] || echo "(popbridge warm: ${wan_warm_state:-not run})"
	fi
	errs="$(cat "$res"/cold-*.txt "$res"/fleet-*.txt "$res"/wan-*.txt 2>/dev/null | sed -n 's/^errors=//p' | grep -v '^$' | sort | uniq -c | tr -s ' \n' ' ;' || true)"
	echo
	echo "Failed sessions in these runs: ${errs:-none}. 1-minute load average at their starts: $(cat "$res"/cold-*.txt "$res"/fleet-*.txt "$res"/wan-*.txt 2>/dev/null | sed -n 's/^load_before=//p' | sort -g | sed -n '1p;$p' | paste -sd- -) (2 cores)."
} | tee "$res/table-cold-fleet-wan.md"
log "done: $res"
