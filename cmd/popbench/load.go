package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Modes of a run.
const (
	modePoll  = "poll"  // USER, PASS, STAT, UIDL, QUIT
	modeRetr  = "retr"  // USER, PASS, STAT, LIST, RETR 1..n, QUIT
	modeMixed = "mixed" // USER, PASS, STAT, UIDL, LIST, RETR of the last -mixed-retr messages, QUIT
)

// account is one login.
type account struct{ user, pass string }

// config is one load run.
type config struct {
	addr      string
	accounts  []account
	sessions  int           // concurrent workers
	duration  time.Duration // run for this long (0: use rounds)
	rounds    int           // sessions per worker when duration is 0
	mode      string
	pipeline  int // RETRs in flight (retr, mixed)
	mixedRetr int // mixed: RETR this many of the last messages
	tag       string
	rotate    bool          // each session the next free account (accountPool), not worker mod count
	warmup    bool          // one unmeasured poll per login first (see warm)
	timeout   time.Duration // per exchange
	maxTime   time.Duration // hard bound on the whole run
	maxErrors int           // stop after this many failed sessions (0: never)
}

// sessionResult is what one session measured.
type sessionResult struct {
	login    time.Duration // dial → PASS answered
	total    time.Duration // dial → QUIT answered
	retrTime time.Duration // first RETR sent → last RETR read
	messages int           // messages retrieved
	octets   int64         // message octets retrieved (dot-unstuffed)
	read     int64         // octets received, all answers
	listed   int           // STAT count
}

// result is a whole run.
type result struct {
	cfg      config
	wall     time.Duration
	ok       int
	failed   int
	errors   map[string]int
	firstErr map[string]string
	login    []time.Duration
	total    []time.Duration
	retrMBps []float64 // per session
	messages int
	octets   int64
	read     int64
	listed   int // STAT count of the last successful session
	aborted  bool
}

// loginName is the login of worker w: its account, with "TAG w<w>" added
// when -tag is set (popbridge device tags: one maildrop lock per worker).
func (c *config) loginName(w int) account {
	a := c.accounts[w%len(c.accounts)]
	if c.tag != "" {
		a.user += c.tag + "w" + strconv.Itoa(w)
	}
	return a
}

// run drives the sessions of cfg and returns what they measured. It
// returns an error only when the run could not start.
func run(ctx context.Context, cfg config) (*result, error) {
	if len(cfg.accounts) == 0 {
		return nil, errors.New("no users")
	}
	if cfg.sessions < 1 {
		cfg.sessions = 1
	}
	if cfg.duration <= 0 && cfg.rounds < 1 {
		cfg.rounds = 1
	}
	if cfg.pipeline < 1 {
		cfg.pipeline = 1
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.maxTime)
	defer cancel()

	res := &result{cfg: cfg, errors: map[string]int{}, firstErr: map[string]string{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stop) }) }
	var deadline time.Time
	start := time.Now()
	if cfg.duration > 0 {
		deadline = start.Add(cfg.duration)
	}
	var pool *accountPool
	if cfg.rotate {
		pool = newAccountPool(cfg.accounts)
		defer context.AfterFunc(ctx, pool.wake)()
	}
	for w := 0; w < cfg.sessions; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := cfg.loginName(w)
			for round := 0; ; round++ {
				if cfg.duration > 0 && !time.Now().Before(deadline) || cfg.duration <= 0 && round >= cfg.rounds {
					return
				}
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				held := -1
				if pool != nil {
					if held = pool.acquire(ctx.Done()); held < 0 {
						return
					}
					// A worker that waited for an account may find the run over.
					if cfg.duration > 0 && !time.Now().Before(deadline) {
						pool.release(held)
						return
					}
					a = cfg.accounts[held]
				}
				sr, err := session(ctx, &cfg, a, cfg.mode)
				if held >= 0 {
					pool.release(held)
				}
				mu.Lock()
				res.read += sr.read
				if err != nil {
					kind := kindOf(err)
					if ctx.Err() != nil {
						kind = kindAborted
					}
					res.failed++
					res.errors[kind]++
					if _, ok := res.firstErr[kind]; !ok {
						res.firstErr[kind] = err.Error()
					}
					if cfg.maxErrors > 0 && res.failed >= cfg.maxErrors {
						halt()
					}
				} else {
					res.ok++
					res.login = append(res.login, sr.login)
					res.total = append(res.total, sr.total)
					res.messages += sr.messages
					res.octets += sr.octets
					res.listed = sr.listed
					if sr.messages > 0 && sr.retrTime > 0 {
						res.retrMBps = append(res.retrMBps, float64(sr.octets)/1e6/sr.retrTime.Seconds())
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res.wall = time.Since(start)
	res.aborted = ctx.Err() != nil
	return res, nil
}

// warm runs one unmeasured poll per distinct login of cfg, one after
// another: the first login may have to build caches (popbridge: the
// first-sight sync; Dovecot: its indexes) that a poll of an unchanged
// mailbox does not pay. With rotate, every account is a login.
func warm(ctx context.Context, cfg config) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.maxTime)
	defer cancel()
	seen := map[string]bool{}
	logins := max(cfg.sessions, 1)
	if cfg.rotate {
		logins = len(cfg.accounts)
	}
	for w := range logins {
		a := cfg.loginName(w)
		if cfg.rotate {
			a = cfg.accounts[w]
		}
		if seen[a.user] {
			continue
		}
		seen[a.user] = true
		if _, err := session(ctx, &cfg, a, modePoll); err != nil {
			return fmt.Errorf("warm-up poll as %s: %w", a.user, err)
		}
	}
	return nil
}

// session runs one POP3 session of mode as a.
func session(ctx context.Context, cfg *config, a account, mode string) (sr sessionResult, err error) {
	start := time.Now()
	c, err := dial(cfg.addr, cfg.timeout)
	if err != nil {
		return sr, err
	}
	defer c.close()
	// The run's hard bound ends a session in the middle.
	stop := context.AfterFunc(ctx, func() { c.NetConn().SetDeadline(time.Unix(1, 0)) })
	defer stop()
	defer func() { sr.read = c.Received() }()

	if err := c.login(a.user, a.pass); err != nil {
		return sr, err
	}
	sr.login = time.Since(start)
	n, _, err := c.stat()
	if err != nil {
		return sr, err
	}
	sr.listed = n
	if mode == modePoll || mode == modeMixed {
		lines, err := c.listing("UIDL", nil)
		if err != nil {
			return sr, err
		}
		if lines != n {
			return sr, failf(kindProtocol, "UIDL listed %d messages, STAT %d", lines, n)
		}
	}
	if mode == modeRetr || mode == modeMixed {
		sizes, err := c.sizes(n)
		if err != nil {
			return sr, err
		}
		first := 1
		if mode == modeMixed {
			first = max(1, n-cfg.mixedRetr+1)
		}
		rs := time.Now()
		if err := retrieve(c, sizes, first, n, cfg.pipeline, &sr); err != nil {
			return sr, err
		}
		sr.retrTime = time.Since(rs)
	}
	if err := c.quit(); err != nil {
		return sr, err
	}
	sr.total = time.Since(start)
	return sr, nil
}

// retrieve sends RETR first..last with at most window commands in flight
// and checks that each message has the octets LIST announced.
func retrieve(c *client, sizes []int64, first, last, window int, sr *sessionResult) error {
	next := first // the next RETR to send
	for got := first; got <= last; got++ {
		for next <= last && next-got < window {
			c.send("RETR " + strconv.Itoa(next))
			next++
		}
		if err := c.flush(); err != nil {
			return err
		}
		if _, err := c.status("RETR"); err != nil {
			return err
		}
		n, err := c.body()
		if err != nil {
			return err
		}
		if n != sizes[got-1] {
			return failf(kindSize, "RETR %d sent %d octets, LIST said %d", got, n, sizes[got-1])
		}
		sr.messages++
		sr.octets += n
	}
	return nil
}

// quantile returns the q-quantile (0..1) of sorted durations, nearest rank.
func quantile[T any](sorted []T, q float64) T {
	var zero T
	if len(sorted) == 0 {
		return zero
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

type durStats struct {
	n                       int
	min, p50, p90, p99, max time.Duration
	mean                    time.Duration
}

func summarize(d []time.Duration) durStats {
	if len(d) == 0 {
		return durStats{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	var sum time.Duration
	for _, x := range s {
		sum += x
	}
	return durStats{
		n: len(s), min: s[0], max: s[len(s)-1],
		p50: quantile(s, 0.50), p90: quantile(s, 0.90), p99: quantile(s, 0.99),
		mean: sum / time.Duration(len(s)),
	}
}

// sortedKinds returns the error kinds of m, most frequent first.
func sortedKinds(m map[string]int) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool {
		if m[ks[i]] != m[ks[j]] {
			return m[ks[i]] > m[ks[j]]
		}
		return ks[i] < ks[j]
	})
	return ks
}
