package imaptest

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// Unsolicited says when a Scripted server sends an unsolicited FETCH
// (UID, FLAGS) during the listing (the UID FETCH with RFC822.SIZE), as a
// server does when another session changed a message's flags.
type Unsolicited string

const (
	// UnsolicitedNone sends none.
	UnsolicitedNone Unsolicited = ""
	// UnsolicitedBefore sends one for the first message ahead of its
	// answer in the first listing: imapclient hands that response to the
	// listing in place of the real one, which it drops.
	UnsolicitedBefore Unsolicited = "before"
	// UnsolicitedAfter sends one after the first message's answer in the
	// first listing: a late flag update of a message already listed.
	UnsolicitedAfter Unsolicited = "after"
	// UnsolicitedRolling has six messages; the k-th listing meets a flag
	// update of the k-th message ahead of its answer, so that every retry
	// gets one message further.
	UnsolicitedRolling Unsolicited = "rolling"
	// UnsolicitedQueued has five flag updates of the first message
	// queued, as a busy server holds them for a session until its next
	// command: each listing meets one ahead of the first answer (which
	// imapclient then drops), and a NOOP delivers all that are left.
	UnsolicitedQueued Unsolicited = "queued"
	// UnsolicitedLate answers no listing for the first message, as when
	// another session expunged it meanwhile, and sends its flag update
	// (that session's \Deleted) after the other answers; UID SEARCH then
	// finds it no more.
	UnsolicitedLate Unsolicited = "late"
	// UnsolicitedLateAlive is UnsolicitedLate with the first message
	// still there: UID SEARCH finds it, so its answer was lost.
	UnsolicitedLateAlive Unsolicited = "late-alive"
)

// Scripted is a minimal IMAP server, written line by line rather than
// with imapserver, for one account (any login) with two messages (six
// when rolling), UIDVALIDITY 7 and the capabilities IMAP4rev1 UIDPLUS
// MOVE. It answers LOGIN, CAPABILITY, SELECT, the listing's UID FETCH,
// UID FETCH of BODY[] and LOGOUT; anything else is answered OK and does
// nothing.
type Scripted struct {
	Addr   string
	Bodies []string // message i+1 has UID i+1
	when   Unsolicited
	// listings counts the listing FETCHes, over all connections.
	listings atomic.Int32
	// queued is what is left of UnsolicitedQueued's updates.
	queued atomic.Int32
}

const scriptedCaps = "IMAP4rev1 UIDPLUS MOVE"

// NewScripted starts a Scripted server that sends the unsolicited FETCH
// when says; it stops when the test ends.
func NewScripted(t testing.TB, when Unsolicited) *Scripted {
	s := &Scripted{when: when, Bodies: []string{
		"Message-ID: <s1@example.com>\r\nSubject: one\r\n\r\nfirst\r\n",
		"Message-ID: <s2@example.com>\r\nSubject: two\r\n\r\nsecond\r\n",
	}}
	if when == UnsolicitedQueued {
		s.queued.Store(5)
	}
	if when == UnsolicitedRolling {
		for i := 3; i <= 6; i++ {
			s.Bodies = append(s.Bodies, fmt.Sprintf("Message-ID: <s%d@example.com>\r\nSubject: %d\r\n\r\nbody %d\r\n", i, i, i))
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s.Addr = ln.Addr().String()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *Scripted) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	bodies := s.Bodies
	fmt.Fprintf(c, "* OK [CAPABILITY %s] scripted\r\n", scriptedCaps)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		tag, rest, _ := strings.Cut(strings.TrimRight(line, "\r\n"), " ")
		cmd := strings.ToUpper(rest)
		switch {
		case strings.HasPrefix(cmd, "LOGIN "):
			fmt.Fprintf(c, "%s OK [CAPABILITY %s] logged in\r\n", tag, scriptedCaps)
		case cmd == "CAPABILITY":
			fmt.Fprintf(c, "* CAPABILITY %s\r\n%s OK done\r\n", scriptedCaps, tag)
		case strings.HasPrefix(cmd, "SELECT "):
			fmt.Fprintf(c, "* %d EXISTS\r\n* FLAGS (\\Seen \\Flagged)\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT %d] n\r\n%s OK [READ-WRITE] selected\r\n", len(bodies), len(bodies)+1, tag)
		case strings.HasPrefix(cmd, "UID FETCH ") && strings.Contains(cmd, "RFC822.SIZE"):
			n := int(s.listings.Add(1))
			from, _ := strconv.Atoi(strings.Split(strings.Fields(cmd)[2], ":")[0])
			for i, b := range bodies {
				uid := i + 1
				if uid < from {
					continue
				}
				if (s.when == UnsolicitedLate || s.when == UnsolicitedLateAlive) && uid == 1 {
					continue
				}
				if s.when == UnsolicitedBefore && n == 1 && uid == 1 || s.when == UnsolicitedRolling && uid == n ||
					s.when == UnsolicitedQueued && uid == from && s.queued.Add(-1) >= 0 {
					fmt.Fprintf(c, "* %d FETCH (UID %d FLAGS (\\Flagged))\r\n", uid, uid)
				}
				hdr := b[:strings.Index(b, "\r\n")+2] + "\r\n"
				fmt.Fprintf(c, "* %d FETCH (UID %d RFC822.SIZE %d INTERNALDATE \"26-Nov-2026 10:00:00 +0000\" BODY[HEADER.FIELDS (MESSAGE-ID)] {%d}\r\n%s)\r\n",
					uid, uid, len(b), len(hdr), hdr)
				if s.when == UnsolicitedAfter && n == 1 && uid == 1 {
					fmt.Fprintf(c, "* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n")
				}
			}
			if (s.when == UnsolicitedLate || s.when == UnsolicitedLateAlive) && from <= 1 {
				fmt.Fprintf(c, "* 1 FETCH (UID 1 FLAGS (\\Deleted))\r\n")
			}
			fmt.Fprintf(c, "%s OK fetched\r\n", tag)
		case strings.HasPrefix(cmd, "UID SEARCH "):
			if s.when == UnsolicitedLateAlive {
				fmt.Fprintf(c, "* SEARCH 1\r\n%s OK searched\r\n", tag)
			} else {
				fmt.Fprintf(c, "* SEARCH\r\n%s OK searched\r\n", tag)
			}
		case strings.HasPrefix(cmd, "UID FETCH "):
			uid, _ := strconv.Atoi(strings.Fields(cmd)[2])
			if uid >= 1 && uid <= len(bodies) {
				b := bodies[uid-1]
				fmt.Fprintf(c, "* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n", uid, uid, len(b), b)
			}
			fmt.Fprintf(c, "%s OK fetched\r\n", tag)
		case cmd == "NOOP":
			for s.queued.Add(-1) >= 0 {
				fmt.Fprintf(c, "* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n")
			}
			fmt.Fprintf(c, "%s OK noop\r\n", tag)
		case cmd == "LOGOUT":
			fmt.Fprintf(c, "* BYE bye\r\n%s OK bye\r\n", tag)
			return
		default:
			fmt.Fprintf(c, "%s OK\r\n", tag)
		}
	}
}
