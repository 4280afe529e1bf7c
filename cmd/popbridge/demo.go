package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/upstream"
)

// demo credentials: the same for the POP3 login and the in-process upstream.
const (
	demoUser     = "demo"
	demoPassword = "demo"
)

// demoServer is popbridge in front of an in-process IMAP server (go-imap's
// memory server) seeded with a few realistic messages.
type demoServer struct {
	*bridge.Server
	IMAPAddr net.Addr
	imap     *imapserver.Server
	dir      string
	closeDB  func() error
}

// startDemo starts the upstream and popbridge's listener on listen
// ("127.0.0.1:0" for any free port). Serve the returned demoServer Server, and
// Close it when done.
func startDemo(listen string, log *zap.Logger) (*demoServer, error) {
	if log == nil {
		log = zap.NewNop()
	}
	mem := imapmemserver.New()
	u := imapmemserver.NewUser(demoUser, demoPassword)
	if err := u.Create("INBOX", nil); err != nil {
		return nil, err
	}
	if err := u.Create("Trash", &imap.CreateOptions{SpecialUse: []imap.MailboxAttr{imap.MailboxAttrTrash}}); err != nil {
		return nil, err
	}
	for _, m := range demoMessages(time.Now()) {
		if _, err := u.Append("INBOX", bytes.NewReader(m.raw), &imap.AppendOptions{Time: m.date}); err != nil {
			return nil, err
		}
	}
	mem.AddUser(u)
	is := imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return mem.NewSession(), nil, nil
		},
		Caps:         imap.CapSet{imap.CapIMAP4rev1: {}, imap.CapIMAP4rev2: {}},
		InsecureAuth: true,
		Logger:       zap.NewStdLog(log.Named("imap")),
	})
	iln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go is.Serve(iln)

	dir, err := os.MkdirTemp("", "popbridge-demo-")
	if err != nil {
		is.Close()
		return nil, err
	}
	st, err := boltstore.Open(filepath.Join(dir, "state.db"), nil)
	if err != nil {
		is.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	cfg := bridge.DefaultConfig()
	cfg.Server.Listen = listen
	cfg.Upstream.Address = iln.Addr().String()
	cfg.Upstream.Security = upstream.SecurityNone // the upstream is in this process, on loopback
	cfg.Auth.AllowInsecureAuth = true             // deliberately: the demo listens on loopback only
	cfg.State.Path = filepath.Join(dir, "state.db")
	srv, err := bridge.NewServer(cfg, st, log)
	if err == nil {
		err = srv.Listen()
	}
	if err != nil {
		st.Close()
		is.Close()
		os.RemoveAll(dir)
		return nil, err
	}
	return &demoServer{Server: srv, IMAPAddr: iln.Addr(), imap: is, dir: dir, closeDB: st.Close}, nil
}

// Close shuts the demo down and removes its state.
func (d *demoServer) Close(ctx context.Context) error {
	err := d.Shutdown(ctx)
	d.imap.Close()
	d.closeDB()
	os.RemoveAll(d.dir)
	return err
}

type demoMessage struct {
	date time.Time
	raw  []byte
}

// demoMessages returns a small, realistic inbox: plain text, a line that
// starts with a dot, UTF-8, and an attachment.
func demoMessages(now time.Time) []demoMessage {
	day := func(d int) time.Time { return now.Add(-time.Duration(d) * 24 * time.Hour).Truncate(time.Minute) }
	msg := func(date time.Time, id, from, subject, extraHeaders, body string) demoMessage {
		var b strings.Builder
		fmt.Fprintf(&b, "Return-Path: <%s>\r\n", strings.Trim(from[strings.LastIndex(from, "<"):], "<>"))
		fmt.Fprintf(&b, "Date: %s\r\n", date.Format(time.RFC1123Z))
		fmt.Fprintf(&b, "From: %s\r\n", from)
		fmt.Fprintf(&b, "To: Demo User <demo@example.com>\r\n")
		fmt.Fprintf(&b, "Subject: %s\r\n", subject)
		fmt.Fprintf(&b, "Message-ID: <%s@example.com>\r\n", id)
		b.WriteString("MIME-Version: 1.0\r\n")
		b.WriteString(extraHeaders)
		b.WriteString("\r\n")
		b.WriteString(strings.ReplaceAll(body, "\n", "\r\n"))
		return demoMessage{date: date, raw: []byte(b.String())}
	}
	attachment := base64.StdEncoding.EncodeToString([]byte("Invoice 2026-114\nAmount due: 120.00 EUR\nThank you for your business.\n"))
	return []demoMessage{
		msg(day(6), "welcome.1", "popbridge <hello@example.com>", "Welcome to popbridge",
			"Content-Type: text/plain; charset=us-ascii\r\n",
			"Hello,\n\nThis mailbox lives on an IMAP server; you are reading it over POP3.\n"+
				"Log in as demo#laptop and demo#phone to see how device tags keep\n"+
				"separate views of the same mailbox.\n\n-- \npopbridge\n"),
		msg(day(4), "minutes.7", "Alice Martin <alice@example.com>", "Minutes of Tuesday's meeting",
			"Content-Type: text/plain; charset=us-ascii\r\n",
			"Notes, as promised:\n\n.htaccess changes are deployed.\n..and the line above starts with a dot, as does this one.\n.\nThat lone dot above is part of the message, not its end.\n"),
		msg(day(3), "gruss.3", "=?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <juergen@example.com>", "=?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=",
			"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n",
			"Hallo,\n\nviele Grüße aus Köln — und bis bald!\nこんにちは 🌍\n\nJürgen\n"),
		msg(day(1), "invoice.114", "Billing <billing@example.com>", "Invoice 2026-114",
			"Content-Type: multipart/mixed; boundary=\"b1\"\r\n",
			"--b1\nContent-Type: text/plain; charset=us-ascii\n\nPlease find your invoice attached.\n\n"+
				"--b1\nContent-Type: text/plain; name=\"invoice.txt\"\nContent-Disposition: attachment; filename=\"invoice.txt\"\n"+
				"Content-Transfer-Encoding: base64\n\n"+attachment+"\n--b1--\n"),
		msg(day(0), "status.42", "Monitoring <noreply@example.com>", "All systems operational",
			"Content-Type: text/plain; charset=us-ascii\r\n",
			"Daily report: 0 incidents, 100% uptime.\n"),
	}
}
