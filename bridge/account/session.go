package account

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/secret"
	"github.com/popbridge/popbridge/state"
)

// Session is an unlocked account: it holds the account's data key in
// memory, so it can open and store the grant. Get one with Verify (an app
// password) or Unlock (the server key), and Close it when done, which
// overwrites the key. Its methods are safe for concurrent use.
type Session struct {
	r          *Registry
	name       string
	label      string
	dekVersion uint64
	info       *Info // as unlocked

	mu   sync.Mutex
	dek  []byte // nil once closed
	seen uint64 // the grant version this session last read or wrote
}

func (r *Registry) newSession(a *state.Account, label string, dek []byte) *Session {
	return &Session{r: r, name: a.Name, label: label, dekVersion: a.DEKVersion, dek: dek, seen: a.GrantVersion, info: r.info(a)}
}

// Verify checks password against the app passwords of the login name
// (without its device tag) with no upstream contact, and returns a Session
// on success. It fails with ErrNotEnrolled when the name is not an enrolled
// account, and with ErrBadPassword when no app password of it matches. The
// cost is one argon2id hash per app password tried (the most recently used
// first), and one more on success to unwrap the data key.
//
// On success it may also write the record, best effort: the password's
// LastUsed (at most hourly), a rehash under the Registry's parameters, and
// the escrow under the server key when that is missing or under a previous
// key.
func (r *Registry) Verify(ctx context.Context, name, password string) (*Session, error) {
	name = CanonicalName(name)
	a, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	pw := secret.NormalizePassword(password)
	if pw == "" || len(pw) > MaxPasswordLength {
		return nil, fmt.Errorf("%w for %q", ErrBadPassword, name)
	}
	order := make([]int, len(a.Passwords))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(i, j int) int { return a.Passwords[j].LastUsed.Compare(a.Passwords[i].LastUsed) })
	var damaged []error
	for _, i := range order {
		p := &a.Passwords[i]
		var ok bool
		var verr error
		if err := r.hashRun(ctx, func() { ok, verr = secret.VerifyPassword([]byte(pw), p.Hash) }); err != nil {
			return nil, err
		}
		if verr != nil {
			damaged = append(damaged, fmt.Errorf("app password %q: %w", p.Label, verr))
			continue
		}
		if !ok {
			continue
		}
		var dek []byte
		if err := r.hashRun(ctx, func() {
			dek, verr = secret.UnwrapWithPassword([]byte(pw), p.WrappedDEK, passwordAAD(name, p.Label, a.DEKVersion))
		}); err != nil {
			return nil, err
		}
		if verr != nil {
			return nil, fmt.Errorf("account %q: app password %q is right but does not open the data key (%v): the record was altered", name, p.Label, verr)
		}
		s := r.newSession(a, p.Label, dek)
		r.afterUnlock(ctx, a, p.Label, pw, dek)
		return s, nil
	}
	err = fmt.Errorf("%w for %q", ErrBadPassword, name)
	if damaged != nil {
		err = fmt.Errorf("%w (%w)", err, errors.Join(damaged...))
	}
	return nil, err
}

// Unlock opens account name with the server key, without an app password:
// for background refresh, "account test", adding an app password, and
// re-consent. It fails with ErrNoServerKey when no server key is
// configured or the account's data key is not escrowed under it (or a
// previous one).
func (r *Registry) Unlock(ctx context.Context, name string) (*Session, error) {
	name = CanonicalName(name)
	if r.serverKey == nil {
		return nil, fmt.Errorf("%w (accounts.server_key_file is not set)", ErrNoServerKey)
	}
	a, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	dek, current, err := r.unescrow(a)
	if err != nil {
		return nil, err
	}
	s := r.newSession(a, "", dek)
	if !current {
		r.afterUnlock(ctx, a, "", "", dek)
	}
	return s, nil
}

// unescrow unwraps the data key of a with the server key it was escrowed
// under, and reports whether that is the current one.
func (r *Registry) unescrow(a *state.Account) (dek []byte, current bool, err error) {
	blob := a.ServerWrappedDEK
	if len(blob) <= serverKeyIDSize {
		return nil, false, fmt.Errorf("%w: account %q: %w (log in with an app password once to escrow it)", ErrNoServerKey, a.Name, errNoEscrow)
	}
	id := blob[:serverKeyIDSize]
	for i, k := range append([][]byte{r.serverKey}, r.prevKeys...) {
		if !bytes.Equal(serverKeyID(k), id) {
			continue
		}
		dek, err := secret.Unwrap(k, blob[serverKeyIDSize:], serverAAD(a.Name, a.DEKVersion))
		if err != nil {
			return nil, false, fmt.Errorf("account %q: the server key does not open the escrowed data key (%v): the record was altered", a.Name, err)
		}
		return dek, i == 0, nil
	}
	return nil, false, fmt.Errorf("%w: account %q: %w; it is escrowed under another server key", ErrNoServerKey, a.Name, errNoEscrow)
}

// afterUnlock writes, best effort, what an unlock of a teaches: the
// LastUsed of app password label (pw, when label is not ""), a rehash of it
// under other parameters, and the escrow under the current server key.
func (r *Registry) afterUnlock(ctx context.Context, a *state.Account, label, pw string, dek []byte) {
	now := r.clock()
	var p *state.AppPassword
	if label != "" {
		p = &a.Passwords[slices.IndexFunc(a.Passwords, func(p state.AppPassword) bool { return p.Label == label })]
	}
	touch := p != nil && now.Sub(p.LastUsed) >= lastUsedEvery
	var rehashed *state.AppPassword
	if p != nil && r.staleParams(p) {
		np, err := r.makePassword(ctx, a.Name, label, pw, dek, a.DEKVersion)
		if err != nil {
			r.log.Warn("rehashing an app password failed", zap.String("account", a.Name), zap.String("label", label), zap.Error(err))
		} else {
			np.Created = p.Created
			rehashed = &np
		}
	}
	var escrowed []byte
	if r.serverKey != nil && (len(a.ServerWrappedDEK) <= serverKeyIDSize || !bytes.Equal(a.ServerWrappedDEK[:serverKeyIDSize], r.serverID)) {
		var err error
		if escrowed, err = escrow(r.serverKey, dek, a.Name, a.DEKVersion); err != nil {
			r.log.Warn("escrowing a data key failed", zap.String("account", a.Name), zap.Error(err))
		}
	}
	if !touch && rehashed == nil && escrowed == nil {
		return
	}
	dekVersion := a.DEKVersion
	var oldHash string
	if p != nil {
		oldHash = p.Hash
	}
	_, err := r.update(ctx, a.Name, a, func(b *state.Account) error {
		if b.DEKVersion != dekVersion {
			return errSkip // re-keyed meanwhile: nothing here applies
		}
		if i := slices.IndexFunc(b.Passwords, func(p state.AppPassword) bool { return p.Label == label }); i >= 0 {
			q := &b.Passwords[i]
			if rehashed != nil && q.Hash == oldHash {
				*q = *rehashed
			}
			if touch {
				q.LastUsed = now
			}
		}
		if escrowed != nil {
			b.ServerWrappedDEK = escrowed
		}
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) && !errors.Is(err, ErrNotEnrolled) {
		r.log.Warn("updating an account after a login failed", zap.String("account", a.Name), zap.Error(err))
	}
}

// staleParams reports whether p was hashed or wrapped under other argon2id
// parameters than the Registry's.
func (r *Registry) staleParams(p *state.AppPassword) bool {
	h, err := secret.ParsePHC(p.Hash)
	if err != nil {
		return false // it verified, so this does not happen
	}
	wp, err := secret.PasswordWrapParams(p.WrappedDEK)
	return h.Params != r.params || (err == nil && wp != r.params)
}

// Name returns the account's (canonical) name.
func (s *Session) Name() string { return s.name }

// Label returns the label of the app password that opened the session, ""
// when the server key did.
func (s *Session) Label() string { return s.label }

// Close overwrites the data key in memory. Later calls fail with
// ErrClosed.
func (s *Session) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	secret.Zero(s.dek)
	s.dek = nil
}

// key returns a copy of the data key, which the caller zeroes, after
// checking that a (when not nil) is still under that key.
func (s *Session) key(a *state.Account) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dek == nil {
		return nil, ErrClosed
	}
	if a != nil && a.DEKVersion != s.dekVersion {
		return nil, fmt.Errorf("%w (%q)", ErrStale, s.name)
	}
	return bytes.Clone(s.dek), nil
}

func (s *Session) getSeen() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen
}

func (s *Session) setSeen(v uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = v
}

// Account returns the account as it was when the session was opened:
// where and as whom to log in upstream (Upstream, Provider, LoginUser).
// The caller must not modify it.
func (s *Session) Account() *Info { return s.info }

// Info reads the account again and returns what may be shown of it now.
func (s *Session) Info(ctx context.Context) (*Info, error) { return s.r.Lookup(ctx, s.name) }

// Grant reads and opens the account's grant as stored now. It fails with
// ErrNoGrant when none is stored, and with ErrReconsentNeeded (the reason
// in the message) when the grant was marked so.
func (s *Session) Grant(ctx context.Context) (*Grant, error) {
	a, err := s.r.load(ctx, s.name)
	if err != nil {
		return nil, err
	}
	dek, err := s.key(a)
	if err != nil {
		return nil, err
	}
	defer secret.Zero(dek)
	if GrantStatus(a.GrantStatus) == GrantReconsentNeeded {
		return nil, fmt.Errorf("%w for %q: %s", ErrReconsentNeeded, s.name, a.GrantReason)
	}
	if a.SealedGrant == nil {
		return nil, fmt.Errorf("%w for %q", ErrNoGrant, s.name)
	}
	g, err := openGrant(dek, a)
	if err != nil {
		return nil, err
	}
	s.setSeen(a.GrantVersion)
	return g, nil
}

// UpdateGrant replaces the grant with what refresh returns, once across
// every instance: it takes the grant lock of the account (waiting for
// another refresh in progress), reads the grant again, and
//
//   - when it changed since this session last read or wrote it (another
//     instance or session refreshed it meanwhile) and its access token is
//     fresh, returns it without calling refresh;
//   - otherwise calls refresh with it (nil when none is stored) and stores
//     and returns the result. A result without a refresh token keeps the
//     current one (providers may not send one on refresh). The grant's
//     status becomes GrantOK.
//
// When refresh fails with an error that wraps ErrReconsentNeeded (the
// provider refused the refresh token: invalid_grant), the account is marked
// GrantReconsentNeeded with that error as the reason before UpdateGrant
// returns it. refresh runs even for an account so marked; callers that
// refresh in the background should check Info first.
//
// The write is a compare-and-swap; when it loses to another change of the
// record (an app password added or revoked meanwhile), UpdateGrant applies
// the new grant to the record as it is now, so neither change is lost and
// refresh is not called again.
func (s *Session) UpdateGrant(ctx context.Context, refresh func(old *Grant) (*Grant, error)) (*Grant, error) {
	release, err := s.r.store.LockGrant(ctx, s.name)
	if err != nil {
		return nil, err
	}
	defer release()
	a, err := s.r.load(ctx, s.name)
	if err != nil {
		return nil, err
	}
	dek, err := s.key(a)
	if err != nil {
		return nil, err
	}
	defer secret.Zero(dek)
	var cur *Grant
	if a.SealedGrant != nil {
		if cur, err = openGrant(dek, a); err != nil {
			return nil, err
		}
	}
	if cur != nil && a.GrantVersion != s.getSeen() && GrantStatus(a.GrantStatus) == GrantOK && cur.Fresh(s.r.now(), s.r.freshFor) {
		s.setSeen(a.GrantVersion)
		return cur, nil
	}
	var old *Grant
	if cur != nil {
		c := *cur
		old = &c
	}
	next, err := refresh(old)
	if err != nil {
		if errors.Is(err, ErrReconsentNeeded) {
			if merr := s.r.markReconsent(ctx, s.name, nil, err.Error()); merr != nil {
				err = fmt.Errorf("%w (and marking the account failed: %v)", err, merr)
			}
		}
		return nil, err
	}
	if next == nil {
		return nil, errors.New("account: refresh returned no grant")
	}
	n := *next
	if n.RefreshToken == "" && cur != nil {
		n.RefreshToken = cur.RefreshToken
	}
	if err := s.putGrant(ctx, a, dek, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// SetGrant replaces the account's grant with g (after a re-consent: the
// device code or authorization code flow run again), keeping the data key
// and the app passwords, and clears a re-consent mark.
func (s *Session) SetGrant(ctx context.Context, g *Grant) error {
	if g == nil {
		return errors.New("account: SetGrant of no grant")
	}
	release, err := s.r.store.LockGrant(ctx, s.name)
	if err != nil {
		return err
	}
	defer release()
	a, err := s.r.load(ctx, s.name)
	if err != nil {
		return err
	}
	dek, err := s.key(a)
	if err != nil {
		return err
	}
	defer secret.Zero(dek)
	return s.putGrant(ctx, a, dek, g)
}

// putGrant stores g as the next grant version of a, whose grant lock the
// caller holds, retrying on conflicts with other changes of the record.
func (s *Session) putGrant(ctx context.Context, a *state.Account, dek []byte, g *Grant) error {
	base, dekVersion := a.GrantVersion, a.DEKVersion
	version := base + 1
	_, err := s.r.update(ctx, s.name, a, func(b *state.Account) error {
		if b.DEKVersion != dekVersion {
			return fmt.Errorf("%w (%q)", ErrStale, s.name)
		}
		if b.GrantVersion != base {
			return fmt.Errorf("account %q: the grant changed from version %d to %d without the grant lock", s.name, base, b.GrantVersion)
		}
		sealed, err := sealGrant(dek, b, version, g)
		if err != nil {
			return err
		}
		now := s.r.clock()
		b.SealedGrant, b.GrantVersion = sealed, version
		b.GrantExpiry, b.GrantUpdated = g.Expiry.UTC().Truncate(time.Microsecond), now
		setStatus(b, GrantOK, "", now)
		return nil
	})
	if err != nil {
		return err
	}
	s.setSeen(version)
	return nil
}

// MarkReconsent records that the account's grant needs a new consent, and
// why. It takes the grant lock: from within UpdateGrant's refresh, return
// an error that wraps ErrReconsentNeeded instead.
func (s *Session) MarkReconsent(ctx context.Context, reason string) error {
	return s.r.MarkReconsent(ctx, s.name, reason)
}

// AddPassword adds an app password labelled label and returns it (password,
// normalised, or a generated one when empty). It fails with ErrLabelExists
// when the label is taken.
func (s *Session) AddPassword(ctx context.Context, label, password string) (string, error) {
	return s.setPassword(ctx, label, password, false)
}

// SetPassword is AddPassword, except that it replaces the app password of
// that label when there is one.
func (s *Session) SetPassword(ctx context.Context, label, password string) (string, error) {
	return s.setPassword(ctx, label, password, true)
}

func (s *Session) setPassword(ctx context.Context, label, password string, replace bool) (string, error) {
	if err := checkLabel(label); err != nil {
		return "", err
	}
	pw, err := newPassword(password)
	if err != nil {
		return "", err
	}
	a, err := s.r.load(ctx, s.name)
	if err != nil {
		return "", err
	}
	dek, err := s.key(a)
	if err != nil {
		return "", err
	}
	defer secret.Zero(dek)
	check := func(b *state.Account) (int, error) {
		if b.DEKVersion != s.dekVersion {
			return 0, fmt.Errorf("%w (%q)", ErrStale, s.name)
		}
		i := slices.IndexFunc(b.Passwords, func(p state.AppPassword) bool { return p.Label == label })
		switch {
		case i >= 0 && !replace:
			return 0, fmt.Errorf("%w: %q of %q", ErrLabelExists, label, s.name)
		case i < 0 && len(b.Passwords) >= MaxPasswords:
			return 0, fmt.Errorf("%w: %q has %d", ErrTooManyPasswords, s.name, len(b.Passwords))
		}
		return i, nil
	}
	if _, err := check(a); err != nil {
		return "", err
	}
	p, err := s.r.makePassword(ctx, s.name, label, pw, dek, s.dekVersion)
	if err != nil {
		return "", err
	}
	_, err = s.r.update(ctx, s.name, a, func(b *state.Account) error {
		i, err := check(b)
		if err != nil {
			return err
		}
		if i >= 0 {
			b.Passwords[i] = p
		} else {
			b.Passwords = append(b.Passwords, p)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	return pw, nil
}
