package upstream_test

// Listing and streaming benchmarks of the speed targets, and the check that a
// listing streams (its memory does not grow with the mailbox).
//
//	go test -run '^$' -bench 'List100k|WriteMessageSizes' -benchmem ./upstream/

import (
	"bufio"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

// listServer serves one connection: UID FETCH from:* answered for UIDs
// from..n with RFC822.SIZE (and, when asked, INTERNALDATE and the
// Message-ID header field), generated on the fly; down counts the octets
// sent.
func listServer(tb testing.TB, n int, down *atomic.Int64) string {
	return serveScript(tb, func(s *scriptConn) {
		bw := bufio.NewWriterSize(countingWriter{s.c, down}, 32<<10)
		bw.WriteString("* OK [CAPABILITY IMAP4rev1] hello\r\n")
		bw.Flush()
		var num [16]byte
		for {
			tag, name, args, ok := s.read()
			if !ok {
				return
			}
			switch name {
			case "UID FETCH":
				set, items, _ := strings.Cut(args, " ")
				lo, _, _ := strings.Cut(set, ":")
				from, _ := strconv.Atoi(lo)
				details := strings.Contains(items, "INTERNALDATE")
				for uid := max(from, 1); uid <= n; uid++ {
					u := strconv.AppendInt(num[:0], int64(uid), 10)
					bw.WriteString("* ")
					bw.Write(u)
					bw.WriteString(" FETCH (UID ")
					bw.Write(u)
					bw.WriteString(" RFC822.SIZE ")
					bw.Write(strconv.AppendInt(num[:0], int64(2000+uid%5000), 10))
					if details {
						bw.WriteString(` INTERNALDATE "01-Jan-2026 00:00:00 +0000" BODY[HEADER.FIELDS (MESSAGE-ID)] {`)
						bw.Write(strconv.AppendInt(num[:0], int64(len("Message-ID: <@bench>\r\n\r\n")+len(u)), 10))
						bw.WriteString("}\r\nMessage-ID: <")
						bw.Write(u)
						bw.WriteString("@bench>\r\n\r\n")
					}
					bw.WriteString(")\r\n")
				}
				bw.WriteString(tag + " OK done\r\n")
			case "LOGOUT":
				bw.WriteString("* BYE bye\r\n" + tag + " OK done\r\n")
				bw.Flush()
				return
			default:
				bw.WriteString(tag + " OK done\r\n")
			}
			if bw.Flush() != nil {
				return
			}
		}
	})
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func listAll(tb testing.TB, c *upstream.Conn, n int, details bool) {
	got := 0
	err := c.List(tb.Context(), 1, details, func(m upstream.Msg) error {
		got++
		if details && m.MessageID == "" {
			return fmt.Errorf("UID %d without a Message-ID", m.UID)
		}
		return nil
	})
	if err != nil || got != n {
		tb.Fatalf("List: %d messages of %d, %v", got, n, err)
	}
}

// BenchmarkList100k lists a mailbox of 100,000 messages with Conn.List:
// UID and RFC822.SIZE only ("sizes", what an incremental sync asks), or
// with INTERNALDATE and the Message-ID header field too ("details", the
// full listing at first sight or after a UIDVALIDITY change). "mem" is
// imapmemserver in this process (its own allocations count too);
// "stream" is a generated answer, so the figures are the client's alone,
// and it reports the octets received per message.
func BenchmarkList100k(b *testing.B) {
	const n = 100_000
	for _, details := range []bool{false, true} {
		kind := "sizes"
		if details {
			kind = "details"
		}
		b.Run("mem/"+kind, func(b *testing.B) {
			u := imaptest.Mem(b)
			for i := 1; i <= n; i++ {
				u.Mem.Append(u.Mailbox, message(i, ""))
			}
			c, _ := open(b, u)
			b.ReportAllocs()
			start := time.Now()
			lists := 0
			for b.Loop() {
				listAll(b, c, n, details)
				lists++
			}
			b.ReportMetric(float64(lists*n)/time.Since(start).Seconds(), "msgs/s")
		})
		b.Run("stream/"+kind, func(b *testing.B) {
			var down atomic.Int64
			c, err := upstream.Dial(b.Context(), config(b, listServer(b, n, &down)))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			d0 := down.Load()
			b.ReportAllocs()
			start := time.Now()
			lists := 0
			for b.Loop() {
				listAll(b, c, n, details)
				lists++
			}
			el := time.Since(start)
			b.ReportMetric(float64(lists*n)/el.Seconds(), "msgs/s")
			b.ReportMetric(float64(down.Load()-d0)/float64(lists*n), "B/msg")
		})
	}
}

// BenchmarkWriteMessageSizes streams one message of 1 MB and of 50 MB from
// a generated answer (popbridge's side alone) into a discarding writer.
func BenchmarkWriteMessageSizes(b *testing.B) {
	for _, size := range []int64{1 << 20, 50 << 20} {
		b.Run(fmt.Sprintf("%dMB", size>>20), func(b *testing.B) {
			c, err := upstream.Dial(b.Context(), config(b, streamServer(b, size)))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if n, err := c.WriteMessage(b.Context(), 1, io.Discard); err != nil || n != size {
					b.Fatalf("%d octets, %v", n, err)
				}
			}
		})
	}
}

// TestList100kStreams: listing 100,000 messages with details holds no more
// than a little memory whatever the mailbox size: List streams, and the
// caller decides what to keep. Measured at GOGC=10, so the sampled heap
// peak is close to what is live.
func TestList100kStreams(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	const n = 100_000
	const bound = 4 << 20
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	var down atomic.Int64
	c, err := upstream.Dial(t.Context(), config(t, listServer(t, n, &down)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base, peak := ms.HeapAlloc, ms.HeapAlloc
	got := 0
	err = c.List(t.Context(), 1, true, func(upstream.Msg) error {
		if got++; got%2000 == 0 {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapAlloc)
		}
		return nil
	})
	if err != nil || got != n {
		t.Fatalf("List: %d of %d, %v", got, n, err)
	}
	t.Logf("listing %d messages (%d octets received): heap %.2f MB before, peak %.2f MB", n, down.Load(), float64(base)/(1<<20), float64(peak)/(1<<20))
	if peak-base > bound {
		t.Errorf("the heap grew by %.1f MB while listing; want at most %d MB", float64(peak-base)/(1<<20), bound>>20)
	}
}
