package upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

func TestUIDChunks(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var uids []uint32
	want := map[uint32]bool{}
	for range 20000 {
		u := r.Uint32N(1_000_000_000)
		uids = append(uids, u)
		if u != 0 {
			want[u] = true
		}
	}
	uids = append(uids, 5, 6, 7, 8, 0, 5) // a run, a zero, a duplicate
	for u := range 4 {
		want[uint32(u)+5] = true
	}
	const budget = 1000
	chunks := uidChunks(uids, budget)
	if len(chunks) < 2 {
		t.Fatalf("%d chunks", len(chunks))
	}
	got := map[uint32]bool{}
	var prev uint32
	for _, c := range chunks {
		s := c.String()
		if len(s) > budget {
			t.Errorf("chunk of %d octets > %d", len(s), budget)
		}
		nums, ok := c.Nums()
		if !ok {
			t.Fatalf("dynamic set %s", s)
		}
		for _, n := range nums {
			if uint32(n) <= prev {
				t.Fatalf("UIDs not ascending across chunks: %d after %d", n, prev)
			}
			prev = uint32(n)
			got[uint32(n)] = true
		}
	}
	if len(got) != len(want) {
		t.Fatalf("chunks hold %d UIDs, want %d", len(got), len(want))
	}
	for u := range want {
		if !got[u] {
			t.Fatalf("UID %d missing", u)
		}
	}
	if s := uidChunks([]uint32{5, 6, 7, 8, 10}, budget)[0].String(); s != "5:8,10" {
		t.Errorf("compressed set %q, want 5:8,10", s)
	}
	if c := uidChunks(nil, budget); len(c) != 0 {
		t.Errorf("chunks of nothing: %v", c)
	}
	if c := uidChunks([]uint32{0}, budget); len(c) != 0 {
		t.Errorf("chunks of UID 0: %v", c)
	}
}

func TestParseMessageID(t *testing.T) {
	for in, want := range map[string]string{
		"Message-ID: <a@b>\r\n\r\n":              "<a@b>",
		"message-id:<a@b>\r\n\r\n":               "<a@b>",
		"Message-Id:\r\n  <a@b>\r\n\r\n":         "<a@b>",
		"Message-ID: <a@\r\n\tb>\r\n\r\n":        "<a@\tb>",
		"\r\n":                                   "",
		"":                                       "",
		"X-Message-ID: <x>\r\nMessage-ID: <y>\n": "<y>",
		"Message-ID :  <sp@x>  \r\n":             "<sp@x>",
	} {
		if got := parseMessageID([]byte(in)); got != want {
			t.Errorf("parseMessageID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTopWriter(t *testing.T) {
	body := "one\r\ntwo\nthree\r\nfour"
	for n := 0; n <= 5; n++ {
		for _, chunk := range []int{1, 2, 3, 7, 100} {
			var out bytes.Buffer
			tw := &topWriter{w: &out, left: n}
			for p := body; len(p) > 0; {
				k := min(chunk, len(p))
				if m, err := tw.Write([]byte(p[:k])); m != k || err != nil {
					t.Fatalf("Write = %d, %v", m, err)
				}
				p = p[k:]
			}
			lines := strings.SplitAfter(body, "\n")
			want := strings.Join(lines[:min(n, len(lines))], "")
			if out.String() != want {
				t.Errorf("n=%d chunk=%d: %q, want %q", n, chunk, out.String(), want)
			}
		}
	}
}

func TestKindOf(t *testing.T) {
	no := func(code imap.ResponseCode) error {
		return fmt.Errorf("wrapped: %w", &imap.Error{Type: imap.StatusResponseTypeNo, Code: code, Text: "x"})
	}
	for _, tc := range []struct {
		err  error
		ph   phase
		want Kind
	}{
		{no(imap.ResponseCodeAuthenticationFailed), phaseLogin, KindAuth},
		{no(imap.ResponseCodeAuthorizationFailed), phaseLogin, KindAuth},
		{no(imap.ResponseCodeExpired), phaseLogin, KindAuth},
		{no(""), phaseLogin, KindAuth},
		{no(imap.ResponseCodeUnavailable), phaseLogin, KindTemp},
		{no(imap.ResponseCodeInUse), phaseLogin, KindTemp},
		{no(imap.ResponseCodeLimit), phaseLogin, KindTemp},
		{no(imap.ResponseCodeServerBug), phaseLogin, KindTemp},
		{no(imap.ResponseCodePrivacyRequired), phaseLogin, KindPerm},
		{no(imap.ResponseCodeNonExistent), phaseCommand, KindPerm},
		{no(imap.ResponseCodeTryCreate), phaseCommand, KindPerm},
		{no(""), phaseCommand, KindTemp},
		{no(""), phaseSelect, KindPerm},
		{no(imap.ResponseCodeUnavailable), phaseSelect, KindTemp},
		{no(imap.ResponseCodeUnavailable), phaseCommand, KindTemp},
		{no("XWHATEVER"), phaseCommand, KindTemp},
		{&imap.Error{Type: imap.StatusResponseTypeBad, Text: "x"}, phaseCommand, KindPerm},
		{&imap.Error{Type: imap.StatusResponseTypeBye, Text: "x"}, phaseLogin, KindTemp},
		{io.ErrUnexpectedEOF, phaseCommand, KindTemp},
		{net.ErrClosed, phaseLogin, KindTemp},
	} {
		if got := kindOf(tc.err, tc.ph); got != tc.want {
			t.Errorf("kindOf(%v, %v) = %v, want %v", tc.err, tc.ph, got, tc.want)
		}
	}
	e := &Error{Kind: KindGone, Op: "fetch", Err: ErrGone}
	if got := wrap("other", fmt.Errorf("x: %w", e), phaseCommand); got != e {
		t.Errorf("wrap rewrapped an *Error: %v", got)
	}
	if KindOf(errors.New("plain")) != KindTemp {
		t.Error("KindOf of a plain error is not KindTemp")
	}
}

// traceOf feeds client bytes to a tracer in chunks of size n.
func traceOf(in string, n int) string {
	var out bytes.Buffer
	tr := newTracer(&out)
	for p := in; len(p) > 0; {
		k := min(n, len(p))
		tr.client([]byte(p[:k]))
		p = p[k:]
	}
	return out.String()
}

func TestTracerRedacts(t *testing.T) {
	secrets := []string{"hunter2", "dXNlcgB1c2VyAGh1bnRlcjI=", "c2VjcmV0", "longsecret", "litsecret"}
	in := "T1 CAPABILITY\r\n" +
		"T2 LOGIN alice hunter2\r\n" +
		"T3 LOGIN \"alice\" {7+}\r\nhunter2\r\n" +
		"T4 LOGIN {5}\r\nalice {9}\r\nlitsecret\r\n" +
		"T5 AUTHENTICATE PLAIN dXNlcgB1c2VyAGh1bnRlcjI=\r\n" +
		"T6 AUTHENTICATE XOAUTH2\r\n" +
		"c2VjcmV0\r\n" +
		"*\r\n" +
		"T7 login x " + strings.Repeat("longsecret", 10000) + "\r\n" +
		"T7a LOGIN " + strings.Repeat("u", 70000) + " {9}\r\nlitsecret\r\n" +
		"T8 SELECT INBOX\r\n" +
		"T9 APPEND INBOX {12}\r\nhello\r\nworld\r\n" +
		"T10 UID FETCH 1:* (UID)\r\n"
	for _, n := range []int{1, 2, 3, 5, 64, 4096, len(in)} {
		got := traceOf(in, n)
		for _, s := range secrets {
			if strings.Contains(got, s) {
				t.Errorf("chunk %d: trace holds %q:\n%.2000s", n, s, got)
			}
		}
		for _, want := range []string{
			"C: T1 CAPABILITY\n",
			"C: T2 LOGIN [redacted]\n",
			"C: T3 LOGIN [redacted]\n",
			"C: T4 LOGIN [redacted]\n",
			"C: T5 AUTHENTICATE PLAIN [redacted]\n",
			"C: T6 AUTHENTICATE XOAUTH2\n",
			"C: T8 SELECT INBOX\n",
			"C: T9 APPEND INBOX {12}\nC: hello\nC: world\n",
			"C: T10 UID FETCH 1:* (UID)\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("chunk %d: trace lacks %q:\n%.2000s", n, want, got)
			}
		}
	}
}

func TestTracerServerLines(t *testing.T) {
	var out bytes.Buffer
	tr := newTracer(&out)
	tr.server([]byte("* OK hi\r\n* 1 FETCH (BODY[] {3}\r\nabc)\r\n"))
	tr.server([]byte(strings.Repeat("x", 10000)))
	tr.server([]byte("\r\n"))
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if lines[0] != "S: * OK hi" || lines[1] != "S: * 1 FETCH (BODY[] {3}" || lines[2] != "S: abc)" {
		t.Errorf("trace %q", lines[:3])
	}
	for _, l := range lines {
		if len(l) > traceMaxLine+3 {
			t.Errorf("trace line of %d octets", len(l))
		}
	}
}
