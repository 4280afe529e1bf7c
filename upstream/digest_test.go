package upstream_test

import (
	"crypto/sha256"
	"strconv"
	"strings"
	"testing"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

// TestDigests: the SHA-256 of each body, by UID, for the UIDs that exist;
// a UID set longer than one command is split.
func TestDigests(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		a := message(1, "twin body A\r\n")
		b := message(1, "twin body B\r\n")
		ua := u.Append(u.Mailbox, a)
		ub := u.Append(u.Mailbox, b)
		c, _ := open(t, u)
		// Many absent UIDs, none adjacent, so that the set takes several
		// commands of 8 KB.
		uids := []uint32{ua, ub}
		for i := range uint32(3000) {
			uids = append(uids, 10_000+2*i)
		}
		sums, err := c.Digests(t.Context(), uids)
		if err != nil {
			t.Fatal(err)
		}
		if len(sums) != 2 || sums[ua] != sha256.Sum256(a) || sums[ub] != sha256.Sum256(b) {
			t.Errorf("Digests = %x, want the SHA-256 of the two bodies", sums)
		}
		if sums, err := c.Digests(t.Context(), nil); err != nil || len(sums) != 0 {
			t.Errorf("Digests of no UIDs = %v, %v", sums, err)
		}
	})
}

// TestDigestsBodyFirst: a server that sends the body before the UID gets
// no digest for that message (imapclient cannot tell which command such a
// response answers, and drops it), and no error; a body that ends early is
// an error.
func TestDigestsBodyFirst(t *testing.T) {
	body := "Subject: x\r\n\r\nhello\r\n"
	t.Run("body first", func(t *testing.T) {
		addr := serveScript(t, func(s *scriptConn) {
			s.send("* OK [CAPABILITY IMAP4rev1] hello")
			tag, _ := s.expect("UID FETCH")
			s.c.Write([]byte("* 1 FETCH (BODY[] {" + strconv.Itoa(len(body)) + "}\r\n" + body + " UID 7)\r\n"))
			s.send(tag + " OK done")
			s.serveLogout()
		})
		c, err := upstream.Dial(t.Context(), config(t, addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sums, err := c.Digests(t.Context(), []uint32{7})
		if err != nil || len(sums) != 0 {
			t.Errorf("Digests = %x, %v; want no digest and no error", sums, err)
		}
	})
	t.Run("short body", func(t *testing.T) {
		addr := serveScript(t, func(s *scriptConn) {
			s.send("* OK [CAPABILITY IMAP4rev1] hello")
			s.expect("UID FETCH")
			s.c.Write([]byte("* 1 FETCH (UID 7 BODY[] {100}\r\n" + strings.Repeat("a", 50)))
		})
		c, err := upstream.Dial(t.Context(), config(t, addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Digests(t.Context(), []uint32{7})
		wantKind(t, err, upstream.KindTemp)
	})
}
