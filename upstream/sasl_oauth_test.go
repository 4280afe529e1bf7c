package upstream_test

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/popbridge/popbridge/upstream"
)

const oauthToken = "ya29.a0AfH6SMB-token_~+/=="

func TestOAuthClientMessages(t *testing.T) {
	for _, tc := range []struct {
		c          *upstream.OAuthClient
		mech, ir   string
		dummyReply string
	}{
		{upstream.NewXOAuth2Client("alice@example.com", oauthToken), "XOAUTH2",
			"user=alice@example.com\x01auth=Bearer " + oauthToken + "\x01\x01", ""},
		{upstream.NewOAuthBearerClient("alice@example.com", oauthToken, "imap.example.com", 993), "OAUTHBEARER",
			"n,a=alice@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer " + oauthToken + "\x01\x01", "\x01"},
		{upstream.NewOAuthBearerClient("a,b=c", oauthToken, "", 0), "OAUTHBEARER",
			"n,a=a=2Cb=3Dc,\x01auth=Bearer " + oauthToken + "\x01\x01", "\x01"},
	} {
		mech, ir, err := tc.c.Start()
		if err != nil || mech != tc.mech || string(ir) != tc.ir {
			t.Errorf("Start() = %q, %q, %v; want %q, %q", mech, ir, err, tc.mech, tc.ir)
		}
		if tc.c.Failure() != nil {
			t.Errorf("%s: Failure before any challenge", mech)
		}
		resp, err := tc.c.Next([]byte(`{"status":"invalid_token"}`))
		if err != nil || string(resp) != tc.dummyReply {
			t.Errorf("%s: Next(error challenge) = %q, %v; want %q", mech, resp, err, tc.dummyReply)
		}
		if string(tc.c.Failure()) != `{"status":"invalid_token"}` {
			t.Errorf("%s: Failure() = %q", mech, tc.c.Failure())
		}
		if _, err := tc.c.Next([]byte("again")); err == nil {
			t.Errorf("%s: a second challenge was answered", mech)
		}
	}
}

// A refused token: the server's error challenge is answered, the server
// ends the exchange with NO, the error is KindAuth, and the connection
// stays usable (the next AUTHENTICATE works).
func TestOAuthClientRefusedThenAccepted(t *testing.T) {
	xir := base64.StdEncoding.EncodeToString([]byte("user=alice\x01auth=Bearer bad\x01\x01"))
	good := base64.StdEncoding.EncodeToString([]byte("n,a=alice,\x01host=127.0.0.1\x01port=143\x01auth=Bearer " + oauthToken + "\x01\x01"))
	addr := serveScript(t, func(s *scriptConn) {
		s.send("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] hello")
		tag, args := s.expect("AUTHENTICATE")
		if args != "XOAUTH2 "+xir {
			t.Errorf("AUTHENTICATE %s, want XOAUTH2 %s", args, xir)
		}
		s.send("+ " + base64.StdEncoding.EncodeToString([]byte(`{"status":"401","schemes":"bearer"}`)))
		if line, _ := s.br.ReadString('\n'); line != "=\r\n" && line != "\r\n" {
			t.Errorf("dummy response %q, want an empty one", line)
		}
		s.send(tag + " NO [AUTHENTICATIONFAILED] invalid credentials")
		// Without SASL-IR this time: the empty challenge asks for the
		// response.
		tag, args = s.expect("AUTHENTICATE")
		if args != "OAUTHBEARER" && args != "OAUTHBEARER "+good {
			t.Errorf("AUTHENTICATE %s", args)
		}
		if args == "OAUTHBEARER" {
			s.send("+ ")
			if line, _ := s.br.ReadString('\n'); line != good+"\r\n" {
				t.Errorf("response %q, want %q", line, good)
			}
		}
		s.send(tag + " OK [CAPABILITY IMAP4rev1] welcome")
		tag, _ = s.expect("CAPABILITY")
		s.send("* CAPABILITY IMAP4rev1", tag+" OK done")
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
	bad := upstream.NewXOAuth2Client("alice", "bad")
	wantKind(t, c.Authenticate(t.Context(), bad), upstream.KindAuth)
	if string(bad.Failure()) != `{"status":"401","schemes":"bearer"}` {
		t.Errorf("Failure() = %q", bad.Failure())
	}
	if err := c.Authenticate(t.Context(), upstream.NewOAuthBearerClient("alice", oauthToken, "127.0.0.1", 143)); err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	for _, secret := range []string{oauthToken, xir, good, "Bearer"} {
		if strings.Contains(trace.String(), secret) {
			t.Errorf("trace holds %q:\n%s", secret, trace.String())
		}
	}
}
