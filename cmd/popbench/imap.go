package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// imapListMain is "popbench imap-list": one IMAP session that logs in,
// EXAMINEs a mailbox and sends UID FETCH 1:* (UID RFC822.SIZE), the
// cheapest listing an IMAP client can ask for, and reports how long each
// step took. It is the floor under any POP3 server's first poll over IMAP.
// Its IMAP client is a few raw lines: it counts the FETCH responses and
// adds up their sizes, and keeps nothing.
func imapListMain(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("imap-list", flag.ContinueOnError)
	addr := fs.String("addr", "", "IMAP server host:port, plain text (required)")
	user := fs.String("user", "", "login (required)")
	pass := fs.String("pass", "", "password")
	mailbox := fs.String("mailbox", "INBOX", "mailbox to list")
	timeout := fs.Duration("timeout", 2*time.Minute, "each exchange must make progress within this")
	summary := fs.String("summary", "", "also write the figures as key=value lines to this file")
	label := fs.String("label", "", "a name for this run, printed and written to -summary")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *user == "" || fs.NArg() > 0 {
		return errors.New("imap-list needs -addr and -user, and no arguments")
	}
	r, err := imapList(*addr, *user, *pass, *mailbox, *timeout)
	if err != nil {
		return err
	}
	if *label != "" {
		fmt.Fprintf(stdout, "== %s\n", *label)
	}
	fmt.Fprintf(stdout, "imap-list: %s as %s, %s: %d messages, %d octets listed\n", *addr, *user, *mailbox, r.messages, r.octets)
	fmt.Fprintf(stdout, "time       login %s  examine %s  uid fetch %s  total %s\n", ms(r.login), ms(r.examine), ms(r.fetch), ms(r.total))
	if *summary != "" {
		f := func(d time.Duration) string { return fmt.Sprintf("%.3f", float64(d)/1e6) }
		s := fmt.Sprintf("label=%s\naddr=%s\nmessages=%d\noctets=%d\nlogin_ms=%s\nexamine_ms=%s\nfetch_ms=%s\ntotal_ms=%s\nload_before=%s\n",
			*label, *addr, r.messages, r.octets, f(r.login), f(r.examine), f(r.fetch), f(r.total), r.load)
		return os.WriteFile(*summary, []byte(s), 0o644)
	}
	return nil
}

// imapListResult is what one imap-list session measured.
type imapListResult struct {
	messages              int
	octets                int64         // sum of RFC822.SIZE
	login, examine, fetch time.Duration // each step: command sent → tagged OK
	total                 time.Duration // dial → LOGOUT answered
	load                  string
}

func imapList(addr, user, pass, mailbox string, timeout time.Duration) (*imapListResult, error) {
	r := &imapListResult{load: loadAvg()}
	start := time.Now()
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	c := &rawIMAP{conn: nc, br: bufio.NewReaderSize(nc, 64<<10), timeout: timeout}
	line, err := c.line()
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if !strings.HasPrefix(line, "* OK") {
		return nil, fmt.Errorf("greeting %q", clip(line))
	}
	t := time.Now()
	if err := c.command("LOGIN "+imapQuote(user)+" "+imapQuote(pass), nil); err != nil {
		return nil, err
	}
	r.login = time.Since(t)
	t = time.Now()
	if err := c.command("EXAMINE "+imapQuote(mailbox), nil); err != nil {
		return nil, err
	}
	r.examine = time.Since(t)
	t = time.Now()
	err = c.command("UID FETCH 1:* (UID RFC822.SIZE)", func(line string) error {
		if !strings.HasPrefix(line, "* ") || !strings.Contains(line, " FETCH ") {
			return nil
		}
		_, rest, ok := strings.Cut(line, "RFC822.SIZE ")
		if !ok {
			return fmt.Errorf("FETCH without RFC822.SIZE: %q", clip(line))
		}
		end := strings.IndexAny(rest, " )")
		if end < 0 {
			end = len(rest)
		}
		n, err := strconv.ParseInt(rest[:end], 10, 64)
		if err != nil {
			return fmt.Errorf("FETCH: %q", clip(line))
		}
		r.messages++
		r.octets += n
		return nil
	})
	if err != nil {
		return nil, err
	}
	r.fetch = time.Since(t)
	if err := c.command("LOGOUT", nil); err != nil {
		return nil, err
	}
	r.total = time.Since(start)
	return r, nil
}

// rawIMAP is the least IMAP client that can list a mailbox.
type rawIMAP struct {
	conn    net.Conn
	br      *bufio.Reader
	timeout time.Duration
	tag     int
}

// line reads one response line, without its CRLF; a literal ({n} at the
// end) is read and kept in the line, so that a line is a whole response.
func (c *rawIMAP) line() (string, error) {
	var b strings.Builder
	for {
		c.conn.SetReadDeadline(time.Now().Add(c.timeout))
		s, err := c.br.ReadString('\n')
		if err != nil {
			return "", err
		}
		s = strings.TrimRight(s, "\r\n")
		b.WriteString(s)
		n, ok := literalSize(s)
		if !ok {
			return b.String(), nil
		}
		if _, err := io.CopyN(&b, c.br, n); err != nil {
			return "", err
		}
	}
}

// literalSize returns n when s ends with a literal's announcement {n}.
func literalSize(s string) (int64, bool) {
	if !strings.HasSuffix(s, "}") {
		return 0, false
	}
	open := strings.LastIndexByte(s, '{')
	if open < 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSuffix(s[open+1:len(s)-1], "+"), 10, 64)
	return n, err == nil && n >= 0
}

// command sends one tagged command, passes each untagged response line to
// fn (when set) and fails unless the tagged answer is OK.
func (c *rawIMAP) command(cmd string, fn func(string) error) error {
	c.tag++
	tag := "p" + strconv.Itoa(c.tag)
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	if _, err := io.WriteString(c.conn, tag+" "+cmd+"\r\n"); err != nil {
		return err
	}
	verb, _, _ := strings.Cut(cmd, " ")
	for {
		line, err := c.line()
		if err != nil {
			return fmt.Errorf("%s: %w", verb, err)
		}
		if rest, ok := strings.CutPrefix(line, tag+" "); ok {
			if !strings.HasPrefix(rest, "OK") {
				return fmt.Errorf("%s: %q", verb, clip(line))
			}
			return nil
		}
		if fn != nil {
			if err := fn(line); err != nil {
				return err
			}
		}
	}
}

// imapQuote returns s as an IMAP quoted string.
func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

func clip(s string) string {
	if len(s) > 120 {
		return s[:120] + "..."
	}
	return s
}
