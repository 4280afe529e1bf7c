package bridge

import (
	"bytes"
	"strings"
	"testing"
)

func TestCRLFWriter(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"a\r\nb\r\n", "a\r\nb\r\n"},
		{"a\nb\n", "a\r\nb\r\n"},
		{"a\nb", "a\r\nb\r\n"},
		{"a\r\nb", "a\r\nb\r\n"},
		{"\n\n", "\r\n\r\n"},
		{"bare\rcr\r\n", "bare\rcr\r\n"},
		{"ends with cr\r", "ends with cr\r\r\n"},
		{".dot\n..two\n", ".dot\r\n..two\r\n"},
	}
	for _, tc := range tests {
		// Every split point, so a CR and its LF may arrive in two writes.
		for split := 0; split <= len(tc.in); split++ {
			var out bytes.Buffer
			cw := &crlfWriter{w: &out}
			cw.Write([]byte(tc.in[:split]))
			cw.Write([]byte(tc.in[split:]))
			if err := cw.finish(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.want {
				t.Errorf("%q split at %d: got %q, want %q", tc.in, split, out.String(), tc.want)
			}
			if cw.n != int64(out.Len()) {
				t.Errorf("%q: counted %d, wrote %d", tc.in, cw.n, out.Len())
			}
		}
	}
}

func BenchmarkCRLFWriter(b *testing.B) {
	msg := []byte(strings.Repeat("a line of an ordinary message, about seventy octets long.........\r\n", 16000))
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		cw := &crlfWriter{w: discard{}}
		cw.Write(msg)
		cw.finish()
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
