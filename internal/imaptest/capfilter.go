package imaptest

import (
	"bufio"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// HideCaps starts a TCP proxy on 127.0.0.1 in front of target, a cleartext
// IMAP server, and returns its address. The proxy removes the named
// capabilities (for example "MOVE") from every capability list the server
// sends: the greeting, CAPABILITY responses and [CAPABILITY ...] response
// codes, so that a client believes the server lacks them (the server still
// accepts the commands). Message literals pass untouched; nothing else is
// changed. The proxy stops when the test ends.
func HideCaps(t testing.TB, target string, caps ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("imaptest: listen: %v", err)
	}
	hide := make(map[string]bool, len(caps))
	for _, c := range caps {
		hide[strings.ToUpper(c)] = true
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
				filterCaps(cc, sc, hide)
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

// capList matches a capability list at the start of a response line:
// "* CAPABILITY ...", "* OK [CAPABILITY ...]", "tag OK [CAPABILITY ...]".
var capList = regexp.MustCompile(`(?i)^(\S+ (?:OK \[)?CAPABILITY )([^\]\r\n]*)`)

// filterCaps copies the server's responses from src to dst, response line
// by response line, with the hidden capabilities removed.
func filterCaps(dst io.Writer, src io.Reader, hide map[string]bool) {
	r := bufio.NewReaderSize(src, 64<<10)
	atStart := true // the next line starts a response (not the rest after a literal)
	for {
		line, err := r.ReadString('\n')
		if len(line) > 0 {
			if atStart {
				line = capList.ReplaceAllStringFunc(line, func(m string) string {
					sub := capList.FindStringSubmatch(m)
					var kept []string
					for _, c := range strings.Fields(sub[2]) {
						if !hide[strings.ToUpper(c)] {
							kept = append(kept, c)
						}
					}
					return sub[1] + strings.Join(kept, " ")
				})
			}
			if _, werr := io.WriteString(dst, line); werr != nil {
				return
			}
			atStart = strings.HasSuffix(line, "\n")
			if n, ok := literalSuffix(strings.TrimRight(line, "\r\n")); ok && atStart {
				if _, err := io.CopyN(dst, r, n); err != nil {
					return
				}
				atStart = false
			}
		}
		if err != nil {
			return
		}
	}
}
