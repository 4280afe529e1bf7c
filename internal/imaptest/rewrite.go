package imaptest

import (
	"bufio"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RewriteProxy starts a TCP proxy on 127.0.0.1 in front of target, a
// cleartext IMAP server, and returns its address. Each response line the
// server sends (not the octets of a literal) goes through rewrite before
// it reaches the client; what the client sends passes untouched. The proxy
// stops when the test ends.
func RewriteProxy(t testing.TB, target string, rewrite func(line string) string) string {
	t.Helper()
	return lineProxy(t, target, func(client, server net.Conn) { rewriteLines(client, server, rewrite) })
}

// lineProxy starts a TCP proxy on 127.0.0.1 in front of target and returns
// its address: what a client sends goes to the server untouched, and
// responses go through responses(client, server), which copies them. The
// proxy stops when the test ends.
func lineProxy(t testing.TB, target string, responses func(client, server net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("imaptest: listen: %v", err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			cc, err := ln.Accept()
			if err != nil {
				return
			}
			sc, err := net.DialTimeout("tcp", target, 10*time.Second)
			if err != nil {
				cc.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, cc, sc)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				io.Copy(sc, cc)
				sc.Close()
				cc.Close()
			}()
			go func() {
				defer wg.Done()
				responses(cc, sc)
				cc.Close()
				sc.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// rewriteLines copies responses from src to dst, each line that starts a
// response (or follows a literal) through rewrite, literals untouched.
func rewriteLines(dst io.Writer, src io.Reader, rewrite func(string) string) {
	r := bufio.NewReaderSize(src, 64<<10)
	for {
		line, err := r.ReadString('\n')
		if len(line) > 0 {
			if strings.HasSuffix(line, "\n") {
				line = rewrite(line)
			}
			if _, werr := io.WriteString(dst, line); werr != nil {
				return
			}
			if n, ok := literalSuffix(strings.TrimRight(line, "\r\n")); ok && strings.HasSuffix(line, "\n") {
				if _, err := io.CopyN(dst, r, n); err != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

var rfc822Size = regexp.MustCompile(`(?i)RFC822\.SIZE (\d+)`)

// SkewSizes is a RewriteProxy that adds delta to every RFC822.SIZE the
// server reports, as Exchange reports sizes that are not the octets of
// the message it sends.
func SkewSizes(t testing.TB, target string, delta int64) string {
	t.Helper()
	return RewriteProxy(t, target, func(line string) string {
		return rfc822Size.ReplaceAllStringFunc(line, func(m string) string {
			n, _ := strconv.ParseInt(rfc822Size.FindStringSubmatch(m)[1], 10, 64)
			return "RFC822.SIZE " + strconv.FormatInt(max(n+delta, 0), 10)
		})
	})
}

// AddCaps is a RewriteProxy that adds caps to every capability list the
// server sends (the greeting, CAPABILITY responses, [CAPABILITY ...]
// codes), for capabilities imapserver does not know, such as Gmail's
// X-GM-EXT-1. The server does not implement them.
func AddCaps(t testing.TB, target string, caps ...string) string {
	t.Helper()
	return RewriteProxy(t, target, func(line string) string {
		return capList.ReplaceAllString(line, "${1}${2} "+strings.Join(caps, " "))
	})
}
