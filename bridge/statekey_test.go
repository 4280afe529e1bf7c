package bridge

import (
	"bytes"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore"
	"github.com/popbridge/popbridge/state/pgstore/pgtest"
)

// TestStateKeyIgnoresAddressSpelling: the same upstream written another way
// in upstream.address (localhost for 127.0.0.1, another case) keeps the
// state: the same UIDLs, and what a device hid stays hidden.
func TestStateKeyIgnoresAddressSpelling(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
	seed(up, 3)
	_, port, err := net.SplitHostPort(mem.Addr)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, up, func(c *Config) {
		c.Delete.Policy = PolicyHide
		c.Upstream.Address = "127.0.0.1:" + port
	})
	c := e.session("laptop")
	all := c.uidls()
	c.ok("DELE 2")
	if r := c.quit(); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("QUIT: %q", r)
	}
	want := []string{all[0], all[2]}
	for _, addr := range []string{"localhost:" + port, "LocalHost:" + port, "127.0.0.1:" + port} {
		e.stop()
		e.cfg.Upstream.Address = addr
		e.start()
		c := e.session("laptop")
		if got := c.uidls(); !slices.Equal(got, want) {
			t.Errorf("address %s: the device lists %v, want %v (message 2 hidden, UIDLs kept)", addr, got, want)
		}
		c.quit()
		c = e.session("phone")
		if got := c.uidls(); !slices.Equal(got, all) {
			t.Errorf("address %s: another device lists %v, want %v", addr, got, all)
		}
		c.quit()
	}
}

// TestServerMoveKeepsUIDLs: the account moves to another server, copied
// imapsync-style (each message APPENDed with its INTERNALDATE) into a
// mailbox with another UIDVALIDITY and other UIDs, and upstream.address is
// changed. The record is kept (it is keyed on upstream.name, not the
// address), and the UIDVALIDITY re-match carries every UIDL over by
// fingerprint (Message-ID, INTERNALDATE, size): keep-mode clients download
// nothing again, and hidden messages stay hidden.
func TestServerMoveKeepsUIDLs(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, dst *upstreamEnv) {
		src := imaptest.NewMemServer(t, imaptest.WithCredentials(dst.user, dst.pass))
		src.Create("Trash", imap.MailboxAttrTrash)
		old := &upstreamEnv{name: "old", addr: src.Addr, user: dst.user, pass: dst.pass, box: src, mem: src}
		base := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
		for i := 1; i <= 6; i++ {
			raw := message(fmt.Sprintf("move%d", i), fmt.Sprintf("message %d", i), fmt.Sprintf("body %d\r\n", i))
			src.AppendAt("INBOX", raw, base.Add(time.Duration(i)*time.Hour+time.Duration(i)*time.Second))
		}
		e := newEnv(t, old, func(c *Config) { c.Delete.Policy = PolicyHide })
		laptop := e.session("laptop")
		before := laptop.list()
		laptop.ok("DELE 2")
		laptop.ok("DELE 5")
		if r := laptop.quit(); !strings.HasPrefix(r, "+OK") {
			t.Fatalf("QUIT: %q", r)
		}
		var all []string
		for _, l := range before {
			all = append(all, l.uidl)
		}

		// imapsync-style: newest first, so the UIDs differ as well.
		if dst.mem != nil {
			dst.mem.Recreate("INBOX")
		}
		orig := src.Messages("INBOX")
		for i := len(orig) - 1; i >= 0; i-- {
			dst.box.AppendAt("INBOX", orig[i].Raw, orig[i].Date)
		}
		moved := dst.box.Messages("INBOX")
		if len(moved) != len(orig) {
			t.Fatalf("the new server holds %d messages, want %d", len(moved), len(orig))
		}
		if dv, sv := dst.box.UIDValidity("INBOX"), src.UIDValidity("INBOX"); dv == sv {
			t.Fatalf("both servers have UIDVALIDITY %d: not a server move", dv)
		}
		// The old listing of each message, in the new server's UID order.
		var inNewOrder []listing
		var rawNewOrder [][]byte
		for _, m := range moved {
			i := slices.IndexFunc(orig, func(o imaptest.Message) bool { return bytes.Equal(o.Raw, m.Raw) })
			if i < 0 {
				t.Fatalf("UID %d on the new server has other bytes than any message of the old one", m.UID)
			}
			if !m.Date.Equal(orig[i].Date) || m.Size != orig[i].Size {
				t.Errorf("INTERNALDATE/size did not survive the copy: %v %d on the old server, %v %d on the new one", orig[i].Date, orig[i].Size, m.Date, m.Size)
			}
			if m.UID == orig[i].UID {
				t.Errorf("UID %d is the same on both servers: copy in another order", m.UID)
			}
			inNewOrder = append(inNewOrder, before[i])
			rawNewOrder = append(rawNewOrder, orig[i].Raw)
		}

		e.stop()
		e.up = dst
		e.cfg.Upstream.Address = dst.addr
		e.start()
		laptop = e.session("laptop")
		got := laptop.list()
		var want []listing
		var wantRaw [][]byte
		for i, l := range inNewOrder {
			if l.uidl != all[1] && l.uidl != all[4] {
				l.n = len(want) + 1
				want = append(want, l)
				wantRaw = append(wantRaw, rawNewOrder[i])
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("after the move the device lists %v, want %v (UIDLs and sizes kept, 2 and 5 still hidden)", got, want)
		}
		for i := range min(len(got), len(want)) {
			if !bytes.Equal(laptop.retr(i+1), wantRaw[i]) {
				t.Errorf("RETR %d after the move differs from the message", i+1)
			}
		}
		laptop.quit()

		// A new message on the new server gets a UIDL of its own.
		dst.box.Append("INBOX", message("after-move", "new", "new\r\n"))
		phone := e.session("phone")
		gotAll := phone.uidls()
		var wantAll []string
		for _, l := range inNewOrder {
			wantAll = append(wantAll, l.uidl)
		}
		if len(gotAll) != 7 || !slices.Equal(gotAll[:6], wantAll) || slices.Contains(all, gotAll[6]) {
			t.Errorf("another device lists %v, want %v and one new UIDL", gotAll, wantAll)
		}
		phone.quit()
	})
}

// TestLegacyStateKeyAdopted: a state store written by a version that keyed
// records on the address ("imap://account@address/mailbox") keeps working:
// at the account's first login its mailbox record and all its client
// records (hidden UIDLs, a pending UPDATE) move to the new key, once, and
// every device sees the UIDLs and the view it had. Other accounts' records
// are left for their own logins.
func TestLegacyStateKeyAdopted(t *testing.T) {
	stores := []struct {
		name string
		open func(t *testing.T) func() state.Store
	}{
		{"bolt", func(t *testing.T) func() state.Store {
			path := filepath.Join(t.TempDir(), "state.db")
			return func() state.Store {
				st, err := boltstore.Open(path, nil)
				if err != nil {
					t.Fatal(err)
				}
				return st
			}
		}},
		{"postgres", func(t *testing.T) func() state.Store {
			dsn := pgtest.Schema(t)
			return func() state.Store {
				st, err := pgstore.Open(t.Context(), dsn, nil)
				if err != nil {
					t.Fatal(err)
				}
				return st
			}
		}},
	}
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			open := sc.open(t)
			mem := imaptest.NewMemServer(t)
			mem.Create("Trash", imap.MailboxAttrTrash)
			up := &upstreamEnv{name: "memserver", addr: mem.Addr, user: mem.User, pass: mem.Pass, box: mem, mem: mem}
			raws := seed(up, 3)
			ctx := t.Context()

			// What the earlier version left: UIDLs of its own, a hidden
			// message, a pending flag UPDATE, and another account.
			legacy := "imap://" + strings.ToLower(mem.User) + "@" + strings.ToLower(mem.Addr) + "/INBOX"
			bobs := "imap://bob@" + strings.ToLower(mem.Addr) + "/INBOX"
			uv := mem.UIDValidity("INBOX")
			var entries []state.Entry
			for i, raw := range raws {
				entries = append(entries, state.Entry{UID: uint32(i + 1), UIDL: fmt.Sprintf("legacy-%d", i+1), Size: int64(len(raw))})
			}
			mk := state.Markers{UIDValidity: uv, UIDNext: 4, NumMessages: 3}
			st := open()
			for _, name := range []string{legacy, bobs} {
				v, err := st.ApplyMailbox(ctx, name, 0, state.MailboxChange{Markers: mk, Put: entries})
				if err == nil {
					_, err = st.ApplyMailbox(ctx, name, v, state.MailboxChange{Markers: mk})
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(st.ApplyClient(ctx, state.ClientKey{Mailbox: legacy, Client: "laptop"}, state.ClientChange{Hide: []string{"legacy-2"}}))
			must(st.ApplyClient(ctx, state.ClientKey{Mailbox: legacy, Client: "phone"}, state.ClientChange{SetPending: &state.Pending{
				Policy: PolicyFlag, Flags: []string{"$Legacy"}, UIDValidity: uv, UIDs: []uint32{3}, UIDLs: []string{"legacy-3"}, Created: time.Now(),
			}}))
			must(st.ApplyClient(ctx, state.ClientKey{Mailbox: bobs, Client: "laptop"}, state.ClientChange{Hide: []string{"legacy-1"}}))

			serve := func(st state.Store) (addr string, stop func()) {
				e := startBridge(t, nil, withStore(st, false), withConfig(func(cfg *Config) {
					cfg.Upstream.Address = mem.Addr
					cfg.Delete.Policy = PolicyHide
				}))
				return e.addr, e.stop
			}
			addr, stop := serve(st)
			views := map[string][]string{
				"laptop": {"legacy-1", "legacy-3"},
				"phone":  {"legacy-1", "legacy-2"}, // its pending flag UPDATE finished: 3 flagged and hidden
				"":       {"legacy-1", "legacy-2", "legacy-3"},
			}
			check := func(when string) {
				t.Helper()
				for _, device := range []string{"laptop", "phone", ""} {
					c := dialPOP(t, addr)
					user := mem.User
					if device != "" {
						user += "#" + device
					}
					c.login(user, mem.Pass)
					if got := c.uidls(); !slices.Equal(got, views[device]) {
						t.Errorf("%s: device %q lists %v, want %v", when, device, got, views[device])
					}
					c.quit()
				}
			}
			check("first logins")
			if msgs := mem.Messages("INBOX"); len(msgs) != 3 || !msgs[2].HasFlag("$legacy") || msgs[0].HasFlag("$legacy") || msgs[1].HasFlag("$legacy") {
				var flags [][]imap.Flag
				for _, m := range msgs {
					flags = append(flags, m.Flags)
				}
				t.Errorf("the adopted pending UPDATE was not applied to message 3 alone: flags %v", flags)
			}

			// The records moved, once; bob's wait for bob.
			newKey := MailboxKey(DefaultUpstreamName, mem.User, "INBOX")
			if m, err := st.LoadMailbox(ctx, legacy); err != nil || m.Version != 0 {
				t.Errorf("the legacy record is still there: %+v %v", m, err)
			}
			for _, device := range []string{"laptop", "phone"} {
				if c, err := st.LoadClient(ctx, state.ClientKey{Mailbox: legacy, Client: device}); err != nil || len(c.Hidden) != 0 || c.Pending != nil {
					t.Errorf("the legacy client record of %s is still there: %+v %v", device, c, err)
				}
			}
			if m, err := st.LoadMailbox(ctx, newKey); err != nil || m.Version < 2 || len(m.Entries) != 3 || m.Entries[1].UIDL != "legacy-2" {
				t.Errorf("the record under %s: %+v %v", newKey, m, err)
			}
			if m, err := st.LoadMailbox(ctx, bobs); err != nil || m.Version != 2 {
				t.Errorf("bob's legacy record changed: %+v %v", m, err)
			}
			if c, err := st.LoadClient(ctx, state.ClientKey{Mailbox: bobs, Client: "laptop"}); err != nil || !c.Hidden["legacy-1"] {
				t.Errorf("bob's legacy client record changed: %+v %v", c, err)
			}
			stop()

			// After a restart nothing is adopted twice: the views hold.
			addr, stop = serve(open())
			defer stop()
			check("after a restart")
		})
	}
}
