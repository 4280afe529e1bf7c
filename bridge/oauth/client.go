package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/popbridge/popbridge/upstream"
)

// Grant is what an enrollment leaves: the tokens of one account. Scope is
// the granted scope as the provider reported it (space-separated).
type Grant struct {
	AccessToken  string
	TokenType    string
	RefreshToken string
	Expiry       time.Time // of the access token; zero: unknown
	Scope        string
}

// Client is a validated Config with its secret read: it runs the flows
// and refreshes grants. It is safe for concurrent use.
type Client struct {
	r      resolved
	id     string
	secret string
	hc     *http.Client
	now    func() time.Time
}

// NewClient validates c, reads the client secret and returns a Client.
func NewClient(c Config) (*Client, error) {
	r, err := c.resolve()
	if err != nil {
		return nil, err
	}
	secret, err := c.readSecret()
	if err != nil {
		return nil, err
	}
	return &Client{r: r, id: c.ClientID, secret: secret, hc: &http.Client{Timeout: r.timeout}, now: time.Now}, nil
}

// SetHTTPClient replaces the HTTP client used to reach the provider (a
// proxy, a private CA). Call it before using c.
func (c *Client) SetHTTPClient(hc *http.Client) { c.hc = hc }

// SetClock replaces the clock that turns expires_in into an expiry
// (tests). Call it before using c.
func (c *Client) SetClock(now func() time.Time) { c.now = now }

// Provider returns the preset's name.
func (c *Client) Provider() string { return c.r.preset.Name }

// Flow returns the configured enrollment flow.
func (c *Client) Flow() Flow { return c.r.flow }

// Scopes returns the scopes asked for.
func (c *Client) Scopes() []string { return slices.Clone(c.r.scopes) }

// Mechanism returns the SASL mechanism of the IMAP login: XOAUTH2 or
// OAUTHBEARER.
func (c *Client) Mechanism() string { return c.r.mechanism }

// Upstream returns the IMAP service's address and security.
func (c *Client) Upstream() (address string, security upstream.Security) {
	return c.r.upAddress, c.r.upSecurity
}

// Endpoint returns the provider's endpoints, the tenant filled in.
func (c *Client) Endpoint() oauth2.Endpoint { return c.oauth2Config("").Endpoint }

// RefreshBefore returns how long before expiry tokens are refreshed.
func (c *Client) RefreshBefore() time.Duration { return c.r.refreshBefore }

// oauth2Config is the x/oauth2 configuration of the user flows.
func (c *Client) oauth2Config(redirectURL string) *oauth2.Config {
	style, _ := authStyle("", c.r.preset)
	if style == oauth2.AuthStyleAutoDetect && c.secret == "" {
		style = oauth2.AuthStyleInParams
	}
	return &oauth2.Config{
		ClientID:     c.id,
		ClientSecret: c.secret,
		Endpoint: oauth2.Endpoint{
			AuthURL:       c.r.authURL,
			TokenURL:      c.r.tokenURL,
			DeviceAuthURL: c.r.deviceURL,
			AuthStyle:     style,
		},
		RedirectURL: redirectURL,
		Scopes:      slices.Clone(c.r.scopes),
	}
}

// authStyle turns the auth_style key into x/oauth2's AuthStyle.
func authStyle(s string, p Preset) (oauth2.AuthStyle, error) {
	switch s {
	case "":
		return p.AuthStyle, nil
	case "params":
		return oauth2.AuthStyleInParams, nil
	case "header":
		return oauth2.AuthStyleInHeader, nil
	}
	return 0, fmt.Errorf("%q: want params or header", s)
}

// ctx carries the HTTP client to x/oauth2.
func (c *Client) ctx(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, c.hc)
}

// grantOf turns a token response into a Grant; the expiry is computed
// on c's clock from expires_in.
func (c *Client) grantOf(tok *oauth2.Token) Grant {
	g := Grant{
		AccessToken:  tok.AccessToken,
		TokenType:    tok.TokenType,
		RefreshToken: tok.RefreshToken,
		Expiry:       tok.Expiry,
	}
	if tok.ExpiresIn > 0 {
		g.Expiry = c.now().Add(time.Duration(tok.ExpiresIn) * time.Second)
	}
	if s, ok := tok.Extra("scope").(string); ok {
		g.Scope = s
	}
	return g
}

// AppToken obtains an app-only token with the client credentials grant
// (client_id and the client secret, the preset's app scope).
func (c *Client) AppToken(ctx context.Context) (Grant, error) {
	if c.secret == "" {
		return Grant{}, &Error{Op: "client credentials", kind: ErrInvalidClient, Err: errors.New("no client secret configured")}
	}
	style, _ := authStyle("", c.r.preset)
	cc := &clientcredentials.Config{
		ClientID:     c.id,
		ClientSecret: c.secret,
		TokenURL:     c.r.tokenURL,
		Scopes:       slices.Clone(c.r.scopes),
		AuthStyle:    style,
	}
	tok, err := cc.Token(c.ctx(ctx))
	if err != nil {
		return Grant{}, classify("client credentials", err)
	}
	return c.grantOf(tok), nil
}

// Refresh redeems a refresh token. The new grant carries the new refresh
// token when the provider rotated it, else the one given. Errors are
// classified: errors.Is(err, ErrReconsent) when the grant is gone,
// IsTemporary(err) when a retry may succeed.
//
// The request is made here rather than by x/oauth2's token source, which
// does not send the scope on refresh; Microsoft needs it.
func (c *Client) Refresh(ctx context.Context, refreshToken string) (Grant, error) {
	const op = "refresh"
	if refreshToken == "" {
		return Grant{}, &Error{Op: op, kind: ErrReconsent, Err: errors.New("no refresh token")}
	}
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken},
	}
	if c.r.refreshScope {
		form.Set("scope", strings.Join(c.r.scopes, " "))
	}
	style, _ := authStyle("", c.r.preset)
	if style == oauth2.AuthStyleAutoDetect {
		// Without a secret the client ID goes in the body; with one,
		// HTTP Basic, which RFC 6749 §2.3.1 makes every server accept.
		style = oauth2.AuthStyleInParams
		if c.secret != "" {
			style = oauth2.AuthStyleInHeader
		}
	}
	if style == oauth2.AuthStyleInParams {
		form.Set("client_id", c.id)
		if c.secret != "" {
			form.Set("client_secret", c.secret)
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.r.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return Grant{}, classify(op, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if style == oauth2.AuthStyleInHeader {
		req.SetBasicAuth(url.QueryEscape(c.id), url.QueryEscape(c.secret))
	}
	tok, err := c.tokenRoundTrip(req)
	if err != nil {
		return Grant{}, classify(op, err)
	}
	if tok.RefreshToken == "" {
		tok.RefreshToken = refreshToken
	}
	return c.grantOf(tok), nil
}

// tokenRoundTrip sends a token request and decodes the answer as RFC 6749
// §5.1 and §5.2 say; a refusal is an *oauth2.RetrieveError, like
// x/oauth2's.
func (c *Client) tokenRoundTrip(req *http.Request) (*oauth2.Token, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var tj struct {
		AccessToken  string          `json:"access_token"`
		TokenType    string          `json:"token_type"`
		RefreshToken string          `json:"refresh_token"`
		ExpiresIn    json.RawMessage `json:"expires_in"`
		Scope        string          `json:"scope"`
		Error        string          `json:"error"`
		Description  string          `json:"error_description"`
		URI          string          `json:"error_uri"`
	}
	ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	jsonErr := json.Unmarshal(body, &tj)
	failed := resp.StatusCode < 200 || resp.StatusCode > 299 || tj.Error != ""
	if failed {
		re := &oauth2.RetrieveError{Response: resp, Body: body}
		if jsonErr == nil {
			re.ErrorCode, re.ErrorDescription, re.ErrorURI = tj.Error, tj.Description, tj.URI
		}
		return nil, re
	}
	if jsonErr != nil {
		return nil, fmt.Errorf("oauth2: cannot parse the token response (%s): %v", ct, jsonErr)
	}
	if tj.AccessToken == "" {
		return nil, errors.New("oauth2: server response missing access_token")
	}
	tok := &oauth2.Token{AccessToken: tj.AccessToken, TokenType: tj.TokenType, RefreshToken: tj.RefreshToken}
	// expires_in is a number, but some providers send a string.
	var n json.Number
	if err := json.Unmarshal(bytesTrimQuotes(tj.ExpiresIn), &n); err == nil {
		if secs, err := n.Int64(); err == nil && secs > 0 {
			tok.ExpiresIn = secs
			tok.Expiry = time.Now().Add(time.Duration(secs) * time.Second)
		}
	}
	return tok.WithExtra(map[string]any{"scope": tj.Scope}), nil
}

// bytesTrimQuotes strips the quotes of a JSON string so that "3599"
// decodes as a number.
func bytesTrimQuotes(b json.RawMessage) json.RawMessage {
	if len(b) >= 2 && b[0] == '"' && b[len(b)-1] == '"' {
		return b[1 : len(b)-1]
	}
	return b
}
