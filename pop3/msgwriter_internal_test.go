package pop3

import (
	"bufio"
	"bytes"
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
