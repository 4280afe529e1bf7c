package pop3

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestMessageOctets: the size a backend reads back is what the client
// receives before dot-stuffing, for every way the data may be split.
func TestMessageOctets(t *testing.T) {
	tests := []struct {
		in   string
		want string // the message as received, unstuffed
	}{
		{"", ""},
		{"a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\nb\n", "a\r\nb\r\n"},
		{"a\nb", "a\r\nb\r\n"},
		{".dot\r\n..two\n.", ".dot\r\n..two\r\n.\r\n"},
		{"cr at end\r", "cr at end\r\r\n"},
	}
	for _, tc := range tests {
		for split := 0; split <= len(tc.in); split++ {
			var out bytes.Buffer
			c := &conn{bw: bufio.NewWriter(&out)}
			w := c.newMsgWriter("+OK")
			w.Write([]byte(tc.in[:split]))
			w.Write([]byte(tc.in[split:]))
			if got := w.MessageOctets(); got != int64(len(tc.want)) {
				t.Errorf("%q split at %d: MessageOctets = %d, want %d", tc.in, split, got, len(tc.want))
			}
		}
	}
}

// TestNewMessageWriter: the writer for callers outside a session frames a
// message as RETR does (bare LFs and a bare CR before LF repaired, dots
// stuffed, the terminating line after a CRLF), for every way the data may
// be split, and counts the octets before stuffing.
func TestNewMessageWriter(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ".\r\n"},
		{"a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"a\nb\n", "a\r\nb\r\n.\r\n"},
		{"a\nb", "a\r\nb\r\n.\r\n"},
		{"a\r\nb", "a\r\nb\r\n.\r\n"},
		{"\n\n", "\r\n\r\n.\r\n"},
		{"bare\rcr\r\n", "bare\rcr\r\n.\r\n"},
		{"ends with cr\r", "ends with cr\r\r\n.\r\n"},
		{".dot\n..two\n", "..dot\r\n...two\r\n.\r\n"},
	}
	for _, tc := range tests {
		for split := 0; split <= len(tc.in); split++ {
			var out bytes.Buffer
			w, end := NewMessageWriter(&out)
			w.Write([]byte(tc.in[:split]))
			w.Write([]byte(tc.in[split:]))
			octets := w.MessageOctets()
			if err := end(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("%q split at %d: got %q, want %q", tc.in, split, out.String(), tc.want)
			}
			unstuffed := strings.ReplaceAll(strings.TrimSuffix(tc.want, ".\r\n"), "\n..", "\n.")
			unstuffed = strings.TrimPrefix(unstuffed, ".")
			if tc.in == "" {
				unstuffed = ""
			}
			if octets != int64(len(unstuffed)) {
				t.Errorf("%q split at %d: MessageOctets = %d, want %d", tc.in, split, octets, len(unstuffed))
			}
		}
	}
}

func BenchmarkMessageWriter(b *testing.B) {
	msg := []byte(strings.Repeat("a line of an ordinary message, about seventy octets long.........\r\n", 16000))
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		w, end := NewMessageWriter(io.Discard)
		w.Write(msg)
		end()
	}
}
