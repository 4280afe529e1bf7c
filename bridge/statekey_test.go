package bridge

import (
	"bytes"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/bridge/internal/imaptest"
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
