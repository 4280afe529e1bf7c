package oauth_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/internal/oauthtest"
)

// t0 is the tests' start time on fake clocks.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// genericConfig is a Config of the Env's public client.
func genericConfig(e *oauthtest.Env, flow oauth.Flow) oauth.Config {
	return oauth.Config{
		Provider:         oauth.ProviderGeneric,
		ClientID:         oauthtest.PublicClientID,
		Flow:             string(flow),
		AuthURL:          e.Provider.AuthURL(),
		TokenURL:         e.Provider.TokenURL(),
		DeviceAuthURL:    e.Provider.DeviceAuthURL(),
		Scopes:           []string{oauthtest.IMAPScope, oauth.ScopeOfflineAccess},
		UpstreamAddress:  e.IMAP.Addr(),
		UpstreamSecurity: "none",
	}
}

// appConfig is a Config of the Env's app, its secret in a file.
func appConfig(t *testing.T, e *oauthtest.Env, secret string) oauth.Config {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := genericConfig(e, oauth.FlowClientCredentials)
	cfg.ClientID = oauthtest.AppClientID
	cfg.ClientSecretFile = path
	cfg.Scopes = []string{oauthtest.AppScope}
	return cfg
}

func newClient(t *testing.T, cfg oauth.Config, clock *oauthtest.Clock) *oauth.Client {
	t.Helper()
	c, err := oauth.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if clock != nil {
		c.SetClock(clock.Now)
	}
	return c
}

// enroll obtains a grant for oauthtest.User with the authorization code
// flow (no polling: fast).
func enroll(t *testing.T, e *oauthtest.Env, c *oauth.Client) oauth.Grant {
	t.Helper()
	r, err := c.NewAuthRequest("", oauthtest.User)
	if err != nil {
		t.Fatal(err)
	}
	redirect, err := e.Provider.Authorize(r.URL, oauthtest.User)
	if err != nil {
		t.Fatal(err)
	}
	g, err := r.Finish(t.Context(), redirect)
	if err != nil {
		t.Fatal(err)
	}
	if g.AccessToken == "" || g.RefreshToken == "" {
		t.Fatalf("enrollment gave %+v", g)
	}
	return g
}

var errSaveFailed = errors.New("test store: save failed")

// memStore is a GrantStore in memory. Its mutex stands for the
// cross-instance lock: Update holds it while fn runs and the result is
// saved.
type memStore struct {
	mu        sync.Mutex
	g         oauth.Grant
	saves     []oauth.Grant // every grant saved, in order
	failSaves int           // saves to fail from now on
	onSave    func(oauth.Grant)
	// beforeUpdate, when set, runs at the start of Update, outside the
	// lock; onLoad after each Load.
	beforeUpdate func()
	onLoad       func()
}

func newStore(g oauth.Grant) *memStore { return &memStore{g: g} }

func (s *memStore) Load(context.Context) (oauth.Grant, error) {
	s.mu.Lock()
	g := s.g
	s.mu.Unlock()
	if s.onLoad != nil {
		s.onLoad()
	}
	return g, nil
}

func (s *memStore) Update(ctx context.Context, fn func(oauth.Grant) (oauth.Grant, error)) (oauth.Grant, error) {
	if s.beforeUpdate != nil {
		s.beforeUpdate()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ng, err := fn(s.g)
	if err != nil {
		return oauth.Grant{}, err
	}
	if s.failSaves > 0 {
		s.failSaves--
		return oauth.Grant{}, errSaveFailed
	}
	s.g = ng
	s.saves = append(s.saves, ng)
	if s.onSave != nil {
		s.onSave(ng)
	}
	return ng, nil
}

func (s *memStore) current() oauth.Grant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.g
}

func (s *memStore) savedGrants() []oauth.Grant {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]oauth.Grant(nil), s.saves...)
}

func wantIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("error %v; want one matching %q", err, target)
	}
}
