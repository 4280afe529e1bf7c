package upstream_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"

	"github.com/popbridge/popbridge/internal/imaptest"
	"github.com/popbridge/popbridge/upstream"
)

func TestDialLogin(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		c := dial(t, u)
		if len(c.Caps()) == 0 {
			t.Fatal("no capabilities after login")
		}
		if !c.HasUIDPlus() {
			t.Error("HasUIDPlus = false, want true")
		}
		if !c.HasMove() {
			t.Error("HasMove = false, want true")
		}
		if err := c.Noop(t.Context()); err != nil {
			t.Errorf("Noop: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		wantKind(t, c.Noop(t.Context()), upstream.KindTemp)
	})
}

func TestLoginWrongPassword(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		c, err := upstream.Dial(t.Context(), config(t, u.Addr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		const bad = "wrong-Passw0rd-xyzzy"
		err = c.Login(t.Context(), u.User, bad)
		wantKind(t, err, upstream.KindAuth)
		if strings.Contains(err.Error(), bad) {
			t.Errorf("error %q contains the password", err)
		}
		var e *upstream.Error
		if errors.As(err, &e) && e.Op != "login" {
			t.Errorf("Op = %q, want login", e.Op)
		}
	})
}

func TestLoginFailureKinds(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want upstream.Kind
	}{
		{"unavailable", imaptest.ErrUnavailable, upstream.KindTemp},
		{"serverbug", imaptest.ErrServerBug, upstream.KindTemp},
		{"no code", imaptest.ErrNo, upstream.KindAuth},
		{"authenticationfailed", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeAuthenticationFailed, Text: "no"}, upstream.KindAuth},
		{"expired", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodeExpired, Text: "no"}, upstream.KindAuth},
		{"privacyrequired", &imap.Error{Type: imap.StatusResponseTypeNo, Code: imap.ResponseCodePrivacyRequired, Text: "no"}, upstream.KindPerm},
		{"bye", &imap.Error{Type: imap.StatusResponseTypeBye, Text: "bye"}, upstream.KindTemp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u := imaptest.Mem(t)
			u.Mem.Fail("LOGIN", tc.err)
			c, err := upstream.Dial(t.Context(), config(t, u.Addr))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			wantKind(t, c.Login(t.Context(), u.User, u.Pass), tc.want)
		})
	}
}

func TestDialRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = upstream.Dial(t.Context(), config(t, addr))
	wantKind(t, err, upstream.KindTemp)

	_, err = upstream.Dial(t.Context(), config(t, "no-port"))
	wantKind(t, err, upstream.KindPerm)
}

func TestSelect(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		for i := 1; i <= 3; i++ {
			u.Append(u.Mailbox, message(i, ""))
		}
		c, st := open(t, u)
		if st.NumMessages != 3 {
			t.Errorf("NumMessages = %d, want 3", st.NumMessages)
		}
		if want := u.UIDValidity(u.Mailbox); st.UIDValidity != want {
			t.Errorf("UIDValidity = %d, want %d", st.UIDValidity, want)
		}
		if st.UIDNext < 4 {
			t.Errorf("UIDNext = %d, want >= 4", st.UIDNext)
		}
		if c.HasCondStore() != (st.HighestModSeq != 0) {
			t.Errorf("HasCondStore = %v but HighestModSeq = %d", c.HasCondStore(), st.HighestModSeq)
		}

		_, err := c.Select(t.Context(), u.Mailbox+"-does-not-exist")
		wantKind(t, err, upstream.KindPerm)
	})
}

// TestSelectUIDValidityChange checks that a recreated mailbox reports a new
// UIDVALIDITY (what the bridge's re-matching depends on).
func TestSelectUIDValidityChange(t *testing.T) {
	forEachUpstream(t, func(t *testing.T, u *imaptest.Upstream) {
		u.Append(u.Mailbox, message(1, ""))
		c := dial(t, u)
		st1, err := c.Select(t.Context(), u.Mailbox)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		u.Recreate(u.Mailbox)
		_, st2 := open(t, u)
		if st1.UIDValidity == st2.UIDValidity {
			t.Errorf("UIDVALIDITY stayed %d after Recreate", st1.UIDValidity)
		}
		if st2.NumMessages != 0 {
			t.Errorf("NumMessages = %d after Recreate, want 0", st2.NumMessages)
		}
	})
}

func TestStartTLSAndTLS(t *testing.T) {
	s := imaptest.NewMemServer(t, imaptest.WithTLS())

	t.Run("starttls", func(t *testing.T) {
		cfg := config(t, s.Addr)
		cfg.Security = upstream.SecurityStartTLS
		cfg.TLSConfig = s.ClientTLS
		var trace bytes.Buffer
		cfg.Trace = &trace
		c, err := upstream.Dial(t.Context(), cfg)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer c.Close()
		if err := c.Login(t.Context(), s.User, s.Pass); err != nil {
			t.Fatalf("Login: %v", err)
		}
		if _, err := c.Select(t.Context(), "INBOX"); err != nil {
			t.Fatalf("Select: %v", err)
		}
		if c.Caps().Has(imap.CapStartTLS) {
			t.Error("STARTTLS still advertised after the upgrade")
		}
		tr := trace.String()
		for _, want := range []string{"C: P2 STARTTLS", "S: P2 OK"} {
			if !strings.Contains(tr, want) {
				t.Errorf("trace lacks %q:\n%s", want, tr)
			}
		}
		if strings.Contains(tr, s.Pass) {
			t.Errorf("trace holds the password:\n%s", tr)
		}
	})

	t.Run("tls", func(t *testing.T) {
		cfg := config(t, s.TLSAddr)
		cfg.Security = upstream.SecurityTLS
		cfg.TLSConfig = s.ClientTLS
		c, err := upstream.Dial(t.Context(), cfg)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		defer c.Close()
		if err := c.Login(t.Context(), s.User, s.Pass); err != nil {
			t.Fatalf("Login: %v", err)
		}
	})

	t.Run("tls untrusted", func(t *testing.T) {
		cfg := config(t, s.TLSAddr)
		cfg.Security = upstream.SecurityTLS
		_, err := upstream.Dial(t.Context(), cfg)
		wantKind(t, err, upstream.KindPerm)
	})

	t.Run("tls wrong name", func(t *testing.T) {
		cfg := config(t, s.TLSAddr)
		cfg.Security = upstream.SecurityTLS
		cfg.TLSConfig = s.ClientTLS.Clone()
		cfg.TLSConfig.ServerName = "imap.example.com"
		_, err := upstream.Dial(t.Context(), cfg)
		wantKind(t, err, upstream.KindPerm)
	})

	t.Run("tls 1.0 refused", func(t *testing.T) {
		cfg := config(t, s.TLSAddr)
		cfg.Security = upstream.SecurityTLS
		cfg.TLSConfig = s.ClientTLS.Clone()
		cfg.TLSConfig.MaxVersion = tls.VersionTLS11
		_, err := upstream.Dial(t.Context(), cfg)
		if err == nil {
			t.Fatal("Dial with MaxVersion TLS 1.1 succeeded")
		}
	})
}

func TestStartTLSNotOffered(t *testing.T) {
	s := imaptest.NewMemServer(t) // no TLS: no STARTTLS in its capabilities
	cfg := config(t, s.Addr)
	cfg.Security = upstream.SecurityStartTLS
	_, err := upstream.Dial(t.Context(), cfg)
	wantKind(t, err, upstream.KindPerm)
	if !strings.Contains(err.Error(), "STARTTLS") {
		t.Errorf("error %q does not mention STARTTLS", err)
	}
	for _, c := range s.Commands() {
		if c.Name == "STARTTLS" || c.Name == "LOGIN" {
			t.Errorf("sent %s to a server without STARTTLS", c.Line)
		}
	}
}

func TestStartTLSScripted(t *testing.T) {
	t.Run("capability asked when the greeting has none", func(t *testing.T) {
		addr := serveScript(t, func(s *scriptConn) {
			s.send("* OK hello")
			tag, _ := s.expect("CAPABILITY")
			s.send("* CAPABILITY IMAP4rev1", tag+" OK done")
			s.read()
		})
		cfg := config(t, addr)
		cfg.Security = upstream.SecurityStartTLS
		_, err := upstream.Dial(t.Context(), cfg)
		wantKind(t, err, upstream.KindPerm)
	})
	t.Run("injection after STARTTLS", func(t *testing.T) {
		addr := serveScript(t, func(s *scriptConn) {
			s.send("* OK [CAPABILITY IMAP4rev1 STARTTLS] hello")
			tag, _ := s.expect("STARTTLS")
			s.c.Write([]byte(tag + " OK go ahead\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] injected\r\n"))
			s.read()
		})
		cfg := config(t, addr)
		cfg.Security = upstream.SecurityStartTLS
		_, err := upstream.Dial(t.Context(), cfg)
		wantKind(t, err, upstream.KindPerm)
	})
	t.Run("PREAUTH refused", func(t *testing.T) {
		addr := serveScript(t, func(s *scriptConn) {
			s.send("* PREAUTH [CAPABILITY IMAP4rev1 STARTTLS] hello")
			s.read()
		})
		cfg := config(t, addr)
		cfg.Security = upstream.SecurityStartTLS
		_, err := upstream.Dial(t.Context(), cfg)
		wantKind(t, err, upstream.KindPerm)
	})
	t.Run("STARTTLS refused", func(t *testing.T) {
		addr := serveScript(t, func(s *scriptConn) {
			s.send("* OK [CAPABILITY IMAP4rev1 STARTTLS] hello")
			tag, _ := s.expect("STARTTLS")
			s.send(tag + " NO not today")
			s.read()
		})
		cfg := config(t, addr)
		cfg.Security = upstream.SecurityStartTLS
		_, err := upstream.Dial(t.Context(), cfg)
		wantKind(t, err, upstream.KindPerm)
	})
}

// TestLoginPreauthRefused: with a PREAUTH greeting the server would not
// check the POP3 user's password, so Login must refuse.
func TestLoginPreauthRefused(t *testing.T) {
	addr := serveScript(t, func(s *scriptConn) {
		s.send("* PREAUTH [CAPABILITY IMAP4rev1] welcome")
		s.serveLogout()
	})
	c, err := upstream.Dial(t.Context(), config(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantKind(t, c.Login(t.Context(), "u", "p"), upstream.KindPerm)
}

// TestLoginDisabledUsesAuthenticatePlain: LOGINDISABLED with AUTH=PLAIN
// means AUTHENTICATE PLAIN, and ID goes out when the server has it.
func TestLoginDisabledUsesAuthenticatePlain(t *testing.T) {
	const user, pass = "bob", "pa ss\"wörd"
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	addr := serveScript(t, func(s *scriptConn) {
		s.send("* OK [CAPABILITY IMAP4rev1 SASL-IR LOGINDISABLED AUTH=PLAIN] hello")
		tag, args := s.expect("AUTHENTICATE")
		if args != "PLAIN "+ir {
			t.Errorf("AUTHENTICATE %s, want PLAIN %s", args, ir)
		}
		s.send(tag + " OK [CAPABILITY IMAP4rev1 UIDPLUS ID] in")
		tag, _ = s.expect("CAPABILITY")
		s.send("* CAPABILITY IMAP4rev1 UIDPLUS ID", tag+" OK done")
		tag, args = s.expect("ID")
		if !strings.Contains(args, `"popbridge"`) {
			t.Errorf("ID %s lacks popbridge", args)
		}
		s.send(tag + " BAD ID is not really supported")
		s.serveLogout()
	})
	var trace bytes.Buffer
	cfg := config(t, addr)
	cfg.Trace = &trace
	c, err := upstream.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(t.Context(), user, pass); err != nil {
		t.Fatalf("Login: %v", err)
	}
	if !c.HasUIDPlus() {
		t.Error("capabilities after login not taken")
	}
	if strings.Contains(trace.String(), ir) || strings.Contains(trace.String(), "wörd") {
		t.Errorf("trace holds the credentials:\n%s", trace.String())
	}
	if !strings.Contains(trace.String(), "AUTHENTICATE PLAIN [redacted]") {
		t.Errorf("trace lacks the redacted AUTHENTICATE:\n%s", trace.String())
	}
}

func TestLoginDisabledWithoutPlain(t *testing.T) {
	addr := serveScript(t, func(s *scriptConn) {
		s.send("* OK [CAPABILITY IMAP4rev1 LOGINDISABLED] hello")
		s.serveLogout()
	})
	c, err := upstream.Dial(t.Context(), config(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantKind(t, c.Login(t.Context(), "u", "p"), upstream.KindPerm)
}

func TestAuthenticate(t *testing.T) {
	u := imaptest.Mem(t)
	var trace bytes.Buffer
	cfg := config(t, u.Addr)
	cfg.Trace = &trace
	c, err := upstream.Dial(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Authenticate(t.Context(), sasl.NewPlainClient("", u.User, "bad")); err == nil {
		t.Fatal("Authenticate with a bad password succeeded")
	} else {
		wantKind(t, err, upstream.KindAuth)
	}
	if err := c.Authenticate(t.Context(), sasl.NewPlainClient("", u.User, u.Pass)); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	if !c.HasUIDPlus() {
		t.Error("capabilities after AUTHENTICATE not taken")
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + u.User + "\x00" + u.Pass))
	if strings.Contains(trace.String(), ir) || strings.Contains(trace.String(), u.Pass) {
		t.Errorf("trace holds the credentials:\n%s", trace.String())
	}
}

// TestTraceRedactsLoginLiteral: with IMAP4rev1 only, a non-ASCII password
// goes out as a literal; the trace must hide it too.
func TestTraceRedactsLoginLiteral(t *testing.T) {
	for _, pass := range []string{"plain-s3cret", `quo"te\back`, "pässwörd-ünïcode"} {
		t.Run(pass, func(t *testing.T) {
			u := imaptest.Mem(t, imaptest.WithCaps(imap.CapIMAP4rev1), imaptest.WithCredentials("carol", pass))
			var trace bytes.Buffer
			cfg := config(t, u.Addr)
			cfg.Trace = &trace
			c, err := upstream.Dial(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if err := c.Login(t.Context(), u.User, pass); err != nil {
				t.Fatalf("Login: %v", err)
			}
			if _, err := c.Select(t.Context(), "INBOX"); err != nil {
				t.Fatal(err)
			}
			tr := trace.String()
			if strings.Contains(tr, pass) || strings.Contains(tr, "s3cret") || strings.Contains(tr, "wörd") || strings.Contains(tr, "back") {
				t.Errorf("trace holds the password:\n%s", tr)
			}
			if !strings.Contains(tr, "LOGIN [redacted]") {
				t.Errorf("trace lacks the redacted LOGIN:\n%s", tr)
			}
			if !strings.Contains(tr, "SELECT INBOX") {
				t.Errorf("trace stopped after LOGIN:\n%s", tr)
			}
		})
	}
}

// TestCancel checks that a call blocked on the server returns promptly when
// its context ends, and that Config.Timeout bounds a command.
func TestCancel(t *testing.T) {
	t.Run("context", func(t *testing.T) {
		u := imaptest.Mem(t)
		uid := u.Append(u.Mailbox, message(1, ""))
		c, _ := open(t, u)
		release := u.Mem.Block("FETCH")
		defer release()
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(100*time.Millisecond, cancel)
		var err error
		within(t, 3*time.Second, "cancelled WriteMessage", func() {
			_, err = c.WriteMessage(ctx, uid, new(bytes.Buffer))
		})
		wantKind(t, err, upstream.KindTemp)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v is not context.Canceled", err)
		}
		wantKind(t, c.Noop(t.Context()), upstream.KindTemp) // the connection is gone
		within(t, 3*time.Second, "Close", func() { c.Close() })
	})
	t.Run("timeout", func(t *testing.T) {
		u := imaptest.Mem(t)
		cfg := config(t, u.Addr)
		cfg.Timeout = 300 * time.Millisecond
		c, err := upstream.Dial(t.Context(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Login(t.Context(), u.User, u.Pass); err != nil {
			t.Fatal(err)
		}
		release := u.Mem.Block("SELECT")
		defer release()
		within(t, 3*time.Second, "Select past its timeout", func() {
			_, err = c.Select(t.Context(), "INBOX")
		})
		wantKind(t, err, upstream.KindTemp)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error %v is not a deadline", err)
		}
	})
	t.Run("silent server", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				<-t.Context().Done()
				c.Close()
			}
		}()
		cfg := config(t, ln.Addr().String())
		cfg.Timeout = 300 * time.Millisecond
		within(t, 3*time.Second, "Dial to a silent server", func() {
			_, err = upstream.Dial(t.Context(), cfg)
		})
		wantKind(t, err, upstream.KindTemp)
	})
	t.Run("dial cancelled", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(100*time.Millisecond, cancel)
		within(t, 3*time.Second, "cancelled Dial", func() {
			_, err = upstream.Dial(ctx, config(t, ln.Addr().String()))
		})
		wantKind(t, err, upstream.KindTemp)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("error %v is not context.Canceled", err)
		}
	})
}

func TestParseSecurity(t *testing.T) {
	for _, s := range []string{"tls", "starttls", "none"} {
		sec, err := upstream.ParseSecurity(s)
		if err != nil || sec.String() != s {
			t.Errorf("ParseSecurity(%q) = %v, %v", s, sec, err)
		}
	}
	if _, err := upstream.ParseSecurity("ssl"); err == nil {
		t.Error("ParseSecurity(ssl) succeeded")
	}
}
