package oauth_test

import (
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/internal/oauthtest"
)

// keeperEnv is an Env on a fake clock with a one-hour token lifetime and
// an enrolled grant in a memStore.
func keeperEnv(t *testing.T, rot oauthtest.Rotation) (*oauthtest.Env, *oauthtest.Clock, *oauth.Client, *memStore) {
	t.Helper()
	clock := oauthtest.NewClock(t0)
	e := oauthtest.Start(t, oauthtest.Options{Now: clock.Now, Rotation: rot, AccessTokenLifetime: time.Hour, RequireOfflineAccess: true})
	c := newClient(t, genericConfig(e, oauth.FlowAuthCode), clock)
	return e, clock, c, newStore(enroll(t, e, c))
}

// Before the refresh margin the stored token is used as it is; within
// it, the grant is refreshed, the rotated refresh token is saved, and
// only then is the new access token handed out.
func TestKeeperRefreshesBeforeExpiryAndSavesRotation(t *testing.T) {
	e, clock, c, store := keeperEnv(t, oauthtest.RotateStrict)
	first := store.current()
	var savedBeforeUse []string
	var returned string
	store.onSave = func(g oauth.Grant) {
		// Runs inside Update, before Fresh can return.
		if returned != "" {
			t.Error("a grant was saved after Fresh returned its token")
		}
		if !e.Provider.RefreshTokenValid(g.RefreshToken) {
			t.Error("the saved refresh token is not the provider's current one")
		}
		savedBeforeUse = append(savedBeforeUse, g.AccessToken)
	}
	k := oauth.NewKeeper(c, store)
	ctx := t.Context()

	clock.Advance(54 * time.Minute) // 6 minutes left: beyond the 5-minute margin
	tok, err := k.Fresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok != first.AccessToken || e.Provider.Stats().Refreshes != 0 {
		t.Fatalf("refreshed with 6 minutes left (refreshes %d)", e.Provider.Stats().Refreshes)
	}

	clock.Advance(2 * time.Minute) // 4 minutes left
	returned, err = k.Fresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	saved := store.current()
	switch {
	case returned == first.AccessToken:
		t.Fatal("the old token was returned within the refresh margin")
	case returned != saved.AccessToken || len(savedBeforeUse) != 1 || savedBeforeUse[0] != returned:
		t.Errorf("returned %q; saved before use %q", returned, savedBeforeUse)
	case saved.RefreshToken == first.RefreshToken || saved.RefreshToken == "":
		t.Errorf("the rotated refresh token was not saved: %q", saved.RefreshToken)
	case e.Provider.RefreshTokenValid(first.RefreshToken):
		t.Error("strict rotation left the old refresh token valid")
	case !saved.Expiry.Equal(clock.Now().Add(time.Hour)):
		t.Errorf("saved expiry %v, want %v", saved.Expiry, clock.Now().Add(time.Hour))
	case saved.Scope != first.Scope:
		t.Errorf("scope %q, want %q", saved.Scope, first.Scope)
	}
	if n := e.Provider.RefreshCount(first.RefreshToken); n != 1 {
		t.Errorf("the old refresh token was redeemed %d times, want 1", n)
	}
	// The new token is served from memory while fresh.
	if tok, err := k.Fresh(ctx); err != nil || tok != returned {
		t.Errorf("Fresh again = %q, %v; want %q", tok, err, returned)
	}
	if n := e.Provider.Stats().TokenRequests; n != 2 { // the enrollment and one refresh
		t.Errorf("%d token requests, want 2", n)
	}
}

// Store-before-use: when the save fails, the refreshed token is not
// handed out. The provider's answer is kept, so the next call saves it
// without redeeming the (strictly rotated, now dead) refresh token again.
func TestKeeperSaveFailureWithholdsToken(t *testing.T) {
	e, clock, c, store := keeperEnv(t, oauthtest.RotateStrict)
	first := store.current()
	k := oauth.NewKeeper(c, store)
	ctx := t.Context()

	clock.Advance(59 * time.Minute)
	store.failSaves = 1
	tok, err := k.Fresh(ctx)
	if err == nil || tok != "" {
		t.Fatalf("Fresh with a failing save = %q, %v; want no token and an error", tok, err)
	}
	wantIs(t, err, errSaveFailed)
	issued := e.Provider.Stats().AccessTokensIssued
	if issued != 2 {
		t.Fatalf("%d access tokens issued, want 2 (the enrollment's and the refresh's)", issued)
	}

	tok, err = k.Fresh(ctx)
	if err != nil {
		t.Fatal(err)
	}
	saved := store.current()
	if tok != saved.AccessToken || saved.RefreshToken == first.RefreshToken || !e.Provider.RefreshTokenValid(saved.RefreshToken) {
		t.Errorf("after the retry: token %q, saved %+v", tok, saved)
	}
	if st := e.Provider.Stats(); st.Refreshes != 1 || st.AccessTokensIssued != issued {
		t.Errorf("the retry refreshed again (refreshes %d, tokens %d)", st.Refreshes, st.AccessTokensIssued)
	}
}

// A crash between the token endpoint's answer and the state write (the
// new keeper knows nothing of the answer): with grace rotation the stored
// refresh token still works; with strict rotation the grant is lost.
func TestKeeperLostSaveByRotation(t *testing.T) {
	for _, tc := range []struct {
		rot       oauthtest.Rotation
		reconsent bool
	}{
		{oauthtest.RotateGrace, false},
		{oauthtest.RotateStrict, true},
		{oauthtest.RotateNever, false},
	} {
		t.Run(tc.rot.String(), func(t *testing.T) {
			e, clock, c, store := keeperEnv(t, tc.rot)
			clock.Advance(59 * time.Minute)
			store.failSaves = 1
			if _, err := oauth.NewKeeper(c, store).Fresh(t.Context()); err == nil {
				t.Fatal("no error from a failed save")
			}
			// The process died: a new keeper, the old grant in the store.
			tok, err := oauth.NewKeeper(c, store).Fresh(t.Context())
			if tc.reconsent {
				wantIs(t, err, oauth.ErrReconsent)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if sub, _, ok := e.Provider.Validate(tok); !ok || sub != oauthtest.User {
				t.Errorf("token after the lost save: Validate = %q, %v", sub, ok)
			}
		})
	}
}

// A revoked grant is ErrReconsent, which names invalid_grant; the keeper
// does not ask the provider again for the same refresh token.
func TestKeeperRevokedIsReconsent(t *testing.T) {
	e, clock, c, store := keeperEnv(t, oauthtest.RotateGrace)
	k := oauth.NewKeeper(c, store)
	ctx := t.Context()
	e.Provider.Revoke(oauthtest.User)
	clock.Advance(time.Hour)

	_, err := k.Fresh(ctx)
	wantIs(t, err, oauth.ErrReconsent)
	if err == nil || !strings.Contains(err.Error(), "invalid_grant") || oauth.IsTemporary(err) {
		t.Errorf("error %v: want invalid_grant, not temporary", err)
	}
	requests := e.Provider.Stats().TokenRequests
	_, err = k.Fresh(ctx)
	wantIs(t, err, oauth.ErrReconsent)
	_, err = k.ForceRefresh(ctx, store.current().AccessToken)
	wantIs(t, err, oauth.ErrReconsent)
	if n := e.Provider.Stats().TokenRequests; n != requests {
		t.Errorf("%d more token requests for a refresh token already refused", n-requests)
	}

	// A new enrollment (a new refresh token in the store) works again.
	g := enroll(t, e, c)
	store.Update(ctx, func(oauth.Grant) (oauth.Grant, error) { return g, nil })
	if tok, err := k.Fresh(ctx); err != nil || tok != g.AccessToken {
		t.Errorf("after re-enrollment: %q, %v", tok, err)
	}
}

// A store with no grant asks for an enrollment.
func TestKeeperNoGrant(t *testing.T) {
	e := oauthtest.Start(t, oauthtest.Options{})
	c := newClient(t, genericConfig(e, oauth.FlowDevice), nil)
	_, err := oauth.NewKeeper(c, newStore(oauth.Grant{})).Fresh(t.Context())
	wantIs(t, err, oauth.ErrReconsent)
	if n := e.Provider.Stats().TokenRequests; n != 0 {
		t.Errorf("%d token requests without a refresh token", n)
	}
}

// A provider outage: while the token has not expired, it is still
// returned; once expired, the error is temporary (not a reconsent); when
// the provider is back, the refresh works.
func TestKeeperTemporaryFailure(t *testing.T) {
	e, clock, c, store := keeperEnv(t, oauthtest.RotateGrace)
	first := store.current()
	k := oauth.NewKeeper(c, store)
	ctx := t.Context()

	clock.Advance(58 * time.Minute)
	e.Provider.FailTokenRequests(http.StatusServiceUnavailable)
	tok, err := k.Fresh(ctx)
	if err != nil || tok != first.AccessToken {
		t.Errorf("outage within the margin: %q, %v; want the current token", tok, err)
	}

	clock.Advance(2 * time.Minute)
	e.Provider.FailTokenRequests(http.StatusBadGateway)
	_, err = k.Fresh(ctx)
	if !oauth.IsTemporary(err) {
		t.Errorf("outage after expiry: %v; want a temporary error", err)
	}
	wantIs(t, err, oauth.ErrTemporary)
	if strings.Contains(err.Error(), first.RefreshToken) {
		t.Error("the error shows the refresh token")
	}

	tok, err = k.Fresh(ctx)
	if err != nil || tok == first.AccessToken {
		t.Errorf("after the outage: %q, %v", tok, err)
	}
}

// A provider that cannot be reached is a temporary failure.
func TestKeeperUnreachableProvider(t *testing.T) {
	e, clock, c, store := keeperEnv(t, oauthtest.RotateGrace)
	e.Provider.Close()
	clock.Advance(time.Hour)
	_, err := oauth.NewKeeper(c, store).Fresh(t.Context())
	if !oauth.IsTemporary(err) {
		t.Errorf("unreachable provider: %v; want a temporary error", err)
	}
}

// Two instances (two keepers, one store whose Update is the
// cross-instance lock) refresh an expiring grant at the same time: the
// grant is read again inside the lock, so one refreshes and the other
// takes its result.
func TestKeeperInstancesRefreshOnce(t *testing.T) {
	e, clock, c, store := keeperEnv(t, oauthtest.RotateStrict)
	clock.Advance(time.Hour)
	// Both instances have read the expired grant before either takes the
	// lock: without the check inside the lock, both would refresh.
	var loads atomic.Int32
	bothLoaded := make(chan struct{})
	store.onLoad = func() {
		if loads.Add(1) == 2 {
			close(bothLoaded)
		}
	}
	store.beforeUpdate = func() { <-bothLoaded }
	keepers := []*oauth.Keeper{oauth.NewKeeper(c, store), oauth.NewKeeper(c, store)}
	toks := make([]string, 2*len(keepers))
	errs := make([]error, len(toks))
	var wg sync.WaitGroup
	for i := range toks {
		wg.Go(func() { toks[i], errs[i] = keepers[i%2].Fresh(t.Context()) })
	}
	wg.Wait()
	for i := range toks {
		if errs[i] != nil || toks[i] != toks[0] {
			t.Errorf("caller %d: %q, %v; want %q", i, toks[i], errs[i], toks[0])
		}
	}
	if n := e.Provider.Stats().Refreshes; n != 1 {
		t.Errorf("%d refreshes, want 1", n)
	}
	rts := map[string]bool{}
	for _, g := range store.savedGrants() {
		rts[g.RefreshToken] = true
	}
	if len(rts) != 1 {
		t.Errorf("%d refresh tokens saved, want 1", len(rts))
	}
}

// ForceRefresh after the upstream refused a token the keeper thought
// fresh: one refresh; when another instance already replaced the token,
// none.
func TestKeeperForceRefresh(t *testing.T) {
	e, _, c, store := keeperEnv(t, oauthtest.RotateGrace)
	first := store.current()
	k := oauth.NewKeeper(c, store)
	ctx := t.Context()
	tok, err := k.ForceRefresh(ctx, first.AccessToken)
	if err != nil || tok == first.AccessToken || tok != store.current().AccessToken {
		t.Fatalf("ForceRefresh = %q, %v", tok, err)
	}
	// Another instance still holds the first token and is refused too:
	// the store already has a newer one, which it takes.
	other := oauth.NewKeeper(c, store)
	tok2, err := other.ForceRefresh(ctx, first.AccessToken)
	if err != nil || tok2 != tok {
		t.Errorf("second instance: %q, %v; want %q", tok2, err, tok)
	}
	if n := e.Provider.Stats().Refreshes; n != 1 {
		t.Errorf("%d refreshes, want 1", n)
	}
}
