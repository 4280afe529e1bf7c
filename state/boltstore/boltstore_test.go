package boltstore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) func() state.Store {
		path := filepath.Join(t.TempDir(), "state.db")
		return func() state.Store {
			s, err := Open(path, nil)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}, nil)
}

func tempPath(t testing.TB) string {
	return filepath.Join(t.TempDir(), "state.db")
}

func mustOpen(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestFileMode(t *testing.T) {
	path := tempPath(t)
	mustOpen(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("file mode %v, want 0600", mode)
	}
}

func TestSecondOpenFails(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)

	for _, opts := range []*Options{{Timeout: 50 * time.Millisecond}, nil} {
		start := time.Now()
		s2, err := Open(path, opts)
		if err == nil {
			s2.Close()
			t.Fatalf("a second Open of %s while open succeeded", path)
		}
		t.Logf("second Open (%+v) failed after %v: %v", opts, time.Since(start).Round(time.Millisecond), err)
		if !errors.Is(err, bolt.ErrTimeout) || !strings.Contains(err.Error(), path) {
			t.Errorf("second Open: %v; want an error naming %s that wraps bbolt's ErrTimeout", err, path)
		}
	}

	// Once the first Store is closed, the file opens again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	mustOpen(t, path)
}

// TestSecondProcess checks that another process holding the file makes Open
// fail: bbolt's flock, not anything in this process, keeps them apart.
func TestSecondProcess(t *testing.T) {
	if path := os.Getenv("BOLTSTORE_TEST_HOLD"); path != "" {
		holdFile(path)
		return
	}
	path := tempPath(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestSecondProcess$")
	cmd.Env = append(os.Environ(), "BOLTSTORE_TEST_HOLD="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if line != "holding\n" {
		t.Fatalf("helper process said %q, %v", line, err)
	}

	s, err := Open(path, &Options{Timeout: 100 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("Open succeeded while another process holds the file")
	}
	if !strings.Contains(err.Error(), path) {
		t.Errorf("Open: %v; want an error naming %s", err, path)
	}

	// The helper lets go when its stdin closes.
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper process: %v", err)
	}
	mustOpen(t, path)
}

// holdFile opens path, says so on stdout and keeps it open until stdin
// closes. It runs in the helper process of TestSecondProcess.
func holdFile(path string) {
	s, err := Open(path, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("holding")
	io.Copy(io.Discard, os.Stdin)
	s.Close()
}

// writeRaw runs fn on the bbolt file at path, outside any Store.
func writeRaw(t *testing.T, path string, fn func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, path string)
		want  string
	}{
		{"garbage", func(t *testing.T, path string) {
			garbage := make([]byte, 64<<10)
			for i := range garbage {
				garbage[i] = byte(i*7 + i>>8)
			}
			if err := os.WriteFile(path, garbage, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "invalid"},
		{"other bbolt file", func(t *testing.T, path string) {
			writeRaw(t, path, func(tx *bolt.Tx) error {
				_, err := tx.CreateBucket([]byte("something else"))
				return err
			})
		}, "not a popbridge state file"},
		{"future format", func(t *testing.T, path string) {
			mustOpen(t, path).Close()
			writeRaw(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keyFormat, binary.BigEndian.AppendUint32(nil, formatVersion+1))
			})
		}, fmt.Sprintf("format version %d", formatVersion+1)},
		{"malformed format", func(t *testing.T, path string) {
			mustOpen(t, path).Close()
			writeRaw(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Put(keyFormat, []byte("1"))
			})
		}, "format version is missing or malformed"},
		{"no format", func(t *testing.T, path string) {
			mustOpen(t, path).Close()
			writeRaw(t, path, func(tx *bolt.Tx) error {
				return tx.Bucket(bucketMeta).Delete(keyFormat)
			})
		}, "format version is missing"},
		{"no clients bucket", func(t *testing.T, path string) {
			mustOpen(t, path).Close()
			writeRaw(t, path, func(tx *bolt.Tx) error {
				return tx.DeleteBucket(bucketClients)
			})
		}, "top-level buckets missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempPath(t)
			tc.setup(t, path)
			s, err := Open(path, &Options{Timeout: 100 * time.Millisecond})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Open: %v; want an error naming the path and saying %q", err, tc.want)
			}
			// A refused file is let go: it can be opened raw again.
			if tc.name != "garbage" {
				writeRaw(t, path, func(*bolt.Tx) error { return nil })
			}
		})
	}
}

// TestEmptyFile: an existing file of 0 bytes is not a new state file (a
// truncation, a full disk, a restore gone wrong would look the same): Open
// refuses it, naming the file and the way out, and leaves it as it is. With
// Options.InitEmpty it becomes a new state file.
func TestEmptyFile(t *testing.T) {
	path := tempPath(t)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, nil)
	if err == nil {
		s.Close()
		t.Fatal("Open of an empty file succeeded; want a refusal")
	}
	if !errors.Is(err, ErrEmptyFile) {
		t.Errorf("Open: %v; want ErrEmptyFile", err)
	}
	for _, want := range []string{path, "empty", "0 bytes", "InitEmpty"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open: %q lacks %q", err, want)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != 0 {
		t.Fatalf("the refused file changed: %v %v", fi, err)
	}

	s, err = Open(path, &Options{InitEmpty: true})
	if err != nil {
		t.Fatalf("Open with InitEmpty: %v", err)
	}
	if _, err := s.ApplyMailbox(t.Context(), "INBOX", 0, state.MailboxChange{Put: []state.Entry{{UID: 1, UIDL: "u1", Size: 9}}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Initialised once, it is an ordinary state file: no option needed.
	s = mustOpen(t, path)
	if m, err := s.LoadMailbox(t.Context(), "INBOX"); err != nil || len(m.Entries) != 1 || m.Entries[0].UIDL != "u1" {
		t.Fatalf("after InitEmpty: %+v %v", m, err)
	}
}

// TestMissingFileCreated: a path with no file is a new state file, as
// before; InitEmpty is not needed.
func TestMissingFileCreated(t *testing.T) {
	path := tempPath(t)
	s := mustOpen(t, path)
	if _, err := s.ApplyMailbox(t.Context(), "INBOX", 0, state.MailboxChange{}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Fatalf("new state file: %v %v", fi, err)
	}
}

// TestDamagedRecords damages stored values in ways a disk or a bug could,
// and checks that loading them is an error, never a panic.
func TestDamagedRecords(t *testing.T) {
	const mb = "INBOX"
	k := state.ClientKey{Mailbox: mb, Client: "phone"}
	mbBucket := func(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket(bucketMailboxes).Bucket(mailboxKey(mb)) }
	clBucket := func(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket(bucketClients).Bucket(clientKey(k)) }
	uid1 := uidKey(1)
	for _, tc := range []struct {
		name   string
		damage func(tx *bolt.Tx) error
		client bool // the damage is in the client record
	}{
		{"meta short", func(tx *bolt.Tx) error { return mbBucket(tx).Put(keyMailboxMeta, []byte{1, 2, 3}) }, false},
		{"meta missing", func(tx *bolt.Tx) error { return mbBucket(tx).Delete(keyMailboxMeta) }, false},
		{"uid bucket missing", func(tx *bolt.Tx) error { return mbBucket(tx).DeleteBucket(bucketUID) }, false},
		{"uid key short", func(tx *bolt.Tx) error { return mbBucket(tx).Bucket(bucketUID).Put([]byte{1}, []byte{0, 0, 0}) }, false},
		{"uid value empty", func(tx *bolt.Tx) error { return mbBucket(tx).Bucket(bucketUID).Put(uid1[:], []byte{}) }, false},
		{"uid value truncated", func(tx *bolt.Tx) error {
			return mbBucket(tx).Bucket(bucketUID).Put(uid1[:], []byte{2, 10, 'a', 'b'})
		}, false},
		{"uid value huge length", func(tx *bolt.Tx) error {
			return mbBucket(tx).Bucket(bucketUID).Put(uid1[:], binary.AppendUvarint([]byte{2}, 1<<62))
		}, false},
		{"uid value trailing bytes", func(tx *bolt.Tx) error {
			return mbBucket(tx).Bucket(bucketUID).Put(uid1[:], []byte{2, 1, 'a', 0, 99})
		}, false},
		{"uid sub-bucket", func(tx *bolt.Tx) error {
			uid3 := uidKey(3)
			_, err := mbBucket(tx).Bucket(bucketUID).CreateBucket(uid3[:])
			return err
		}, false},
		{"huge count", func(tx *bolt.Tx) error {
			v := slices.Clone(mbBucket(tx).Get(keyMailboxMeta))
			binary.BigEndian.PutUint32(v[28:], 1<<32-1)
			// And an entry that does not decode, so the load fails
			// after the slice was sized.
			if err := mbBucket(tx).Bucket(bucketUID).Put(uid1[:], []byte{0x80}); err != nil {
				return err
			}
			return mbBucket(tx).Put(keyMailboxMeta, v)
		}, false},
		{"pending garbage", func(tx *bolt.Tx) error { return clBucket(tx).Put(keyPending, []byte{0xff, 0xff, 0xff}) }, true},
		{"pending huge count", func(tx *bolt.Tx) error {
			v := appendString(appendString(nil, "flag"), "")
			v = binary.AppendUvarint(v, 1<<40) // flags
			return clBucket(tx).Put(keyPending, v)
		}, true},
		{"pending UID out of range", func(tx *bolt.Tx) error {
			v := appendString(appendString(nil, "flag"), "")
			v = binary.AppendUvarint(v, 0)
			v = binary.BigEndian.AppendUint32(v, 1)
			v = binary.AppendUvarint(v, 1)
			v = binary.AppendUvarint(v, 1<<33)
			v = binary.AppendUvarint(v, 0)
			v = binary.AppendVarint(v, 0)
			v = binary.AppendUvarint(v, 0)
			return clBucket(tx).Put(keyPending, v)
		}, true},
		{"pending nanoseconds out of range", func(tx *bolt.Tx) error {
			// A value of format 1, which ends with the nanoseconds.
			v := encodePending(&state.Pending{Policy: "hide"})
			v = v[:len(v)-3] // format 2's attempts and two empty lists
			v = append(v[:len(v)-1], binary.AppendUvarint(nil, uint64(time.Second))...)
			return clBucket(tx).Put(keyPending, v)
		}, true},
		{"pending trailing bytes", func(tx *bolt.Tx) error {
			return clBucket(tx).Put(keyPending, append(encodePending(&state.Pending{Policy: "hide"}), 0))
		}, true},
		{"pending trailing bytes after Copied", func(tx *bolt.Tx) error {
			return clBucket(tx).Put(keyPending, append(encodePending(&state.Pending{Policy: "move", Copied: []string{"u1"}}), 'x'))
		}, true},
		{"pending Copied cut short", func(tx *bolt.Tx) error {
			v := encodePending(&state.Pending{Policy: "move", Copied: []string{"u1"}})
			return clBucket(tx).Put(keyPending, v[:len(v)-1])
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tempPath(t)
			s := mustOpen(t, path)
			ctx := t.Context()
			if _, err := s.ApplyMailbox(ctx, mb, 0, state.MailboxChange{Put: []state.Entry{{UID: 1, UIDL: "u1", Size: 10}, {UID: 2, UIDL: "u2"}}}); err != nil {
				t.Fatal(err)
			}
			if err := s.ApplyClient(ctx, k, state.ClientChange{Hide: []string{"u1"}, SetPending: &state.Pending{Policy: "hide"}}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			writeRaw(t, path, tc.damage)

			s = mustOpen(t, path)
			if tc.client {
				c, err := s.LoadClient(ctx, k)
				if err == nil {
					t.Fatalf("LoadClient of a damaged record = %+v, no error", c)
				}
				t.Log(err)
				if !strings.Contains(err.Error(), "damaged") {
					t.Errorf("LoadClient: %v; want it to say the record is damaged", err)
				}
				return
			}
			m, err := s.LoadMailbox(ctx, mb)
			if err == nil {
				t.Fatalf("LoadMailbox of a damaged record = %+v, no error", m)
			}
			t.Log(err)
			if !strings.Contains(err.Error(), "damaged") || !strings.Contains(err.Error(), path) {
				t.Errorf("LoadMailbox: %v; want it to name the path and say the record is damaged", err)
			}
			// ApplyMailbox reads the meta value too; a damaged one is
			// an error, not a conflict.
			if _, err := s.ApplyMailbox(ctx, mb, 1, state.MailboxChange{}); errors.Is(err, state.ErrConflict) {
				t.Errorf("ApplyMailbox on a damaged record: %v", err)
			}
		})
	}
}

// TestAnyBytes stores names, UIDLs and pending strings that are not UTF-8 or
// hold NUL bytes, which the conformance suite leaves out.
func TestAnyBytes(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	ctx := t.Context()
	names := []string{"a\x00b", "a", "a\x00", "\xff\xfe", "\x00", strings.Repeat("x", 1000)}
	for i, name := range names {
		e := state.Entry{UID: 1, UIDL: name + "\x00uidl", Size: int64(i), Fingerprint: "\xff" + name}
		if _, err := s.ApplyMailbox(ctx, name, 0, state.MailboxChange{Markers: state.Markers{UIDValidity: uint32(i)}, Put: []state.Entry{e}}); err != nil {
			t.Fatalf("ApplyMailbox(%q): %v", name, err)
		}
	}
	for i, name := range names {
		m, err := s.LoadMailbox(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		want := state.Entry{UID: 1, UIDL: name + "\x00uidl", Size: int64(i), Fingerprint: "\xff" + name}
		if m.Version != 1 || m.UIDValidity != uint32(i) || !slices.Equal(m.Entries, []state.Entry{want}) {
			t.Errorf("LoadMailbox(%q) = %+v", name, *m)
		}
	}

	// Keys that a NUL separator would confuse.
	keys := []state.ClientKey{{Mailbox: "a\x00", Client: "b"}, {Mailbox: "a", Client: "\x00b"}, {Mailbox: "a\x00b"}, {Client: "a\x00b"}}
	for i, k := range keys {
		p := &state.Pending{Policy: "move", Target: "\xffTrash\x00", Flags: []string{"\x00"}, UIDLs: []string{fmt.Sprint("\xfe", i)}}
		if err := s.ApplyClient(ctx, k, state.ClientChange{Hide: []string{fmt.Sprint("\x00", i)}, SetPending: p}); err != nil {
			t.Fatal(err)
		}
	}
	for i, k := range keys {
		c, err := s.LoadClient(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if len(c.Hidden) != 1 || !c.Hidden[fmt.Sprint("\x00", i)] {
			t.Errorf("LoadClient(%+v).Hidden = %v", k, c.Hidden)
		}
		if p := c.Pending; p == nil || p.Target != "\xffTrash\x00" || !slices.Equal(p.Flags, []string{"\x00"}) || !slices.Equal(p.UIDLs, []string{fmt.Sprint("\xfe", i)}) {
			t.Errorf("LoadClient(%+v).Pending = %+v", k, p)
		}
	}
}

func TestTooLong(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	ctx := t.Context()
	long := strings.Repeat("x", bolt.MaxKeySize)
	if _, err := s.ApplyMailbox(ctx, long, 0, state.MailboxChange{}); err == nil {
		t.Error("ApplyMailbox with a mailbox name longer than a bbolt key succeeded")
	}
	if err := s.ApplyClient(ctx, state.ClientKey{Mailbox: "INBOX"}, state.ClientChange{Hide: []string{"ok", long + "x"}}); err == nil {
		t.Error("ApplyClient hiding a UIDL longer than a bbolt key succeeded")
	}
	// The failed change left nothing behind.
	c, err := s.LoadClient(ctx, state.ClientKey{Mailbox: "INBOX"})
	if err != nil || len(c.Hidden) != 0 {
		t.Errorf("LoadClient after a failed change = %+v, %v", c, err)
	}
	if m, err := s.LoadMailbox(ctx, long); err != nil || m.Version != 0 {
		t.Errorf("LoadMailbox(too long) = %+v, %v; want the zero Mailbox", m, err)
	}
}

func TestHideEmptyUIDL(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	ctx := t.Context()
	k := state.ClientKey{Mailbox: "INBOX"}
	err := s.ApplyClient(ctx, k, state.ClientChange{Hide: []string{"a", ""}, SetPending: &state.Pending{Policy: "hide"}})
	if err == nil {
		t.Fatal("hiding an empty UIDL succeeded")
	}
	c, err := s.LoadClient(ctx, k)
	if err != nil || len(c.Hidden) != 0 || c.Pending != nil {
		t.Errorf("LoadClient after a refused change = %+v, %v; want it empty", c, err)
	}
	// Unhiding one is a no-op.
	if err := s.ApplyClient(ctx, k, state.ClientChange{Unhide: []string{""}}); err != nil {
		t.Error(err)
	}
}

// countKeys returns the meta count of mailbox and the keys its uid bucket
// really holds.
func countKeys(t *testing.T, s *Store, mailbox string) (meta uint32, keys int) {
	t.Helper()
	err := s.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bucketMailboxes).Bucket(mailboxKey(mailbox))
		m, err := decodeMailboxMeta(mb.Get(keyMailboxMeta))
		if err != nil {
			return err
		}
		meta = m.count
		keys = mb.Bucket(bucketUID).Stats().KeyN
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return meta, keys
}

func TestEntryCount(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	ctx := t.Context()
	e := func(uid uint32) state.Entry { return state.Entry{UID: uid, UIDL: fmt.Sprint(uid)} }
	changes := []state.MailboxChange{
		{Put: []state.Entry{e(1), e(2), e(3), e(3)}},
		{Put: []state.Entry{e(2), e(4)}, Delete: []uint32{1, 9, 9}},
		{Delete: []uint32{2, 2}, Put: []state.Entry{e(2)}},
		{Reset: true, Put: []state.Entry{e(7)}},
		{Reset: true},
		{Delete: []uint32{1}},
		{Put: []state.Entry{e(5), e(1), e(5)}},
	}
	for i, ch := range changes {
		if _, err := s.ApplyMailbox(ctx, "INBOX", uint64(i), ch); err != nil {
			t.Fatal(err)
		}
		meta, keys := countKeys(t, s, "INBOX")
		if int(meta) != keys {
			t.Errorf("after change %d: meta counts %d entries, the uid bucket holds %d", i, meta, keys)
		}
	}
}

func TestEmptyClientRecordDeleted(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	ctx := t.Context()
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	exists := func() bool {
		var ok bool
		s.db.View(func(tx *bolt.Tx) error {
			ok = tx.Bucket(bucketClients).Bucket(clientKey(k)) != nil
			return nil
		})
		return ok
	}
	if err := s.ApplyClient(ctx, k, state.ClientChange{Unhide: []string{"a"}, ClearPending: true}); err != nil || exists() {
		t.Fatalf("a change removing nothing created a record (%v)", err)
	}
	if err := s.ApplyClient(ctx, k, state.ClientChange{Hide: []string{"a"}, SetPending: &state.Pending{Policy: "hide"}}); err != nil || !exists() {
		t.Fatalf("no record after Hide (%v)", err)
	}
	if err := s.ApplyClient(ctx, k, state.ClientChange{Unhide: []string{"a"}}); err != nil || !exists() {
		t.Fatalf("record gone while a pending UPDATE is left (%v)", err)
	}
	if err := s.ApplyClient(ctx, k, state.ClientChange{ClearPending: true}); err != nil || exists() {
		t.Fatalf("empty record kept (%v)", err)
	}
}

func TestClosed(t *testing.T) {
	s, err := Open(tempPath(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	release, err := s.Lock(t.Context(), state.ClientKey{Mailbox: "INBOX"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	release()
	ctx := t.Context()
	k := state.ClientKey{Mailbox: "INBOX"}
	if _, err := s.LoadMailbox(ctx, "INBOX"); err == nil {
		t.Error("LoadMailbox after Close succeeded")
	}
	if _, err := s.ApplyMailbox(ctx, "INBOX", 0, state.MailboxChange{}); err == nil {
		t.Error("ApplyMailbox after Close succeeded")
	}
	if _, err := s.LoadClient(ctx, k); err == nil {
		t.Error("LoadClient after Close succeeded")
	}
	if err := s.ApplyClient(ctx, k, state.ClientChange{Hide: []string{"a"}}); err == nil {
		t.Error("ApplyClient after Close succeeded")
	}
	if _, err := s.Lock(ctx, k); err == nil {
		t.Error("Lock after Close succeeded")
	}
}

func TestCanceled(t *testing.T) {
	s := mustOpen(t, tempPath(t))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	k := state.ClientKey{Mailbox: "INBOX"}
	if _, err := s.ApplyMailbox(ctx, "INBOX", 0, state.MailboxChange{}); !errors.Is(err, context.Canceled) {
		t.Errorf("ApplyMailbox: %v", err)
	}
	if _, err := s.LoadMailbox(ctx, "INBOX"); !errors.Is(err, context.Canceled) {
		t.Errorf("LoadMailbox: %v", err)
	}
	if err := s.ApplyClient(ctx, k, state.ClientChange{Hide: []string{"a"}}); !errors.Is(err, context.Canceled) {
		t.Errorf("ApplyClient: %v", err)
	}
	if _, err := s.LoadClient(ctx, k); !errors.Is(err, context.Canceled) {
		t.Errorf("LoadClient: %v", err)
	}
	if _, err := s.Lock(ctx, k); !errors.Is(err, context.Canceled) {
		t.Errorf("Lock: %v", err)
	}
	// A canceled Lock holds nothing.
	release, err := s.Lock(t.Context(), k)
	if err != nil {
		t.Fatal(err)
	}
	release()
}

func FuzzDecodeEntry(f *testing.F) {
	f.Add(appendEntry(nil, &state.Entry{UID: 1, UIDL: "000000016b076fcb", Size: 1234, Fingerprint: "<a@b> 2026"}))
	f.Add(appendEntry(nil, &state.Entry{UID: 1, UIDL: "000000016b076fcb", Size: 1234, Fingerprint: "h:x", Digest: "s:y"}))
	f.Add([]byte{})
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, v []byte) {
		e, err := decodeEntry(7, v)
		if err != nil {
			return
		}
		again, err := decodeEntry(7, appendEntry(nil, &e))
		if err != nil || again != e {
			t.Fatalf("re-encoded %+v decodes as %+v, %v", e, again, err)
		}
	})
}

func FuzzDecodePending(f *testing.F) {
	f.Add(encodePending(&state.Pending{Policy: "flag", Flags: []string{`\Seen`}, UIDValidity: 5, UIDs: []uint32{1, 2}, UIDLs: []string{"a", "b"}, Created: time.Unix(1_700_000_000, 123)}))
	f.Add(encodePending(&state.Pending{}))
	f.Add(encodePending(&state.Pending{Policy: "expunge", UIDValidity: 5, UIDs: []uint32{1}, UIDLs: []string{"a"},
		Fingerprints: []string{"h:x"}, Digests: []string{"s:y"}, Attempts: 3, Created: time.Unix(1_700_000_000, 0)}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		p, err := decodePending(v)
		if err != nil {
			return
		}
		again, err := decodePending(encodePending(p))
		if err != nil {
			t.Fatalf("re-encoded %+v: %v", p, err)
		}
		if again.Policy != p.Policy || again.Target != p.Target || !slices.Equal(again.Flags, p.Flags) ||
			again.UIDValidity != p.UIDValidity || !slices.Equal(again.UIDs, p.UIDs) || !slices.Equal(again.UIDLs, p.UIDLs) ||
			!again.Created.Equal(p.Created) || again.Attempts != p.Attempts ||
			!slices.Equal(again.Fingerprints, p.Fingerprints) || !slices.Equal(again.Digests, p.Digests) {
			t.Fatalf("re-encoded %+v decodes as %+v", p, again)
		}
	})
}

// bigMailbox returns n entries shaped like real ones.
func bigMailbox(n int) []state.Entry {
	entries := make([]state.Entry, n)
	for i := range entries {
		uid := uint32(i + 1)
		entries[i] = state.Entry{
			UID:         uid,
			UIDL:        fmt.Sprintf("%08x6b076fcb", uid),
			Size:        int64(2000 + i%100_000),
			Fingerprint: fmt.Sprintf("<%08x.%d@mail.example.org> 2026-03-01T12:00:00Z %d", i*7919, i, 2000+i%100_000),
		}
	}
	return entries
}

func openBig(b *testing.B, n int) *Store {
	s := mustOpen(b, tempPath(b))
	ch := state.MailboxChange{Markers: state.Markers{UIDValidity: 0x6b076fcb, UIDNext: uint32(n + 1), NumMessages: uint32(n)}, Put: bigMailbox(n)}
	if _, err := s.ApplyMailbox(b.Context(), "INBOX", 0, ch); err != nil {
		b.Fatal(err)
	}
	return s
}

func BenchmarkLoadMailbox100k(b *testing.B) {
	s := openBig(b, 100_000)
	ctx := b.Context()
	b.ReportAllocs()
	for b.Loop() {
		m, err := s.LoadMailbox(ctx, "INBOX")
		if err != nil || len(m.Entries) != 100_000 {
			b.Fatalf("%d entries, %v", len(m.Entries), err)
		}
	}
}

// BenchmarkApplyMailboxAdd adds 10 new messages to a mailbox of 100,000, as
// a login after new mail does; each change is one committed, synced
// transaction.
func BenchmarkApplyMailboxAdd(b *testing.B) {
	const n = 100_000
	s := openBig(b, n)
	ctx := b.Context()
	version := uint64(1)
	next := uint32(n + 1)
	b.ReportAllocs()
	for b.Loop() {
		put := make([]state.Entry, 10)
		for i := range put {
			put[i] = state.Entry{UID: next, UIDL: fmt.Sprintf("%08x6b076fcb", next), Size: 4321, Fingerprint: fmt.Sprintf("<%d@mail.example.org> 2026-03-01T12:00:00Z 4321", next)}
			next++
		}
		v, err := s.ApplyMailbox(ctx, "INBOX", version, state.MailboxChange{Markers: state.Markers{UIDValidity: 0x6b076fcb, UIDNext: next}, Put: put})
		if err != nil {
			b.Fatal(err)
		}
		version = v
	}
}

// BenchmarkLoginWrite is the client record write of a login that finds
// nothing else to change: it sets the last login (one write transaction,
// so one fsync of the file).
func BenchmarkLoginWrite(b *testing.B) {
	s := mustOpen(b, tempPath(b))
	defer s.Close()
	k := state.ClientKey{Mailbox: "INBOX", Client: "phone"}
	now := time.Date(2026, 12, 3, 13, 0, 0, 0, time.UTC)
	for b.Loop() {
		now = now.Add(time.Second)
		if err := s.ApplyClient(b.Context(), k, state.ClientChange{LastLogin: now}); err != nil {
			b.Fatal(err)
		}
	}
}
