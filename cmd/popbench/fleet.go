package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// What a fleet run adds to a load run: sessions spread over many accounts
// (accountPool), the CPU the servers under test spent (cpuWatch), and the
// upstream logins they made, counted in the upstream's log (loginCount).

// accountPool hands out the accounts of a run in turn, never one that a
// session holds already: with -rotate, C workers poll N accounts, each
// session the next free account, so every account is polled and no two
// sessions of one account overlap (a POP3 server locks the maildrop).
type accountPool struct {
	mu   sync.Mutex
	cond *sync.Cond
	accs []account
	busy []bool
	next int
}

func newAccountPool(accs []account) *accountPool {
	p := &accountPool{accs: accs, busy: make([]bool, len(accs))}
	p.cond = sync.NewCond(&p.mu)
	return p
}

// acquire returns the index of the next free account, waiting while all
// are in session (only when there are fewer accounts than workers), or -1
// when stop is closed.
func (p *accountPool) acquire(stop <-chan struct{}) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		for k := range p.accs {
			i := (p.next + k) % len(p.accs)
			if !p.busy[i] {
				p.busy[i] = true
				p.next = (i + 1) % len(p.accs)
				return i
			}
		}
		select {
		case <-stop:
			return -1
		default:
		}
		p.cond.Wait()
	}
}

func (p *accountPool) release(i int) {
	p.mu.Lock()
	p.busy[i] = false
	p.mu.Unlock()
	p.cond.Broadcast()
}

// wake lets waiting acquires see a closed stop channel. It broadcasts
// under the lock, so that no acquire is between its look at stop and its
// wait.
func (p *accountPool) wake() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cond.Broadcast()
}

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// procStat is what popbench reads from /proc/PID/stat.
type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64 // clock ticks
}

// parseProcStat parses the contents of /proc/PID/stat.
func parseProcStat(b []byte) (procStat, error) {
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime ...; comm may hold spaces
	// and parentheses.
	close := bytes.LastIndexByte(b, ')')
	if close < 0 {
		return procStat{}, errors.New("proc stat: no command name")
	}
	f := strings.Fields(string(b[close+1:]))
	if len(f) < 15 {
		return procStat{}, errors.New("proc stat: too few fields")
	}
	var st procStat
	var err error
	num := func(i int) int64 {
		n, e := strconv.ParseInt(f[i], 10, 64)
		if e != nil && err == nil {
			err = fmt.Errorf("proc stat: field %d %q", i+3, f[i])
		}
		return n
	}
	st.ppid = int(num(1))
	st.utime, st.stime, st.cutime, st.cstime = num(11), num(12), num(13), num(14)
	return st, err
}

// treeCPU returns the CPU time, in clock ticks, of process root and of
// all its descendants, including those that ended and were waited for
// (their time is in their parent's cutime and cstime). A server that
// forks a process per session (Dovecot) is counted whole this way.
func treeCPU(root int) (int64, error) {
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	stats := map[int]procStat{}
	children := map[int][]int{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // ended meanwhile
		}
		st, err := parseProcStat(b)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil {
			continue
		}
		stats[pid] = st
		children[st.ppid] = append(children[st.ppid], pid)
	}
	if _, ok := stats[root]; !ok {
		return 0, fmt.Errorf("process %d not found", root)
	}
	var sum int64
	todo := []int{root}
	for len(todo) > 0 {
		pid := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		st := stats[pid]
		sum += st.utime + st.stime + st.cutime + st.cstime
		todo = append(todo, children[pid]...)
	}
	return sum, nil
}

// cpuTarget is one process tree whose CPU a run reports (-cpu NAME=PID).
type cpuTarget struct {
	name string
	pid  int
}

func parseCPUTargets(s string) ([]cpuTarget, error) {
	var out []cpuTarget
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		name, pid, ok := strings.Cut(f, "=")
		n, err := strconv.Atoi(pid)
		if !ok || name == "" || err != nil || n <= 0 || strings.ContainsAny(name, " =") {
			return nil, fmt.Errorf("-cpu %q: want NAME=PID[,NAME=PID...]", f)
		}
		out = append(out, cpuTarget{name, n})
	}
	return out, nil
}

// cpuUse is the CPU a process tree spent during the measured sessions.
type cpuUse struct {
	name    string
	pid     int
	seconds float64
}

// cpuWatch reads the CPU times of its targets before and after a run.
type cpuWatch struct {
	targets []cpuTarget
	before  []int64
}

func startCPUWatch(targets []cpuTarget) (*cpuWatch, error) {
	w := &cpuWatch{targets: targets}
	for _, t := range targets {
		n, err := treeCPU(t.pid)
		if err != nil {
			return nil, fmt.Errorf("-cpu %s: %w", t.name, err)
		}
		w.before = append(w.before, n)
	}
	return w, nil
}

func (w *cpuWatch) finish() ([]cpuUse, error) {
	var out []cpuUse
	for i, t := range w.targets {
		n, err := treeCPU(t.pid)
		if err != nil {
			return nil, fmt.Errorf("-cpu %s: %w", t.name, err)
		}
		out = append(out, cpuUse{t.name, t.pid, float64(n-w.before[i]) / clockTicks})
	}
	return out, nil
}

// defaultLoginMatch is what Dovecot writes to its log for each successful
// IMAP login (login_log_format, at info level): "imap-login: Info: Login:
// user=<...>, method=PLAIN, rip=...".
const defaultLoginMatch = "imap-login: Info: Login: "

// countLogins counts the lines of r that contain match.
func countLogins(r io.Reader, match string) (int, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	m := []byte(match)
	n := 0
	for {
		line, err := br.ReadSlice('\n')
		if bytes.Contains(line, m) {
			n++
		}
		switch {
		case err == bufio.ErrBufferFull:
			// A line longer than the buffer: the match is at its
			// start in Dovecot's format; skip the rest of the line.
			for err == bufio.ErrBufferFull {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				return n, nil
			}
			if err != nil {
				return n, err
			}
		case err == io.EOF:
			return n, nil
		case err != nil:
			return n, err
		}
	}
}

// loginCount counts the lines that match in a log file from the offset
// it had at the start of the measured sessions.
type loginCount struct {
	path, match string
	offset      int64
}

func startLoginCount(path, match string) (*loginCount, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("-login-log: %w", err)
	}
	return &loginCount{path: path, match: match, offset: fi.Size()}, nil
}

func (l *loginCount) count() (int, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := f.Seek(l.offset, io.SeekStart); err != nil {
		return 0, err
	}
	return countLogins(f, l.match)
}

// finish counts once the log has stopped growing (a server logs a login
// a moment after it happened), waiting at most limit.
func (l *loginCount) finish(limit time.Duration) (int, error) {
	deadline := time.Now().Add(limit)
	last := -1
	for {
		n, err := l.count()
		if err != nil {
			return 0, err
		}
		if n == last || time.Now().After(deadline) {
			return n, nil
		}
		last = n
		time.Sleep(300 * time.Millisecond)
	}
}

// settleMain is "popbench settle": it waits until the process trees of
// -cpu together use less than -below of one core over each -every, at
// most -max-time, and prints the CPU seconds they used meanwhile. A
// script calls it after a first poll that answers early while work goes
// on behind it (in the server, and in the upstream it reads from).
func settleMain(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("settle", flag.ContinueOnError)
	cpu := fs.String("cpu", "", "NAME=PID[,NAME=PID...]: the process trees to watch (required)")
	every := fs.Duration("every", time.Second, "length of each look")
	below := fs.Float64("below", 0.05, "quiet: less than this share of one core over one look")
	maxTime := fs.Duration("max-time", 15*time.Minute, "give up after this long (exit status 0, \"busy\" printed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	targets, err := parseCPUTargets(*cpu)
	if err != nil {
		return err
	}
	if len(targets) == 0 || *every <= 0 {
		return errors.New("settle needs -cpu and a positive -every")
	}
	start := time.Now()
	quiet, used, err := settle(targets, *every, *below, *maxTime)
	if err != nil {
		return err
	}
	state := "quiet"
	if !quiet {
		state = "busy"
	}
	fmt.Fprintf(stdout, "%s after %.2f s, %.2f s of CPU\n", state, time.Since(start).Seconds(), used)
	return nil
}

// settle waits until the trees of targets use less than below of a core
// over one look of every, at most limit. It returns whether they went
// quiet and the CPU seconds they used.
func settle(targets []cpuTarget, every time.Duration, below float64, limit time.Duration) (bool, float64, error) {
	sum := func() (int64, error) {
		var n int64
		for _, t := range targets {
			k, err := treeCPU(t.pid)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", t.name, err)
			}
			n += k
		}
		return n, nil
	}
	first, err := sum()
	if err != nil {
		return false, 0, err
	}
	last, deadline := first, time.Now().Add(limit)
	for time.Now().Before(deadline) {
		time.Sleep(every)
		n, err := sum()
		if err != nil {
			return false, 0, err
		}
		if float64(n-last)/clockTicks < below*every.Seconds() {
			return true, float64(n-first) / clockTicks, nil
		}
		last = n
	}
	return false, float64(last-first) / clockTicks, nil
}
