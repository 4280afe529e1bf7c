package oauth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// GrantStore keeps one account's grant.
type GrantStore interface {
	// Load returns the stored grant.
	Load(ctx context.Context) (Grant, error)
	// Update runs fn on the stored grant under a lock that holds across
	// every popbridge instance, with the grant read again inside the
	// lock, and saves what fn returns before returning it. When fn
	// fails, nothing is saved and its error is returned.
	Update(ctx context.Context, fn func(old Grant) (Grant, error)) (Grant, error)
}

// TokenSource gives access tokens for upstream logins.
type TokenSource interface {
	// Fresh returns an access token that is valid for a while yet.
	Fresh(ctx context.Context) (string, error)
	// ForceRefresh returns another token than rejected, which the
	// upstream refused: the caller tries one forced refresh and one more
	// login, not more.
	ForceRefresh(ctx context.Context, rejected string) (string, error)
}

// KeeperOption configures a Keeper or an AppKeeper.
type KeeperOption func(*keeperConfig)

type keeperConfig struct {
	now  func() time.Time
	skew time.Duration
}

// WithClock sets the keeper's clock (default: the Client's).
func WithClock(now func() time.Time) KeeperOption {
	return func(c *keeperConfig) { c.now = now }
}

// WithRefreshBefore sets how long before expiry a token is refreshed
// (default: the Client's refresh_before).
func WithRefreshBefore(d time.Duration) KeeperOption {
	return func(c *keeperConfig) { c.skew = d }
}

func newKeeperConfig(c *Client, opts []KeeperOption) keeperConfig {
	kc := keeperConfig{now: c.now, skew: c.r.refreshBefore}
	for _, o := range opts {
		o(&kc)
	}
	return kc
}

// fresh reports whether g's access token lives longer than the skew; a
// token without expiry counts as fresh until the upstream refuses it.
func (kc keeperConfig) fresh(g Grant) bool {
	return g.AccessToken != "" && (g.Expiry.IsZero() || kc.now().Add(kc.skew).Before(g.Expiry))
}

// usable reports whether g's access token has not expired yet.
func (kc keeperConfig) usable(g Grant) bool {
	return g.AccessToken != "" && (g.Expiry.IsZero() || kc.now().Before(g.Expiry))
}

// sem is a mutex a waiting caller can give up on.
type sem chan struct{}

func (s sem) lock(ctx context.Context) error {
	select {
	case s <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s sem) unlock() { <-s }

// Keeper keeps one account's delegated grant fresh. It refreshes the
// access token when less than the refresh-before margin is left, inside
// GrantStore.Update: the refresh runs under the store's cross-instance
// lock on the grant read inside it, so only one instance redeems a
// refresh token, and the new grant (with a rotated refresh token) is saved
// before its access token is handed out. A grant the provider no longer
// honours is ErrReconsent. Within a process, one refresh at a time.
//
// When the save fails after a refresh, the new grant is kept in memory
// and saved by the next call instead of redeeming the refresh token again
// (which a strictly rotating provider would refuse).
type Keeper struct {
	c     *Client
	store GrantStore
	kc    keeperConfig
	sem   sem

	mu          sync.Mutex
	cur         Grant  // last grant loaded or saved
	pending     *Grant // refreshed but not saved
	pendingFrom string // the refresh token pending replaced
	deadRT      string // a refresh token the provider refused
	deadErr     error
}

var _ TokenSource = (*Keeper)(nil)

// NewKeeper returns a keeper of the grant in store.
func NewKeeper(c *Client, store GrantStore, opts ...KeeperOption) *Keeper {
	return &Keeper{c: c, store: store, kc: newKeeperConfig(c, opts), sem: make(sem, 1)}
}

// Fresh returns a valid access token, refreshing the grant first when
// its token is about to expire. When a refresh fails for a passing reason
// (IsTemporary) while the current token has not expired yet, that token is
// returned.
func (k *Keeper) Fresh(ctx context.Context) (string, error) {
	if err := k.sem.lock(ctx); err != nil {
		return "", err
	}
	defer k.sem.unlock()
	k.mu.Lock()
	cur := k.cur
	k.mu.Unlock()
	if k.kc.fresh(cur) {
		return cur.AccessToken, nil
	}
	g, err := k.store.Load(ctx)
	if err != nil {
		return "", fmt.Errorf("oauth: load grant: %w", err)
	}
	if k.kc.fresh(g) {
		k.setCurrent(g)
		return g.AccessToken, nil
	}
	ng, err := k.update(ctx, func(old Grant) bool { return !k.kc.fresh(old) })
	if err != nil {
		if IsTemporary(err) && k.kc.usable(g) {
			return g.AccessToken, nil
		}
		return "", err
	}
	return ng.AccessToken, nil
}

// ForceRefresh refreshes the grant unless the stored access token is
// already another, fresh one than rejected (another instance refreshed).
func (k *Keeper) ForceRefresh(ctx context.Context, rejected string) (string, error) {
	if err := k.sem.lock(ctx); err != nil {
		return "", err
	}
	defer k.sem.unlock()
	k.mu.Lock()
	if k.cur.AccessToken == rejected {
		k.cur = Grant{}
	}
	k.mu.Unlock()
	g, err := k.update(ctx, func(old Grant) bool { return old.AccessToken == rejected || !k.kc.fresh(old) })
	if err != nil {
		return "", err
	}
	return g.AccessToken, nil
}

func (k *Keeper) setCurrent(g Grant) {
	k.mu.Lock()
	k.cur = g
	k.mu.Unlock()
}

// update runs a refresh inside the store's Update when need says the
// stored grant needs one.
func (k *Keeper) update(ctx context.Context, need func(old Grant) bool) (Grant, error) {
	var refreshed *Grant
	var from string
	g, err := k.store.Update(ctx, func(old Grant) (Grant, error) {
		refreshed = nil
		base := old
		k.mu.Lock()
		pending, pendingFrom := k.pending, k.pendingFrom
		deadRT, deadErr := k.deadRT, k.deadErr
		k.mu.Unlock()
		if pending != nil && old.RefreshToken == pendingFrom {
			// Our earlier refresh of this very token was not saved:
			// save its result now.
			base = *pending
		}
		if !need(base) {
			return base, nil
		}
		if base.RefreshToken != "" && base.RefreshToken == deadRT {
			return Grant{}, deadErr
		}
		ng, err := k.c.Refresh(ctx, base.RefreshToken)
		if err != nil {
			if errors.Is(err, ErrReconsent) {
				k.mu.Lock()
				k.deadRT, k.deadErr = base.RefreshToken, err
				k.mu.Unlock()
			}
			return Grant{}, err
		}
		if ng.Scope == "" {
			ng.Scope = base.Scope
		}
		refreshed, from = &ng, old.RefreshToken
		return ng, nil
	})
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		if refreshed != nil {
			// The provider answered but the store did not save: keep the
			// answer for the next call, do not use it yet.
			k.pending, k.pendingFrom = refreshed, from
			return Grant{}, fmt.Errorf("oauth: save the refreshed grant: %w", err)
		}
		return Grant{}, err
	}
	k.pending, k.pendingFrom = nil, ""
	k.cur = g
	return g, nil
}

// AppKeeper keeps an app-only token (client credentials) in memory until
// it is about to expire. App tokens are not persisted: the client secret
// gets a new one at any time, so each instance asks for its own and a
// restart loses nothing.
type AppKeeper struct {
	c   *Client
	kc  keeperConfig
	sem sem

	mu  sync.Mutex
	cur Grant
}

var _ TokenSource = (*AppKeeper)(nil)

// NewAppKeeper returns a keeper of c's app-only token.
func NewAppKeeper(c *Client, opts ...KeeperOption) *AppKeeper {
	return &AppKeeper{c: c, kc: newKeeperConfig(c, opts), sem: make(sem, 1)}
}

// Fresh returns the cached token while it is fresh, else a new one.
func (a *AppKeeper) Fresh(ctx context.Context) (string, error) {
	return a.get(ctx, "")
}

// ForceRefresh returns a new token unless the cached one is already
// another, fresh one than rejected.
func (a *AppKeeper) ForceRefresh(ctx context.Context, rejected string) (string, error) {
	return a.get(ctx, rejected)
}

func (a *AppKeeper) get(ctx context.Context, rejected string) (string, error) {
	if err := a.sem.lock(ctx); err != nil {
		return "", err
	}
	defer a.sem.unlock()
	a.mu.Lock()
	cur := a.cur
	a.mu.Unlock()
	if a.kc.fresh(cur) && cur.AccessToken != rejected {
		return cur.AccessToken, nil
	}
	g, err := a.c.AppToken(ctx)
	if err != nil {
		if rejected == "" && IsTemporary(err) && a.kc.usable(cur) {
			return cur.AccessToken, nil
		}
		return "", err
	}
	a.mu.Lock()
	a.cur = g
	a.mu.Unlock()
	return g.AccessToken, nil
}
