package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"time"
)

// tlsConfig returns a copy of base with ServerName set to host when empty
// and at least TLS 1.2.
func tlsConfig(base *tls.Config, host string) *tls.Config {
	var tc *tls.Config
	if base != nil {
		tc = base.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	if tc.MinVersion < tls.VersionTLS12 {
		tc.MinVersion = tls.VersionTLS12
	}
	return tc
}

// prefixConn reads from r, then from the connection.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// maxPreTLSLine bounds a line read before STARTTLS.
const maxPreTLSLine = 64 << 10

// startTLS reads the greeting on raw, checks that STARTTLS is advertised
// (asking CAPABILITY when the greeting did not list them), sends STARTTLS
// and does the TLS handshake. It refuses PREAUTH (RFC 9051 §7.1.4) and a
// server that sent anything after its STARTTLS response before the
// handshake (the STARTTLS response injection of CVE-2011-0411 et al.).
func startTLS(ctx context.Context, raw net.Conn, tc *tls.Config, tr *tracer) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
	conn, err := startTLSExchange(ctx, raw, tc, tr)
	if !stop() || err != nil {
		raw.Close()
		if err == nil {
			err = ctx.Err()
		}
		return nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return conn, nil
}

func startTLSExchange(ctx context.Context, raw net.Conn, tc *tls.Config, tr *tracer) (net.Conn, error) {
	const op = "starttls"
	br := bufio.NewReaderSize(raw, 4096)
	readLine := func() (string, error) {
		var line []byte
		for {
			frag, err := br.ReadSlice('\n')
			line = append(line, frag...)
			if len(line) > maxPreTLSLine {
				return "", tempError(op, "line too long")
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				return "", err
			}
			s := strings.TrimRight(string(line), "\r\n")
			if tr != nil {
				tr.line(false, s)
			}
			return s, nil
		}
	}
	writeLine := func(s string) error {
		if tr != nil {
			tr.line(true, s)
		}
		_, err := io.WriteString(raw, s+"\r\n")
		return err
	}

	greeting, err := readLine()
	if err != nil {
		return nil, err
	}
	var caps map[string]bool
	switch status, rest := untagged(greeting); status {
	case "OK":
		caps = capsFromCode(rest)
	case "PREAUTH":
		return nil, permError(op, "server sent PREAUTH on a cleartext connection")
	case "BYE":
		return nil, tempError(op, "server refused the connection: %s", rest)
	default:
		return nil, tempError(op, "unexpected greeting %q", truncate(greeting, 80))
	}
	if caps == nil {
		if err := writeLine("P1 CAPABILITY"); err != nil {
			return nil, err
		}
		for {
			line, err := readLine()
			if err != nil {
				return nil, err
			}
			if status, rest := untagged(line); status == "CAPABILITY" {
				caps = capList(rest)
				continue
			} else if status == "BYE" {
				return nil, tempError(op, "server closed the connection: %s", rest)
			} else if status != "" {
				continue
			}
			if status, _ := tagged(line, "P1"); status != "OK" {
				return nil, tempError(op, "CAPABILITY failed: %s", truncate(line, 80))
			}
			break
		}
	}
	if !caps["STARTTLS"] {
		return nil, permError(op, "server does not offer STARTTLS")
	}
	if err := writeLine("P2 STARTTLS"); err != nil {
		return nil, err
	}
	for {
		line, err := readLine()
		if err != nil {
			return nil, err
		}
		if status, rest := untagged(line); status == "BYE" {
			return nil, tempError(op, "server closed the connection: %s", rest)
		} else if status != "" {
			continue
		}
		if status, rest := tagged(line, "P2"); status != "OK" {
			return nil, permError(op, "server refused STARTTLS: %s", truncate(rest, 80))
		}
		break
	}
	if br.Buffered() > 0 {
		return nil, permError(op, "server sent data before the TLS handshake")
	}
	tlsConn := tls.Client(raw, tc)
	if err := tlsConn.HandshakeContext(ctx); err != nil {
		return nil, err
	}
	return tlsConn, nil
}

// untagged splits "* STATUS rest" into STATUS (upper case) and rest; it
// returns "" for a line that is not untagged.
func untagged(line string) (status, rest string) {
	after, ok := strings.CutPrefix(line, "* ")
	if !ok {
		return "", ""
	}
	status, rest, _ = strings.Cut(after, " ")
	return strings.ToUpper(status), rest
}

// tagged splits "tag STATUS rest" into STATUS (upper case) and rest if the
// line carries tag; it returns "" otherwise.
func tagged(line, tag string) (status, rest string) {
	after, ok := strings.CutPrefix(line, tag+" ")
	if !ok {
		return "", ""
	}
	status, rest, _ = strings.Cut(after, " ")
	return strings.ToUpper(status), rest
}

// capsFromCode parses a "[CAPABILITY ...] text" response text; nil when
// the text has no CAPABILITY code.
func capsFromCode(text string) map[string]bool {
	code, ok := strings.CutPrefix(text, "[")
	if !ok {
		return nil
	}
	code, _, ok = strings.Cut(code, "]")
	if !ok {
		return nil
	}
	name, rest, _ := strings.Cut(code, " ")
	if !strings.EqualFold(name, "CAPABILITY") {
		return nil
	}
	return capList(rest)
}

func capList(s string) map[string]bool {
	caps := make(map[string]bool)
	for _, c := range strings.Fields(s) {
		caps[strings.ToUpper(c)] = true
	}
	return caps
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
