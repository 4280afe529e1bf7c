package upstream_test

import (
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
)

// A parked connection resumes with the exact status of a fresh SELECT,
// whatever arrived while it was parked, and stays usable.
func TestParkResume(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		u.Append(u.Mailbox, message(1, "one"))
		c, st := open(t, u)
		if err := c.Park(time.Minute); err != nil {
			t.Fatalf("Park: %v", err)
		}
		waitIdle(t, u)
		uid := u.Append(u.Mailbox, message(2, "two"))
		got, err := c.Resume(t.Context(), u.Mailbox)
		if err != nil {
			t.Fatalf("Resume: %v", err)
		}
		if got.UIDValidity != st.UIDValidity || got.NumMessages != st.NumMessages+1 || got.UIDNext != uid+1 {
			t.Errorf("Resume: %+v, want UIDVALIDITY %d, %d messages, UIDNEXT %d", got, st.UIDValidity, st.NumMessages+1, uid+1)
		}
		uids, err := c.SearchAll(t.Context())
		if err != nil || len(uids) != 2 || uids[1] != uid {
			t.Errorf("after Resume: UID SEARCH ALL = %v, %v; want 2 UIDs ending in %d", uids, err, uid)
		}
		if _, err := c.Resume(t.Context(), u.Mailbox); err == nil {
			t.Error("Resume of a connection that is not parked: no error")
		}
		if u.Mem != nil {
			if n := len(u.Mem.CommandsNamed("IDLE")); n != 1 {
				t.Errorf("%d IDLE commands, want 1", n)
			}
		}
	})
}

// Close of a parked connection ends IDLE and logs out properly.
func TestParkedClose(t *testing.T) {
	u := imaptest.Mem(t)
	c, _ := open(t, u)
	if err := c.Park(time.Minute); err != nil {
		t.Fatalf("Park: %v", err)
	}
	waitIdle(t, u)
	if err := c.Close(); err != nil {
		t.Errorf("Close of a parked connection: %v, want a clean LOGOUT", err)
	}
	if n := len(u.Mem.CommandsNamed("LOGOUT")); n != 1 {
		t.Errorf("%d LOGOUTs, want 1", n)
	}
}

// Without IDLE a parked connection sends NOOPs, and resumes with SELECT.
func TestParkWithoutIdle(t *testing.T) {
	u := imaptest.Mem(t, imaptest.WithCaps(imap.CapIMAP4rev1, imap.CapUIDPlus))
	u.Addr = imaptest.HideCaps(t, u.Addr, "IDLE")
	c, st := open(t, u)
	if err := c.Park(time.Second); err != nil {
		t.Fatalf("Park: %v", err)
	}
	for deadline := time.Now().Add(20 * time.Second); len(u.Mem.CommandsNamed("NOOP")) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no NOOP from a parked connection within 20s: %v", u.Mem.Commands())
		}
	}
	got, err := c.Resume(t.Context(), u.Mailbox)
	if err != nil || got.UIDValidity != st.UIDValidity {
		t.Fatalf("Resume: %+v, %v", got, err)
	}
	if n := len(u.Mem.CommandsNamed("IDLE")); n != 0 {
		t.Errorf("%d IDLE commands to a server without IDLE", n)
	}
	if n := len(u.Mem.CommandsNamed("SELECT")); n != 2 {
		t.Errorf("%d SELECTs, want 2 (open, Resume)", n)
	}
}

// A BYE while parked closes the connection, which Closed tells.
func TestParkedBye(t *testing.T) {
	u := imaptest.Mem(t)
	c, _ := open(t, u)
	if err := c.Park(time.Minute); err != nil {
		t.Fatalf("Park: %v", err)
	}
	waitIdle(t, u)
	if n := u.Mem.ByeAll("shutting down"); n != 1 {
		t.Fatalf("BYE to %d connections, want 1", n)
	}
	select {
	case <-c.Closed():
	case <-time.After(20 * time.Second):
		t.Fatal("a BYE while parked did not close the connection")
	}
	if c.Alive() {
		t.Error("Alive after a BYE")
	}
	if _, err := c.Resume(t.Context(), u.Mailbox); err == nil {
		t.Error("Resume after a BYE: no error")
	}
}

// waitIdle waits until the parked connection entered IDLE: on the memory
// server until it received IDLE, elsewhere for twice the delay before it.
func waitIdle(t *testing.T, u *imaptest.Upstream) {
	t.Helper()
	if u.Mem == nil {
		time.Sleep(2 * time.Second)
		return
	}
	for deadline := time.Now().Add(20 * time.Second); len(u.Mem.CommandsNamed("IDLE")) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a parked connection did not enter IDLE within 20s")
		}
	}
}

// A session that comes at once resumes without IDLE: SELECT alone.
func TestResumeBeforeIdle(t *testing.T) {
	u := imaptest.Mem(t)
	c, st := open(t, u)
	if err := c.Park(time.Minute); err != nil {
		t.Fatalf("Park: %v", err)
	}
	got, err := c.Resume(t.Context(), u.Mailbox)
	if err != nil || got.UIDValidity != st.UIDValidity || got.UIDNext != st.UIDNext || got.NumMessages != st.NumMessages {
		t.Fatalf("Resume: %+v, %v; want %+v", got, err, st)
	}
	if n := len(u.Mem.CommandsNamed("IDLE")); n != 0 {
		t.Errorf("%d IDLE commands, want none", n)
	}
}
