package oauth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/oauth2"
)

// DeviceCode is a started device authorization (RFC 8628): the user opens
// VerificationURI on any device and enters UserCode, while Wait polls the
// token endpoint.
type DeviceCode struct {
	UserCode        string
	VerificationURI string
	// VerificationURIComplete, when the provider sends one, carries the
	// code already (for a QR code).
	VerificationURIComplete string
	Expiry                  time.Time
	Interval                time.Duration

	c    *Client
	resp *oauth2.DeviceAuthResponse
}

// StartDevice asks the provider for a device code.
func (c *Client) StartDevice(ctx context.Context) (*DeviceCode, error) {
	resp, err := c.oauth2Config("").DeviceAuth(c.ctx(ctx))
	if err != nil {
		return nil, classify("device authorization", err)
	}
	if resp.DeviceCode == "" || resp.UserCode == "" || resp.VerificationURI == "" {
		return nil, &Error{Op: "device authorization", Err: errors.New("the provider's answer lacks device_code, user_code or verification_uri")}
	}
	interval := time.Duration(resp.Interval) * time.Second
	if interval <= 0 {
		interval = 5 * time.Second
	}
	return &DeviceCode{
		UserCode:                resp.UserCode,
		VerificationURI:         resp.VerificationURI,
		VerificationURIComplete: resp.VerificationURIComplete,
		Expiry:                  resp.Expiry,
		Interval:                interval,
		c:                       c,
		resp:                    resp,
	}, nil
}

// Instructions is what to show the user.
func (d *DeviceCode) Instructions() string {
	s := fmt.Sprintf("To sign in, open %s in a browser on any device and enter the code %s", d.VerificationURI, d.UserCode)
	if !d.Expiry.IsZero() {
		s += fmt.Sprintf(" (valid until %s)", d.Expiry.Local().Format("15:04:05"))
	}
	return s + "."
}

// Wait polls until the user approves, declines or the code expires,
// waiting the announced interval between polls and 5 seconds more after
// each slow_down. It fails with ErrAccessDenied, ErrExpired or a
// classified error.
func (d *DeviceCode) Wait(ctx context.Context) (Grant, error) {
	const op = "device token"
	tok, err := d.c.oauth2Config("").DeviceAccessToken(d.c.ctx(ctx), d.resp)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			// DeviceAccessToken's own deadline is the code's expiry.
			return Grant{}, &Error{Op: op, Code: "expired_token", kind: ErrExpired, Err: err}
		}
		return Grant{}, classify(op, err)
	}
	return d.c.grantOf(tok), nil
}

// DeviceFlow runs the whole device flow: it writes the instructions to w
// and waits for the grant.
func (c *Client) DeviceFlow(ctx context.Context, w io.Writer) (Grant, error) {
	d, err := c.StartDevice(ctx)
	if err != nil {
		return Grant{}, err
	}
	if _, err := fmt.Fprintln(w, d.Instructions()); err != nil {
		return Grant{}, err
	}
	return d.Wait(ctx)
}
