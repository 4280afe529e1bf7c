package pop3

import (
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/saslmech"
)

// authAllowed reports whether USER/PASS and AUTH may be used: only over
// TLS unless AllowInsecureAuth (RFC 8314 §2: cleartext should not carry
// credentials).
func (c *conn) authAllowed() bool {
	return c.info.TLS != nil || c.srv.AllowInsecureAuth
}

// stlsOffered reports whether STLS may be used now.
func (c *conn) stlsOffered() bool {
	return c.srv.TLSConfig != nil && c.info.TLS == nil
}

// refuseCleartext answers a login attempt on a cleartext connection.
func (c *conn) refuseCleartext() {
	text := "[" + CodeAuth + "] plaintext authentication disallowed"
	if c.stlsOffered() {
		text += ", use STLS"
	}
	c.fail(text)
}

// cmdUser answers USER name (RFC 1939 §7). The name waits for PASS.
func (c *conn) cmdUser(cmd command) error {
	if !c.authAllowed() {
		c.refuseCleartext()
		return nil
	}
	if len(cmd.args) != 1 {
		c.fail("syntax error: USER name")
		return nil
	}
	c.user = ""
	if c.badName(cmd.args[0]) {
		return nil
	}
	c.user = cmd.args[0]
	c.name = c.user
	c.reply("+OK send PASS")
	return nil
}

// cmdPass answers PASS string (RFC 1939 §7). The password is the rest of
// the line, spaces included, as §7 allows.
func (c *conn) cmdPass(cmd command) error {
	if !c.authAllowed() {
		c.refuseCleartext()
		return nil
	}
	user := c.user
	c.user = ""
	if user == "" {
		c.fail("USER first")
		return nil
	}
	if cmd.rest == "" {
		c.fail("syntax error: PASS string")
		return nil
	}
	pass := cmd.rest
	return c.authenticate(user, nil, func() (Maildrop, error) {
		return c.srv.Backend.Login(c.ctx, &c.info, user, pass)
	})
}

// errAuthzID refuses a PLAIN authorization identity other than the user.
var errAuthzID = &Error{Code: CodeAuth, Text: "authorization identity not supported"}

// mechanisms returns the SASL mechanisms offered, in CAPA's order.
func (c *conn) mechanisms() []string {
	mechs := []string{saslmech.Plain, saslmech.Login}
	if tb, ok := c.srv.Backend.(TokenBackend); ok {
		var offered []string
		c.safely("TokenMechanisms", func() { offered = tb.TokenMechanisms() })
		for _, m := range []string{saslmech.XOAuth2, saslmech.OAuthBearer} {
			if slices.Contains(offered, m) {
				mechs = append(mechs, m)
			}
		}
	}
	return mechs
}

// cmdAuth answers AUTH (RFC 5034). Without arguments it lists the
// mechanisms, as clients from before RFC 5034 expect.
func (c *conn) cmdAuth(cmd command) error {
	if !c.authAllowed() {
		c.refuseCleartext()
		return nil
	}
	mechs := c.mechanisms()
	if len(cmd.args) == 0 {
		c.reply("+OK mechanisms follow")
		for _, m := range mechs {
			c.reply(m)
		}
		c.reply(".")
		return nil
	}
	if len(cmd.args) > 2 {
		c.fail("syntax error: AUTH mechanism [initial-response]")
		return nil
	}
	mech := strings.ToUpper(cmd.args[0])
	if !slices.Contains(mechs, mech) {
		c.fail("unsupported authentication mechanism")
		return nil
	}
	var user, pass, authzid string
	var srv sasl.Server
	var bearer *bearerServer
	switch mech {
	case saslmech.Plain:
		srv = sasl.NewPlainServer(func(identity, username, password string) error {
			user, pass, authzid = username, password, identity
			return nil
		})
	case saslmech.Login:
		srv = &loginServer{done: func(username, password string) {
			user, pass = username, password
		}}
	case saslmech.XOAuth2, saslmech.OAuthBearer:
		bearer = newBearerServer(mech)
		srv = bearer
	}
	var ir []byte
	if len(cmd.args) == 2 {
		var ok bool
		if ir, ok = decodeSASL(cmd.args[1]); !ok {
			c.fail("invalid base64 in initial response")
			return nil
		}
	}
	if ok, err := c.saslExchange(srv, ir); !ok || err != nil {
		return err
	}
	if authzid != "" && c.badName(authzid) {
		return nil
	}
	if bearer != nil {
		user, token := bearer.user, bearer.token
		tb := c.srv.Backend.(TokenBackend)
		return c.authenticate(user, bearer.failure, func() (Maildrop, error) {
			return tb.LoginToken(c.ctx, &c.info, mech, user, token)
		})
	}
	return c.authenticate(user, nil, func() (Maildrop, error) {
		if authzid != "" && authzid != user {
			return nil, errAuthzID
		}
		return c.srv.Backend.Login(c.ctx, &c.info, user, pass)
	})
}

// badName answers a login name that CheckLoginName refuses, counts it as
// a protocol error and logs it, and reports whether it did. The name is
// logged quoted, in ASCII, and cut short.
func (c *conn) badName(name string) bool {
	err := CheckLoginName(name)
	if err == nil {
		return false
	}
	c.observeLogin(err)
	c.errs++
	shown := name
	if len(shown) > 64 {
		shown = shown[:64]
	}
	c.log.Info("login name refused", zap.String("remote", addrString(c.info.RemoteAddr)),
		zap.String("user", strconv.QuoteToASCII(shown)), zap.String("reason", err.Error()))
	c.reply(errorLine(err.(*Error)))
	return true
}

// saslExchange runs srv to its end (RFC 5034 §4): each challenge goes out
// as "+ base64", each response comes back as one base64 line, and "*"
// cancels. It returns ok when srv is done and has accepted the responses;
// otherwise the client has been answered. A non-nil error ends the
// session. Responses are never logged.
func (c *conn) saslExchange(srv sasl.Server, resp []byte) (ok bool, err error) {
	for {
		challenge, done, err := srv.Next(resp)
		if err != nil {
			c.fail("malformed SASL response")
			return false, nil
		}
		if done {
			return true, nil
		}
		c.reply("+ " + base64.StdEncoding.EncodeToString(challenge))
		if err := c.bw.Flush(); err != nil {
			return false, err
		}
		if err := c.nc.SetReadDeadline(c.authDeadline); err != nil {
			return false, err
		}
		line, err := c.readLine(maxSASLLineLength)
		switch {
		case errors.Is(err, errLineTooLong):
			c.fail("line too long")
			return false, nil
		case err != nil:
			return false, err
		case line == "*":
			c.fail("authentication cancelled")
			return false, nil
		}
		var valid bool
		if resp, valid = decodeSASL(line); !valid {
			c.fail("invalid base64 in SASL response")
			return false, nil
		}
	}
}

// decodeSASL decodes a base64 SASL response; "=" is the empty response
// (RFC 5034 §4). The result is never nil.
func decodeSASL(s string) ([]byte, bool) {
	if s == "=" {
		return []byte{}, true
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, false
	}
	if b == nil {
		b = []byte{}
	}
	return b, true
}

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): it asks for the user name, unless the
// initial response holds it, then for the password.
type loginServer struct {
	step     int
	username string
	done     func(username, password string)
}

func (s *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch {
	case s.step == 0 && resp == nil:
		s.step = 1
		return []byte("Username:"), false, nil
	case s.step <= 1:
		s.username = string(resp)
		s.step = 2
		return []byte("Password:"), false, nil
	case s.step == 2:
		s.step = 3
		s.done(s.username, string(resp))
		return nil, true, nil
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

// authenticate runs one login attempt of user: it asks the LoginLimiter,
// then check (which calls the Backend), and on success enters the
// TRANSACTION state with the maildrop's listing fixed for the session. A
// failure is answered after the limiter's pause (or LoginFailDelay);
// failure, when set, is the mechanism's error challenge (RFC 7628 §3.2.2),
// sent first when the credentials were refused.
func (c *conn) authenticate(user string, failure []byte, check func() (Maildrop, error)) error {
	if c.badName(user) {
		return nil
	}
	c.name = user
	var end func(failed bool) time.Duration
	if l := c.srv.LoginLimiter; l != nil {
		var err error
		c.safely("LoginLimiter", func() { end, err = l.BeginLogin(c.info.RemoteAddr, user) })
		if err == nil && end == nil {
			err = errors.New("pop3: LoginLimiter.BeginLogin returned no end function")
		}
		if err != nil {
			c.observeLogin(err)
			c.authFail++
			c.errs++
			c.log.Info("login throttled", zap.String("remote", addrString(c.info.RemoteAddr)),
				zap.String("user", user), zap.String("reason", err.Error()))
			var pe *Error
			if errors.As(err, &pe) {
				c.reply(errorLine(pe))
			} else {
				c.reply("-ERR [" + CodeSysTemp + "] try again later")
			}
			return nil
		}
	}
	ended := false
	endLogin := func(failed bool) time.Duration {
		if end == nil || ended {
			return 0
		}
		ended = true
		return end(failed)
	}
	defer endLogin(false) // in case check panics
	md, err := check()
	if err == nil && md == nil {
		err = errors.New("pop3: Backend returned a nil Maildrop")
	}
	c.observeLogin(err)
	if err != nil {
		var pe *Error
		refused := errors.As(err, &pe) && pe.Code == CodeAuth
		delay := c.srv.LoginFailDelay
		if end != nil {
			delay = endLogin(refused)
			if !refused {
				delay = 0
			}
		}
		return c.loginFailed(err, delay, refused, failure)
	}
	endLogin(false)
	c.md = md
	c.msgs = md.List()
	c.deleted = make([]bool, len(c.msgs))
	c.state = stateTransaction
	c.user = ""
	n, size := c.stat()
	c.replyf("+OK maildrop has %d messages (%d octets)", n, size)
	c.log.Debug("logged in", zap.String("user", user), zap.Int("messages", n))
	return nil
}

// loginFailed waits delay, sends the error challenge failure when the
// credentials were refused, then answers err and counts it.
func (c *conn) loginFailed(err error, delay time.Duration, refused bool, failure []byte) error {
	c.authFail++
	c.errs++
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-c.ctx.Done():
			t.Stop()
			return c.ctx.Err()
		}
	}
	if refused && failure != nil {
		// RFC 7628 §3.2.2 (and XOAUTH2 likewise): the error goes out as a
		// challenge, the client answers with a dummy response (^A or an
		// empty line), and only then does the exchange fail.
		c.reply("+ " + base64.StdEncoding.EncodeToString(failure))
		if err := c.bw.Flush(); err != nil {
			return err
		}
		if err := c.nc.SetReadDeadline(c.authDeadline); err != nil {
			return err
		}
		if _, err := c.readLine(maxSASLLineLength); err != nil && !errors.Is(err, errLineTooLong) {
			return err
		}
	}
	c.replyErr("login", err)
	return nil
}

// cmdStls answers STLS (RFC 2595 §4): after "+OK" the server discards
// whatever the client sent after the command, runs the TLS handshake and
// starts over in the AUTHORIZATION state, forgetting USER.
func (c *conn) cmdStls(cmd command) error {
	if !c.noArgs(cmd) {
		return nil
	}
	if c.info.TLS != nil {
		c.fail("TLS already active")
		return nil
	}
	c.reply("+OK begin TLS negotiation")
	if err := c.bw.Flush(); err != nil {
		return err
	}
	if n := c.br.Buffered(); n > 0 {
		// Command injection (CVE-2011-0411 and kin): anything sent
		// before the handshake is not to be trusted.
		c.log.Debug("discarding input sent before the TLS handshake", zap.Int("octets", n))
		c.br.Discard(n)
	}
	tc := tls.Server(c.raw, c.srv.TLSConfig)
	if err := c.raw.SetDeadline(c.authDeadline); err != nil {
		return err
	}
	if err := tc.HandshakeContext(c.ctx); err != nil {
		c.log.Debug("STLS handshake failed", zap.Error(err))
		return fmt.Errorf("pop3: STLS handshake: %w", err)
	}
	cs := tc.ConnectionState()
	c.info.TLS = &cs
	c.user = ""
	c.setConn(tc)
	return nil
}

// observeLogin tells the Observer how a login attempt ended: "ok", or the
// response code the client is answered with.
func (c *conn) observeLogin(err error) {
	o := c.srv.Observer
	if o == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = CodeSysTemp // what replyErr answers an error that is not an *Error
		var pe *Error
		if errors.As(err, &pe) {
			result = pe.Code
		}
	}
	c.safely("Observer", func() { o.Login(result) })
}
