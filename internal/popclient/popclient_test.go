package popclient_test

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/popbridge/popbridge/internal/popclient"
)

func TestReadBody(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{".\r\n", 0},
		{"a\r\n.\r\n", 3},
		{"..\r\n.\r\n", 3},         // a stuffed lone dot: ".\r\n"
		{"..x\r\n...\r\n.\r\n", 8}, // ".x\r\n" and "..\r\n"
		{"bare lf\n.\n", 8},        // a server with bare LFs ends with ".\n"
		{strings.Repeat("y", 40) + "\r\n.\r\n", 42},
		{"." + strings.Repeat(".", 40) + "\r\n.\r\n", 42}, // long, stuffed
	}
	for _, tc := range tests {
		// A tiny buffer takes the long-line path (bufio.ErrBufferFull).
		for _, size := range []int{16, 4096} {
			r := bufio.NewReaderSize(strings.NewReader(tc.in+"+OK next\r\n"), size)
			n, err := popclient.ReadBodyLenient(r, nil, nil)
			if err != nil || n != tc.want {
				t.Errorf("%q (buffer %d): %d, %v; want %d", tc.in, size, n, err, tc.want)
			}
			if rest, _ := r.ReadString('\n'); rest != "+OK next\r\n" {
				t.Errorf("%q: read past the end: next line %q", tc.in, rest)
			}
		}
	}
	if _, err := popclient.ReadBodyLenient(bufio.NewReader(strings.NewReader("a\r\nb\r\n")), nil, nil); err != io.ErrUnexpectedEOF {
		t.Errorf("no terminating dot: %v, want unexpected EOF", err)
	}
}

// TestReadMultiExact: the strict reader keeps the unstuffed bytes as they
// came (bare CR, bare LF, long lines) and ends only at ".CRLF".
func TestReadMultiExact(t *testing.T) {
	long := "." + strings.Repeat("z", 50) + "\r\n"
	in := "a\rb\nc\r\n..d\r\n.\n" + long + ".\r\n+OK next\r\n"
	want := "a\rb\nc\r\n.d\r\n\n" + long[1:]
	for _, size := range []int{16, 4096} {
		r := bufio.NewReaderSize(strings.NewReader(in), size)
		got, err := popclient.ReadMulti(r, nil)
		if err != nil || !bytes.Equal(got, []byte(want)) {
			t.Errorf("buffer %d: %q, %v; want %q", size, got, err, want)
		}
		if rest, _ := r.ReadString('\n'); rest != "+OK next\r\n" {
			t.Errorf("buffer %d: read past the end: next line %q", size, rest)
		}
	}
	if _, err := popclient.ReadMulti(bufio.NewReader(strings.NewReader("a\r\n.\n")), nil); err != io.ErrUnexpectedEOF {
		t.Errorf("only a bare-LF terminator: %v, want unexpected EOF", err)
	}
}
