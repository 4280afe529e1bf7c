package upstream

import (
	"context"
	"errors"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-sasl"
	"go.uber.org/zap"
)

// clientID is what ID sends after login (RFC 2971).
var clientID = &imap.IDData{Name: "popbridge"}

// Login sends LOGIN with username and password, or, when the server
// advertises LOGINDISABLED and AUTH=PLAIN, AUTHENTICATE PLAIN instead. Then
// it asks for the new CAPABILITY list and, when ID is advertised, sends ID
// ("name" "popbridge"), ignoring its outcome.
//
// A NO is KindAuth unless its response code says the failure is temporary
// (UNAVAILABLE, LIMIT, INUSE, SERVERBUG ...: KindTemp) or that the server
// wants TLS (PRIVACYREQUIRED: KindPerm); BYE and I/O errors are KindTemp.
// A PREAUTH greeting is refused with KindPerm: the credentials would not be
// checked.
func (c *Conn) Login(ctx context.Context, username, password string) error {
	const op = "login"
	err := c.call(ctx, op, phaseLogin, func(*watch) error {
		if err := c.login(op, username, password); err != nil {
			return err
		}
		return c.afterAuth()
	})
	if err != nil {
		return err
	}
	c.log.Debug("upstream login", zap.Int("caps", len(c.Caps())))
	return nil
}

func (c *Conn) login(op, username, password string) error {
	if err := c.checkUnauthenticated(op); err != nil {
		return err
	}
	caps := c.client.Caps()
	if caps == nil {
		return tempError(op, "no capabilities")
	}
	if caps.Has(imap.CapLoginDisabled) {
		if !caps.Has(imap.AuthCap(sasl.Plain)) {
			return permError(op, "server disabled LOGIN and offers no AUTH=PLAIN (does it want TLS?)")
		}
		return c.client.Authenticate(sasl.NewPlainClient("", username, password))
	}
	return c.client.Login(username, password).Wait()
}

func (c *Conn) checkUnauthenticated(op string) error {
	switch c.client.State() {
	case imap.ConnStateNotAuthenticated:
		return nil
	case imap.ConnStateAuthenticated, imap.ConnStateSelected:
		return permError(op, "already authenticated (PREAUTH greeting?): refusing to skip the credential check")
	}
	return tempError(op, "connection closed")
}

// Authenticate sends AUTHENTICATE and runs the SASL exchange of sc (for
// XOAUTH2 or OAUTHBEARER), then refreshes the capabilities and sends ID like
// Login. Errors are classified like Login's; an error of sc itself closes
// the connection, since the server is left waiting inside the exchange.
func (c *Conn) Authenticate(ctx context.Context, sc sasl.Client) error {
	const op = "authenticate"
	return c.call(ctx, op, phaseLogin, func(*watch) error {
		if err := c.checkUnauthenticated(op); err != nil {
			return err
		}
		err := c.client.Authenticate(sc)
		var ie *imap.Error
		if err != nil && !errors.As(err, &ie) {
			c.client.Close()
			var oe *sasl.OAuthBearerError
			if errors.As(err, &oe) {
				err = &Error{Kind: KindAuth, Op: op, Err: err}
			}
		}
		if err != nil {
			return err
		}
		return c.afterAuth()
	})
}

// afterAuth asks for the capabilities again (imapclient resets its own copy
// after authentication, racily: a CAPABILITY of our own is the reliable
// way) and sends ID when the server has it.
func (c *Conn) afterAuth() error {
	caps, err := c.client.Capability().Wait()
	if err != nil {
		return err
	}
	if caps == nil {
		return tempError("capability", "no CAPABILITY response")
	}
	c.mu.Lock()
	c.caps = caps
	c.mu.Unlock()
	if caps.Has(imap.CapID) {
		// Some servers (NetEase) refuse SELECT without ID. Its failure is
		// not ours to report.
		id, err := c.client.ID(clientID).Wait()
		if err != nil {
			c.log.Debug("upstream ID failed", zap.Error(err))
		} else if id != nil {
			c.mu.Lock()
			c.serverID = ServerID{Name: id.Name, Vendor: id.Vendor, Version: id.Version}
			c.mu.Unlock()
		}
	}
	return nil
}
