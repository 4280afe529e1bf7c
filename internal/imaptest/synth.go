package imaptest

// Synth: a generated upstream for benchmarks and memory checks. It
// generates its mailboxes (any size, 100,000 messages or a 50 MB message)
// instead of storing them, and allocates next to nothing.

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// SynthBox is the INBOX of one Synth user: N messages, UIDs 1..N.
// Message 1 has size Big when Big > 0; every other message (and message 1
// otherwise) has size Small. Sizes are the exact octets of BODY[], which
// has CRLF line ends, ends with CRLF, and has a body line starting with a
// dot every 50 lines.
type SynthBox struct {
	N           int
	Small, Big  int64
	UIDValidity uint32
}

// Size returns the exact octets of message uid. A requested size is
// rounded up so that the last body line holds at least its CRLF.
func (b SynthBox) Size(uid uint32) int64 {
	want := b.Small
	if uid == 1 && b.Big > 0 {
		want = b.Big
	}
	hdr := int64(len(synthHeader(uid)))
	want = max(want, hdr+synthLine)
	if (want-hdr)%synthLine == 1 {
		want++
	}
	return want
}

const synthLine = 80 // octets of a body line, CRLF included

func synthHeader(uid uint32) string {
	return "Message-ID: <" + strconv.FormatUint(uint64(uid), 10) + "@synth.example>\r\nSubject: synthetic message\r\nFrom: a@example.com\r\n\r\n"
}

// synthChunk is 64 KB of body lines: 78 characters and CRLF each.
var synthChunk = func() []byte {
	var b bytes.Buffer
	for i := 0; b.Len()+synthLine <= 64<<10; i++ {
		line := fmt.Sprintf("%06d the quick brown fox jumps over the lazy dog 0123456789 abcdefghijklmnopq", i)
		if i%50 == 49 {
			line = "." + line[1:]
		}
		b.WriteString(line[:synthLine-2])
		b.WriteString("\r\n")
	}
	return b.Bytes()
}()

// WriteSynth writes message uid of size octets.
func WriteSynth(w io.Writer, uid uint32, size int64) error {
	hdr := synthHeader(uid)
	if _, err := io.WriteString(w, hdr); err != nil {
		return err
	}
	left := size - int64(len(hdr))
	for left > 0 {
		n := min(left, int64(len(synthChunk)))
		if n < int64(len(synthChunk)) && n%synthLine != 0 {
			// The last, short line: full lines, then the rest of a line
			// ending with CRLF.
			full := n / synthLine * synthLine
			if _, err := w.Write(synthChunk[:full]); err != nil {
				return err
			}
			rest := n - full // >= 2, see SynthBox.size
			if _, err := w.Write(append(bytes.Repeat([]byte("z"), int(rest-2)), '\r', '\n')); err != nil {
				return err
			}
			return nil
		}
		if _, err := w.Write(synthChunk[:n]); err != nil {
			return err
		}
		left -= n
	}
	return nil
}

// Synth serves SynthBoxes over IMAP4rev1, enough of it for popbridge:
// LOGIN, CAPABILITY, SELECT, UID FETCH of sizes, INTERNALDATE, the
// Message-ID header field and BODY[], UID SEARCH, LOGOUT; anything else is
// answered OK. It counts the octets it reads and writes.
type Synth struct {
	ln      net.Listener
	boxes   map[string]SynthBox // by user; any password
	in, out atomic.Int64
	conns   atomic.Int64
	wg      sync.WaitGroup
}

// StartSynth starts a Synth on 127.0.0.1 for use outside a test (the
// helper process); Close stops it.
func StartSynth(boxes map[string]SynthBox) (*Synth, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Synth{ln: ln, boxes: boxes}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer c.Close()
				s.serve(c)
			}()
		}
	}()
	return s, nil
}

// NewSynth starts an in-process Synth that stops when the test ends.
func NewSynth(tb testing.TB, boxes map[string]SynthBox) *Synth {
	tb.Helper()
	s, err := StartSynth(boxes)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// Addr is the address the Synth listens on.
func (s *Synth) Addr() string { return s.ln.Addr().String() }

// Close stops the Synth and waits for its connections to end.
func (s *Synth) Close() {
	s.ln.Close()
	s.wg.Wait()
}

// Octets returns what the server read and wrote so far.
func (s *Synth) Octets() int64 { return s.in.Load() + s.out.Load() }

type synthCountConn struct {
	net.Conn
	s *Synth
}

func (c synthCountConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.s.in.Add(int64(n))
	return n, err
}

func (c synthCountConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.s.out.Add(int64(n))
	return n, err
}

const synthCaps = "IMAP4rev1 UIDPLUS MOVE LITERAL+"

func (s *Synth) serve(raw net.Conn) {
	s.conns.Add(1)
	conn := synthCountConn{raw, s}
	br := bufio.NewReaderSize(conn, 4096)
	bw := bufio.NewWriterSize(conn, 32<<10)
	bw.WriteString("* OK [CAPABILITY " + synthCaps + "] synth ready\r\n")
	var box SynthBox
	for {
		raw.SetDeadline(time.Now().Add(15 * time.Minute))
		if bw.Flush() != nil {
			return
		}
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		tag, rest, _ := strings.Cut(line, " ")
		name, args, _ := strings.Cut(rest, " ")
		name = strings.ToUpper(name)
		if name == "UID" {
			var sub string
			sub, args, _ = strings.Cut(args, " ")
			name += " " + strings.ToUpper(sub)
		}
		switch name {
		case "CAPABILITY":
			bw.WriteString("* CAPABILITY " + synthCaps + "\r\n" + tag + " OK done\r\n")
		case "LOGIN":
			user, _, _ := strings.Cut(args, " ")
			b, ok := s.boxes[strings.Trim(user, `"`)]
			if !ok {
				bw.WriteString(tag + " NO [AUTHENTICATIONFAILED] unknown user\r\n")
				continue
			}
			box = b
			bw.WriteString(tag + " OK [CAPABILITY " + synthCaps + "] logged in\r\n")
		case "SELECT", "EXAMINE":
			fmt.Fprintf(bw, "* FLAGS (\\Seen \\Deleted)\r\n* %d EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY %d] ok\r\n* OK [UIDNEXT %d] ok\r\n%s OK [READ-WRITE] done\r\n",
				box.N, box.UIDValidity, box.N+1, tag)
		case "UID FETCH":
			set, items, _ := strings.Cut(args, " ")
			s.fetch(bw, box, set, strings.ToUpper(items))
			bw.WriteString(tag + " OK done\r\n")
		case "UID SEARCH":
			bw.WriteString("* SEARCH")
			for u := 1; u <= box.N; u++ {
				bw.WriteString(" " + strconv.Itoa(u))
			}
			bw.WriteString("\r\n" + tag + " OK done\r\n")
		case "LOGOUT":
			bw.WriteString("* BYE bye\r\n" + tag + " OK done\r\n")
			bw.Flush()
			return
		default:
			bw.WriteString(tag + " OK done\r\n")
		}
	}
}

// synthUIDs returns the UIDs of set (as "1:*", "5", "3:7,9") in box,
// ascending; n:* with n above the last UID means the last UID.
func synthUIDs(box SynthBox, set string, fn func(uid uint32) error) error {
	last := uint32(box.N)
	var ranges [][2]uint32
	for _, part := range strings.Split(set, ",") {
		a, b, isRange := strings.Cut(part, ":")
		num := func(s string) uint32 {
			if s == "*" {
				return last
			}
			n, _ := strconv.ParseUint(s, 10, 32)
			return uint32(n)
		}
		lo, hi := num(a), num(a)
		if isRange {
			hi = num(b)
		}
		if lo > hi {
			lo, hi = hi, lo
		}
		ranges = append(ranges, [2]uint32{lo, min(hi, last)})
	}
	for _, r := range ranges { // popbridge sends ascending, disjoint sets
		for u := max(r[0], 1); u <= r[1]; u++ {
			if err := fn(u); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Synth) fetch(bw *bufio.Writer, box SynthBox, set, items string) {
	size := strings.Contains(items, "RFC822.SIZE")
	date := strings.Contains(items, "INTERNALDATE")
	// imapclient quotes the field name: HEADER.FIELDS ("MESSAGE-ID").
	msgid := strings.Contains(items, "HEADER.FIELDS (MESSAGE-ID)") || strings.Contains(items, `HEADER.FIELDS ("MESSAGE-ID")`)
	body := strings.Contains(items, "BODY.PEEK[]") || strings.Contains(items, "BODY[]")
	var num [20]byte
	synthUIDs(box, set, func(uid uint32) error {
		u := strconv.AppendUint(num[:0], uint64(uid), 10)
		bw.WriteString("* ")
		bw.Write(u)
		bw.WriteString(" FETCH (UID ")
		bw.Write(u)
		sz := box.Size(uid)
		if size {
			bw.WriteString(" RFC822.SIZE ")
			bw.Write(strconv.AppendInt(num[:0], sz, 10))
		}
		if date {
			bw.WriteString(` INTERNALDATE "01-Jan-2026 00:00:00 +0000"`)
		}
		if msgid {
			h := "Message-ID: <" + strconv.FormatUint(uint64(uid), 10) + "@synth.example>\r\n\r\n"
			fmt.Fprintf(bw, " BODY[HEADER.FIELDS (MESSAGE-ID)] {%d}\r\n%s", len(h), h)
		}
		if body {
			fmt.Fprintf(bw, " BODY[] {%d}\r\n", sz)
			if err := WriteSynth(bw, uid, sz); err != nil {
				return err
			}
		}
		bw.WriteString(")\r\n")
		return nil
	})
}

// SynthSpec encodes boxes for the helper process: "user:n:small:big;...".
func SynthSpec(boxes map[string]SynthBox) string {
	var parts []string
	for u, b := range boxes {
		parts = append(parts, fmt.Sprintf("%s:%d:%d:%d", u, b.N, b.Small, b.Big))
	}
	return strings.Join(parts, ";")
}

// ParseSynthSpec decodes SynthSpec.
func ParseSynthSpec(spec string) (map[string]SynthBox, error) {
	boxes := map[string]SynthBox{}
	for _, p := range strings.Split(spec, ";") {
		f := strings.Split(p, ":")
		if len(f) != 4 {
			return nil, fmt.Errorf("bad box %q", p)
		}
		var nums [3]int64
		for i := range nums {
			n, err := strconv.ParseInt(f[i+1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("bad box %q", p)
			}
			nums[i] = n
		}
		boxes[f[0]] = SynthBox{N: int(nums[0]), Small: nums[1], Big: nums[2], UIDValidity: 0x6b076fcb}
	}
	return boxes, nil
}

const envSynthHelper = "POPBRIDGE_SYNTH_IMAP_HELPER"

// SynthHelperTest is the name of the test that StartSynthProcess runs in
// a child process (the test binary again): a test package that calls
// StartSynthProcess defines it and calls SynthHelper from it.
const SynthHelperTest = "TestSynthIMAPHelper"

// SynthHelper is the body of SynthHelperTest: in the child process of
// StartSynthProcess it serves a Synth, prints "SYNTH-ADDR host:port" and
// serves until its stdin closes; in any other run it skips the test.
func SynthHelper(t testing.TB) {
	spec := os.Getenv(envSynthHelper)
	if spec == "" {
		t.Skip("the helper process of the memory checks")
	}
	boxes, err := ParseSynthSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartSynth(boxes)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("SYNTH-ADDR %s\n", s.Addr())
	done := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Minute):
	}
	s.ln.Close() // connections end with the process
}

// StartSynthProcess runs a Synth with boxes in a child process (the test
// binary again, running SynthHelperTest), stopped when the test ends, and
// returns its address: the heap of the test process is then the client's
// alone.
func StartSynthProcess(tb testing.TB, boxes map[string]SynthBox) string {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+SynthHelperTest+"$", "-test.bench=^$", "-test.count=1", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), envSynthHelper+"="+SynthSpec(boxes))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill() // our own child, by its PID
			<-done
		}
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "SYNTH-ADDR "); ok {
				addrc <- a
				io.Copy(io.Discard, stdout)
				return
			}
		}
		close(addrc)
	}()
	select {
	case a, ok := <-addrc:
		if !ok {
			tb.Fatal("synth helper exited without an address")
		}
		return a
	case <-time.After(30 * time.Second):
		tb.Fatal("synth helper did not start within 30 s")
	}
	return ""
}
