package account

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/secret"
	"github.com/popbridge/popbridge/state"
)

// Kind is how popbridge gets tokens for an account.
type Kind string

const (
	// Delegated accounts hold a user's grant: a refresh token from a
	// consent (device code or authorization code with PKCE), refreshed
	// into access tokens.
	Delegated Kind = "delegated"
	// AppOnly accounts use the client credentials of an application
	// (Microsoft 365 IMAP.AccessAsApp): no refresh token; the client
	// secret comes from the configuration, never from the state. A grant,
	// if stored, is only the cached access token.
	AppOnly Kind = "app-only"
)

// GrantStatus is the state of an account's grant.
type GrantStatus string

const (
	GrantOK              GrantStatus = "ok"               // usable
	GrantNone            GrantStatus = "none"             // nothing stored (app-only before its first token)
	GrantReconsentNeeded GrantStatus = "reconsent-needed" // the provider refused the refresh token: a new consent is needed
)

// Errors of the registry. Test with errors.Is.
var (
	ErrNotEnrolled      = errors.New("account: not enrolled")
	ErrExists           = errors.New("account: already enrolled")
	ErrBadPassword      = errors.New("account: wrong app password")
	ErrNoServerKey      = errors.New("account: no server key to unlock the account with")
	ErrLabelExists      = errors.New("account: an app password with this label exists")
	ErrNoSuchPassword   = errors.New("account: no app password with this label")
	ErrLastPassword     = errors.New("account: this is the last key to the account's grant")
	ErrTooManyPasswords = errors.New("account: too many app passwords")
	ErrNoGrant          = errors.New("account: no grant stored")
	ErrReconsentNeeded  = errors.New("account: re-consent needed")
	ErrStale            = errors.New("account: the account was re-keyed since this session was opened")
	ErrClosed           = errors.New("account: session closed")
	errTooManyConflicts = errors.New("account: too many concurrent updates, gave up")
)

// Limits.
const (
	MaxPasswords      = 10   // app passwords per account: a wrong password costs one hash per app password
	MinPasswordLength = 12   // bytes of an operator-set password
	MaxPasswordLength = 1024 // longer passwords are refused without hashing
	MaxLabelLength    = 64
	MaxNameLength     = 320
	DefaultLabel      = "default"
	// DefaultFreshFor is how long an access token must still be valid
	// for UpdateGrant to take one that another instance stored instead of
	// refreshing again.
	DefaultFreshFor = 2 * time.Minute
	// lastUsedEvery is how stale a password's LastUsed may get before a
	// login writes it again, so that logins do not all write the record.
	lastUsedEvery = time.Hour
	// maxAttempts bounds the compare-and-swap retries of one change.
	maxAttempts = 20
)

// Options tune a Registry. A nil *Options is a zero Options.
type Options struct {
	// ServerKey is the content of accounts.server_key_file (ServerKeySize
	// bytes), or nil. With it, every account's data key is also wrapped
	// under it, so that popbridge can use a grant with no app password at
	// hand: Unlock.
	ServerKey []byte
	// PreviousServerKeys still unlock escrows made under them; each
	// unlock (and SyncEscrow) wraps the data key under ServerKey instead.
	PreviousServerKeys [][]byte
	// Params are the argon2id parameters of new hashes and wrapped keys;
	// zero means secret.DefaultParams. Logins rehash passwords stored
	// under other parameters.
	Params secret.Params
	// MaxParallelHashes bounds the argon2id runs in progress at once (each
	// takes Params.Memory KiB); zero or less means GOMAXPROCS.
	MaxParallelHashes int
	// FreshFor: see DefaultFreshFor; zero or less means that.
	FreshFor time.Duration
	// Log receives warnings about writes a login makes on the side
	// (LastUsed, escrow, rehash) that failed; nil discards them.
	Log *zap.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Registry is the set of enrolled accounts kept in a state.AccountStore.
// Its methods are safe for concurrent use, also by several instances that
// share one PostgreSQL database.
type Registry struct {
	store     state.AccountStore
	serverKey []byte
	serverID  []byte
	prevKeys  [][]byte
	params    secret.Params
	sem       chan struct{}
	freshFor  time.Duration
	log       *zap.Logger
	now       func() time.Time
}

// New returns a Registry over store.
func New(store state.AccountStore, opts *Options) (*Registry, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	r := &Registry{store: store, params: o.Params, freshFor: o.FreshFor, log: o.Log, now: o.Now}
	if r.params == (secret.Params{}) {
		r.params = secret.DefaultParams
	}
	if err := r.params.Validate(); err != nil {
		return nil, err
	}
	if o.ServerKey != nil {
		if len(o.ServerKey) != ServerKeySize {
			return nil, fmt.Errorf("account: server key of %d bytes, want %d", len(o.ServerKey), ServerKeySize)
		}
		r.serverKey = bytes.Clone(o.ServerKey)
		r.serverID = serverKeyID(r.serverKey)
	}
	for _, k := range o.PreviousServerKeys {
		if len(k) != ServerKeySize {
			return nil, fmt.Errorf("account: previous server key of %d bytes, want %d", len(k), ServerKeySize)
		}
		r.prevKeys = append(r.prevKeys, bytes.Clone(k))
	}
	n := o.MaxParallelHashes
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	r.sem = make(chan struct{}, n)
	if r.freshFor <= 0 {
		r.freshFor = DefaultFreshFor
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r, nil
}

// HasServerKey reports whether a server key is configured.
func (r *Registry) HasServerKey() bool { return r.serverKey != nil }

// clock is the time stored in records: UTC, whole microseconds (what
// PostgreSQL keeps).
func (r *Registry) clock() time.Time { return r.now().UTC().Truncate(time.Microsecond) }

// CanonicalName is the form of a login name (without its device tag) under
// which an account is stored and looked up: lower case, as mail systems
// treat addresses.
func CanonicalName(name string) string { return strings.ToLower(name) }

func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("account: empty name")
	case len(name) > MaxNameLength:
		return fmt.Errorf("account: name of %d bytes, at most %d", len(name), MaxNameLength)
	case !utf8.ValidString(name):
		return errors.New("account: name is not UTF-8")
	case strings.ContainsRune(name, '#'):
		return fmt.Errorf("account: name %q holds '#', which starts a device tag", name)
	case strings.IndexFunc(name, func(c rune) bool { return unicode.IsSpace(c) || unicode.IsControl(c) }) >= 0:
		return fmt.Errorf("account: name %q holds a space or control character", name)
	}
	return nil
}

func checkLabel(label string) error {
	switch {
	case label == "" || len(label) > MaxLabelLength:
		return fmt.Errorf("account: label must have 1 to %d bytes", MaxLabelLength)
	case !utf8.ValidString(label):
		return errors.New("account: label is not UTF-8")
	case strings.TrimSpace(label) != label:
		return fmt.Errorf("account: label %q starts or ends with a space", label)
	case strings.IndexFunc(label, unicode.IsControl) >= 0:
		return fmt.Errorf("account: label %q holds a control character", label)
	}
	return nil
}

// newPassword returns the password to set: the normalised operator-set one,
// checked, or a generated one.
func newPassword(set string) (string, error) {
	if set == "" {
		return secret.GeneratePassword(), nil
	}
	pw := secret.NormalizePassword(set)
	switch {
	case len(pw) < MinPasswordLength:
		return "", fmt.Errorf("account: an app password needs at least %d characters", MinPasswordLength)
	case len(pw) > MaxPasswordLength:
		return "", fmt.Errorf("account: an app password has at most %d characters", MaxPasswordLength)
	}
	return pw, nil
}

// hashRun runs fn, an argon2id computation, within the bound on parallel
// runs.
func (r *Registry) hashRun(ctx context.Context, fn func()) error {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-r.sem }()
	fn()
	return nil
}

// makePassword hashes pw and wraps dek under it, as the entry label of
// account name.
func (r *Registry) makePassword(ctx context.Context, name, label, pw string, dek []byte, dekVersion uint64) (state.AppPassword, error) {
	p := state.AppPassword{Label: label, Created: r.clock()}
	var err error
	if e := r.hashRun(ctx, func() { p.Hash, err = secret.HashPassword([]byte(pw), r.params) }); e != nil {
		return p, e
	}
	if err != nil {
		return p, err
	}
	if e := r.hashRun(ctx, func() {
		p.WrappedDEK, err = secret.WrapWithPassword([]byte(pw), dek, passwordAAD(name, label, dekVersion), r.params)
	}); e != nil {
		return p, e
	}
	return p, err
}

// load returns the record of a canonical name, ErrNotEnrolled when there is
// none.
func (r *Registry) load(ctx context.Context, name string) (*state.Account, error) {
	a, err := r.store.LoadAccount(ctx, name)
	if errors.Is(err, state.ErrNotFound) {
		return nil, fmt.Errorf("%w: %q", ErrNotEnrolled, name)
	}
	return a, err
}

// update applies change to the record of name and stores it, reloading and
// applying change again when another writer came first. change may return
// errSkip to store nothing.
func (r *Registry) update(ctx context.Context, name string, a *state.Account, change func(a *state.Account) error) (*state.Account, error) {
	for range maxAttempts {
		if a == nil {
			var err error
			if a, err = r.load(ctx, name); err != nil {
				return nil, err
			}
		}
		if err := change(a); err != nil {
			return a, err
		}
		a.Updated = r.clock()
		v, err := r.store.PutAccount(ctx, a)
		if err == nil {
			a.Version = v
			return a, nil
		}
		if !errors.Is(err, state.ErrConflict) {
			return nil, err
		}
		a = nil
	}
	return nil, fmt.Errorf("%w (account %q)", errTooManyConflicts, name)
}

// errSkip makes update store nothing.
var errSkip = errors.New("nothing to change")

// Spec describes an account to enrol.
type Spec struct {
	Name     string // POP3 login name without device tag; stored in CanonicalName form
	Kind     Kind   // Delegated when empty
	Upstream string // name of a configured upstream
	Provider string // name of the provider preset of that upstream
	// Identity is the upstream identity: the owner of the delegated
	// grant, or for AppOnly the mailbox the application opens.
	Identity string
	// Mailbox is another mailbox the identity opens (a Microsoft 365
	// shared mailbox): the XOAUTH2 user is then Mailbox. Delegated only.
	Mailbox string
	// Label of the first app password; DefaultLabel when empty.
	Label string
	// Password is the first app password when the operator sets it;
	// generated when empty.
	Password string
}

// Add enrols an account with the grant g (required for Delegated, nil or a
// cached access token for AppOnly), and returns its first app password:
// the one generated, or Spec.Password as it is checked. The password is
// stored only hashed; show it once.
func (r *Registry) Add(ctx context.Context, spec Spec, g *Grant) (password string, err error) {
	name := CanonicalName(spec.Name)
	if err := checkName(name); err != nil {
		return "", err
	}
	kind := spec.Kind
	if kind == "" {
		kind = Delegated
	}
	label := spec.Label
	if label == "" {
		label = DefaultLabel
	}
	if err := checkLabel(label); err != nil {
		return "", err
	}
	switch {
	case kind != Delegated && kind != AppOnly:
		return "", fmt.Errorf("account: unknown kind %q", kind)
	case spec.Upstream == "" || spec.Provider == "" || spec.Identity == "":
		return "", errors.New("account: upstream, provider and identity are required")
	case kind == AppOnly && spec.Mailbox != "":
		return "", errors.New("account: an app-only account opens its identity's mailbox; leave Mailbox empty")
	case kind == Delegated && (g == nil || (g.AccessToken == "" && g.RefreshToken == "")):
		return "", errors.New("account: a delegated account needs a grant with a token")
	}
	if _, err := r.store.LoadAccount(ctx, name); err == nil {
		return "", fmt.Errorf("%w: %q", ErrExists, name)
	}
	pw, err := newPassword(spec.Password)
	if err != nil {
		return "", err
	}
	now := r.clock()
	a := &state.Account{
		Name: name, Kind: string(kind), Upstream: spec.Upstream, Provider: spec.Provider,
		Identity: spec.Identity, Mailbox: spec.Mailbox,
		DEKVersion: 1, GrantStatus: string(GrantOK), GrantSince: now, Created: now, Updated: now,
	}
	dek := secret.NewKey()
	defer secret.Zero(dek)
	if err := r.keyRecord(ctx, a, dek, g, label, pw); err != nil {
		return "", err
	}
	if _, err := r.store.PutAccount(ctx, a); errors.Is(err, state.ErrConflict) {
		return "", fmt.Errorf("%w: %q", ErrExists, name)
	} else if err != nil {
		return "", err
	}
	return pw, nil
}

// keyRecord fills a, of a.DEKVersion, with its only app password, the
// server escrow and the sealed grant g (if any), all under dek.
func (r *Registry) keyRecord(ctx context.Context, a *state.Account, dek []byte, g *Grant, label, pw string) error {
	p, err := r.makePassword(ctx, a.Name, label, pw, dek, a.DEKVersion)
	if err != nil {
		return err
	}
	a.Passwords = []state.AppPassword{p}
	a.ServerWrappedDEK = nil
	if r.serverKey != nil {
		if a.ServerWrappedDEK, err = escrow(r.serverKey, dek, a.Name, a.DEKVersion); err != nil {
			return err
		}
	}
	a.SealedGrant, a.GrantExpiry, a.GrantUpdated = nil, time.Time{}, time.Time{}
	if g != nil {
		a.GrantVersion++
		if a.SealedGrant, err = sealGrant(dek, a, a.GrantVersion, g); err != nil {
			return err
		}
		a.GrantExpiry, a.GrantUpdated = g.Expiry.UTC().Truncate(time.Microsecond), r.clock()
	}
	return nil
}

// Rekey gives the account a new data key: the grant g (nil for none, as
// for an AppOnly account) sealed under it, every app password revoked and
// one new one (password, or generated when empty) under label
// (DefaultLabel when empty), which is returned. It is what a re-consent
// does when no app password is at hand and no server key configured, and
// what to do after an app password and a copy of the state both leaked:
// the old data key then opens nothing stored any more.
func (r *Registry) Rekey(ctx context.Context, name string, g *Grant, label, password string) (string, error) {
	name = CanonicalName(name)
	if label == "" {
		label = DefaultLabel
	}
	if err := checkLabel(label); err != nil {
		return "", err
	}
	pw, err := newPassword(password)
	if err != nil {
		return "", err
	}
	release, err := r.store.LockGrant(ctx, name)
	if err != nil {
		return "", err
	}
	defer release()
	dek := secret.NewKey()
	defer secret.Zero(dek)
	var kind string
	_, err = r.update(ctx, name, nil, func(a *state.Account) error {
		kind = a.Kind
		if Kind(a.Kind) == Delegated && (g == nil || (g.AccessToken == "" && g.RefreshToken == "")) {
			return errors.New("account: a delegated account needs a grant with a token")
		}
		a.DEKVersion++
		if err := r.keyRecord(ctx, a, dek, g, label, pw); err != nil {
			return err
		}
		setStatus(a, GrantOK, "", r.clock())
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("account: rekey %q (%s): %w", name, kind, err)
	}
	return pw, nil
}

// setStatus sets the grant status of a, and its time when it changes.
func setStatus(a *state.Account, s GrantStatus, reason string, now time.Time) {
	if a.GrantStatus != string(s) || a.GrantReason != reason {
		a.GrantSince = now
	}
	a.GrantStatus, a.GrantReason = string(s), reason
}

// RevokePassword deletes the app password label of account name, and with
// it the data key wrapped under it. Sessions it opened go on until closed.
// It refuses to delete the last key to the grant (the last app password
// of an account without server escrow) with ErrLastPassword: remove the
// account, or Rekey it, instead.
func (r *Registry) RevokePassword(ctx context.Context, name, label string) error {
	name = CanonicalName(name)
	_, err := r.update(ctx, name, nil, func(a *state.Account) error {
		i := slices.IndexFunc(a.Passwords, func(p state.AppPassword) bool { return p.Label == label })
		if i < 0 {
			return fmt.Errorf("%w: %q of %q", ErrNoSuchPassword, label, name)
		}
		if len(a.Passwords) == 1 && len(a.ServerWrappedDEK) == 0 {
			return fmt.Errorf("%w: %q is the only app password of %q and no server key escrow exists", ErrLastPassword, label, name)
		}
		a.Passwords = slices.Delete(a.Passwords, i, i+1)
		return nil
	})
	return err
}

// Remove deletes the account and everything stored of it.
func (r *Registry) Remove(ctx context.Context, name string) error {
	name = CanonicalName(name)
	err := r.store.DeleteAccount(ctx, name)
	if errors.Is(err, state.ErrNotFound) {
		return fmt.Errorf("%w: %q", ErrNotEnrolled, name)
	}
	return err
}

// MarkReconsent records that the account's grant needs a new consent, and
// why (the provider's error). The next SetGrant, UpdateGrant or Rekey
// clears it.
func (r *Registry) MarkReconsent(ctx context.Context, name, reason string) error {
	name = CanonicalName(name)
	release, err := r.store.LockGrant(ctx, name)
	if err != nil {
		return err
	}
	defer release()
	return r.markReconsent(ctx, name, nil, reason)
}

// markReconsent sets the status of name, whose grant lock the caller holds.
func (r *Registry) markReconsent(ctx context.Context, name string, a *state.Account, reason string) error {
	if reason == "" {
		reason = "re-consent needed"
	}
	_, err := r.update(ctx, name, a, func(a *state.Account) error {
		setStatus(a, GrantReconsentNeeded, reason, r.clock())
		return nil
	})
	return err
}

// Info is what may be shown of an account: no secret is in it.
type Info struct {
	Name      string
	Kind      Kind
	Upstream  string
	Provider  string
	Identity  string
	Mailbox   string
	Passwords []PasswordInfo
	// Escrowed reports that the data key is wrapped under the server key
	// configured now; EscrowedOther that it is wrapped under some other
	// server key (a previous one, or one this instance lacks).
	Escrowed, EscrowedOther bool
	Grant                   GrantInfo
	Created, Updated        time.Time
}

// PasswordInfo describes one app password.
type PasswordInfo struct {
	Label    string
	Created  time.Time
	LastUsed time.Time // zero when never used; updated at most hourly
}

// GrantInfo describes the grant without opening it.
type GrantInfo struct {
	Status  GrantStatus
	Reason  string    // for GrantReconsentNeeded
	Since   time.Time // when Status was set
	Expiry  time.Time // of the stored access token; zero when unknown
	Updated time.Time // when the grant was last stored
	Version uint64
}

// LoginUser is the user popbridge names in XOAUTH2 and OAUTHBEARER: the
// Mailbox when set, else the Identity.
func (i *Info) LoginUser() string {
	if i.Mailbox != "" {
		return i.Mailbox
	}
	return i.Identity
}

func (r *Registry) info(a *state.Account) *Info {
	i := &Info{
		Name: a.Name, Kind: Kind(a.Kind), Upstream: a.Upstream, Provider: a.Provider,
		Identity: a.Identity, Mailbox: a.Mailbox, Created: a.Created, Updated: a.Updated,
		Grant: GrantInfo{Status: GrantStatus(a.GrantStatus), Reason: a.GrantReason, Since: a.GrantSince,
			Expiry: a.GrantExpiry, Updated: a.GrantUpdated, Version: a.GrantVersion},
	}
	if i.Grant.Status == GrantOK && a.SealedGrant == nil {
		i.Grant.Status = GrantNone
	}
	if len(a.ServerWrappedDEK) > serverKeyIDSize {
		i.Escrowed = r.serverID != nil && bytes.Equal(a.ServerWrappedDEK[:serverKeyIDSize], r.serverID)
		i.EscrowedOther = !i.Escrowed
	}
	for _, p := range a.Passwords {
		i.Passwords = append(i.Passwords, PasswordInfo{Label: p.Label, Created: p.Created, LastUsed: p.LastUsed})
	}
	return i
}

// Lookup returns the account a login name (without its device tag) is
// enrolled as, or ErrNotEnrolled: then the login is not popbridge's to
// check.
func (r *Registry) Lookup(ctx context.Context, name string) (*Info, error) {
	a, err := r.load(ctx, CanonicalName(name))
	if err != nil {
		return nil, err
	}
	return r.info(a), nil
}

// List returns every account, ordered by name.
func (r *Registry) List(ctx context.Context) ([]*Info, error) {
	list, err := r.store.ListAccounts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]*Info, len(list))
	for i, a := range list {
		out[i] = r.info(a)
	}
	return out, nil
}

// AddPassword adds an app password to account name, labelled label, and
// returns it (password, normalised, or a generated one when empty). The
// data key it wraps comes from the existing app password unlockWith, or,
// when unlockWith is empty, from the server key.
func (r *Registry) AddPassword(ctx context.Context, name, label, password, unlockWith string) (string, error) {
	var s *Session
	var err error
	if unlockWith == "" {
		s, err = r.Unlock(ctx, name)
	} else {
		s, err = r.Verify(ctx, name, unlockWith)
	}
	if err != nil {
		return "", err
	}
	defer s.Close()
	return s.AddPassword(ctx, label, password)
}

// SyncEscrow wraps, for every account escrowed under a previous server key,
// the data key under the current one instead, and returns how many it
// changed. Accounts with no escrow at all get one at their next login.
func (r *Registry) SyncEscrow(ctx context.Context) (int, error) {
	if r.serverKey == nil {
		return 0, ErrNoServerKey
	}
	list, err := r.store.ListAccounts(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, a := range list {
		if len(a.ServerWrappedDEK) <= serverKeyIDSize || bytes.Equal(a.ServerWrappedDEK[:serverKeyIDSize], r.serverID) {
			continue
		}
		s, err := r.Unlock(ctx, a.Name) // re-escrows under the current key
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.Close()
		n++
	}
	return n, errors.Join(errs...)
}

// DropEscrow removes the server escrow of account name: afterwards only its
// app passwords open its grant. A registry with a server key escrows it
// again at the next login.
func (r *Registry) DropEscrow(ctx context.Context, name string) error {
	name = CanonicalName(name)
	_, err := r.update(ctx, name, nil, func(a *state.Account) error {
		if a.ServerWrappedDEK == nil {
			return errSkip
		}
		if len(a.Passwords) == 0 {
			return fmt.Errorf("%w: %q has no app password", ErrLastPassword, name)
		}
		a.ServerWrappedDEK = nil
		return nil
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	return err
}
