package imaptest

import (
	"bufio"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
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
	hide := make(map[string]bool, len(caps))
	for _, c := range caps {
		hide[strings.ToUpper(c)] = true
	}
	return lineProxy(t, target, func(client, server net.Conn) { filterCaps(client, server, hide) })
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
