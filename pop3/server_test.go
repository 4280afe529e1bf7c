package pop3_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/pop3"
)

func itoa(n int) string { return strconv.Itoa(n) }

func size(s string) string { return itoa(len(s)) }

var capaAuth = ok("+OK capability list follows", "TOP", "USER", "SASL PLAIN LOGIN",
	"RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "UIDL", "IMPLEMENTATION popbridge", ".")

var capaTrans = ok("+OK capability list follows", "TOP", "RESP-CODES", "PIPELINING",
	"UIDL", "IMPLEMENTATION popbridge", ".")

func manyErrors(s *pop3.Server) { s.MaxErrors = 1000 }

func TestAuthorizationState(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be, manyErrors), nil)
	notHere := ok("-ERR command not valid in this state")
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"CAPA", capaAuth},
		{"CAPA x", ok("-ERR syntax error: CAPA takes no arguments")},
		{"STAT", notHere},
		{"LIST", notHere},
		{"LIST 1", notHere},
		{"RETR 1", notHere},
		{"TOP 1 0", notHere},
		{"DELE 1", notHere},
		{"NOOP", notHere},
		{"RSET", notHere},
		{"UIDL", notHere},
		{"STLS", ok("-ERR unknown command")}, // no TLSConfig
		{"XYZZY", ok("-ERR unknown command")},
		{"", ok("-ERR unknown command")},
		{"PASS " + testPass, ok("-ERR USER first")},
		{"USER", ok("-ERR syntax error: USER name")},
		{"USER a b", ok("-ERR syntax error: USER name")},
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS", ok("-ERR syntax error: PASS string")},
		{"PASS " + testPass, ok("-ERR USER first")}, // a failed PASS forgets USER
		{"user " + testUser, ok("+OK send PASS")},
		{"PASS wrong", ok("-ERR [AUTH] authentication failed")},
		{"PASS " + testPass, ok("-ERR USER first")},
		{"USER " + testUser, ok("+OK send PASS")},
		{"pass " + testPass, ok(maildropLine(defaultMsgs()))},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.expectClosed()
	c.wait()
	commits, closes, after := be.drop(t).calls()
	if !slices.EqualFunc(commits, [][]int{{}}, slices.Equal) || closes != 1 || after {
		t.Errorf("commits %v, closes %d, call after close %v; want [[]] 1 false", commits, closes, after)
	}
}

func TestQuitInAuthorization(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be), nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.expectClosed()
	c.wait()
	if be.numDrops() != 0 || len(be.logins) != 0 {
		t.Errorf("logins %v, maildrops %d; want none", be.logins, be.numDrops())
	}
}

func TestTransactionState(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be, manyErrors), nil)
	c.login()
	all := len(msg1) + len(msg2) + len(msg3)
	notHere := ok("-ERR command not valid in this state")
	noSuch := ok("-ERR no such message")
	badNum := ok("-ERR invalid message number")
	retr1 := ok("+OK "+size(msg1)+" octets", "From: a@example.org", "Subject: one", "",
		"Hello", "..dotted line", "...two dots", "..", "end", ".")
	c.run([]step{
		{"STAT", ok("+OK 3 " + itoa(all))},
		{"STAT 1", ok("-ERR syntax error: STAT takes no arguments")},
		{"LIST", ok("+OK 3 messages ("+itoa(all)+" octets)", "1 "+size(msg1), "2 "+size(msg2), "3 "+size(msg3), ".")},
		{"LIST 2", ok("+OK 2 " + size(msg2))},
		{"list  2", ok("+OK 2 " + size(msg2))},
		{"LIST 02", ok("+OK 2 " + size(msg2))},
		{"LIST 0", noSuch},
		{"LIST -1", badNum},
		{"LIST +1", badNum},
		{"LIST 99", noSuch},
		{"LIST 4", noSuch},
		{"LIST abc", badNum},
		{"LIST 1x", badNum},
		{"LIST 99999999999999999999999999999999", noSuch},
		{"LIST 1 2", ok("-ERR syntax error: LIST [msg]")},
		{"UIDL", ok("+OK unique-id listing follows", "1 uidl-1", "2 uidl-2", "3 uidl-3", ".")},
		{"UIDL 3", ok("+OK 3 uidl-3")},
		{"UIDL 4", noSuch},
		{"UIDL x", badNum},
		{"UIDL 1 2", ok("-ERR syntax error: UIDL [msg]")},
		{"RETR 1", retr1},
		{"RETR 2", ok("+OK "+size(msg2)+" octets", "Subject: two", "", "line1", "line2", "line3", "line4", "no final crlf", ".")},
		{"RETR 3", ok("+OK "+size(msg3)+" octets", "Subject: three", "", "bare", "lf", ".")},
		{"RETR", ok("-ERR syntax error: RETR msg")},
		{"RETR 1 2", ok("-ERR syntax error: RETR msg")},
		{"RETR 0", noSuch},
		{"RETR 18446744073709551617", noSuch},
		{"TOP 2 0", ok("+OK top of message follows", "Subject: two", "", ".")},
		{"TOP 2 3", ok("+OK top of message follows", "Subject: two", "", "line1", "line2", "line3", ".")},
		{"TOP 1 2", ok("+OK top of message follows", "From: a@example.org", "Subject: one", "", "Hello", "..dotted line", ".")},
		{"TOP 2 99999999999999999999999", ok("+OK top of message follows", "Subject: two", "", "line1", "line2", "line3", "line4", "no final crlf", ".")},
		{"TOP 2", ok("-ERR syntax error: TOP msg n")},
		{"TOP 2 1 1", ok("-ERR syntax error: TOP msg n")},
		{"TOP 2 -1", ok("-ERR invalid number of lines")},
		{"TOP 2 x", ok("-ERR invalid number of lines")},
		{"TOP 9 1", noSuch},
		{"NOOP", ok("+OK")},
		{"NOOP x", ok("-ERR syntax error: NOOP takes no arguments")},
		{"DELE", ok("-ERR syntax error: DELE msg")},
		{"DELE 4", noSuch},
		{"DELE 1", ok("+OK message 1 deleted")},
		{"STAT", ok("+OK 2 " + itoa(len(msg2)+len(msg3)))},
		{"LIST", ok("+OK 2 messages ("+itoa(len(msg2)+len(msg3))+" octets)", "2 "+size(msg2), "3 "+size(msg3), ".")},
		{"UIDL", ok("+OK unique-id listing follows", "2 uidl-2", "3 uidl-3", ".")},
		{"LIST 1", ok("-ERR message 1 already deleted")},
		{"UIDL 1", ok("-ERR message 1 already deleted")},
		{"RETR 1", ok("-ERR message 1 already deleted")},
		{"TOP 1 0", ok("-ERR message 1 already deleted")},
		{"DELE 1", ok("-ERR message 1 already deleted")},
		{"RSET", ok(maildropLine(defaultMsgs()))},
		{"RSET x", ok("-ERR syntax error: RSET takes no arguments")},
		{"STAT", ok("+OK 3 " + itoa(all))},
		{"RETR 1", retr1},
		{"DELE 3", ok("+OK message 3 deleted")},
		{"dele 1", ok("+OK message 1 deleted")},
		{"USER " + testUser, notHere},
		{"PASS " + testPass, notHere},
		{"AUTH PLAIN", notHere},
		{"AUTH", notHere},
		{"STLS", ok("-ERR unknown command")},
		{"CAPA", capaTrans},
		{"QUIT x", ok("-ERR syntax error: QUIT takes no arguments")},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.expectClosed()
	c.wait()
	commits, closes, after := be.drop(t).calls()
	if !slices.EqualFunc(commits, [][]int{{1, 3}}, slices.Equal) || closes != 1 || after {
		t.Errorf("commits %v, closes %d, call after close %v; want [[1 3]] 1 false", commits, closes, after)
	}
}

// TestRetrChunked checks the dot-stuffing when the backend writes a few
// octets at a time: dots, CR and LF fall on write boundaries.
func TestRetrChunked(t *testing.T) {
	for _, chunk := range []int{1, 2, 3, 5} {
		be := newFakeBackend()
		be.chunk = chunk
		c := pipeSession(t, newServer(t, be), nil)
		c.login()
		c.run([]step{
			{"RETR 1", ok("+OK "+size(msg1)+" octets", "From: a@example.org", "Subject: one", "",
				"Hello", "..dotted line", "...two dots", "..", "end", ".")},
			{"RETR 2", ok("+OK "+size(msg2)+" octets", "Subject: two", "", "line1", "line2", "line3", "line4", "no final crlf", ".")},
			{"RETR 3", ok("+OK "+size(msg3)+" octets", "Subject: three", "", "bare", "lf", ".")},
		})
	}
}

func TestRetrEmptyMessage(t *testing.T) {
	be := newFakeBackend()
	be.msgs = []fakeMsg{{"", "empty", ""}}
	c := pipeSession(t, newServer(t, be), nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok("+OK maildrop has 1 messages (0 octets)")},
		{"RETR 1", ok("+OK 0 octets", ".")},
		{"TOP 1 0", ok("+OK top of message follows", ".")},
	})
}

func TestQuitWithoutDele(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be), nil)
	c.login()
	c.run([]step{
		{"DELE 2", ok("+OK message 2 deleted")},
		{"RSET", ok(maildropLine(defaultMsgs()))},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.expectClosed()
	c.wait()
	commits, closes, _ := be.drop(t).calls()
	if len(commits) != 1 || commits[0] == nil || len(commits[0]) != 0 || closes != 1 {
		t.Errorf("commits %v, closes %d; want one empty non-nil Commit and one Close", commits, closes)
	}
}

func TestCommitFailure(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{errors.New("UID MOVE: NO [OVERQUOTA] at imap.internal:993"), "-ERR [SYS/TEMP] internal error, try again later"},
		{&pop3.Error{Code: pop3.CodeSysTemp, Text: "some deleted messages not removed"}, "-ERR [SYS/TEMP] some deleted messages not removed"},
	} {
		be := newFakeBackend()
		be.commitErr = tc.err
		c := pipeSession(t, newServer(t, be), nil)
		c.login()
		c.run([]step{
			{"DELE 2", ok("+OK message 2 deleted")},
			{"QUIT", ok(tc.want)},
		})
		c.expectClosed()
		c.wait()
		commits, closes, after := be.drop(t).calls()
		if !slices.EqualFunc(commits, [][]int{{2}}, slices.Equal) || closes != 1 || after {
			t.Errorf("commits %v, closes %d, call after close %v", commits, closes, after)
		}
	}
}

func TestDroppedAfterDele(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be), nil)
	c.login()
	c.run([]step{
		{"DELE 1", ok("+OK message 1 deleted")},
		{"DELE 2", ok("+OK message 2 deleted")},
	})
	c.send("QUI") // not a complete line
	c.nc.Close()
	c.wait()
	commits, closes, _ := be.drop(t).calls()
	if len(commits) != 0 || closes != 1 {
		t.Errorf("commits %v, closes %d; want none and 1", commits, closes)
	}
}

func TestPipelining(t *testing.T) {
	be := newFakeBackend()
	var cc *countingConn
	c := pipeSession(t, newServer(t, be), func(nc net.Conn) net.Conn {
		cc = &countingConn{Conn: nc}
		return cc
	})
	c.expect("greeting", "+OK POP3 server ready")
	burst := []step{
		{"CAPA", capaAuth},
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok(maildropLine(defaultMsgs()))},
		{"STAT", ok("+OK 3 " + itoa(len(msg1)+len(msg2)+len(msg3)))},
		{"LIST 1", ok("+OK 1 " + size(msg1))},
		{"UIDL 2", ok("+OK 2 uidl-2")},
		{"NOOP", ok("+OK")},
		{"TOP 2 1", ok("+OK top of message follows", "Subject: two", "", "line1", ".")},
		{"RETR 3", ok("+OK "+size(msg3)+" octets", "Subject: three", "", "bare", "lf", ".")},
		{"DELE 1", ok("+OK message 1 deleted")},
		{"LIST 1", ok("-ERR message 1 already deleted")},
		{"DELE 3", ok("+OK message 3 deleted")},
		{"STAT", ok("+OK 1 " + size(msg2))},
		{"RSET", ok(maildropLine(defaultMsgs()))},
		{"DELE 2", ok("+OK message 2 deleted")},
		{"UIDL", ok("+OK unique-id listing follows", "1 uidl-1", "3 uidl-3", ".")},
		{"LIST 3", ok("+OK 3 " + size(msg3))},
		{"NOOP", ok("+OK")},
		{"STAT", ok("+OK 2 " + itoa(len(msg1)+len(msg3)))},
		{"QUIT", ok("+OK POP3 server signing off")},
	}
	if len(burst) != 20 {
		t.Fatalf("%d commands", len(burst))
	}
	var all strings.Builder
	for _, s := range burst {
		all.WriteString(s.send + "\r\n")
	}
	before := cc.writes.Load()
	c.send(all.String())
	for _, s := range burst {
		c.expect(s.send, s.expect...)
	}
	c.expectClosed()
	c.wait()
	// The burst arrives in one read, so its answers leave in one write.
	if n := cc.writes.Load() - before; n != 1 {
		t.Errorf("%d writes for the pipelined burst, want 1", n)
	}
	commits, closes, _ := be.drop(t).calls()
	if !slices.EqualFunc(commits, [][]int{{2}}, slices.Equal) || closes != 1 {
		t.Errorf("commits %v, closes %d", commits, closes)
	}
}

func TestLineHandling(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be), nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.send("CAPA\n") // bare LF
	c.expect("CAPA", capaAuth...)
	c.send("USER " + strings.Repeat("x", 600) + "\r\n")
	c.expect("long", "-ERR line too long")
	c.send("LIST " + strings.Repeat("9", 100000) + "\r\n")
	c.expect("very long", "-ERR line too long")
	c.send("ST\x00AT\r\n")
	c.expect("NUL", "-ERR NUL octet in command")
	c.send("USER " + testUser + "\nPASS " + testPass + "\n")
	c.expect("bare LF login", "+OK send PASS", maildropLine(defaultMsgs()))
	c.send("stat\r\n")
	c.expect("stat", "+OK 3 "+itoa(len(msg1)+len(msg2)+len(msg3)))
	c.send("Uidl   3  \r\n")
	c.expect("spaces", "+OK 3 uidl-3")
}

func TestUnknownFirstCommand(t *testing.T) {
	for _, first := range []string{"GET / HTTP/1.1", "", strings.Repeat("A", 2000), "\x00"} {
		be := newFakeBackend()
		c := pipeSession(t, newServer(t, be), nil)
		c.expect("greeting", "+OK POP3 server ready")
		c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
		go io.WriteString(c.nc, first+"\r\nHost: example.org\r\n\r\n")
		if l := c.line(); !strings.HasPrefix(l, "-ERR ") {
			t.Errorf("%q: got %q", first, l)
		}
		c.expectClosed()
		c.wait()
	}
}

func TestTooManyErrors(t *testing.T) {
	be := newFakeBackend()
	c := pipeSession(t, newServer(t, be, func(s *pop3.Server) { s.MaxErrors = 3 }), nil)
	c.login()
	c.run([]step{
		{"RETR 9", ok("-ERR no such message")},
		{"LIST x", ok("-ERR invalid message number")},
		{"DELE 1", ok("+OK message 1 deleted")},
		{"USER x", ok("-ERR command not valid in this state", "-ERR too many errors")},
	})
	c.expectClosed()
	c.wait()
	commits, closes, _ := be.drop(t).calls()
	if len(commits) != 0 || closes != 1 {
		t.Errorf("commits %v, closes %d", commits, closes)
	}
}

func TestLoginErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{pop3.ErrInUse, "-ERR [IN-USE] maildrop is in use by another session"},
		{errors.New("dial tcp 10.1.2.3:993: connection refused"), "-ERR [SYS/TEMP] internal error, try again later"},
		{&pop3.Error{Code: pop3.CodeSysTemp, Text: "upstream\r\nunavailable"}, "-ERR [SYS/TEMP] upstream  unavailable"},
		{&pop3.Error{Text: "go away"}, "-ERR go away"},
		{fmt.Errorf("resolving: %w", pop3.ErrAuthFailed), "-ERR [AUTH] authentication failed"},
	} {
		be := newFakeBackend()
		be.loginErr = tc.err
		c := pipeSession(t, newServer(t, be, func(s *pop3.Server) { s.LoginFailDelay = time.Millisecond }), nil)
		c.expect("greeting", "+OK POP3 server ready")
		c.run([]step{
			{"USER " + testUser, ok("+OK send PASS")},
			{"PASS " + testPass, ok(tc.want)},
			{"CAPA", capaAuth}, // still in AUTHORIZATION
		})
	}
}

func TestRetrFailures(t *testing.T) {
	be := newFakeBackend()
	be.msgs = []fakeMsg{
		{msg3, "ok", failNone},
		{msg1, "before", failBefore},
		{msg1, "gone", failGone},
		{msg1, "midway", failMidway},
	}
	c := pipeSession(t, newServer(t, be), nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok(maildropLine(be.msgs))},
		{"RETR 2", ok("-ERR [SYS/TEMP] internal error, try again later")},
		{"TOP 2 1", ok("-ERR [SYS/TEMP] internal error, try again later")},
		{"RETR 3", ok("-ERR message no longer exists")},
		{"TOP 3 0", ok("-ERR message no longer exists")},
		{"DELE 1", ok("+OK message 1 deleted")},
		{"STAT", ok("+OK 3 " + itoa(3*len(msg1)))},
		{"RETR 4", ok("+OK " + size(msg1) + " octets")},
	})
	rest := c.rest()
	if want := msg1[:len(msg1)/2]; rest != want {
		t.Errorf("after a midway failure got %q, want the partial data %q and no terminator", rest, want)
	}
	if strings.Contains(rest, "\r\n.\r\n") {
		t.Errorf("terminating dot sent after a partial message: %q", rest)
	}
	c.wait()
	commits, closes, _ := be.drop(t).calls()
	if len(commits) != 0 || closes != 1 {
		t.Errorf("commits %v, closes %d; want none and 1", commits, closes)
	}
}

func TestPanicInBackend(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	be := newFakeBackend()
	be.msgs = append(defaultMsgs(), fakeMsg{msg1, "panic", failPanic})
	srv := pop3.NewServer(be, zap.New(core))
	srv.AllowInsecureAuth, srv.LoginFailDelay = true, 0
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok(maildropLine(be.msgs))},
		{"DELE 1", ok("+OK message 1 deleted")},
	})
	c.send("RETR 4\r\n")
	c.expectClosed()
	c.wait()
	commits, closes, _ := be.drop(t).calls()
	if len(commits) != 0 || closes != 1 {
		t.Errorf("commits %v, closes %d; want none and 1", commits, closes)
	}
	if logs.FilterMessage("panic in POP3 session").Len() != 1 {
		t.Errorf("panic not logged")
	}
	if s := logs.FilterMessage("session").All(); len(s) != 1 || s[0].ContextMap()["outcome"] != "panic" {
		t.Errorf("session lines %v", s)
	}
}

// TestClientGoneDuringRetr: a client that leaves in the middle of a large
// RETR ends the session like any dropped connection.
func TestClientGoneDuringRetr(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	be := newFakeBackend()
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 1<<16)
	be.msgs = []fakeMsg{{big, "big", ""}}
	be.chunk = 1000
	srv := pop3.NewServer(be, zap.New(core))
	srv.AllowInsecureAuth, srv.LoginFailDelay = true, 0
	c := pipeSession(t, srv, nil)
	c.expect("greeting", "+OK POP3 server ready")
	c.run([]step{
		{"USER " + testUser, ok("+OK send PASS")},
		{"PASS " + testPass, ok(maildropLine(be.msgs))},
		{"DELE 1", ok("+OK message 1 deleted")},
		{"RSET", ok(maildropLine(be.msgs))},
		{"RETR 1", ok("+OK "+size(big)+" octets", "Subject: big", "")},
	})
	c.nc.Close()
	c.wait()
	commits, closes, _ := be.drop(t).calls()
	if len(commits) != 0 || closes != 1 {
		t.Errorf("commits %v, closes %d; want none and 1", commits, closes)
	}
	f := logs.FilterMessage("session").All()[0].ContextMap()
	if f["outcome"] != "dropped" || f["retr"] != int64(0) {
		t.Errorf("outcome %v, retr %v", f["outcome"], f["retr"])
	}
}
