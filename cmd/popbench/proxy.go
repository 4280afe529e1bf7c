package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// proxyStats are the counters of a counting proxy. up is what clients sent
// to the server (the POP3 server's IMAP commands), down what the server
// sent back.
type proxyStats struct {
	Conns  int64
	Active int64
	Up     int64
	Down   int64
}

func (s proxyStats) String() string {
	return fmt.Sprintf("conns %d\nactive %d\nup %d\ndown %d\n", s.Conns, s.Active, s.Up, s.Down)
}

func parseProxyStats(b []byte) (proxyStats, error) {
	var s proxyStats
	fields := map[string]*int64{"conns": &s.Conns, "active": &s.Active, "up": &s.Up, "down": &s.Down}
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if p := fields[k]; ok && p != nil {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return s, fmt.Errorf("proxy stats: %q", line)
			}
			*p = n
			seen++
		}
	}
	if seen != len(fields) {
		return s, errors.New("proxy stats: incomplete")
	}
	return s, nil
}

func readProxyStats(path string) (proxyStats, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return proxyStats{}, err
	}
	return parseProxyStats(b)
}

// waitIdle waits until the proxy at path has no open connection (the
// server under test closes its upstream connection shortly after QUIT),
// at most limit, and returns its last counters.
func waitIdle(path string, limit time.Duration) (proxyStats, error) {
	deadline := time.Now().Add(limit)
	for {
		s, err := readProxyStats(path)
		if err == nil && s.Active == 0 || time.Now().After(deadline) {
			return s, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// counter is a proxy: it forwards connections to an upstream and counts
// the octets in each direction as they pass. With a delay, it also
// emulates the latency of a long link (see delayCopy).
type counter struct {
	to                      string
	stats                   string        // file rewritten (atomically) with the counters
	delay                   time.Duration // latency added in each direction; 0: none
	conns, active, up, down atomic.Int64

	mu      sync.Mutex
	written proxyStats
}

func (p *counter) snapshot() proxyStats {
	return proxyStats{Conns: p.conns.Load(), Active: p.active.Load(), Up: p.up.Load(), Down: p.down.Load()}
}

// flush writes the counters when they changed.
func (p *counter) flush() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.snapshot()
	if s == p.written {
		return nil
	}
	tmp := p.stats + ".tmp"
	if err := os.WriteFile(tmp, []byte(s.String()), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, p.stats); err != nil {
		return err
	}
	p.written = s
	return nil
}

func (p *counter) serve(ctx context.Context, ln net.Listener, maxConns int) error {
	go func() { <-ctx.Done(); ln.Close() }()
	sem := make(chan struct{}, maxConns)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return err
		}
		select {
		case sem <- struct{}{}:
		default:
			c.Close() // over -max-conns
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			p.pipe(ctx, c)
		}()
	}
}

// pipe forwards one connection, counting as the octets pass.
func (p *counter) pipe(ctx context.Context, c net.Conn) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", p.to, 10*time.Second)
	if err != nil {
		return
	}
	defer u.Close()
	p.conns.Add(1)
	p.active.Add(1)
	p.flush() // so that a reader sees the connection as open
	stop := context.AfterFunc(ctx, func() { c.Close(); u.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	copyCount := func(dst, src net.Conn, n *atomic.Int64) {
		defer wg.Done()
		delayCopy(dst, src, p.delay, func(k int) { n.Add(int64(k)) })
		// Pass the end on, so the other side sees it.
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go copyCount(u, c, &p.up)
	go copyCount(c, u, &p.down)
	wg.Wait()
	p.active.Add(-1)
	p.flush()
}

// delayCopy copies src to dst until src ends or dst fails, and calls seen
// with the size of each chunk as it is read. With delay > 0 it emulates
// the latency of a long link, not a slow one: each chunk is written delay
// after it was read, in order, while later chunks are already being read
// (so the throughput stays that of the link below; only the time of each
// octet shifts). The end of src is passed on delay after it came too.
// With delay 0 each chunk is written as soon as it is read.
func delayCopy(dst io.Writer, src io.Reader, delay time.Duration, seen func(int)) error {
	buf := make([]byte, 32<<10)
	if delay <= 0 {
		for {
			k, err := src.Read(buf)
			if k > 0 {
				seen(k)
				if _, werr := dst.Write(buf[:k]); werr != nil {
					return werr
				}
			}
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	type chunk struct {
		due time.Time
		b   []byte // nil: the end of src
		err error  // with b nil: how src ended
	}
	// At most 1,024 chunks (32 MB) in flight; then reading waits.
	q := make(chan chunk, 1024)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		defer close(q)
		for {
			k, err := src.Read(buf)
			now := time.Now()
			if k > 0 {
				seen(k)
				select {
				case q <- chunk{due: now.Add(delay), b: bytes.Clone(buf[:k])}:
				case <-stop:
					return
				}
			}
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				select {
				case q <- chunk{due: now.Add(delay), err: err}:
				case <-stop:
				}
				return
			}
		}
	}()
	for c := range q {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if c.b == nil {
			return c.err
		}
		if _, err := dst.Write(c.b); err != nil {
			return err
		}
	}
	return nil
}

// proxyMain is "popbench proxy".
func proxyMain(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	to := fs.String("to", "", "upstream host:port to forward to (required)")
	stats := fs.String("stats", "", "file the counters are written to, after each connection and every second (required)")
	maxConns := fs.Int("max-conns", 2000, "connections at once; more are refused")
	maxTime := fs.Duration("max-time", 2*time.Hour, "exit after this long")
	delay := fs.Duration("delay", 0, "emulated latency: forward each chunk this long after it arrived, in each direction, in order (a round trip gains twice this; the throughput is not limited)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" || *stats == "" {
		return errors.New("proxy needs -to and -stats")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	stf, err := filepath.Abs(*stats)
	if err != nil {
		return err
	}
	p := &counter{to: *to, stats: stf, delay: *delay}
	p.written = proxyStats{Conns: -1}
	if err := p.flush(); err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	ctx, cancel2 := context.WithTimeout(ctx, *maxTime)
	defer cancel2()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.flush()
			}
		}
	}()
	fmt.Fprintf(os.Stderr, "popbench proxy: %s -> %s, counters in %s, delay %v each way\n", ln.Addr(), *to, stf, *delay)
	err = p.serve(ctx, ln, *maxConns)
	p.flush()
	return err
}
