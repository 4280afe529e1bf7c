// Command popbench drives concurrent POP3 sessions against any POP3 server
// and prints what it measured: login+STAT+UIDL+QUIT latency, sessions per
// second, RETR throughput, octets and errors by kind. It compares popbridge
// with other servers on one machine (docs/benchmarks.md,
// testdata/bench/run.sh).
//
//	popbench -addr HOST:PORT -users U:P[,U:P...] [-sessions N] [-duration D | -rounds R] [-mode poll|retr|mixed]
//	popbench proxy -listen ADDR -to HOST:PORT -stats FILE [-delay D]  count the octets to an upstream (and add latency)
//	popbench gen-maildir -dir MAILDIR -n N [-sizes small|mixed]       write test mail for Dovecot
//	popbench imap-list -addr HOST:PORT -user U -pass P                time UID FETCH 1:* (UID RFC822.SIZE)
//	popbench settle -cpu NAME=PID[,...]                               wait until those processes are idle
//
// A run always stops by itself: after -duration or -rounds, and in any case
// after -max-time. Every exchange has -timeout to make progress.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	var err error
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "proxy":
			err = proxyMain(os.Args[2:])
		case "gen-maildir":
			err = genMaildirMain(os.Args[2:])
		case "imap-list":
			err = imapListMain(os.Args[2:], os.Stdout)
		case "settle":
			err = settleMain(os.Args[2:], os.Stdout)
		default:
			err = loadMain(os.Args[1:], os.Stdout)
		}
	} else {
		err = loadMain(nil, os.Stdout)
	}
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "popbench:", err)
		os.Exit(1)
	}
}

// options are the flags of a load run.
type options struct {
	cfg         config
	users       string
	userFile    string
	proxyStats  string
	memPID      int
	memChildren int
	memComm     string
	summary     string
	label       string
	cpu         []cpuTarget
	loginLog    string
	loginMatch  string
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("popbench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage:\n"+
			"  popbench -addr HOST:PORT -users U:P[,U:P...] [flags]   drive POP3 sessions\n"+
			"  popbench proxy -listen ADDR -to HOST:PORT -stats FILE  counting TCP proxy (-h for flags)\n"+
			"  popbench gen-maildir -dir MAILDIR -n N                 write test mail (-h for flags)\n"+
			"  popbench imap-list -addr HOST:PORT -user U -pass P     time an IMAP UID+RFC822.SIZE listing (-h for flags)\n\nflags:\n")
		fs.PrintDefaults()
	}
	c := &o.cfg
	fs.StringVar(&c.addr, "addr", "", "POP3 server host:port (required)")
	fs.StringVar(&o.users, "users", "", "logins, user:password[,user:password...]; worker i logs in as user i mod count")
	fs.StringVar(&o.userFile, "user-file", "", "file with one user:password per line (# comments)")
	fs.IntVar(&c.sessions, "sessions", 1, "concurrent sessions")
	fs.DurationVar(&c.duration, "duration", 0, "run for this long, each worker starting sessions one after another")
	fs.IntVar(&c.rounds, "rounds", 1, "sessions per worker, when -duration is not set")
	fs.StringVar(&c.mode, "mode", modePoll, "poll: USER PASS STAT UIDL QUIT; retr: STAT LIST, RETR every message, QUIT; mixed: poll + LIST + RETR of the last -mixed-retr messages")
	fs.IntVar(&c.pipeline, "pipeline", 1, "RETR commands in flight (RFC 2449 PIPELINING); 1: one at a time")
	fs.IntVar(&c.mixedRetr, "mixed-retr", 5, "mixed: how many of the last messages each session retrieves")
	fs.StringVar(&c.tag, "tag", "", "append TAG+\"w<worker>\" to each login (popbridge device tags, e.g. -tag '#': one maildrop lock per worker)")
	fs.BoolVar(&c.rotate, "rotate", false, "each session logs in as the next account not in session (a fleet: C workers over N accounts), instead of worker i as user i mod count; -warmup then polls every account")
	fs.BoolVar(&c.warmup, "warmup", false, "one unmeasured poll per distinct login first")
	fs.DurationVar(&c.timeout, "timeout", time.Minute, "each exchange must make progress within this")
	fs.DurationVar(&c.maxTime, "max-time", 30*time.Minute, "hard bound on the whole run, warm-up included")
	fs.IntVar(&c.maxErrors, "max-errors", 1000, "stop after this many failed sessions (0: never)")
	fs.StringVar(&o.proxyStats, "proxy-stats", "", "counters file of a 'popbench proxy' in front of the server's upstream: report the upstream octets of the measured sessions")
	fs.IntVar(&o.memPID, "mem-pid", 0, "report the peak memory of this process (VmHWM, reset at start when permitted)")
	fs.IntVar(&o.memChildren, "mem-children", 0, "report the peak summed memory of the children of this process (e.g. Dovecot's master)")
	fs.StringVar(&o.memComm, "mem-comm", "", "with -mem-children: only children with this command name (e.g. pop3)")
	cpu := fs.String("cpu", "", "NAME=PID[,NAME=PID...]: report the CPU seconds each process and its descendants (exited ones included) spent during the measured sessions")
	fs.StringVar(&o.loginLog, "login-log", "", "the upstream's log file: count the lines matching -login-match written during the measured sessions (upstream logins)")
	fs.StringVar(&o.loginMatch, "login-match", defaultLoginMatch, "with -login-log: the text of a login line (Dovecot's successful IMAP login by default)")
	fs.StringVar(&o.summary, "summary", "", "also write the figures as key=value lines to this file (for scripts)")
	fs.StringVar(&o.label, "label", "", "a name for this run, printed and written to -summary")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.addr == "" {
		return nil, errors.New("-addr is required")
	}
	switch c.mode {
	case modePoll, modeRetr, modeMixed:
	default:
		return nil, fmt.Errorf("-mode %q: want poll, retr or mixed", c.mode)
	}
	var err error
	if c.accounts, err = parseUsers(o.users); err != nil {
		return nil, err
	}
	if o.userFile != "" {
		more, err := readUserFile(o.userFile)
		if err != nil {
			return nil, err
		}
		c.accounts = append(c.accounts, more...)
	}
	if len(c.accounts) == 0 {
		return nil, errors.New("no users: give -users or -user-file")
	}
	if c.sessions < 1 || c.rounds < 1 || c.pipeline < 1 || c.timeout <= 0 || c.maxTime <= 0 {
		return nil, errors.New("-sessions, -rounds, -pipeline, -timeout and -max-time must be positive")
	}
	if o.memComm != "" && o.memChildren == 0 {
		return nil, errors.New("-mem-comm needs -mem-children")
	}
	if c.rotate && c.tag != "" {
		return nil, errors.New("-rotate and -tag do not go together")
	}
	if o.cpu, err = parseCPUTargets(*cpu); err != nil {
		return nil, err
	}
	return o, nil
}

func parseUsers(s string) ([]account, error) {
	var out []account
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		u, p, ok := strings.Cut(f, ":")
		if !ok || u == "" {
			return nil, fmt.Errorf("user %q: want user:password", f)
		}
		out = append(out, account{u, p})
	}
	return out, nil
}

func readUserFile(path string) ([]account, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []account
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, p, ok := strings.Cut(line, ":")
		if !ok || u == "" {
			return nil, fmt.Errorf("%s:%d: want user:password", path, n)
		}
		out = append(out, account{u, p})
	}
	return out, sc.Err()
}

// report is everything a load run prints.
type report struct {
	label                 string
	res                   *result
	proxy                 *proxyStats // upstream octets of the measured sessions
	mem                   *memReport
	cpu                   []cpuUse
	logins                int    // upstream logins counted in -login-log; -1: not counted
	loadBefore, loadAfter string // 1-minute load average, "" when unknown
}

// loadAvg returns the 1-minute load average (Linux), or "".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

func loadMain(args []string, stdout io.Writer) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := measure(ctx, o)
	if err != nil {
		return err
	}
	printReport(stdout, rep)
	if o.summary != "" {
		if err := os.WriteFile(o.summary, []byte(summaryLines(rep)), 0o644); err != nil {
			return err
		}
	}
	if rep.res.ok == 0 {
		return errors.New("no session succeeded")
	}
	return nil
}

// measure runs the sessions of o, with the proxy counters and the memory
// watch around the measured part.
func measure(ctx context.Context, o *options) (*report, error) {
	rep := &report{label: o.label, logins: -1}
	cfg := o.cfg
	if cfg.warmup {
		// Before the proxy counters and the memory watch start: they
		// cover the measured sessions only.
		if err := warm(ctx, cfg); err != nil {
			return nil, err
		}
	}
	var before proxyStats
	if o.proxyStats != "" {
		var err error
		if before, err = waitIdle(o.proxyStats, 5*time.Second); err != nil {
			return nil, fmt.Errorf("-proxy-stats: %w", err)
		}
	}
	var lc *loginCount
	if o.loginLog != "" {
		var err error
		if lc, err = startLoginCount(o.loginLog, o.loginMatch); err != nil {
			return nil, err
		}
	}
	cw, err := startCPUWatch(o.cpu)
	if err != nil {
		return nil, err
	}
	mw := newMemWatch(o.memPID, o.memChildren, o.memComm, 50*time.Millisecond)
	mw.start()
	rep.loadBefore = loadAvg()
	res, err := run(ctx, cfg)
	rep.loadAfter = loadAvg()
	mw.finish()
	if err != nil {
		return nil, err
	}
	if rep.cpu, err = cw.finish(); err != nil {
		return nil, err
	}
	if lc != nil {
		if rep.logins, err = lc.finish(3 * time.Second); err != nil {
			return nil, fmt.Errorf("-login-log: %w", err)
		}
	}
	rep.res, rep.mem = res, mw.report()
	if o.proxyStats != "" {
		after, err := waitIdle(o.proxyStats, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("-proxy-stats: %w", err)
		}
		rep.proxy = &proxyStats{Conns: after.Conns - before.Conns, Active: after.Active,
			Up: after.Up - before.Up, Down: after.Down - before.Down}
	}
	return rep, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/1e6) }

func mb(kb int64) string { return fmt.Sprintf("%.1f MB", float64(kb)/1024) }

func printReport(w io.Writer, rep *report) {
	r := rep.res
	c := r.cfg
	what := fmt.Sprintf("%d round(s)", c.rounds)
	if c.duration > 0 {
		what = c.duration.String()
	}
	if rep.label != "" {
		fmt.Fprintf(w, "== %s\n", rep.label)
	}
	fmt.Fprintf(w, "popbench: %s against %s, %d session(s) at once, %s, %d login(s)", c.mode, c.addr, c.sessions, what, len(c.accounts))
	if c.pipeline > 1 {
		fmt.Fprintf(w, ", %d RETRs pipelined", c.pipeline)
	}
	fmt.Fprintln(w)
	rate := float64(r.ok) / r.wall.Seconds()
	fmt.Fprintf(w, "sessions   %d ok, %d failed in %.2fs: %.2f sessions/s\n", r.ok, r.failed, r.wall.Seconds(), rate)
	fmt.Fprintf(w, "mailbox    %d messages (STAT of the last session)\n", r.listed)
	line := func(name string, s durStats) {
		if s.n == 0 {
			return
		}
		fmt.Fprintf(w, "%-10s p50 %s  p90 %s  p99 %s  mean %s  min %s  max %s  (n=%d)\n",
			name, ms(s.p50), ms(s.p90), ms(s.p99), ms(s.mean), ms(s.min), ms(s.max), s.n)
	}
	switch c.mode {
	case modePoll:
		line("poll", summarize(r.total))
		fmt.Fprintf(w, "           (poll = connect, greeting, USER, PASS, STAT, UIDL, QUIT)\n")
	default:
		line("session", summarize(r.total))
	}
	line("login", summarize(r.login))
	if r.messages > 0 {
		ps := append([]float64(nil), r.retrMBps...)
		sort.Float64s(ps)
		fmt.Fprintf(w, "retr       %d messages, %d octets; per session %.1f MB/s (p50; min %.1f, max %.1f); aggregate %.1f MB/s over the run\n",
			r.messages, r.octets, quantile(ps, 0.5), quantile(ps, 0), quantile(ps, 1), float64(r.octets)/1e6/r.wall.Seconds())
	}
	fmt.Fprintf(w, "bytes      %d received in all answers\n", r.read)
	if r.failed == 0 {
		fmt.Fprintf(w, "errors     none\n")
	} else {
		for _, k := range sortedKinds(r.errors) {
			fmt.Fprintf(w, "errors     %-14s %d (first: %s)\n", k, r.errors[k], r.firstErr[k])
		}
	}
	if r.aborted {
		fmt.Fprintf(w, "ABORTED    -max-time reached\n")
	}
	if rep.loadBefore != "" {
		fmt.Fprintf(w, "load       %s before, %s after (1-minute load average of the machine)\n", rep.loadBefore, rep.loadAfter)
	}
	perK := func(x float64) float64 { return x * 1000 / float64(max(r.ok+r.failed, 1)) }
	for _, u := range rep.cpu {
		fmt.Fprintf(w, "cpu        %s (pid %d and descendants): %.2f s, %.2f s per 1,000 sessions\n", u.name, u.pid, u.seconds, perK(u.seconds))
	}
	if rep.logins >= 0 {
		fmt.Fprintf(w, "upstream   %d login(s) in the log, %.1f per 1,000 sessions\n", rep.logins, perK(float64(rep.logins)))
	}
	if p := rep.proxy; p != nil {
		n := max(r.ok+r.failed, 1)
		fmt.Fprintf(w, "upstream   %d connection(s), %d octets up, %d down: per session %.0f up, %.0f down, %.0f total\n",
			p.Conns, p.Up, p.Down, float64(p.Up)/float64(n), float64(p.Down)/float64(n), float64(p.Up+p.Down)/float64(n))
	}
	if m := rep.mem; m != nil {
		if m.PID != 0 {
			reset := "not reset: lifetime peak"
			if m.HWMReset {
				reset = "reset at start"
			}
			fmt.Fprintf(w, "memory     pid %d: peak %s (VmHWM, %s); sampled peak RSS %s\n", m.PID, mb(m.VmHWM), reset, mb(m.PeakRSS))
		}
		if m.Parent != 0 {
			fmt.Fprintf(w, "memory     children %q of pid %d: peak of their summed RSS %s (sampled); %d processes, at most %d at once (every process's own VmHWM, summed, not at once: %s)\n",
				m.Comm, m.Parent, mb(m.ChildPeakRSS), m.Children, m.MaxChildren, mb(m.ChildSumHWM))
		}
	}
}

// summaryLines is the report as key=value lines.
func summaryLines(rep *report) string {
	r := rep.res
	var b strings.Builder
	kv := func(k string, v any) { fmt.Fprintf(&b, "%s=%v\n", k, v) }
	f := func(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/1e6) }
	kv("label", rep.label)
	kv("mode", r.cfg.mode)
	kv("addr", r.cfg.addr)
	kv("sessions", r.cfg.sessions)
	kv("ok", r.ok)
	kv("failed", r.failed)
	kv("aborted", r.aborted)
	kv("wall_s", fmt.Sprintf("%.3f", r.wall.Seconds()))
	kv("sessions_per_s", fmt.Sprintf("%.3f", float64(r.ok)/r.wall.Seconds()))
	kv("messages_listed", r.listed)
	t, l := summarize(r.total), summarize(r.login)
	kv("session_p50_ms", f(t.p50))
	kv("session_p90_ms", f(t.p90))
	kv("session_max_ms", f(t.max))
	kv("session_p99_ms", f(t.p99))
	kv("session_mean_ms", f(t.mean))
	kv("login_p50_ms", f(l.p50))
	kv("login_p99_ms", f(l.p99))
	kv("retr_messages", r.messages)
	kv("retr_octets", r.octets)
	ps := append([]float64(nil), r.retrMBps...)
	sort.Float64s(ps)
	kv("retr_mb_s_session_p50", fmt.Sprintf("%.2f", quantile(ps, 0.5)))
	kv("retr_mb_s_aggregate", fmt.Sprintf("%.2f", float64(r.octets)/1e6/r.wall.Seconds()))
	kv("bytes_read", r.read)
	kv("load_before", rep.loadBefore)
	kv("load_after", rep.loadAfter)
	var errs []string
	for _, k := range sortedKinds(r.errors) {
		errs = append(errs, fmt.Sprintf("%s:%d", k, r.errors[k]))
	}
	kv("errors", strings.Join(errs, ","))
	perK := func(x float64) string { return fmt.Sprintf("%.3f", x*1000/float64(max(r.ok+r.failed, 1))) }
	for _, u := range rep.cpu {
		kv("cpu_"+u.name+"_s", fmt.Sprintf("%.2f", u.seconds))
		kv("cpu_"+u.name+"_s_per_1000", perK(u.seconds))
	}
	if rep.logins >= 0 {
		kv("upstream_logins", rep.logins)
		kv("upstream_logins_per_1000", perK(float64(rep.logins)))
	}
	if p := rep.proxy; p != nil {
		n := max(r.ok+r.failed, 1)
		kv("upstream_conns", p.Conns)
		kv("upstream_up", p.Up)
		kv("upstream_down", p.Down)
		kv("upstream_per_session", (p.Up+p.Down)/int64(n))
	}
	if m := rep.mem; m != nil {
		kv("mem_pid_hwm_kb", m.VmHWM)
		kv("mem_pid_peak_rss_kb", m.PeakRSS)
		kv("mem_pid_hwm_reset", m.HWMReset)
		kv("mem_children_peak_rss_kb", m.ChildPeakRSS)
		kv("mem_children_sum_hwm_kb", m.ChildSumHWM)
		kv("mem_children_max_at_once", m.MaxChildren)
	}
	return b.String()
}
