package upstream_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

func collect(t testing.TB, c *upstream.Conn, from uint32, details bool) []upstream.Msg {
	t.Helper()
	var got []upstream.Msg
	if err := c.List(t.Context(), from, details, func(m upstream.Msg) error {
		got = append(got, m)
		return nil
	}); err != nil {
		t.Fatalf("List(%d): %v", from, err)
	}
	return got
}

func uidsOf(msgs []upstream.Msg) []uint32 {
	var out []uint32
	for _, m := range msgs {
		out = append(out, m.UID)
	}
	return out
}

func TestList(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		base := time.Date(2024, 3, 1, 10, 0, 0, 0, time.UTC)
		var raws [][]byte
		var uids []uint32
		for i := 1; i <= 5; i++ {
			raw := message(i, strings.Repeat("body line\r\n", i*10))
			if i == 4 { // folded Message-ID
				raw = []byte("Subject: folded\r\nMessage-ID:\r\n  <4@test>\r\n\r\nbody\r\n")
			}
			if i == 5 { // none at all
				raw = []byte("Subject: no id\r\n\r\nbody\r\n")
			}
			raws = append(raws, raw)
			uids = append(uids, u.AppendAt(u.Mailbox, raw, base.Add(time.Duration(i)*time.Hour)))
		}
		c, _ := open(t, u)

		got := collect(t, c, 1, true)
		if len(got) != 5 {
			t.Fatalf("List returned %d messages, want 5: %+v", len(got), got)
		}
		for i, m := range got {
			if m.UID != uids[i] {
				t.Errorf("message %d: UID %d, want %d", i, m.UID, uids[i])
			}
			if m.Size != int64(len(raws[i])) {
				t.Errorf("message %d: size %d, want %d", i, m.Size, len(raws[i]))
			}
			if want := base.Add(time.Duration(i+1) * time.Hour); !m.InternalDate.Equal(want) {
				t.Errorf("message %d: date %v, want %v", i, m.InternalDate, want)
			}
			want := fmt.Sprintf("<%d@test>", i+1)
			if i == 4 {
				want = ""
			}
			if m.MessageID != want {
				t.Errorf("message %d: Message-ID %q, want %q", i, m.MessageID, want)
			}
		}

		cheap := collect(t, c, 1, false)
		for i, m := range cheap {
			if m.UID != uids[i] || m.Size != int64(len(raws[i])) || m.MessageID != "" || !m.InternalDate.IsZero() {
				t.Errorf("cheap listing %d = %+v", i, m)
			}
		}

		if got := uidsOf(collect(t, c, uids[2], true)); !equalUIDs(got, uids[2:]) {
			t.Errorf("List from %d = %v, want %v", uids[2], got, uids[2:])
		}
		// n:* with n above the highest UID returns the last message: it must
		// be filtered out.
		if got := collect(t, c, uids[4]+1, true); len(got) != 0 {
			t.Errorf("List from %d = %v, want nothing", uids[4]+1, got)
		}
		if got := collect(t, c, uids[4]+1000, false); len(got) != 0 {
			t.Errorf("List from %d = %v, want nothing", uids[4]+1000, got)
		}
	})
}

func equalUIDs(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestListEmpty(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		c, _ := open(t, u)
		if got := collect(t, c, 1, true); len(got) != 0 {
			t.Errorf("List of an empty mailbox = %v", got)
		}
		uids, err := c.SearchAll(t.Context())
		if err != nil || len(uids) != 0 {
			t.Errorf("SearchAll of an empty mailbox = %v, %v", uids, err)
		}
	})
}

func TestListFnError(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		for i := 1; i <= 300; i++ {
			u.Append(u.Mailbox, message(i, ""))
		}
		c, _ := open(t, u)
		stop := errors.New("stop here")
		n := 0
		err := c.List(t.Context(), 1, true, func(upstream.Msg) error {
			n++
			if n == 2 {
				return stop
			}
			return nil
		})
		if err != stop {
			t.Fatalf("List returned %v, want fn's error", err)
		}
		if n != 2 {
			t.Errorf("fn called %d times after its error", n)
		}
		// The command was drained: the connection still works.
		if got := collect(t, c, 1, false); len(got) != 300 {
			t.Errorf("List after an aborted List returned %d messages", len(got))
		}
	})
}

func TestSearchAllAndFetchInfo(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		var uids []uint32
		for i := 1; i <= 10; i++ {
			uids = append(uids, u.Append(u.Mailbox, message(i, "")))
		}
		c, _ := open(t, u)
		gone := []uint32{uids[1], uids[2], uids[7]}
		if err := c.Expunge(t.Context(), gone); err != nil {
			t.Fatal(err)
		}
		got, err := c.SearchAll(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		want := []uint32{uids[0], uids[3], uids[4], uids[5], uids[6], uids[8], uids[9]}
		if !equalUIDs(got, want) {
			t.Errorf("SearchAll = %v, want %v", got, want)
		}

		var infos []upstream.Msg
		ask := []uint32{uids[9], uids[2], uids[0], uids[5], uids[0]} // unsorted, a gone one, a duplicate
		if err := c.FetchInfo(t.Context(), ask, func(m upstream.Msg) error {
			infos = append(infos, m)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got, want := uidsOf(infos), []uint32{uids[0], uids[5], uids[9]}; !equalUIDs(got, want) {
			t.Errorf("FetchInfo UIDs = %v, want %v", got, want)
		}
		for _, m := range infos {
			if m.MessageID == "" || m.Size == 0 || m.InternalDate.IsZero() {
				t.Errorf("FetchInfo %+v lacks details", m)
			}
		}
	})
}

func TestSearchAllWithoutESearch(t *testing.T) {
	for _, tc := range []struct {
		caps    []imap.Cap
		esearch bool
	}{
		{[]imap.Cap{imap.CapIMAP4rev1}, false},
		{imaptest.DefaultCaps, true},
	} {
		u := imaptest.Mem(t, imaptest.WithCaps(tc.caps...))
		for i := 1; i <= 4; i++ {
			u.Append(u.Mailbox, message(i, ""))
		}
		c, _ := open(t, u)
		got, err := c.SearchAll(t.Context())
		if err != nil || !equalUIDs(got, []uint32{1, 2, 3, 4}) {
			t.Errorf("caps %v: SearchAll = %v, %v", tc.caps, got, err)
		}
		cmds := u.Mem.CommandsNamed("UID SEARCH")
		if len(cmds) != 1 || strings.Contains(cmds[0].Args, "RETURN") != tc.esearch {
			t.Errorf("caps %v: sent %v", tc.caps, cmds)
		}
	}
}

// bodies are messages whose bytes must come back exactly.
func bodies() map[string][]byte {
	long := strings.Repeat("x", 5000)
	return map[string][]byte{
		"dots":  message(1, ".\r\n..double\r\n.single\r\nend\r\n.\r\n"),
		"utf8":  []byte("Subject: =?UTF-8?Q?gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <u@test>\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln — ✓ 日本語\r\n\xc3\xa9t\xc3\xa9\r\n"),
		"long":  message(3, long+"\r\n"+long+long+"\r\nshort\r\n"),
		"nofin": message(4, "no final line end"),
		"empty": []byte("Subject: empty body\r\n\r\n"),
	}
}

func TestWriteMessage(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		big := bigMessage(5 << 20)
		cases := bodies()
		cases["5MB"] = big
		uids := map[string]uint32{}
		for name, raw := range cases {
			uids[name] = u.Append(u.Mailbox, raw)
		}
		c, _ := open(t, u)
		for name, raw := range cases {
			var buf bytes.Buffer
			n, err := c.WriteMessage(t.Context(), uids[name], &buf)
			if err != nil {
				t.Errorf("%s: WriteMessage: %v", name, err)
				continue
			}
			if n != int64(len(raw)) || !bytes.Equal(buf.Bytes(), raw) {
				t.Errorf("%s: got %d octets (n=%d), want %d, equal=%v", name, buf.Len(), n, len(raw), bytes.Equal(buf.Bytes(), raw))
			}
		}
		// WriteMessage must not mark messages \Seen (BODY.PEEK).
		for _, m := range u.Messages(u.Mailbox) {
			if m.HasFlag(imap.FlagSeen) {
				t.Errorf("UID %d became \\Seen", m.UID)
			}
		}

		_, err := c.WriteMessage(t.Context(), 99999, io.Discard)
		wantKind(t, err, upstream.KindGone)
		if !errors.Is(err, upstream.ErrGone) {
			t.Errorf("error %v is not ErrGone", err)
		}
		// Gone is not fatal: the connection still works.
		if err := c.Noop(t.Context()); err != nil {
			t.Errorf("Noop after a gone message: %v", err)
		}
	})
}

// bigMessage returns a CRLF message of about size octets.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: big\r\nMessage-ID: <big@test>\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%08d The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n", i)
	}
	return b.Bytes()
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n <= 0 {
		return 0, errors.New("client went away")
	}
	w.n -= len(p)
	return len(p), nil
}

// TestWriteMessageWriterFails: a writer failing midway ends the call with
// an error promptly; the connection is dropped rather than drained.
func TestWriteMessageWriterFails(t *testing.T) {
	u := imaptest.Mem(t)
	uid := u.Append(u.Mailbox, bigMessage(2<<20))
	c, _ := open(t, u)
	var err error
	within(t, 5*time.Second, "WriteMessage to a failing writer", func() {
		_, err = c.WriteMessage(t.Context(), uid, &failWriter{n: 100 << 10})
	})
	wantKind(t, err, upstream.KindTemp)
	if !strings.Contains(err.Error(), "client went away") {
		t.Errorf("error %v does not carry the writer's", err)
	}
}

func TestWriteMessageBroken(t *testing.T) {
	fetchScript := func(reply func(s *scriptConn, tag string)) string {
		return serveScript(t, func(s *scriptConn) {
			s.send("* OK [CAPABILITY IMAP4rev1] hello")
			tag, _ := s.expect("UID FETCH")
			reply(s, tag)
		})
	}
	t.Run("short literal", func(t *testing.T) {
		addr := fetchScript(func(s *scriptConn, tag string) {
			s.c.Write([]byte("* 1 FETCH (UID 7 BODY[] {100}\r\n" + strings.Repeat("a", 50)))
		})
		c, err := upstream.Dial(t.Context(), config(t, addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var buf bytes.Buffer
		n, err := c.WriteMessage(t.Context(), 7, &buf)
		wantKind(t, err, upstream.KindTemp)
		if n != 50 || buf.Len() != 50 {
			t.Errorf("n = %d, wrote %d, want 50", n, buf.Len())
		}
	})
	t.Run("NIL", func(t *testing.T) {
		addr := fetchScript(func(s *scriptConn, tag string) {
			s.send("* 1 FETCH (UID 7 BODY[] NIL)", tag+" OK done")
			s.serveLogout()
		})
		c, err := upstream.Dial(t.Context(), config(t, addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.WriteMessage(t.Context(), 7, io.Discard)
		wantKind(t, err, upstream.KindTemp)
	})
	t.Run("BYE", func(t *testing.T) {
		addr := fetchScript(func(s *scriptConn, tag string) {
			s.send("* BYE shutting down")
		})
		c, err := upstream.Dial(t.Context(), config(t, addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.WriteMessage(t.Context(), 7, io.Discard)
		wantKind(t, err, upstream.KindTemp)
	})
	t.Run("EXPUNGEISSUED", func(t *testing.T) {
		addr := fetchScript(func(s *scriptConn, tag string) {
			s.send(tag + " NO [EXPUNGEISSUED] gone meanwhile")
			s.serveLogout()
		})
		c, err := upstream.Dial(t.Context(), config(t, addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.WriteMessage(t.Context(), 7, io.Discard)
		wantKind(t, err, upstream.KindGone)
	})
}

func TestListOutOfOrder(t *testing.T) {
	addr := serveScript(t, func(s *scriptConn) {
		s.send("* OK [CAPABILITY IMAP4rev1] hello")
		tag, _ := s.expect("UID FETCH")
		s.send("* 1 FETCH (UID 5 RFC822.SIZE 10)", "* 2 FETCH (UID 3 RFC822.SIZE 10)", tag+" OK done")
		s.serveLogout()
	})
	c, err := upstream.Dial(t.Context(), config(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.List(t.Context(), 1, false, func(upstream.Msg) error { return nil })
	wantKind(t, err, upstream.KindTemp)
}

func TestWriteTop(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		longLine := strings.Repeat("L", 300<<10)
		cases := map[string][]byte{
			"short": message(1, "one\r\ntwo\r\nthree\r\nfour\r\nfive\r\n"),
			"long":  message(2, longLine+"\r\n"+longLine+"\r\n"+longLine+"\r\ntail\r\n"),
			"nofin": message(3, "one\r\ntwo"),
			"empty": []byte("Subject: empty\r\n\r\n"),
			// A body of exactly K = 3*100+1024 octets: the second partial
			// is empty.
			"exact": message(4, strings.Repeat("z", 1322)+"\r\n"),
		}
		for name, raw := range bodies() {
			cases["b-"+name] = raw
		}
		uids := map[string]uint32{}
		for name, raw := range cases {
			uids[name] = u.Append(u.Mailbox, raw)
		}
		c, _ := open(t, u)
		for name, raw := range cases {
			for _, n := range []int{0, 1, 2, 3, 4, 100} {
				var buf bytes.Buffer
				if err := c.WriteTop(t.Context(), uids[name], n, &buf); err != nil {
					t.Errorf("%s TOP %d: %v", name, n, err)
					continue
				}
				if want := topRef(raw, n); !bytes.Equal(buf.Bytes(), want) {
					t.Errorf("%s TOP %d: got %d octets %q..., want %d octets %q...", name, n,
						buf.Len(), head(buf.Bytes()), len(want), head(want))
				}
			}
		}
		err := c.WriteTop(t.Context(), 99999, 3, io.Discard)
		wantKind(t, err, upstream.KindGone)
		for _, m := range u.Messages(u.Mailbox) {
			if m.HasFlag(imap.FlagSeen) {
				t.Errorf("UID %d became \\Seen", m.UID)
			}
		}
	})
}

func head(b []byte) []byte {
	if len(b) > 60 {
		return b[:60]
	}
	return b
}

// TestWriteTopBareLF: bare LF line ends count as line ends, and come out
// as they are (imapmemserver keeps bytes verbatim; Dovecot would not).
func TestWriteTopBareLF(t *testing.T) {
	u := imaptest.Mem(t)
	raw := []byte("Subject: lf\r\n\r\none\ntwo\nthree\n")
	uid := u.Append(u.Mailbox, raw)
	c, _ := open(t, u)
	var buf bytes.Buffer
	if err := c.WriteTop(t.Context(), uid, 2, &buf); err != nil {
		t.Fatal(err)
	}
	if want := "Subject: lf\r\n\r\none\ntwo\n"; buf.String() != want {
		t.Errorf("TOP 2 = %q, want %q", buf.String(), want)
	}
}

// TestWriteTopPartials checks on the wire that long lines make the partial
// fetches grow, and that a short TOP needs one partial.
func TestWriteTopPartials(t *testing.T) {
	u := imaptest.Mem(t)
	long := strings.Repeat("L", 20000)
	uid := u.Append(u.Mailbox, message(1, long+"\r\nsecond\r\n"))
	c, _ := open(t, u)
	var buf bytes.Buffer
	if err := c.WriteTop(t.Context(), uid, 1, &buf); err != nil {
		t.Fatal(err)
	}
	var partials []string
	for _, cmd := range u.Mem.CommandsNamed("UID FETCH") {
		if i := strings.Index(cmd.Args, "BODY.PEEK[TEXT]"); i >= 0 {
			partials = append(partials, cmd.Args[i+len("BODY.PEEK[TEXT]"):])
		}
	}
	want := []string{"<0.1124>)", "<1124.2248>)", "<3372.4496>)", "<7868.8992>)", "<16860.17984>)"}
	if strings.Join(partials, " ") != strings.Join(want, " ") {
		t.Errorf("partials %v, want %v", partials, want)
	}
	if want := topRef(message(1, long+"\r\nsecond\r\n"), 1); !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("TOP 1 wrong: %d octets, want %d", buf.Len(), len(want))
	}
}

// TestWriteMessageMemory streams a generated 40 MB body from a scripted
// server (which allocates nothing per message) and checks that the heap
// allocations of the whole process do not grow with the message size.
func TestWriteMessageMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	small := allocsFor(t, 1<<20)
	large := allocsFor(t, 40<<20)
	t.Logf("allocated %d B for 1 MB, %d B for 40 MB", small, large)
	if large > small+(1<<20) {
		t.Errorf("allocations grew with the message: %d B for 1 MB, %d B for 40 MB", small, large)
	}
}

func allocsFor(t *testing.T, size int64) uint64 {
	addr := streamServer(t, size)
	c, err := upstream.Dial(t.Context(), config(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Warm up once, then measure a second body.
	if _, err := c.WriteMessage(t.Context(), 1, io.Discard); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	var m1, m2 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m1)
	n, err := c.WriteMessage(t.Context(), 1, h)
	runtime.ReadMemStats(&m2)
	if err != nil || n != size {
		t.Fatalf("WriteMessage = %d, %v; want %d", n, err, size)
	}
	if got, want := h.Sum(nil), streamSum(size); !bytes.Equal(got, want) {
		t.Errorf("body of %d octets differs", size)
	}
	return m2.TotalAlloc - m1.TotalAlloc
}

// streamChunk is the repeated content of a streamServer body.
var streamChunk = bytes.Repeat([]byte("0123456789 The quick brown fox jumps over the lazy dog.\r\n"), 1024)

func streamSum(size int64) []byte {
	h := sha256.New()
	writeStream(h, size)
	return h.Sum(nil)
}

func writeStream(w io.Writer, size int64) error {
	for size > 0 {
		n := min(size, int64(len(streamChunk)))
		if _, err := w.Write(streamChunk[:n]); err != nil {
			return err
		}
		size -= n
	}
	return nil
}

// streamServer serves any number of UID FETCH commands with a generated
// body of size octets, without buffering it.
func streamServer(t testing.TB, size int64) string {
	return serveScript(t, func(s *scriptConn) {
		s.send("* OK [CAPABILITY IMAP4rev1] hello")
		for {
			tag, name, args, ok := s.read()
			if !ok {
				return
			}
			switch name {
			case "UID FETCH":
				uid, _, _ := strings.Cut(args, " ")
				fmt.Fprintf(s.c, "* 1 FETCH (UID %s BODY[] {%d}\r\n", uid, size)
				if writeStream(s.c, size) != nil {
					return
				}
				s.send(")", tag+" OK done")
			case "LOGOUT":
				s.send("* BYE bye", tag+" OK done")
				return
			default:
				s.send(tag + " OK done")
			}
		}
	})
}

// BenchmarkWriteMessage5MB streams a 5 MB message: from imapmemserver
// ("mem", whose own allocations are counted too) and from a scripted
// server that allocates nothing ("stream", popbridge's side alone).
//
//	go test -run '^$' -bench WriteMessage5MB -benchmem ./upstream/
func BenchmarkWriteMessage5MB(b *testing.B) {
	const size = 5 << 20
	b.Run("mem", func(b *testing.B) {
		u := imaptest.Mem(b)
		raw := bigMessage(size)
		uid := u.Append(u.Mailbox, raw)
		c, _ := open(b, u)
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.WriteMessage(b.Context(), uid, io.Discard); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stream", func(b *testing.B) {
		addr := streamServer(b, size)
		c, err := upstream.Dial(b.Context(), config(b, addr))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		b.SetBytes(size)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.WriteMessage(b.Context(), 1, io.Discard); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkList lists 10 000 messages with details.
func BenchmarkList(b *testing.B) {
	u := imaptest.Mem(b)
	for i := 1; i <= 10000; i++ {
		u.Append(u.Mailbox, message(i, ""))
	}
	c, _ := open(b, u)
	b.ReportAllocs()
	for b.Loop() {
		n := 0
		if err := c.List(b.Context(), 1, true, func(upstream.Msg) error { n++; return nil }); err != nil || n != 10000 {
			b.Fatalf("List: %d, %v", n, err)
		}
	}
}
