package bridge

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/state/boltstore"
)

// Dovecot's own POP3 (pop3_uidl_format = %g, the message GUID) is the old
// server, over the very maildirs popbridge reaches through Dovecot's IMAP.
// fetchmail and mpop, keep mode, first fetch everything from it; after
// import-uidl they fetch through popbridge, as the same user with the same
// UIDL files, and download nothing: except the twins that the import
// reports ambiguous, which they download once more.
func TestImportUIDLDovecotClients(t *testing.T) {
	addr := os.Getenv("POPBRIDGE_TEST_DOVECOT_ADDR")
	pop3s := os.Getenv("POPBRIDGE_TEST_DOVECOT_POP3S_ADDR")
	domain := os.Getenv("POPBRIDGE_TEST_DOVECOT_DYN_DOMAIN")
	if addr == "" || pop3s == "" || domain == "" {
		t.Skip("no Dovecot: see .ci/dovecot-start")
	}
	clients := []realClient{}
	for _, c := range realClients {
		if c.name == "fetchmail" || c.name == "mpop" {
			if _, err := exec.LookPath(c.bin); err != nil {
				t.Skipf("%s is not installed (.ci/run installs it)", c.bin)
			}
			clients = append(clients, c)
		}
	}
	pop3 := os.Getenv("POPBRIDGE_TEST_DOVECOT_POP3_ADDR")
	for _, tc := range []struct {
		name  string
		twins bool
	}{{"distinct", false}, {"twins", true}} {
		t.Run(tc.name, func(t *testing.T) {
			user := freshUser(domain)
			admin := imaptest.NewAdmin(t, addr, user, "pass")
			corpus := clientCorpus(8000)
			if tc.twins {
				twin := importMsg("twin", importDate, "the same body\r\n")
				corpus = [][]byte{importMsg("one", importDate, "one\r\n"), twin, twin}
			}
			for _, raw := range corpus {
				admin.Append("INBOX", raw)
			}
			up := &upstreamEnv{name: "dovecot", addr: addr, user: user, pass: "pass", box: admin}
			e := prepareBridge(t, up)
			t.Cleanup(e.stop)

			// Each client fetches everything from the old server.
			host, port, _ := net.SplitHostPort(pop3)
			scripts, err := filepath.Abs("../testdata/clients")
			if err != nil {
				t.Fatal(err)
			}
			runners := make([]*clientRunner, len(clients))
			for i, c := range clients {
				r := &clientRunner{t: t, c: c, h: clientHost{host: host, port: port, user: user, pass: "pass", home: t.TempDir(), scripts: scripts}}
				got, out := r.run(true)
				if len(got) != len(corpus) {
					t.Fatalf("%s fetched %d of %d messages from Dovecot's POP3\n%s", c.name, len(got), len(corpus), out)
				}
				runners[i] = r
			}
			stored := admin.Messages("INBOX")
			flags := snapshotFlags(stored)

			// The import, against POP3S with its self-signed certificate.
			st, err := boltstore.Open(e.statePath, nil)
			if err != nil {
				t.Fatal(err)
			}
			b, err := NewBridge(e.cfg, st, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			old, err := DialOldPOP3(ctx, OldPOP3Options{URL: "pop3s://" + pop3s, User: user, Password: "pass", Insecure: true})
			if err != nil {
				t.Fatal(err)
			}
			rep, err := b.ImportUIDLs(ctx, user, "pass", old, ImportOptions{})
			old.Close()
			st.Close()
			if err != nil {
				t.Fatal(err)
			}
			wantImported, wantAmbiguous := len(corpus), 0
			if tc.twins {
				wantImported, wantAmbiguous = 1, 2
			}
			if rep.Imported != wantImported || rep.Ambiguous != wantAmbiguous || rep.Unmatched != 0 || rep.Invalid != 0 || rep.Matched != wantImported {
				t.Fatalf("report %s, want %d imported and %d ambiguous\n%s", countsOf(rep), wantImported, wantAmbiguous, strings.Join(rep.Notes, "\n"))
			}

			// The clients now fetch through popbridge.
			e.start()
			defer e.stop()
			bhost, bport, _ := net.SplitHostPort(e.addr)
			for _, r := range runners {
				r.h.host, r.h.port = bhost, bport
				got, out := r.run(true)
				if len(got) != wantAmbiguous {
					t.Errorf("%s downloaded %d messages through popbridge after the import, want %d\n%s", r.c.name, len(got), wantAmbiguous, out)
				}
				if tc.twins {
					for _, m := range got {
						if !strings.Contains(string(m), "the same body") {
							t.Errorf("%s downloaded a message that is not one of the twins:\n%s", r.c.name, m)
						}
					}
				}
			}
			// The import and keep mode changed nothing upstream (the old
			// server's RETRs before the import may set \Seen: compared
			// from after them).
			after := admin.Messages("INBOX")
			if len(after) != len(stored) {
				t.Fatalf("INBOX holds %d messages, held %d", len(after), len(stored))
			}
			for _, m := range after {
				if f := flagString(m); f != flags[m.UID] {
					t.Errorf("UID %d flags %q, were %q", m.UID, f, flags[m.UID])
				}
			}
		})
	}
}
