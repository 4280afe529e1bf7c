package oauthtest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/popbridge/popbridge/internal/oauthtest"
)

// publicConfig is an x/oauth2 configuration of the Env's public client.
func publicConfig(e *oauthtest.Env, redirect string) *oauth2.Config {
	return &oauth2.Config{
		ClientID: oauthtest.PublicClientID,
		Endpoint: oauth2.Endpoint{
			AuthURL:       e.Provider.AuthURL(),
			TokenURL:      e.Provider.TokenURL(),
			DeviceAuthURL: e.Provider.DeviceAuthURL(),
			AuthStyle:     oauth2.AuthStyleInParams,
		},
		RedirectURL: redirect,
		Scopes:      []string{oauthtest.IMAPScope, "offline_access"},
	}
}

func retrieveCode(t *testing.T, err error) string {
	t.Helper()
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a RetrieveError", err, err)
	}
	return re.ErrorCode
}

// codeFor runs an authorization request through the provider as User and
// returns the code.
func codeFor(t *testing.T, e *oauthtest.Env, cfg *oauth2.Config, verifier string) string {
	t.Helper()
	redirect, err := e.Provider.Authorize(cfg.AuthCodeURL("st4te", oauth2.S256ChallengeOption(verifier)), oauthtest.User)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(redirect)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Query().Get("state"); got != "st4te" {
		t.Fatalf("redirect state %q, want st4te", got)
	}
	if u.Query().Get("code") == "" {
		t.Fatalf("redirect without code: %s", redirect)
	}
	return u.Query().Get("code")
}

// The fake checks PKCE: a wrong or missing verifier is invalid_grant and
// burns the code; the right verifier gets tokens for the user who signed
// in.
func TestPKCEVerifierChecked(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	cfg := publicConfig(e, "http://127.0.0.1:4711/cb")
	ctx := t.Context()
	verifier := oauth2.GenerateVerifier()

	code := codeFor(t, e, cfg, verifier)
	_, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(oauth2.GenerateVerifier()))
	if got := retrieveCode(t, err); got != "invalid_grant" {
		t.Errorf("wrong verifier: %q, want invalid_grant", got)
	}
	_, err = cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if got := retrieveCode(t, err); got != "invalid_grant" {
		t.Errorf("code reused after a failed attempt: %q, want invalid_grant", got)
	}

	code = codeFor(t, e, cfg, verifier)
	_, err = cfg.Exchange(ctx, code)
	if got := retrieveCode(t, err); got != "invalid_grant" {
		t.Errorf("missing verifier: %q, want invalid_grant", got)
	}

	code = codeFor(t, e, cfg, verifier)
	tok, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	user, boxes, ok := e.Provider.Validate(tok.AccessToken)
	if !ok || user != oauthtest.User || !slices.Equal(boxes, []string{oauthtest.User, oauthtest.SharedMailbox}) {
		t.Errorf("Validate = %q, %q, %v", user, boxes, ok)
	}
	if tok.RefreshToken == "" {
		t.Error("no refresh token")
	}
	if st := e.Provider.Stats(); st.CodesExchanged != 1 {
		t.Errorf("CodesExchanged = %d, want 1", st.CodesExchanged)
	}

	// A public client without PKCE is told so in the redirect.
	redirect, err := e.Provider.Authorize(cfg.AuthCodeURL("s"), oauthtest.User)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(redirect, "error=invalid_request") {
		t.Errorf("no PKCE: redirect %s", redirect)
	}
	// An unregistered redirect URI is refused outright.
	bad := *cfg
	bad.RedirectURL = "https://attacker.example/cb"
	if _, err := e.Provider.Authorize(bad.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier)), oauthtest.User); err == nil {
		t.Error("a non-loopback redirect URI was accepted")
	}
}

// enrollCode returns a grant obtained with the authorization code flow.
func enrollCode(t *testing.T, e *oauthtest.Env) *oauth2.Token {
	t.Helper()
	cfg := publicConfig(e, "http://127.0.0.1:4711/cb")
	v := oauth2.GenerateVerifier()
	tok, err := cfg.Exchange(t.Context(), codeFor(t, e, cfg, v), oauth2.VerifierOption(v))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// refresh redeems rt and returns the response's tokens (the refresh token
// as sent, "" when the response carried none) or its error code.
func refresh(t *testing.T, e *oauthtest.Env, rt string) (at, newRT, errCode string) {
	t.Helper()
	resp, err := http.PostForm(e.Provider.TokenURL(), url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {rt}, "client_id": {oauthtest.PublicClientID},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		Error        string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return body.AccessToken, body.RefreshToken, body.Error
}

func TestRefreshRotation(t *testing.T) {
	t.Run("never", func(t *testing.T) {
		e := oauthtest.Start(t, oauthtest.Options{Rotation: oauthtest.RotateNever})
		rt := enrollCode(t, e).RefreshToken
		for i := range 2 {
			at, newRT, code := refresh(t, e, rt)
			if code != "" || at == "" || newRT != "" {
				t.Fatalf("refresh %d: at %q rt %q error %q; want a token and no new refresh token", i, at, newRT, code)
			}
		}
		if n := e.Provider.RefreshCount(rt); n != 2 {
			t.Errorf("RefreshCount = %d, want 2", n)
		}
	})
	t.Run("strict", func(t *testing.T) {
		e := oauthtest.Start(t, oauthtest.Options{Rotation: oauthtest.RotateStrict})
		rt1 := enrollCode(t, e).RefreshToken
		_, rt2, code := refresh(t, e, rt1)
		if code != "" || rt2 == "" || rt2 == rt1 {
			t.Fatalf("first refresh: rt %q error %q", rt2, code)
		}
		if _, _, code := refresh(t, e, rt1); code != "invalid_grant" {
			t.Errorf("old refresh token again: %q, want invalid_grant", code)
		}
		if _, _, code := refresh(t, e, rt2); code != "" {
			t.Errorf("new refresh token: %q", code)
		}
		if a, b := e.Provider.RefreshCount(rt1), e.Provider.RefreshCount(rt2); a != 1 || b != 1 {
			t.Errorf("RefreshCount = %d, %d; want 1, 1", a, b)
		}
	})
	t.Run("grace until the successor is used", func(t *testing.T) {
		e := oauthtest.Start(t, oauthtest.Options{Rotation: oauthtest.RotateGrace})
		rt1 := enrollCode(t, e).RefreshToken
		_, rt2, _ := refresh(t, e, rt1)
		// The answer with rt2 was lost: rt1 still works, and gives rt3.
		_, rt3, code := refresh(t, e, rt1)
		if code != "" || rt3 == "" || rt3 == rt2 {
			t.Fatalf("old token within grace: rt %q error %q", rt3, code)
		}
		if _, _, code := refresh(t, e, rt3); code != "" {
			t.Fatalf("rt3: %q", code)
		}
		if e.Provider.RefreshTokenValid(rt1) {
			t.Error("rt1 still valid after its successor rt3 was used")
		}
		if _, _, code := refresh(t, e, rt1); code != "invalid_grant" {
			t.Errorf("rt1 after its successor was used: %q, want invalid_grant", code)
		}
		if n := e.Provider.RefreshCount(rt1); n != 2 {
			t.Errorf("RefreshCount(rt1) = %d, want 2", n)
		}
	})
	t.Run("grace period", func(t *testing.T) {
		clock := oauthtest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
		e := oauthtest.Start(t, oauthtest.Options{Rotation: oauthtest.RotateGrace, GracePeriod: time.Minute, Now: clock.Now})
		rt1 := enrollCode(t, e).RefreshToken
		refresh(t, e, rt1)
		clock.Advance(61 * time.Second)
		if _, _, code := refresh(t, e, rt1); code != "invalid_grant" {
			t.Errorf("rotated token after its grace period: %q, want invalid_grant", code)
		}
	})
}

// Revoke: refresh tokens get invalid_grant, access tokens stop
// validating; a later enrollment works again.
func TestRevoke(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{Rotation: oauthtest.RotateStrict})
	tok := enrollCode(t, e)
	if n := e.Provider.Revoke(oauthtest.User); n != 2 {
		t.Errorf("Revoke revoked %d tokens, want 2", n)
	}
	if _, _, ok := e.Provider.Validate(tok.AccessToken); ok {
		t.Error("revoked access token validates")
	}
	if _, _, code := refresh(t, e, tok.RefreshToken); code != "invalid_grant" {
		t.Errorf("revoked refresh token: %q, want invalid_grant", code)
	}
	if st := e.Provider.Stats(); st.RefreshFailures != 1 {
		t.Errorf("RefreshFailures = %d, want 1", st.RefreshFailures)
	}
	again := enrollCode(t, e)
	if _, _, ok := e.Provider.Validate(again.AccessToken); !ok {
		t.Error("a new enrollment after revocation does not validate")
	}
}

func TestAccessTokenLifetime(t *testing.T) {
	clock := oauthtest.NewClock(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	e := oauthtest.Start(t, oauthtest.Options{AccessTokenLifetime: 2 * time.Minute, Now: clock.Now})
	tok := enrollCode(t, e)
	if tok.ExpiresIn != 120 {
		t.Errorf("expires_in = %d, want 120", tok.ExpiresIn)
	}
	clock.Advance(119 * time.Second)
	if _, _, ok := e.Provider.Validate(tok.AccessToken); !ok {
		t.Error("token invalid before its expiry")
	}
	clock.Advance(time.Second)
	if _, _, ok := e.Provider.Validate(tok.AccessToken); ok {
		t.Error("token valid at its expiry")
	}
}

func TestClientCredentials(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	ctx := t.Context()
	cc := clientcredentials.Config{
		ClientID: oauthtest.AppClientID, ClientSecret: oauthtest.AppSecret,
		TokenURL: e.Provider.TokenURL(), Scopes: []string{oauthtest.AppScope},
	}
	tok, err := cc.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok.RefreshToken != "" {
		t.Error("client credentials gave a refresh token")
	}
	sub, boxes, ok := e.Provider.Validate(tok.AccessToken)
	if !ok || sub != oauthtest.AppClientID || !slices.Equal(boxes, []string{oauthtest.User, oauthtest.SharedMailbox}) {
		t.Errorf("Validate = %q, %q, %v", sub, boxes, ok)
	}

	wrong := cc
	wrong.ClientSecret = "guess"
	_, err = wrong.Token(ctx)
	if got := retrieveCode(t, err); got != "invalid_client" {
		t.Errorf("wrong secret: %q, want invalid_client", got)
	}
	scope := cc
	scope.Scopes = []string{oauthtest.IMAPScope}
	_, err = scope.Token(ctx)
	if got := retrieveCode(t, err); got != "invalid_scope" {
		t.Errorf("delegated scope: %q, want invalid_scope", got)
	}
	public := clientcredentials.Config{ClientID: oauthtest.PublicClientID, TokenURL: e.Provider.TokenURL(), Scopes: []string{oauthtest.AppScope}}
	_, err = public.Token(ctx)
	if got := retrieveCode(t, err); got != "unauthorized_client" {
		t.Errorf("public client: %q, want unauthorized_client", got)
	}

	// An app without the IMAP role gets a token that opens nothing.
	e.Provider.AddClient(oauthtest.Client{ID: "no-role", Secret: "s", Mailboxes: []string{oauthtest.User}})
	norole := clientcredentials.Config{ClientID: "no-role", ClientSecret: "s", TokenURL: e.Provider.TokenURL(), Scopes: []string{oauthtest.AppScope}}
	tok, err = norole.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, boxes, ok := e.Provider.Validate(tok.AccessToken); !ok || len(boxes) != 0 {
		t.Errorf("app without role: mailboxes %q, ok %v; want none", boxes, ok)
	}
	if st := e.Provider.Stats(); st.ClientCredentials != 2 {
		t.Errorf("ClientCredentials = %d, want 2", st.ClientCredentials)
	}
}

// The device endpoint over HTTP, as a script drives it: the code is
// approved with POST /fake/approve, a poll sooner than the interval gets
// slow_down.
func TestDeviceHTTPApprove(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{DeviceInterval: 1})
	ctx := t.Context()
	cfg := publicConfig(e, "")
	da, err := cfg.DeviceAuth(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if da.Interval != 1 || !strings.HasPrefix(da.VerificationURI, e.Provider.URL()) {
		t.Errorf("device answer %+v", da)
	}
	poll := func() string {
		resp, err := http.PostForm(e.Provider.TokenURL(), url.Values{
			"grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {da.DeviceCode},
			"client_id": {oauthtest.PublicClientID},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error       string `json:"error"`
			AccessToken string `json:"access_token"`
		}
		json.NewDecoder(resp.Body).Decode(&body)
		if body.AccessToken != "" {
			return "ok"
		}
		return body.Error
	}
	if got := poll(); got != "authorization_pending" {
		t.Errorf("first poll: %q", got)
	}
	if got := poll(); got != "slow_down" {
		t.Errorf("immediate second poll: %q, want slow_down", got)
	}
	resp, err := http.Get(e.Provider.URL() + oauthtest.PathPending)
	if err != nil {
		t.Fatal(err)
	}
	pending, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(pending) != da.UserCode+"\n" {
		t.Errorf("pending codes %q, want %q", pending, da.UserCode)
	}
	resp, err = http.PostForm(e.Provider.URL()+oauthtest.PathApprove, url.Values{"user_code": {string(bytes.TrimSpace(pending))}, "user": {oauthtest.OtherUser}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("approve: %s %s", resp.Status, body)
	}
	// The interval is now 1+5 seconds: only DeviceAccessToken, which
	// keeps it, may poll.
	da.Interval = 6
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	tok, err := cfg.DeviceAccessToken(wctx, da)
	if err != nil {
		t.Fatal(err)
	}
	if user, _, ok := e.Provider.Validate(tok.AccessToken); !ok || user != oauthtest.OtherUser {
		t.Errorf("Validate = %q, %v; want %s", user, ok, oauthtest.OtherUser)
	}
	if got := e.Provider.DevicePolls(da.UserCode); !slices.Equal(got, []string{"authorization_pending", "slow_down", "ok"}) {
		t.Errorf("polls answered %q", got)
	}
}

func TestFailTokenRequests(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	rt := enrollCode(t, e).RefreshToken
	e.Provider.FailTokenRequests(http.StatusServiceUnavailable)
	if _, _, code := refresh(t, e, rt); code != "temporarily_unavailable" {
		t.Errorf("injected 503: %q", code)
	}
	if _, _, code := refresh(t, e, rt); code != "" {
		t.Errorf("after the injected failure: %q", code)
	}
}

// TestOnRefresh: the hook sees every successful refresh twice, with the
// token redeemed and the one issued: before the answer is written, when
// the rotation is already done (the old token is rotated, and in strict
// mode dead), and after the client could read it. A failed refresh is not
// reported.
func TestOnRefresh(t *testing.T) {
	type call struct {
		old, new string
		answered bool
		oldValid bool
	}
	var (
		mu    sync.Mutex
		calls []call
		p     *oauthtest.Provider
		after = make(chan struct{}, 2)
	)
	e := oauthtest.Start(t, oauthtest.Options{Rotation: oauthtest.RotateStrict, OnRefresh: func(old, new string, answered bool) {
		mu.Lock()
		prov := p
		mu.Unlock()
		valid := prov.RefreshTokenValid(old)
		mu.Lock()
		calls = append(calls, call{old, new, answered, valid})
		mu.Unlock()
		if answered {
			after <- struct{}{}
		}
	}})
	mu.Lock()
	p = e.Provider
	mu.Unlock()
	rt1 := enrollCode(t, e).RefreshToken
	_, rt2, code := refresh(t, e, rt1)
	if code != "" || rt2 == "" {
		t.Fatalf("refresh: rt %q error %q", rt2, code)
	}
	// The client may read the answer before the second call is made.
	select {
	case <-after:
	case <-time.After(10 * time.Second):
		t.Fatal("no call after the answer")
	}
	if _, _, code := refresh(t, e, rt1); code != "invalid_grant" {
		t.Fatalf("redeeming a rotated token again: error %q, want invalid_grant", code)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []call{{rt1, rt2, false, false}, {rt1, rt2, true, false}}
	if !slices.Equal(calls, want) {
		t.Errorf("hook calls %+v, want %+v", calls, want)
	}
}
