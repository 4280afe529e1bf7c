package oauth_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/internal/oauthtest"
)

// Device flow end to end: the first poll is pending, the second is told
// to slow down (and the code is approved meanwhile), the third, which
// must come at least 1+5 seconds later or the fake would say slow_down
// again, gets the tokens.
func TestDeviceFlowPendingSlowDownApproved(t *testing.T) {
	var p *oauthtest.Provider
	hookErr := make(chan error, 1)
	e := oauthtest.Start(t, oauthtest.Options{
		DeviceInterval: 1,
		OnDevicePoll: func(userCode string, poll int) {
			if poll == 2 {
				err := p.SlowDown(userCode)
				if err == nil {
					err = p.Approve(userCode, oauthtest.User)
				}
				hookErr <- err
			}
		},
	})
	p = e.Provider
	c := newClient(t, genericConfig(e, oauth.FlowDevice), nil)

	var out strings.Builder
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	g, err := c.DeviceFlow(ctx, &out)
	if err != nil {
		t.Fatalf("DeviceFlow: %v (printed %q)", err, out.String())
	}
	if err := <-hookErr; err != nil {
		t.Fatal(err)
	}
	printed := out.String()
	if !strings.Contains(printed, e.Provider.URL()+oauthtest.PathDevice) {
		t.Errorf("instructions %q lack the verification URI", printed)
	}
	var userCode string
	for _, f := range strings.Fields(printed) {
		if len(f) == 9 && f[4] == '-' {
			userCode = f
		}
	}
	if userCode == "" {
		t.Fatalf("instructions %q lack the user code", printed)
	}
	if got := e.Provider.DevicePolls(userCode); !slices.Equal(got, []string{"authorization_pending", "slow_down", "ok"}) {
		t.Errorf("polls answered %q, want pending, slow_down, ok", got)
	}
	if sub, _, ok := e.Provider.Validate(g.AccessToken); !ok || sub != oauthtest.User {
		t.Errorf("the device grant's token: Validate = %q, %v", sub, ok)
	}
	if g.RefreshToken == "" || g.Expiry.IsZero() || g.TokenType != "Bearer" {
		t.Errorf("grant %+v lacks a refresh token, an expiry or the type", g)
	}
	if g.Scope != oauthtest.IMAPScope+" offline_access" {
		t.Errorf("scope %q", g.Scope)
	}
}

func TestDeviceFlowDeniedAndExpired(t *testing.T) {
	clock := oauthtest.NewClock(t0)
	var p *oauthtest.Provider
	e := oauthtest.Start(t, oauthtest.Options{
		Now: clock.Now,
		OnDevicePoll: func(userCode string, poll int) {
			if poll == 1 {
				if p.Deny(userCode) != nil {
					t.Errorf("Deny(%s) failed", userCode)
				}
			}
		},
	})
	p = e.Provider
	c := newClient(t, genericConfig(e, oauth.FlowDevice), clock)
	ctx := t.Context()

	d, err := c.StartDevice(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Wait(ctx)
	wantIs(t, err, oauth.ErrAccessDenied)
	if err != nil && !strings.Contains(err.Error(), "access_denied") {
		t.Errorf("error %q does not name access_denied", err)
	}

	e2 := oauthtest.Start(t, oauthtest.Options{
		Now:          clock.Now,
		OnDevicePoll: func(string, int) { clock.Advance(16 * time.Minute) },
	})
	c2 := newClient(t, genericConfig(e2, oauth.FlowDevice), clock)
	d, err = c2.StartDevice(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Wait(ctx)
	wantIs(t, err, oauth.ErrExpired)
}

// The pasted-redirect flow as a user sees it: the URL is printed, the
// user signs in elsewhere and pastes the address the browser ended at.
func TestAuthCodePaste(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	c := newClient(t, genericConfig(e, oauth.FlowAuthCode), nil)

	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	type result struct {
		g   oauth.Grant
		err error
	}
	done := make(chan result, 1)
	go func() {
		g, err := c.AuthCodePaste(t.Context(), inR, outW, oauthtest.User)
		outW.Close()
		done <- result{g, err}
	}()
	var authURL string
	sc := bufio.NewScanner(outR)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), e.Provider.AuthURL()) {
			authURL = sc.Text()
			break
		}
	}
	if authURL == "" {
		t.Fatal("no authorization URL printed")
	}
	go io.Copy(io.Discard, outR)
	q, _ := url.Parse(authURL)
	for k, want := range map[string]string{
		"code_challenge_method": "S256", "response_type": "code", "login_hint": oauthtest.User,
		"client_id": oauthtest.PublicClientID, "redirect_uri": "http://127.0.0.1",
	} {
		if got := q.Query().Get(k); got != want {
			t.Errorf("authorization URL: %s=%q, want %q", k, got, want)
		}
	}
	if len(q.Query().Get("code_challenge")) != 43 || len(q.Query().Get("state")) < 20 {
		t.Errorf("authorization URL lacks a S256 challenge or a state: %s", authURL)
	}
	redirect, err := e.Provider.Authorize(authURL, oauthtest.User)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(inW, "  "+redirect+"\n")
	res := <-done
	if res.err != nil {
		t.Fatalf("AuthCodePaste: %v", res.err)
	}
	if sub, _, ok := e.Provider.Validate(res.g.AccessToken); !ok || sub != oauthtest.User {
		t.Errorf("Validate = %q, %v", sub, ok)
	}
}

// A redirect of another request (wrong state) is refused before anything
// is sent to the provider; a declined sign-in is ErrAccessDenied; the
// query alone may be pasted.
func TestAuthCodeRedirectChecks(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	c := newClient(t, genericConfig(e, oauth.FlowAuthCode), nil)
	ctx := t.Context()

	mine, err := c.NewAuthRequest("", "")
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.NewAuthRequest("", "")
	if err != nil {
		t.Fatal(err)
	}
	otherRedirect, err := e.Provider.Authorize(other.URL, oauthtest.User)
	if err != nil {
		t.Fatal(err)
	}
	_, err = mine.Finish(ctx, otherRedirect)
	wantIs(t, err, oauth.ErrStateMismatch)
	if st := e.Provider.Stats(); st.TokenRequests != 0 {
		t.Errorf("%d token requests for a mismatched state, want 0", st.TokenRequests)
	}

	declined, err := e.Provider.AuthorizeDeny(mine.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = mine.Finish(ctx, declined)
	wantIs(t, err, oauth.ErrAccessDenied)

	redirect, err := e.Provider.Authorize(mine.URL, oauthtest.User)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(redirect)
	g, err := mine.Finish(ctx, u.RawQuery)
	if err != nil {
		t.Fatalf("Finish with the query only: %v", err)
	}
	if _, _, ok := e.Provider.Validate(g.AccessToken); !ok {
		t.Error("token does not validate")
	}
	// The code is single-use.
	_, err = mine.Finish(ctx, redirect)
	wantIs(t, err, oauth.ErrReconsent)
}

// The loopback flow with a confidential client (Google's "Desktop app"):
// the test is the browser, following the provider's redirect to the
// listener.
func TestAuthCodeLoopbackConfidential(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	cfg := genericConfig(e, oauth.FlowAuthCode)
	cfg.ClientID = oauthtest.ConfidentialClientID
	cfg.ClientSecretEnv = "TEST_OAUTH_DESKTOP_SECRET"
	t.Setenv(cfg.ClientSecretEnv, oauthtest.ConfidentialSecret)
	cfg.RedirectURL = "http://localhost/callback"
	c := newClient(t, cfg, nil)

	var page string
	browser := func(authURL string) error {
		to, err := e.Provider.Authorize(authURL, oauthtest.User)
		if err != nil {
			return err
		}
		if !strings.HasPrefix(to, "http://localhost:") || !strings.Contains(to, "/callback?") {
			t.Errorf("redirect %s is not to the loopback listener", to)
		}
		resp, err := http.Get(to)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page = string(b)
		return nil
	}
	var out strings.Builder
	g, err := c.AuthCodeLoopback(t.Context(), &out, browser, "")
	if err != nil {
		t.Fatalf("AuthCodeLoopback: %v (printed %q)", err, out.String())
	}
	if !strings.Contains(page, "signed in") {
		t.Errorf("browser page %q", page)
	}
	if sub, _, ok := e.Provider.Validate(g.AccessToken); !ok || sub != oauthtest.User {
		t.Errorf("Validate = %q, %v", sub, ok)
	}
	if !strings.Contains(out.String(), e.Provider.AuthURL()) {
		t.Errorf("URL not printed: %q", out.String())
	}
}

func TestClientCredentials(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	c := newClient(t, appConfig(t, e, oauthtest.AppSecret), nil)
	ctx := t.Context()

	k := oauth.NewAppKeeper(c)
	tok1, err := k.Fresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := k.Fresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok1 != tok2 {
		t.Error("a fresh app token was not reused")
	}
	sub, boxes, ok := e.Provider.Validate(tok1)
	if !ok || sub != oauthtest.AppClientID || !slices.Contains(boxes, oauthtest.SharedMailbox) {
		t.Errorf("Validate = %q, %q, %v", sub, boxes, ok)
	}
	tok3, err := k.ForceRefresh(ctx, tok1)
	if err != nil {
		t.Fatal(err)
	}
	if tok3 == tok1 {
		t.Error("ForceRefresh returned the rejected token")
	}
	if n := e.Provider.Stats().ClientCredentials; n != 2 {
		t.Errorf("%d client-credentials tokens issued, want 2", n)
	}

	bad := newClient(t, appConfig(t, e, "wrong secret"), nil)
	_, err = oauth.NewAppKeeper(bad).Fresh(ctx)
	wantIs(t, err, oauth.ErrInvalidClient)
	if oauth.IsTemporary(err) || strings.Contains(err.Error(), "wrong secret") {
		t.Errorf("error %q: temporary, or shows the secret", err)
	}
}

// A confidential client in the device flow: the device authorization
// request carries only the client ID, the polls the secret too.
func TestDeviceFlowConfidentialClient(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{AutoApprove: oauthtest.OtherUser})
	cfg := genericConfig(e, oauth.FlowDevice)
	cfg.ClientID = oauthtest.ConfidentialClientID
	cfg.ClientSecretEnv = "TEST_OAUTH_DESKTOP_SECRET"
	cfg.AuthStyle = "params"
	t.Setenv(cfg.ClientSecretEnv, oauthtest.ConfidentialSecret)
	c := newClient(t, cfg, nil)
	g, err := c.DeviceFlow(t.Context(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if sub, _, ok := e.Provider.Validate(g.AccessToken); !ok || sub != oauthtest.OtherUser {
		t.Errorf("Validate = %q, %v", sub, ok)
	}
}
