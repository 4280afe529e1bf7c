package bridge

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/stores"
)

// TestStateFileReadableByOthers: a state file that others may read (it
// names every account and device) is used, with a warning at open that
// names the file and its mode.
func TestStateFileReadableByOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	st, err := boltstore.Open(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	cfg := DefaultConfig()
	cfg.State.Path = path
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o640, true}, {0o604, true}, {0o600, false}, {0o400, false}} {
		if err := os.Chmod(path, tc.mode); err != nil {
			t.Fatal(err)
		}
		obs, logs := observer.New(zapcore.InfoLevel)
		st, err := stores.Open(t.Context(), cfg.State, stores.Options{MaxLocks: StateLocks(cfg)}, zap.New(obs))
		if err != nil {
			t.Fatalf("mode %04o: %v", tc.mode, err)
		}
		st.Close()
		var warned []observer.LoggedEntry
		for _, e := range logs.All() {
			if e.Level >= zapcore.WarnLevel {
				warned = append(warned, e)
			}
		}
		if !tc.warn {
			if len(warned) != 0 {
				t.Errorf("mode %04o: warned %v", tc.mode, warned)
			}
			continue
		}
		if len(warned) != 1 {
			t.Fatalf("mode %04o: %d warnings, want 1: %v", tc.mode, len(warned), logs.All())
		}
		f := warned[0].ContextMap()
		if f["path"] != path || f["mode"] != fmt.Sprintf("%04o", tc.mode) || !strings.Contains(warned[0].Message, "readable by") {
			t.Errorf("mode %04o: warning %q %v, want it to name the path and the mode", tc.mode, warned[0].Message, f)
		}
	}
	// A file that does not exist yet is created 0600, without a word.
	cfg.State.Path = filepath.Join(t.TempDir(), "new.db")
	obs, logs := observer.New(zapcore.WarnLevel)
	nst, err := stores.Open(t.Context(), cfg.State, stores.Options{MaxLocks: StateLocks(cfg)}, zap.New(obs))
	if err != nil {
		t.Fatal(err)
	}
	nst.Close()
	if logs.Len() != 0 {
		t.Errorf("a new file: %v", logs.All())
	}
}

// faultStore is a state.Store whose operations can be made to fail.
type faultStore struct {
	state.Store
	mu     sync.Mutex
	faults map[string]error // by method name
}

func (s *faultStore) fail(op string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.faults == nil {
		s.faults = map[string]error{}
	}
	s.faults[op] = err
}

func (s *faultStore) fault(op string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults[op]
}

func (s *faultStore) LoadMailbox(ctx context.Context, mailbox string) (*state.Mailbox, error) {
	if err := s.fault("LoadMailbox"); err != nil {
		return nil, err
	}
	return s.Store.LoadMailbox(ctx, mailbox)
}

func (s *faultStore) ApplyMailbox(ctx context.Context, mailbox string, base uint64, ch state.MailboxChange) (uint64, error) {
	if err := s.fault("ApplyMailbox"); err != nil {
		return 0, err
	}
	return s.Store.ApplyMailbox(ctx, mailbox, base, ch)
}

func (s *faultStore) ApplyClient(ctx context.Context, k state.ClientKey, ch state.ClientChange) error {
	if err := s.fault("ApplyClient"); err != nil {
		return err
	}
	return s.Store.ApplyClient(ctx, k, ch)
}

func (s *faultStore) Lock(ctx context.Context, k state.ClientKey) (func(), error) {
	if err := s.fault("Lock"); err != nil {
		return nil, err
	}
	return s.Store.Lock(ctx, k)
}

// osError is how a write error of the state file reaches the bridge.
func osError(errno syscall.Errno) error {
	return fmt.Errorf("boltstore: /var/lib/popbridge/state.db: %w", &os.PathError{Op: "write", Path: "/var/lib/popbridge/state.db", Err: errno})
}

// TestStoreErrorsTellTheClient: when the state store fails because its
// disk is full or read-only, or its data is damaged, the client is told
// so in words (not "internal error"), and the log has the cause at error
// level.
func TestStoreErrorsTellTheClient(t *testing.T) {
	type setup struct {
		mem  *imaptest.MemServer
		fs   *faultStore
		s    *secServer
		path string
	}
	start := func(t *testing.T) setup {
		mem := imaptest.NewMemServer(t)
		mem.Create("Trash", "\\Trash")
		mem.Append("INBOX", message("se1", "one", "first\r\n"))
		mem.Append("INBOX", message("se2", "two", "second\r\n"))
		path := filepath.Join(t.TempDir(), "state.db")
		bs, err := boltstore.Open(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		fs := &faultStore{Store: bs}
		return setup{mem: mem, fs: fs, s: startSecStore(t, secConfig(mem.Addr), fs), path: path}
	}
	login := func(t *testing.T, su setup, device string) (*popLogin, string) {
		t.Helper()
		p, err := dialLogin(su.s.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.close)
		return p, answerOf(p.userPass(su.mem.User+"#"+device, su.mem.Pass))
	}
	// logged checks for an error-level line whose error names the cause.
	logged := func(t *testing.T, su setup, cause string) {
		t.Helper()
		for _, e := range su.s.logs.All() {
			if e.Level >= zapcore.ErrorLevel && strings.Contains(fmt.Sprint(e.ContextMap()["error"]), cause) {
				return
			}
		}
		t.Errorf("no error-level log line with the cause %q", cause)
	}

	for _, tc := range []struct {
		name, op string
		err      error
		want     string
		cause    string
	}{
		{"disk full at login", "ApplyMailbox", osError(syscall.ENOSPC), "-ERR [SYS/TEMP] state store full (disk)", "no space left on device"},
		{"quota at login", "ApplyMailbox", osError(syscall.EDQUOT), "-ERR [SYS/TEMP] state store full (disk)", "quota exceeded"},
		{"read-only at login", "ApplyMailbox", osError(syscall.EROFS), "-ERR [SYS/PERM] state store read-only", "read-only file system"},
		{"damaged at login", "LoadMailbox", fmt.Errorf("boltstore: x: %w", fmt.Errorf("%w: page 7: invalid page type 0x0", state.ErrDamaged)), "-ERR [SYS/PERM] state store damaged", "invalid page type"},
		{"disk full at lock", "Lock", osError(syscall.ENOSPC), "-ERR [SYS/TEMP] state store full (disk)", "no space left on device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			su := start(t)
			su.fs.fail(tc.op, tc.err)
			if _, r := login(t, su, "phone"); r != tc.want {
				t.Errorf("login: %q, want %q", r, tc.want)
			}
			logged(t, su, tc.cause)
		})
	}

	t.Run("disk full at QUIT", func(t *testing.T) {
		su := start(t)
		p, r := login(t, su, "phone")
		if !strings.HasPrefix(r, "+OK") {
			t.Fatalf("login: %q", r)
		}
		if r, err := p.cmd("DELE 1"); err != nil || !strings.HasPrefix(r, "+OK") {
			t.Fatalf("DELE 1: %q %v", r, err)
		}
		su.fs.fail("ApplyClient", osError(syscall.ENOSPC))
		if r, err := p.cmd("QUIT"); answerOf(r, err) != "-ERR [SYS/TEMP] state store full (disk); nothing was deleted" {
			t.Errorf("QUIT: %q %v", r, err)
		}
		if n := len(su.mem.Messages("INBOX")); n != 2 {
			t.Errorf("INBOX holds %d messages after the failed QUIT, want 2", n)
		}
		logged(t, su, "no space left on device")
	})

	t.Run("damaged file", func(t *testing.T) {
		su := start(t)
		p, r := login(t, su, "phone")
		if !strings.HasPrefix(r, "+OK") {
			t.Fatalf("login: %q", r)
		}
		p.cmd("QUIT")
		// Damage the mailbox record on disk, as a bad sector could: the
		// store is closed and opened again around it.
		su.s.srv.Shutdown(t.Context())
		su.fs.Store.Close()
		db, err := bolt.Open(su.path, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("mailboxes")).ForEach(func(k, _ []byte) error {
				return tx.Bucket([]byte("mailboxes")).Bucket(k).Put([]byte("meta"), []byte{1, 2, 3})
			})
		})
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		bs, err := boltstore.Open(su.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		su.fs = &faultStore{Store: bs}
		su.s = startSecStore(t, secConfig(su.mem.Addr), su.fs)
		if _, r := login(t, su, "phone"); r != "-ERR [SYS/PERM] state store damaged" {
			t.Errorf("login on a damaged record: %q", r)
		}
		logged(t, su, "damaged")
	})
}
