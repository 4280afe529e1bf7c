package bridge

import (
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

func TestCheck(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Append("INBOX", message("c1", "one", "x\r\n"))
	cfg := DefaultConfig()
	cfg.Upstream.Address = mem.Addr
	cfg.Upstream.Security = upstream.SecurityNone

	var out strings.Builder
	// Without a Trash, the move policy creates one at the first deletion;
	// check says so and creates nothing.
	if err := Check(t.Context(), cfg, mem.User, mem.Pass, &out, nil); err != nil {
		t.Fatalf("Check without Trash: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "trash: Trash (none found; created at the first deletion)") {
		t.Errorf("Check without Trash does not say it will be created:\n%s", out.String())
	}
	if got := mem.CommandsNamed("CREATE"); len(got) != 0 {
		t.Errorf("Check created a mailbox: %v", got)
	}
	mem.Create("Trash", imap.MailboxAttrTrash)
	out.Reset()
	if err := Check(t.Context(), cfg, mem.User, mem.Pass, &out, nil); err != nil {
		t.Fatalf("Check: %v\n%s", err, out.String())
	}
	for _, want := range []string{"login as " + mem.User + ": ok", "INBOX: 1 messages", "UIDPLUS yes, MOVE yes", "trash: Trash (\\Trash special-use)", "delete policy move: ok"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Check output lacks %q:\n%s", want, out.String())
		}
	}
	if err := Check(t.Context(), cfg, mem.User, "wrong", &out, nil); err == nil {
		t.Error("Check with a wrong password succeeded")
	} else if strings.Contains(err.Error(), "wrong") {
		t.Errorf("the error shows the password: %v", err)
	}

	// expunge without UIDPLUS is refused before any client uses it.
	old := imaptest.NewMemServer(t, imaptest.WithCaps(imap.CapIMAP4rev1))
	cfg.Upstream.Address = old.Addr
	cfg.Delete.Policy = PolicyExpunge
	if err := Check(t.Context(), cfg, old.User, old.Pass, &out, nil); err == nil || !strings.Contains(err.Error(), "UIDPLUS") {
		t.Errorf("Check of expunge without UIDPLUS: %v", err)
	}
}

// TestCheckMergedSources: check opens every source of the account's
// merged maildrops and fails, with advice, on one that is missing.
func TestCheckMergedSources(t *testing.T) {
	mem := imaptest.NewMemServer(t)
	mem.Create("Trash", imap.MailboxAttrTrash)
	mem.Create("Junk")
	mem.Append("Junk", message("j1", "junk", "x\r\n"))
	cfg := DefaultConfig()
	cfg.Upstream.Address = mem.Addr
	cfg.Upstream.Security = upstream.SecurityNone
	cfg.Upstream.MaxConnectionsPerAccount = 2
	cfg.Maildrops = []MaildropConfig{{Account: mem.User, Sources: []MaildropSource{{Mailbox: "INBOX"}, {Mailbox: "Junk"}}}}

	var out strings.Builder
	if err := Check(t.Context(), cfg, mem.User, mem.Pass, &out, nil); err != nil {
		t.Fatalf("Check: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "maildrop source Junk: 1 messages") {
		t.Errorf("Check does not report the Junk source:\n%s", out.String())
	}
	if strings.Contains(out.String(), "advice:") {
		t.Errorf("advice for a merged maildrop that works:\n%s", out.String())
	}

	cfg.Maildrops[0].Sources = append(cfg.Maildrops[0].Sources, MaildropSource{Mailbox: "Projects"})
	out.Reset()
	if err := Check(t.Context(), cfg, mem.User, mem.Pass, &out, nil); err == nil {
		t.Fatalf("Check with a missing source succeeded:\n%s", out.String())
	}
	for _, want := range []string{"maildrop source Projects: FAILED", `advice: the merged maildrop's source "Projects"`, "advice: the merged maildrop holds 3 upstream connections"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("Check output lacks %q:\n%s", want, out.String())
		}
	}
	if got := mem.CommandsNamed("CREATE"); len(got) != 0 {
		t.Errorf("Check created a mailbox: %v", got)
	}
}
