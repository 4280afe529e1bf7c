package faultproxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// sink is an upstream that answers "ok <line>" to every line, and on
// "big N" sends N octets of 'x' and a newline.
func sink(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					line = strings.TrimSpace(line)
					if n, ok := strings.CutPrefix(line, "big "); ok {
						var size int
						for _, ch := range n {
							size = size*10 + int(ch-'0')
						}
						c.Write(append(bytes.Repeat([]byte("x"), size), '\n'))
						continue
					}
					io.WriteString(c, "ok "+line+"\n")
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c, bufio.NewReader(c)
}

func TestPatternSplitAcrossWrites(t *testing.T) {
	p := New(t, sink(t))
	r := p.On(ToServer, "UID EXPUNGE", Reset)
	c, br := dial(t, p.Addr)
	io.WriteString(c, "a1 NOOP\n")
	if l, _ := br.ReadString('\n'); l != "ok a1 NOOP\n" {
		t.Fatalf("got %q", l)
	}
	io.WriteString(c, "a2 UID EXP")
	time.Sleep(50 * time.Millisecond)
	io.WriteString(c, "UNGE 1:3\n")
	if !r.Wait(5 * time.Second) {
		t.Fatal("rule did not fire")
	}
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("connection still works after the reset")
	}
	ev, _ := r.Event()
	if ev.Offset != int64(len("a1 NOOP\na2 UID EXPUNGE")) {
		t.Errorf("fired at offset %d", ev.Offset)
	}
	if !p.Saw("a1 NOOP") || p.Faults() != 1 {
		t.Errorf("report: %s %v", p.Report(), p.Commands())
	}
	// A new connection works.
	c2, br2 := dial(t, p.Addr)
	io.WriteString(c2, "b1 NOOP\n")
	if l, _ := br2.ReadString('\n'); l != "ok b1 NOOP\n" {
		t.Fatalf("after the cut: %q", l)
	}
}

func TestAfterOctets(t *testing.T) {
	p := New(t, sink(t))
	p.After(ToClient, "", 1000, Close)
	c, br := dial(t, p.Addr)
	io.WriteString(c, "big 5000\n")
	got, _ := io.ReadAll(br)
	if len(got) != 1000 {
		t.Fatalf("got %d octets, want exactly 1000", len(got))
	}
}

func TestStallAndRelease(t *testing.T) {
	p := New(t, sink(t))
	r := p.On(ToServer, "stall-me", Stall)
	c, br := dial(t, p.Addr)
	io.WriteString(c, "x stall-me\n")
	if !r.Wait(5 * time.Second) {
		t.Fatal("no stall")
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("data went through a stall")
	}
	// The trigger point is after the pattern: the rest of the line waits.
	c2, br2 := dial(t, p.Addr)
	io.WriteString(c2, "y NOOP\n")
	c2.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := br2.ReadString('\n'); err == nil {
		t.Fatal("a new connection is not stalled")
	}
	p.Release()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if l, err := br.ReadString('\n'); l != "ok x stall-me\n" {
		t.Fatalf("after release: %q %v", l, err)
	}
	if l, err := br2.ReadString('\n'); l != "ok y NOOP\n" {
		t.Fatalf("after release: %q %v", l, err)
	}
}

func TestRefuse(t *testing.T) {
	p := New(t, sink(t))
	p.Refuse(true)
	// The reset may come before the dial returns.
	if c, err := net.Dial("tcp", p.Addr); err == nil {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "a NOOP\n")
		if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
			t.Fatal("refused connection answered")
		}
		c.Close()
	}
	p.Refuse(false)
	c, br := dial(t, p.Addr)
	io.WriteString(c, "a NOOP\n")
	if l, _ := br.ReadString('\n'); l != "ok a NOOP\n" {
		t.Fatalf("got %q", l)
	}
}
