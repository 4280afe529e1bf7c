package account

import (
	"encoding/json"
	"fmt"
	"time"

	"golang.org/x/oauth2"

	"github.com/popbridge/popbridge/internal/secret"
	"github.com/popbridge/popbridge/state"
)

// Grant is what popbridge keeps of an OAuth 2.0 grant: the fields of an
// oauth2.Token and the scope granted. It is stored only sealed under the
// account's data key.
type Grant struct {
	AccessToken  string
	TokenType    string // "Bearer" when empty
	RefreshToken string // "" for app-only accounts
	Expiry       time.Time
	Scope        string // space-separated, as the token endpoint said
}

// ToToken returns g as an oauth2.Token, the scope as its "scope" extra.
func (g *Grant) ToToken() *oauth2.Token {
	t := &oauth2.Token{AccessToken: g.AccessToken, TokenType: g.TokenType, RefreshToken: g.RefreshToken, Expiry: g.Expiry}
	if g.Scope != "" {
		t = t.WithExtra(map[string]any{"scope": g.Scope})
	}
	return t
}

// FromToken returns the Grant of t: its fields, the "scope" extra when it
// is a string, and Expiry from ExpiresIn, counted from now, when t has an
// ExpiresIn but no Expiry.
func FromToken(t *oauth2.Token) *Grant {
	if t == nil {
		return nil
	}
	g := &Grant{AccessToken: t.AccessToken, TokenType: t.TokenType, RefreshToken: t.RefreshToken, Expiry: t.Expiry}
	if s, ok := t.Extra("scope").(string); ok {
		g.Scope = s
	}
	if g.Expiry.IsZero() && t.ExpiresIn > 0 {
		g.Expiry = time.Now().Add(time.Duration(t.ExpiresIn) * time.Second)
	}
	return g
}

// Fresh reports whether g has an access token that is still valid for at
// least margin after now (or has no expiry).
func (g *Grant) Fresh(now time.Time, margin time.Duration) bool {
	return g != nil && g.AccessToken != "" && (g.Expiry.IsZero() || g.Expiry.After(now.Add(margin)))
}

// grantJSON is the plaintext that is sealed.
type grantJSON struct {
	AccessToken  string    `json:"access_token,omitempty"`
	TokenType    string    `json:"token_type,omitempty"`
	RefreshToken string    `json:"refresh_token,omitempty"`
	Expiry       time.Time `json:"expiry,omitzero"`
	Scope        string    `json:"scope,omitempty"`
}

// sealGrant seals g under dek for the record a as grant version version.
func sealGrant(dek []byte, a *state.Account, version uint64, g *Grant) ([]byte, error) {
	pt, err := json.Marshal(grantJSON{AccessToken: g.AccessToken, TokenType: g.TokenType,
		RefreshToken: g.RefreshToken, Expiry: g.Expiry.UTC(), Scope: g.Scope})
	if err != nil {
		return nil, err
	}
	defer secret.Zero(pt)
	return secret.Seal(dek, pt, grantAAD(a, version))
}

// openGrant opens the sealed grant of a under dek.
func openGrant(dek []byte, a *state.Account) (*Grant, error) {
	pt, err := secret.Open(dek, a.SealedGrant, grantAAD(a, a.GrantVersion))
	if err != nil {
		return nil, fmt.Errorf("account %q: the sealed grant does not open (%w): the record was altered", a.Name, err)
	}
	defer secret.Zero(pt)
	var j grantJSON
	if err := json.Unmarshal(pt, &j); err != nil {
		return nil, fmt.Errorf("account %q: sealed grant: %w", a.Name, err)
	}
	return &Grant{AccessToken: j.AccessToken, TokenType: j.TokenType, RefreshToken: j.RefreshToken,
		Expiry: j.Expiry, Scope: j.Scope}, nil
}
