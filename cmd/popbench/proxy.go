package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
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
// the octets in each direction as they pass.
type counter struct {
	to                      string
	stats                   string // file rewritten (atomically) with the counters
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
		buf := make([]byte, 32<<10)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				n.Add(int64(k))
				if _, werr := dst.Write(buf[:k]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
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

// proxyMain is "popbench proxy".
func proxyMain(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	to := fs.String("to", "", "upstream host:port to forward to (required)")
	stats := fs.String("stats", "", "file the counters are written to, after each connection and every second (required)")
	maxConns := fs.Int("max-conns", 2000, "connections at once; more are refused")
	maxTime := fs.Duration("max-time", 2*time.Hour, "exit after this long")
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
	p := &counter{to: *to, stats: stf}
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
	fmt.Fprintf(os.Stderr, "popbench proxy: %s -> %s, counters in %s\n", ln.Addr(), *to, stf)
	err = p.serve(ctx, ln, *maxConns)
	p.flush()
	return err
}
