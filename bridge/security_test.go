package bridge

// Issue 3: transport security, SASL and abuse resistance, end to end
// through popbridge and an in-process upstream.

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/popbridge/popbridge/internal/netlist"
	"github.com/popbridge/popbridge/pop3"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/upstream"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// xoauth2IR and oauthBearerIR are what a POP3 client sends for AUTH.
func xoauth2IR(user, token string) string {
	return b64("user=" + user + "\x01auth=Bearer " + token + "\x01\x01")
}

func oauthBearerIR(user, token string) string {
	return b64("n,a=" + user + ",\x01host=127.0.0.1\x01port=110\x01auth=Bearer " + token + "\x01\x01")
}

// A brute-force run: 50 wrong passwords from one address are slowed down
// (a growing delay), then refused without asking the upstream, while the
// right password from another address still gets in.
func TestBruteForceSlowedThenRefused(t *testing.T) {
	up := startTestUpstream(t, upOpts{})
	cfg := secConfig(up.addr)
	cfg.Limits = LimitsConfig{
		LoginFailureDelay:          10 * time.Millisecond,
		LoginFailureDelayMax:       80 * time.Millisecond,
		MaxLoginFailuresPerIP:      5,
		MaxLoginFailuresPerAccount: 1000,
		LoginFailureWindow:         time.Hour,
	}
	s := startSec(t, cfg)

	var refused, throttled, errs int
	var c *popConn
	start := time.Now()
	var slowed time.Duration
	for i := range 50 {
		if c == nil {
			c, errs = dialFrom(t, "127.0.0.1", s.addr), 0
		}
		c.ok("USER %s", secUser)
		switch r := c.cmd("PASS wrong-%d", i); {
		case strings.HasPrefix(r, "-ERR [AUTH] "):
			if throttled > 0 {
				t.Fatalf("attempt %d: %q after the first refusal", i, r)
			}
			if refused++; refused == 5 {
				slowed = time.Since(start)
			}
		case r == "-ERR [LOGIN-DELAY] too many failed logins from your address, try again later":
			throttled++
		default:
			t.Fatalf("attempt %d: %q", i, r)
		}
		// Every refusal counts as an error: the server closes the
		// connection after pop3.DefaultMaxErrors of them.
		if errs++; errs == pop3.DefaultMaxErrors {
			if l := c.line(); l != "-ERR too many errors" || !c.closed() {
				t.Fatalf("after %d errors: %q", errs, l)
			}
			c = nil
		}
	}
	if refused != 5 || throttled != 45 {
		t.Errorf("%d [AUTH] and %d [LOGIN-DELAY] answers, want 5 and 45", refused, throttled)
	}
	// The delays double: 10+20+40+80+80 ms at least before the fifth
	// answer (a lower bound: it cannot flake).
	if slowed < 230*time.Millisecond {
		t.Errorf("5 failed logins answered within %v: not slowed down", slowed)
	}
	if n := len(up.attempts()); n != 5 {
		t.Errorf("the upstream saw %d logins, want 5: %q", n, up.attempts())
	}

	// The right password from the same address is refused too...
	c = dialFrom(t, "127.0.0.1", s.addr)
	c.ok("USER %s", secUser)
	if r := c.cmd("PASS %s", secPassword); !strings.HasPrefix(r, "-ERR [LOGIN-DELAY]") {
		t.Errorf("right password from the throttled address: %q", r)
	}
	// ...and accepted from another one.
	d := dialFrom(t, "127.0.0.2", s.addr)
	d.login(secUser, secPassword)
	if got := d.retr(1); !bytes.Equal(got, secMessages[0]) {
		t.Errorf("RETR 1 = %q, want %q", got, secMessages[0])
	}
	if r := d.quit(); !strings.HasPrefix(r, "+OK") {
		t.Errorf("QUIT: %q", r)
	}

	throttledLogs := s.logs.FilterMessage("login throttled").All()
	if len(throttledLogs) != 46 {
		t.Errorf("%d refusals logged, want 46 (one each)", len(throttledLogs))
	}
	for _, e := range throttledLogs {
		f := e.ContextMap()
		if !strings.HasPrefix(f["remote"].(string), "127.0.0.1:") || !strings.Contains(f["reason"].(string), "limits.max_login_failures_per_ip") {
			t.Errorf("refusal logged as %v", f)
			break
		}
	}
}

// The failures of an account count across addresses and device tags;
// another account is not affected.
func TestAccountFailureLimit(t *testing.T) {
	up := startTestUpstream(t, upOpts{})
	cfg := secConfig(up.addr)
	cfg.Limits = LimitsConfig{
		LoginFailureDelay:          time.Millisecond,
		LoginFailureDelayMax:       time.Millisecond,
		MaxLoginFailuresPerAccount: 3,
		LoginFailureWindow:         time.Hour,
	}
	s := startSec(t, cfg)
	for i, login := range []string{secUser + "#phone", strings.ToUpper(secUser), secUser} {
		c := dialFrom(t, fmt.Sprintf("127.0.0.%d", i+1), s.addr)
		c.ok("USER %s", login)
		if r := c.cmd("PASS nope"); !strings.HasPrefix(r, "-ERR [AUTH]") {
			t.Fatalf("failure %d: %q", i, r)
		}
	}
	c := dialFrom(t, "127.0.0.9", s.addr)
	c.ok("USER %s#laptop", secUser)
	if r := c.cmd("PASS %s", secPassword); r != "-ERR [LOGIN-DELAY] too many failed logins for this account, try again later" {
		t.Errorf("login to the throttled account: %q", r)
	}
	if r := c.cmd("AUTH XOAUTH2 %s", xoauth2IR(secUser, secToken)); !strings.HasPrefix(r, "-ERR [LOGIN-DELAY]") {
		t.Errorf("token login to the throttled account: %q", r)
	}
	c.ok("USER bob@example.org")
	if r := c.cmd("PASS nope"); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Errorf("another account: %q", r)
	}
	if n := len(up.attempts()); n != 4 {
		t.Errorf("the upstream saw %d logins, want 4: %q", n, up.attempts())
	}
}

// Connections beyond the limits get -ERR [SYS/TEMP] and are closed; each
// refusal is logged once with its reason and the address.
func TestConnectionLimits(t *testing.T) {
	up := startTestUpstream(t, upOpts{})
	cfg := secConfig(up.addr)
	cfg.Limits = LimitsConfig{MaxConnections: 3, MaxConnectionsPerIP: 2, LoginFailureWindow: time.Hour}
	s := startSec(t, cfg)

	a1 := dialFrom(t, "127.0.0.1", s.addr)
	dialFrom(t, "127.0.0.1", s.addr)
	a3 := dialRaw(t, "127.0.0.1", s.addr)
	if l := a3.line(); l != "-ERR [SYS/TEMP] too many connections from your address, try again later" || !a3.closed() {
		t.Errorf("third connection from 127.0.0.1: %q", l)
	}
	dialFrom(t, "127.0.0.2", s.addr)
	c1 := dialRaw(t, "127.0.0.3", s.addr)
	if l := c1.line(); l != "-ERR [SYS/TEMP] too many connections, try again later" || !c1.closed() {
		t.Errorf("fourth connection: %q", l)
	}

	// A slot is free again once a session ended.
	a1.login(secUser, secPassword)
	a1.quit()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c := dialRaw(t, "127.0.0.1", s.addr)
		l := c.line()
		c.drop()
		if strings.HasPrefix(l, "+OK") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection accepted after a session ended: %q", l)
		}
		time.Sleep(10 * time.Millisecond)
	}

	var reasons []string
	for _, f := range s.sessionLines() {
		if f["outcome"] == "refused" {
			reasons = append(reasons, f["remote"].(string)+" "+f["reason"].(string))
		}
	}
	// The refused sessions end on their own goroutines: their lines may
	// come in any order (and the wait for a free slot above may add one).
	logged := func(remote, limit string) bool {
		return slices.ContainsFunc(reasons, func(r string) bool {
			return strings.HasPrefix(r, remote) && strings.Contains(r, limit)
		})
	}
	if !logged("127.0.0.1:", "limits.max_connections_per_ip") || !logged("127.0.0.3:", "(limits.max_connections)") {
		t.Errorf("refusals logged: %q", reasons)
	}

	t.Run("exempt networks", func(t *testing.T) {
		cfg := secConfig(up.addr)
		cfg.Limits = LimitsConfig{MaxConnectionsPerIP: 1, ExemptNetworks: netlist.MustParse("127.0.0.0/24")}
		s := startSec(t, cfg)
		dialFrom(t, "127.0.0.1", s.addr)
		dialFrom(t, "127.0.0.1", s.addr)
		c := dialRaw(t, "127.0.1.1", s.addr)
		dialRawLine := c.line()
		d := dialRaw(t, "127.0.1.1", s.addr)
		if l := d.line(); !strings.HasPrefix(dialRawLine, "+OK") || !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
			t.Errorf("outside the exempt network: %q, then %q", dialRawLine, l)
		}
	})
}

// proxyHeaderV2 returns a PROXY protocol v2 header for a client at src.
func proxyHeaderV2(t *testing.T, src string) []byte {
	t.Helper()
	h := &proxyproto.Header{
		Version:           2,
		Command:           proxyproto.PROXY,
		TransportProtocol: proxyproto.TCPv4,
		SourceAddr:        net.TCPAddrFromAddrPort(netipAddrPort(t, src)),
		DestinationAddr:   &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 110},
	}
	b, err := h.Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProxyProtocol(t *testing.T) {
	up := startTestUpstream(t, upOpts{})
	cfg := secConfig(up.addr)
	cfg.Server.ProxyTrusted = netlist.MustParse("127.0.0.1")
	cfg.Limits = LimitsConfig{MaxConnectionsPerIP: 1, LoginFailureWindow: time.Hour}
	s := startSec(t, cfg)

	proxied := func(header []byte) *popConn {
		t.Helper()
		c := dialRaw(t, "127.0.0.1", s.addr)
		if _, err := c.conn.Write(header); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// v1 and v2 headers of a trusted peer give the client's address to
	// the session log.
	c := proxied([]byte("PROXY TCP4 192.0.2.7 192.0.2.1 40000 110\r\n"))
	c.ok("CAPA")
	c.multi()
	c.login(secUser, secPassword)
	c.quit()
	d := proxied(proxyHeaderV2(t, "192.0.2.8:40001"))
	if l := d.line(); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting after a v2 header: %q", l)
	}
	d.quit()
	lines := s.waitSessions(2)
	remotes := map[string]bool{}
	for _, f := range lines {
		remotes[f["remote"].(string)] = true
	}
	if !remotes["192.0.2.7:40000"] || !remotes["192.0.2.8:40001"] {
		t.Errorf("session lines name %v, want the proxied clients 192.0.2.7:40000 and 192.0.2.8:40001", remotes)
	}

	// The limits see the client's address too: one connection per
	// address, though all come from the one proxy.
	e1 := proxied([]byte("PROXY TCP4 192.0.2.9 192.0.2.1 40002 110\r\n"))
	if l := e1.line(); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting: %q", l)
	}
	e2 := proxied([]byte("PROXY TCP4 192.0.2.9 192.0.2.1 40003 110\r\n"))
	if l := e2.line(); !strings.HasPrefix(l, "-ERR [SYS/TEMP] too many connections from your address") {
		t.Errorf("second connection of 192.0.2.9: %q", l)
	}
	e3 := proxied([]byte("PROXY TCP4 192.0.2.10 192.0.2.1 40004 110\r\n"))
	if l := e3.line(); !strings.HasPrefix(l, "+OK") {
		t.Errorf("connection of 192.0.2.10: %q", l)
	}

	// A trusted peer must send a header.
	f := proxied([]byte("CAPA\r\n"))
	if !f.closed() {
		t.Error("a trusted peer without a header was served")
	}

	// Another address is served as it is, and refused if it sends a
	// header (it would pose as someone else).
	g := dialFrom(t, "127.0.0.2", s.addr)
	g.ok("CAPA")
	g.multi()
	for i, header := range [][]byte{[]byte("PROXY TCP4 192.0.2.66 192.0.2.1 1 110\r\n"), proxyHeaderV2(t, "192.0.2.66:1")} {
		h := dialFrom(t, fmt.Sprintf("127.0.0.%d", 3+i), s.addr)
		h.conn.Write(header)
		if !h.closed() {
			t.Errorf("a header from an untrusted address was accepted: %q", header)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(s.logs.FilterMessage("connection refused: PROXY protocol header from an untrusted address").All()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	untrusted := s.logs.FilterMessage("connection refused: PROXY protocol header from an untrusted address").All()
	if len(untrusted) != 2 || !strings.HasPrefix(untrusted[0].ContextMap()["remote"].(string), "127.0.0.3:") {
		t.Errorf("untrusted headers logged %d times, want 2", len(untrusted))
	}
	if n := len(s.logs.FilterMessage("connection refused: no valid PROXY protocol header from a trusted peer").All()); n != 1 {
		t.Errorf("missing header logged %d times, want 1", n)
	}
}

// tlsDial connects with implicit TLS, trusting pool, and returns the
// serial number of the server's certificate.
func tlsDial(t *testing.T, addr string, pool *tls.Config) (*popConn, int64) {
	t.Helper()
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, pool)
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	t.Cleanup(func() { tc.Close() })
	c := popOver(t, tc)
	if l := c.line(); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting: %q", l)
	}
	return c, tc.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// A new certificate applies to new connections (implicit TLS and STLS)
// without dropping sessions; an unusable one leaves the current one.
func TestTLSReloadKeepsSessions(t *testing.T) {
	up := startTestUpstream(t, upOpts{})
	dir := t.TempDir()
	certA, certB := newTestCert(t, "127.0.0.1"), newTestCert(t, "127.0.0.1")
	cfg := secConfig(up.addr)
	cfg.Auth.AllowInsecureAuth = false
	cfg.Server.ListenTLS = "127.0.0.1:0"
	cfg.TLS.CertFile, cfg.TLS.KeyFile = certA.write(t, dir)
	s := startSec(t, cfg)
	clientTLS := &tls.Config{RootCAs: certA.pool.Clone()}
	clientTLS.RootCAs.AddCert(certB.leaf)

	c1, serial := tlsDial(t, s.tlsAddr, clientTLS)
	if serial != certA.leaf.SerialNumber.Int64() {
		t.Fatalf("certificate %d, want A (%d)", serial, certA.leaf.SerialNumber)
	}
	c1.login(secUser, secPassword)

	certB.write(t, dir)
	leaf, err := s.srv.ReloadTLS()
	if err != nil || leaf.SerialNumber.Cmp(certB.leaf.SerialNumber) != 0 {
		t.Fatalf("ReloadTLS = %v, %v; want B", leaf, err)
	}
	c2, serial := tlsDial(t, s.tlsAddr, clientTLS)
	if serial != certB.leaf.SerialNumber.Int64() {
		t.Errorf("after the reload: certificate %d, want B (%d)", serial, certB.leaf.SerialNumber)
	}
	c2.quit()
	// The session that began before the reload goes on.
	if got := c1.retr(2); !bytes.Equal(got, secMessages[1]) {
		t.Errorf("RETR 2 after the reload = %q", got)
	}
	if r := c1.quit(); !strings.HasPrefix(r, "+OK") {
		t.Errorf("QUIT after the reload: %q", r)
	}

	// STLS on the cleartext listener gets B as well.
	p := dialFrom(t, "127.0.0.1", s.addr)
	p.ok("STLS")
	tc := tls.Client(p.conn, &tls.Config{RootCAs: clientTLS.RootCAs, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if got := tc.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(certB.leaf.SerialNumber) != 0 {
		t.Errorf("STLS certificate %v, want B", got)
	}
	tc.Close()

	// Broken files: an error, and B stays.
	os.WriteFile(filepath.Join(dir, "cert.pem"), []byte("not a certificate"), 0o600)
	if _, err := s.srv.ReloadTLS(); err == nil || !strings.Contains(err.Error(), "keeping the current one") {
		t.Errorf("ReloadTLS of a broken file: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "cert.pem"), certA.certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "key.pem"), certB.keyPEM, 0o600) // not A's key
	if _, err := s.srv.ReloadTLS(); err == nil {
		t.Error("ReloadTLS of a certificate with another key succeeded")
	}
	c3, serial := tlsDial(t, s.tlsAddr, clientTLS)
	if serial != certB.leaf.SerialNumber.Int64() {
		t.Errorf("after failed reloads: certificate %d, want B", serial)
	}
	c3.quit()

	// TLS 1.2 is the minimum.
	old := clientTLS.Clone()
	old.MaxVersion = tls.VersionTLS11
	if tc, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.tlsAddr, old); err == nil {
		tc.Close()
		t.Error("a TLS 1.1 handshake succeeded")
	}
}

// XOAUTH2 and OAUTHBEARER from the POP3 client reach the upstream as the
// same mechanism (or the other one when the upstream lacks it), with the
// account of the login name.
func TestOAuthPassThrough(t *testing.T) {
	loggedIn := fmt.Sprintf("+OK maildrop has %d messages", len(secMessages))
	for _, tc := range []struct {
		name    string
		offered []string // by the upstream
		mech    string   // used by the POP3 client
		ir      string
		want    string // the upstream's record of the attempt
	}{
		{"xoauth2", nil, "XOAUTH2", xoauth2IR(secUser+"#laptop", secToken), "XOAUTH2 " + secUser + " ok"},
		{"oauthbearer", nil, "OAUTHBEARER", oauthBearerIR(secUser+"#laptop", secToken), "OAUTHBEARER " + secUser + " ok"},
		{"oauthbearer to xoauth2", []string{"XOAUTH2"}, "OAUTHBEARER", oauthBearerIR(secUser, secToken), "XOAUTH2 " + secUser + " ok"},
		{"xoauth2 to oauthbearer", []string{"OAUTHBEARER"}, "XOAUTH2", xoauth2IR(secUser, secToken), "OAUTHBEARER " + secUser + " ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startTestUpstream(t, upOpts{mechs: tc.offered})
			s := startSec(t, secConfig(up.addr))
			c := dialFrom(t, "127.0.0.1", s.addr)
			c.ok("CAPA")
			if capa := string(c.multi()); !strings.Contains(capa, "SASL PLAIN LOGIN XOAUTH2 OAUTHBEARER\r\n") {
				t.Errorf("CAPA:\n%s", capa)
			}
			// Bad token: the error challenge, then -ERR [AUTH].
			bad := xoauth2IR(secUser, "expired")
			if tc.mech == "OAUTHBEARER" {
				bad = oauthBearerIR(secUser, "expired")
			}
			if r := c.cmd("AUTH %s %s", tc.mech, bad); !strings.HasPrefix(r, "+ ") {
				t.Fatalf("bad token: %q, want an error challenge", r)
			}
			if r := c.cmd("AQ=="); r != "-ERR [AUTH] authentication failed" {
				t.Fatalf("after the error challenge: %q", r)
			}
			// Without an initial response.
			if r := c.cmd("AUTH %s", tc.mech); r != "+ " {
				t.Fatalf("AUTH %s: %q", tc.mech, r)
			}
			if r := c.cmd("%s", tc.ir); !strings.HasPrefix(r, loggedIn) {
				t.Fatalf("token login: %q", r)
			}
			if got := c.retr(1); !bytes.Equal(got, secMessages[0]) {
				t.Errorf("RETR 1 = %q", got)
			}
			c.quit()
			att := up.attempts()
			if len(att) != 2 || att[1] != tc.want {
				t.Errorf("upstream attempts %q, want [... %q]", att, tc.want)
			}
		})
	}

	t.Run("upstream without oauth", func(t *testing.T) {
		up := startTestUpstream(t, upOpts{mechs: []string{"PLAIN"}})
		s := startSec(t, secConfig(up.addr))
		c := dialFrom(t, "127.0.0.1", s.addr)
		if r := c.cmd("AUTH XOAUTH2 %s", xoauth2IR(secUser, secToken)); !strings.HasPrefix(r, "-ERR [SYS/PERM]") {
			t.Errorf("token login to an upstream without OAuth: %q", r)
		}
		if att := up.attempts(); len(att) != 0 {
			t.Errorf("upstream attempts %q", att)
		}
	})

	t.Run("turned off", func(t *testing.T) {
		up := startTestUpstream(t, upOpts{})
		cfg := secConfig(up.addr)
		cfg.Auth.OAuthMechanisms = []string{}
		s := startSec(t, cfg)
		c := dialFrom(t, "127.0.0.1", s.addr)
		c.ok("CAPA")
		if capa := string(c.multi()); !strings.Contains(capa, "SASL PLAIN LOGIN\r\n") {
			t.Errorf("CAPA:\n%s", capa)
		}
		if r := c.cmd("AUTH XOAUTH2 %s", xoauth2IR(secUser, secToken)); r != "-ERR unsupported authentication mechanism" {
			t.Errorf("AUTH XOAUTH2: %q", r)
		}
	})
}

// A full session at Debug level, with every way to log in, right and
// wrong: no log line, and no line of the upstream protocol trace, holds the
// password, the token or a SASL payload.
func TestSecretsNeverLogged(t *testing.T) {
	up := startTestUpstream(t, upOpts{})
	var trace logBuffer
	cfg := secConfig(up.addr)
	cfg.Log.Level = zapcore.DebugLevel
	s := startSec(t, cfg, func(srv *Server) { srv.Bridge.up.Trace = &trace })
	wrongPass := "Wr0ng-" + secPassword[3:]
	wrongToken := "ya29.WRONG-" + secToken[10:]
	plainIR := b64("\x00" + secUser + "\x00" + secPassword)
	secrets := []string{
		secPassword, secToken, wrongPass, wrongToken, b64(secPassword), b64(secToken), plainIR,
		xoauth2IR(secUser, secToken), oauthBearerIR(secUser, secToken), xoauth2IR(secUser, wrongToken),
		b64(wrongPass), "Bearer",
	}

	c := dialFrom(t, "127.0.0.1", s.addr)
	c.ok("USER %s", secUser)
	if r := c.cmd("PASS %s", wrongPass); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Fatalf("wrong password: %q", r)
	}
	if r := c.cmd("AUTH XOAUTH2 %s", xoauth2IR(secUser, wrongToken)); !strings.HasPrefix(r, "+ ") {
		t.Fatalf("wrong token: %q", r)
	}
	c.cmd("")
	c.ok("AUTH PLAIN %s", plainIR)
	c.ok("STAT")
	c.retr(1)
	c.ok("DELE 2")
	c.ok("RSET")
	c.quit()

	c = dialFrom(t, "127.0.0.1", s.addr)
	c.login(secUser+"#desk", secPassword)
	c.quit()

	c = dialFrom(t, "127.0.0.1", s.addr)
	c.cmd("AUTH LOGIN")
	c.cmd("%s", b64(secUser))
	c.ok("%s", b64(secPassword))
	c.quit()

	for _, ir := range []string{"XOAUTH2 " + xoauth2IR(secUser, secToken), "OAUTHBEARER " + oauthBearerIR(secUser+"#tablet", secToken)} {
		c = dialFrom(t, "127.0.0.1", s.addr)
		c.ok("AUTH %s", ir)
		c.retr(2)
		c.quit()
	}
	s.waitSessions(5)

	logs := s.raw.String()
	if !strings.Contains(logs, `"msg":"session"`) || !strings.Contains(logs, "upstream") || !strings.Contains(logs, `"level":"debug"`) {
		t.Fatalf("the logs look empty:\n%s", logs)
	}
	if !strings.Contains(trace.String(), "AUTHENTICATE") {
		t.Fatalf("the upstream trace looks empty:\n%s", trace.String())
	}
	for _, secret := range secrets {
		for name, text := range map[string]string{"log": logs, "upstream trace": trace.String()} {
			if i := strings.Index(text, secret); i >= 0 {
				t.Errorf("the %s holds the secret %q: ...%s...", name, secret, text[max(0, i-200):min(len(text), i+len(secret)+50)])
			}
		}
	}
}

// Upstream TLS: certificates are verified against the system roots or
// upstream.ca_file, for the configured name; starttls never goes on in
// cleartext; insecure_skip_verify is warned about at every start.
func TestUpstreamTLSVerification(t *testing.T) {
	cert := newTestCert(t, "127.0.0.1")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, cert.certPEM, 0o600)
	other := newTestCert(t, "imap.example.test")
	otherCA := filepath.Join(t.TempDir(), "other-ca.pem")
	os.WriteFile(otherCA, other.certPEM, 0o600)

	login := func(t *testing.T, cfg Config) string {
		t.Helper()
		s := startSec(t, cfg)
		c := dialFrom(t, "127.0.0.1", s.addr)
		c.ok("USER %s", secUser)
		return c.cmd("PASS %s", secPassword)
	}
	for _, tc := range []struct {
		name   string
		up     upOpts
		mutate func(*UpstreamConfig)
		ok     bool
	}{
		{"tls, system roots", upOpts{cert: cert, implicitTLS: true}, func(u *UpstreamConfig) {}, false},
		{"tls, ca_file", upOpts{cert: cert, implicitTLS: true}, func(u *UpstreamConfig) { u.CAFile = caFile }, true},
		{"tls, wrong name", upOpts{cert: other, implicitTLS: true}, func(u *UpstreamConfig) { u.CAFile = otherCA }, false},
		{"tls, server_name", upOpts{cert: other, implicitTLS: true}, func(u *UpstreamConfig) {
			u.CAFile, u.ServerName = otherCA, "imap.example.test"
		}, true},
		{"starttls, ca_file", upOpts{cert: cert}, func(u *UpstreamConfig) { u.CAFile = caFile }, true},
		{"starttls, system roots", upOpts{cert: cert}, func(u *UpstreamConfig) {}, false},
		{"starttls not offered", upOpts{}, func(u *UpstreamConfig) { u.CAFile = caFile }, false},
		{"insecure_skip_verify", upOpts{cert: other, implicitTLS: true}, func(u *UpstreamConfig) { u.InsecureSkipVerify = true }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startTestUpstream(t, tc.up)
			cfg := secConfig(up.addr)
			cfg.Upstream.Security = upstream.SecurityStartTLS
			if tc.up.implicitTLS {
				cfg.Upstream.Security = upstream.SecurityTLS
			}
			tc.mutate(&cfg.Upstream)
			r := login(t, cfg)
			if tc.ok != strings.HasPrefix(r, "+OK") {
				t.Errorf("login: %q", r)
			}
			if att := up.attempts(); !tc.ok && len(att) != 0 {
				t.Errorf("credentials reached an unverified upstream: %q", att)
			}
		})
	}

	t.Run("warning at every start", func(t *testing.T) {
		core, logs := observer.New(zapcore.WarnLevel)
		cfg := secConfig("127.0.0.1:993")
		cfg.Upstream.Security = upstream.SecurityTLS
		cfg.Upstream.InsecureSkipVerify = true
		for range 2 {
			st, err := boltstore.Open(filepath.Join(t.TempDir(), "state.db"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := NewServer(cfg, st, zap.New(core)); err != nil {
				t.Fatal(err)
			}
			st.Close()
		}
		if n := logs.FilterMessageSnippet("NOT verified").Len(); n != 2 {
			t.Errorf("%d warnings for 2 starts", n)
		}
		cfg.Upstream.InsecureSkipVerify = false
		st, _ := boltstore.Open(filepath.Join(t.TempDir(), "state.db"), nil)
		defer st.Close()
		NewServer(cfg, st, zap.New(core))
		if n := logs.FilterMessageSnippet("NOT verified").Len(); n != 2 {
			t.Errorf("a warning without insecure_skip_verify")
		}
	})
}
