package main

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadPasswordPiped: from a pipe or a file, the password is the first
// line, without its line end, as before.
func TestReadPasswordPiped(t *testing.T) {
	for _, in := range []string{"s3cret pass\n", "s3cret pass\r\n", "s3cret pass"} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			io.WriteString(w, in)
			if strings.HasSuffix(in, "\n") {
				io.WriteString(w, "second line\n")
			}
			w.Close()
		}()
		var prompt bytes.Buffer
		got, err := readPassword(r, &prompt, "alice")
		r.Close()
		if err != nil || got != "s3cret pass" {
			t.Errorf("piped %q: %q %v", in, got, err)
		}
		if prompt.String() != "password for alice: " {
			t.Errorf("prompt %q", prompt.String())
		}
	}
	if _, err := readPassword(strings.NewReader(""), io.Discard, "alice"); err == nil {
		t.Error("empty stdin: no error")
	}
}

// openPTY returns the two ends of a new pseudo-terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		m.Close()
		t.Skipf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		m.Close()
		t.Skipf("ptsname: %v", err)
	}
	s, err := os.OpenFile("/dev/pts/"+itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		m.Close()
		t.Skipf("open the terminal side: %v", err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		if n /= 10; n == 0 {
			return string(b[i:])
		}
	}
}

// TestReadPasswordTerminal: typed at a terminal, the password is read
// with echo off: the terminal shows the prompt's line end, never the
// password, and echo is back on afterwards.
func TestReadPasswordTerminal(t *testing.T) {
	master, slave := openPTY(t)
	type result struct {
		pass string
		err  error
	}
	done := make(chan result, 1)
	var prompt bytes.Buffer
	go func() {
		p, err := readPassword(slave, &prompt, "alice")
		done <- result{p, err}
	}()
	// Type only once the terminal is in no-echo mode (or after a while,
	// for a build that never turns echo off).
	for i := 0; i < 200; i++ {
		tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if err == nil && tio.Lflag&unix.ECHO == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := master.WriteString("Hunter2-secret\n"); err != nil {
		t.Fatal(err)
	}
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("readPassword did not return")
	}
	if res.err != nil || res.pass != "Hunter2-secret" {
		t.Fatalf("readPassword = %q, %v", res.pass, res.err)
	}
	// What the terminal showed: whatever the master side can read until
	// it has been quiet for a moment.
	chunks := make(chan []byte, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			if n > 0 {
				chunks <- bytes.Clone(buf[:n])
			}
			if err != nil {
				close(chunks)
				return
			}
		}
	}()
	var shown []byte
collect:
	for {
		select {
		case c, ok := <-chunks:
			if !ok {
				break collect
			}
			shown = append(shown, c...)
		case <-time.After(300 * time.Millisecond):
			break collect
		}
	}
	if bytes.Contains(shown, []byte("Hunter2")) {
		t.Errorf("the terminal echoed the password: %q", shown)
	}
	tio, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if tio.Lflag&unix.ECHO == 0 {
		t.Error("echo is still off after the password was read")
	}
}
