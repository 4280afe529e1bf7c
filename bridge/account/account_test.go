package account

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/popbridge/popbridge/internal/secret"
	"github.com/popbridge/popbridge/state"
)

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var generated = regexp.MustCompile(`^[2-9a-kmnp-z]{5}(-[2-9a-kmnp-z]{5}){3}$`)

func TestAddVerify(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		r := newRegistry(t, b.open(t), nil)
		g := testGrant("a")
		pw := mustAdd(t, r, Spec{Name: "Alice@Contoso.example", Upstream: "m365", Provider: "microsoft",
			Identity: "alice@contoso.example", Mailbox: "shared@contoso.example", Label: "scanner"}, g)
		if !generated.MatchString(pw) {
			t.Errorf("generated app password %q is not 4 groups of 5 from the alphabet", pw)
		}

		// Right password, any case of the name, any form of the password.
		for _, login := range []struct{ name, pw string }{
			{"alice@contoso.example", pw},
			{"ALICE@contoso.EXAMPLE", pw},
			{"alice@contoso.example", strings.ToUpper(pw)},
			{"alice@contoso.example", strings.ReplaceAll(pw, "-", " ")},
			{"alice@contoso.example", strings.ReplaceAll(pw, "-", "")},
		} {
			s := mustVerify(t, r, login.name, login.pw)
			if s.Name() != "alice@contoso.example" || s.Label() != "scanner" {
				t.Errorf("session of %q: name %q label %q", login.name, s.Name(), s.Label())
			}
			if acc := s.Account(); acc.Upstream != "m365" || acc.LoginUser() != "shared@contoso.example" || acc.Identity != "alice@contoso.example" {
				t.Errorf("Account of the session = %+v", acc)
			}
			checkGrant(t, mustGrant(t, s), g)
		}

		// Wrong passwords and unknown names fail, before any upstream.
		for _, wrong := range []string{"", pw[:len(pw)-1], pw + "x", strings.Replace(pw, pw[:1], "z", 1) + "", "k7m2x-q9dpa-3hv8e-wnt4c", strings.Repeat("a", MaxPasswordLength+1)} {
			if wrong == pw {
				continue
			}
			s, err := r.Verify(ctx, "alice@contoso.example", wrong)
			if err == nil {
				s.Close()
			}
			wantErr(t, err, ErrBadPassword, fmt.Sprintf("Verify with %q", wrong))
		}
		_, err := r.Verify(ctx, "bob@contoso.example", pw)
		wantErr(t, err, ErrNotEnrolled, "Verify of an unknown name")
		_, err = r.Lookup(ctx, "bob@contoso.example")
		wantErr(t, err, ErrNotEnrolled, "Lookup of an unknown name")

		info, err := r.Lookup(ctx, "ALICE@contoso.example")
		if err != nil {
			t.Fatal(err)
		}
		if info.Name != "alice@contoso.example" || info.Kind != Delegated || info.Upstream != "m365" || info.Provider != "microsoft" ||
			info.Identity != "alice@contoso.example" || info.Mailbox != "shared@contoso.example" || info.LoginUser() != "shared@contoso.example" ||
			len(info.Passwords) != 1 || info.Passwords[0].Label != "scanner" || info.Passwords[0].LastUsed.IsZero() ||
			info.Grant.Status != GrantOK || !info.Grant.Expiry.Equal(g.Expiry) || info.Grant.Version != 1 || info.Escrowed || info.EscrowedOther {
			t.Errorf("Lookup = %+v", info)
		}

		// A second Add of the name fails, and changes nothing.
		_, err = r.Add(ctx, Spec{Name: "alice@CONTOSO.example", Upstream: "gmail", Provider: "google", Identity: "x@y"}, testGrant("b"))
		wantErr(t, err, ErrExists, "second Add")
		checkGrant(t, mustGrant(t, mustVerify(t, r, "alice@contoso.example", pw)), g)
	})
}

func TestVerifyWritesLastUsedHourly(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		st := b.open(t)
		now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
		r := newRegistry(t, st, &Options{Now: func() time.Time { return now }})
		pw := mustAdd(t, r, testSpec, testGrant("a"))
		version := func() uint64 {
			a, err := st.LoadAccount(t.Context(), testSpec.Name)
			if err != nil {
				t.Fatal(err)
			}
			return a.Version
		}
		v0 := version()
		mustVerify(t, r, testSpec.Name, pw)
		if v := version(); v != v0+1 {
			t.Fatalf("first login: version %d, want %d (LastUsed written)", v, v0+1)
		}
		now = now.Add(59 * time.Minute)
		mustVerify(t, r, testSpec.Name, pw)
		if v := version(); v != v0+1 {
			t.Fatalf("login 59 minutes later: version %d, want %d (no write)", v, v0+1)
		}
		now = now.Add(time.Minute)
		mustVerify(t, r, testSpec.Name, pw)
		if v := version(); v != v0+2 {
			t.Fatalf("login an hour later: version %d, want %d", v, v0+2)
		}
		info, _ := r.Lookup(t.Context(), testSpec.Name)
		if !info.Passwords[0].LastUsed.Equal(now) {
			t.Errorf("LastUsed = %v, want %v", info.Passwords[0].LastUsed, now)
		}
	})
}

// encodings returns forms in which s could appear in stored bytes: as is,
// base64 (standard, URL, padded or not, at each of the three alignments
// within a longer encoded run), hex (either case) and URL-encoded.
func encodings(s string) map[string]string {
	forms := map[string]string{
		"raw":  s,
		"hex":  hex.EncodeToString([]byte(s)),
		"HEX":  strings.ToUpper(hex.EncodeToString([]byte(s))),
		"url":  url.QueryEscape(s),
		"path": url.PathEscape(s),
	}
	for shift := range 3 {
		in := append(make([]byte, shift), s...)
		for name, enc := range map[string]*base64.Encoding{"std": base64.StdEncoding, "url": base64.URLEncoding} {
			e := enc.EncodeToString(in)
			// Leave out the characters that hold prefix or padding bits.
			forms[fmt.Sprintf("base64-%s-%d", name, shift)] = e[4 : len(e)-4]
		}
	}
	return forms
}

// checkNoSecret fails t if dump holds secret in any of its encodings, or
// any 12-byte piece of it.
func checkNoSecret(t *testing.T, what string, dump []byte, name, secretValue string) {
	t.Helper()
	for form, enc := range encodings(secretValue) {
		if bytes.Contains(dump, []byte(enc)) {
			t.Errorf("%s holds the %s in %s form", what, name, form)
		}
	}
	for i := 0; i+12 <= len(secretValue); i++ {
		if piece := secretValue[i : i+12]; bytes.Contains(dump, []byte(piece)) {
			t.Errorf("%s holds %q, 12 bytes of the %s at %d", what, piece, name, i)
			return
		}
	}
}

// TestStolenState enrols an account, refreshes its grant and adds an app
// password, then reads every stored byte (the bbolt file; every row of the
// PostgreSQL tables) and finds neither token of either grant, nor either app
// password, in any encoding or as any 12-byte piece; while the account's
// name and identity, which are not secret, are there, to show that the
// search sees the records.
func TestStolenState(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		st := b.open(t)
		key := secret.NewKey()
		r := newRegistry(t, st, &Options{ServerKey: key})
		spec := testSpec
		spec.Identity = "identity-is-stored-in-clear@contoso.example"
		g1 := testGrant("one")
		pw1 := mustAdd(t, r, spec, g1)
		s := mustVerify(t, r, spec.Name, pw1)
		g2 := testGrant("two")
		if _, err := s.UpdateGrant(ctx, func(old *Grant) (*Grant, error) { return g2, nil }); err != nil {
			t.Fatal(err)
		}
		pw2, err := s.AddPassword(ctx, "laptop", "")
		if err != nil {
			t.Fatal(err)
		}
		pw3, err := s.AddPassword(ctx, "printer", "operator chosen secret 42")
		if err != nil {
			t.Fatal(err)
		}
		appOnly := mustAdd(t, r, Spec{Name: "app@contoso.example", Kind: AppOnly, Upstream: "m365", Provider: "microsoft", Identity: "app@contoso.example"}, nil)
		sa := mustVerify(t, r, "app@contoso.example", appOnly)
		g3 := testGrant("app")
		g3.RefreshToken = ""
		if err := sa.SetGrant(ctx, g3); err != nil {
			t.Fatal(err)
		}
		s.Close()
		sa.Close()
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}

		dump := b.dump(t)
		t.Logf("%d bytes of stored state", len(dump))
		for _, plain := range []string{spec.Name, spec.Identity, "laptop"} {
			if !bytes.Contains(dump, []byte(plain)) {
				t.Fatalf("the stored state does not hold %q: the search does not see the records", plain)
			}
		}
		for _, sec := range []struct{ name, value string }{
			{"first access token", g1.AccessToken}, {"first refresh token", g1.RefreshToken},
			{"second access token", g2.AccessToken}, {"second refresh token", g2.RefreshToken},
			{"app-only access token", g3.AccessToken},
			{"first app password", pw1}, {"second app password", pw2}, {"operator-set app password", pw3},
			{"server key", string(key)},
		} {
			checkNoSecret(t, "stored state", dump, sec.name, sec.value)
		}
	})
}

// TestRevokePassword checks that a revoked app password no longer logs in
// while the others still open the grant, and that the last key to the
// grant cannot be revoked.
func TestRevokePassword(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		st := b.open(t)
		r := newRegistry(t, st, nil)
		g := testGrant("a")
		pwDefault := mustAdd(t, r, testSpec, g)
		s := mustVerify(t, r, testSpec.Name, pwDefault)
		pwScanner, err := s.AddPassword(ctx, "scanner", "")
		if err != nil {
			t.Fatal(err)
		}
		pwLaptop, err := s.AddPassword(ctx, "laptop", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.AddPassword(ctx, "laptop", ""); !errors.Is(err, ErrLabelExists) {
			t.Fatalf("AddPassword of a taken label: %v", err)
		}
		if err := r.RevokePassword(ctx, testSpec.Name, "scanner"); err != nil {
			t.Fatal(err)
		}
		_, err = r.Verify(ctx, testSpec.Name, pwScanner)
		wantErr(t, err, ErrBadPassword, "Verify with the revoked password")
		for _, pw := range []string{pwDefault, pwLaptop} {
			checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, pw)), g)
		}
		a, err := st.LoadAccount(ctx, testSpec.Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Passwords) != 2 || a.Passwords[0].Label != "default" || a.Passwords[1].Label != "laptop" {
			t.Fatalf("stored passwords after revoking scanner: %+v", a.Passwords)
		}
		wantErr(t, r.RevokePassword(ctx, testSpec.Name, "scanner"), ErrNoSuchPassword, "second revoke")

		// The last key to the grant stays.
		if err := r.RevokePassword(ctx, testSpec.Name, "default"); err != nil {
			t.Fatal(err)
		}
		wantErr(t, r.RevokePassword(ctx, testSpec.Name, "laptop"), ErrLastPassword, "revoking the last password")
		checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, pwLaptop)), g)

		// A session opened by a password goes on after its revocation
		// until closed (revocation stops logins, not sessions).
		checkGrant(t, mustGrant(t, s), g)
	})
}

// TestUpdateGrantOnce runs two refreshes of one grant at once, through two
// sessions of one registry, and through two registries on two Stores of one
// PostgreSQL database: the refresh function runs once, and both get its
// grant.
func TestUpdateGrantOnce(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		st := b.open(t)
		rs := []*Registry{newRegistry(t, st, nil), newRegistry(t, st, nil)}
		if b.kind == "pg" {
			rs[1] = newRegistry(t, b.open(t), nil)
		}
		pw := mustAdd(t, rs[0], testSpec, testGrant("old"))
		for round := range 3 {
			sessions := []*Session{mustVerify(t, rs[0], testSpec.Name, pw), mustVerify(t, rs[1], testSpec.Name, pw)}
			var calls atomic.Int32
			fresh := testGrant(fmt.Sprint("fresh", round))
			results := make([]*Grant, 2)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i, s := range sessions {
				wg.Go(func() {
					<-start
					g, err := s.UpdateGrant(t.Context(), func(old *Grant) (*Grant, error) {
						calls.Add(1)
						if old == nil || !strings.Contains(old.AccessToken, "access-old") && round == 0 {
							return nil, fmt.Errorf("refresh called with %+v", old)
						}
						return fresh, nil
					})
					if err != nil {
						t.Errorf("UpdateGrant: %v", err)
					}
					results[i] = g
				})
			}
			close(start)
			wg.Wait()
			if n := calls.Load(); n != 1 {
				t.Fatalf("round %d: the refresh function ran %d times, want once", round, n)
			}
			for i, g := range results {
				if g == nil || g.AccessToken != fresh.AccessToken {
					t.Fatalf("round %d: session %d got %+v, want the refreshed grant", round, i, g)
				}
			}
			checkGrant(t, mustGrant(t, mustVerify(t, rs[1], testSpec.Name, pw)), fresh)

			// A session that has seen the new grant and asks again (its
			// token was refused upstream) refreshes.
			again := testGrant("again")
			g, err := sessions[0].UpdateGrant(t.Context(), func(old *Grant) (*Grant, error) {
				calls.Add(1)
				return again, nil
			})
			if err != nil || calls.Load() != 2 || g.AccessToken != again.AccessToken {
				t.Fatalf("second UpdateGrant from an up-to-date session: %+v, %v, %d calls", g, err, calls.Load())
			}
		}
		info, _ := rs[0].Lookup(t.Context(), testSpec.Name)
		if info.Grant.Version != 7 {
			t.Errorf("grant version %d after 6 refreshes, want 7", info.Grant.Version)
		}
	})
}

// TestUpdateGrantKeepsRefreshToken: a refresh that brings no refresh token
// keeps the stored one.
func TestUpdateGrantKeepsRefreshToken(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		r := newRegistry(t, b.open(t), nil)
		g := testGrant("a")
		pw := mustAdd(t, r, testSpec, g)
		s := mustVerify(t, r, testSpec.Name, pw)
		next := &Grant{AccessToken: "new-access-token", Expiry: time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)}
		got, err := s.UpdateGrant(t.Context(), func(old *Grant) (*Grant, error) { return next, nil })
		if err != nil || got.RefreshToken != g.RefreshToken {
			t.Fatalf("UpdateGrant = %+v, %v; want the old refresh token kept", got, err)
		}
		want := *next
		want.RefreshToken = g.RefreshToken
		checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, pw)), &want)
	})
}

// TestConflictRetry makes a password change and a grant update race for
// the record's version, both ways round, and checks that neither is lost.
func TestConflictRetry(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		st := b.open(t)
		r := newRegistry(t, st, nil)
		pw := mustAdd(t, r, testSpec, testGrant("a"))

		// 1. A password is added while the refresh runs, between the
		// grant update's read and its write.
		s := mustVerify(t, r, testSpec.Name, pw)
		other := mustVerify(t, r, testSpec.Name, pw)
		g1 := testGrant("one")
		var pw2 string
		calls := 0
		if _, err := s.UpdateGrant(ctx, func(old *Grant) (*Grant, error) {
			calls++
			var err error
			pw2, err = other.AddPassword(ctx, "laptop", "")
			return g1, err
		}); err != nil {
			t.Fatal(err)
		}
		if calls != 1 {
			t.Fatalf("refresh ran %d times, want once", calls)
		}
		checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, pw2)), g1)
		checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, pw)), g1)

		// 2. The grant is updated between a password change's read and
		// its write.
		g2 := testGrant("two")
		hooked := &hookStore{AccountStore: st}
		rh := newRegistry(t, hooked, nil)
		sh := mustVerify(t, rh, testSpec.Name, pw) // LastUsed is fresh: no write
		hooked.beforePut = func() {
			if _, err := mustVerify(t, r, testSpec.Name, pw).UpdateGrant(ctx, func(*Grant) (*Grant, error) { return g2, nil }); err != nil {
				t.Error(err)
			}
		}
		pw3, err := sh.AddPassword(ctx, "scanner", "")
		if err != nil {
			t.Fatal(err)
		}
		if hooked.beforePut != nil {
			t.Fatal("the hook did not run")
		}
		for _, p := range []string{pw, pw2, pw3} {
			checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, p)), g2)
		}
		a, err := st.LoadAccount(ctx, testSpec.Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Passwords) != 3 || a.GrantVersion != 3 {
			t.Errorf("record after both races: %d passwords, grant version %d; want 3, 3", len(a.Passwords), a.GrantVersion)
		}
	})
}

func TestServerKey(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		st := b.open(t)
		key1, key2 := secret.NewKey(), secret.NewKey()
		plain := newRegistry(t, st, nil)
		r1 := newRegistry(t, st, &Options{ServerKey: key1})

		// Without a server key nothing unlocks without a password.
		g := testGrant("a")
		pw := mustAdd(t, plain, testSpec, g)
		_, err := plain.Unlock(ctx, testSpec.Name)
		wantErr(t, err, ErrNoServerKey, "Unlock without a server key")
		_, err = r1.Unlock(ctx, testSpec.Name)
		wantErr(t, err, ErrNoServerKey, "Unlock of an account not escrowed")
		_, err = plain.AddPassword(ctx, testSpec.Name, "laptop", "", "")
		wantErr(t, err, ErrNoServerKey, "AddPassword without a password or a server key")
		pw2, err := plain.AddPassword(ctx, testSpec.Name, "laptop", "", pw)
		if err != nil {
			t.Fatalf("AddPassword unlocked with an app password: %v", err)
		}

		// A login through a registry with a server key escrows the data
		// key; from then on the server key unlocks it.
		mustVerify(t, r1, testSpec.Name, pw2)
		info, _ := r1.Lookup(ctx, testSpec.Name)
		if !info.Escrowed {
			t.Fatalf("after a login with a server key: %+v, want escrowed", info)
		}
		s, err := r1.Unlock(ctx, testSpec.Name)
		if err != nil {
			t.Fatal(err)
		}
		if s.Label() != "" {
			t.Errorf("Label of a server-key session = %q", s.Label())
		}
		checkGrant(t, mustGrant(t, s), g)
		pw3, err := r1.AddPassword(ctx, testSpec.Name, "printer", "", "")
		if err != nil {
			t.Fatalf("AddPassword with the server key: %v", err)
		}
		checkGrant(t, mustGrant(t, mustVerify(t, plain, testSpec.Name, pw3)), g)

		// Another key does not unlock it.
		r2 := newRegistry(t, st, &Options{ServerKey: key2})
		_, err = r2.Unlock(ctx, testSpec.Name)
		wantErr(t, err, ErrNoServerKey, "Unlock with another server key")
		if info, _ := r2.Lookup(ctx, testSpec.Name); info.Escrowed || !info.EscrowedOther {
			t.Errorf("Lookup through another key: %+v", info)
		}

		// Rotation: key2 with key1 as previous re-escrows; then key2 alone
		// unlocks and key1 no longer does.
		mustAdd(t, r1, Spec{Name: "bob@contoso.example", Upstream: "m365", Provider: "microsoft", Identity: "bob@contoso.example"}, testGrant("b"))
		rot := newRegistry(t, st, &Options{ServerKey: key2, PreviousServerKeys: [][]byte{key1}})
		n, err := rot.SyncEscrow(ctx)
		if err != nil || n != 2 {
			t.Fatalf("SyncEscrow = %d, %v; want 2", n, err)
		}
		if n, err := rot.SyncEscrow(ctx); err != nil || n != 0 {
			t.Fatalf("second SyncEscrow = %d, %v; want 0", n, err)
		}
		checkGrant(t, mustGrant(t, func() *Session { s, err := r2.Unlock(ctx, testSpec.Name); must(t, err); return s }()), g)
		_, err = r1.Unlock(ctx, "bob@contoso.example")
		wantErr(t, err, ErrNoServerKey, "Unlock with the rotated-out key")

		// Revoking every password is allowed while an escrow exists;
		// dropping the escrow of an account without passwords is not.
		for _, l := range []string{"default", "laptop", "printer"} {
			if err := r2.RevokePassword(ctx, testSpec.Name, l); err != nil {
				t.Fatalf("revoke %q with escrow: %v", l, err)
			}
		}
		wantErr(t, r2.DropEscrow(ctx, testSpec.Name), ErrLastPassword, "DropEscrow of an account without passwords")
		pw4, err := r2.AddPassword(ctx, testSpec.Name, "new", "", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := r2.DropEscrow(ctx, testSpec.Name); err != nil {
			t.Fatal(err)
		}
		_, err = r2.Unlock(ctx, testSpec.Name)
		wantErr(t, err, ErrNoServerKey, "Unlock after DropEscrow")
		checkGrant(t, mustGrant(t, mustVerify(t, plain, testSpec.Name, pw4)), g)
	})
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestTampered changes stored records the way someone with write access to
// the state could, and checks that no grant opens for the altered record.
func TestTampered(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		st := b.open(t)
		r := newRegistry(t, st, nil)
		pwA := mustAdd(t, r, testSpec, testGrant("a"))
		bob := testSpec
		bob.Name, bob.Identity = "bob@contoso.example", "bob@contoso.example"
		pwB := mustAdd(t, r, bob, testGrant("b"))
		pristine, err := st.LoadAccount(ctx, testSpec.Name)
		must(t, err)
		bobRec, err := st.LoadAccount(ctx, bob.Name)
		must(t, err)

		alter := func(what string, change func(a *state.Account)) {
			t.Helper()
			cur, err := st.LoadAccount(ctx, testSpec.Name)
			must(t, err)
			a := *pristine
			a.Passwords = append([]state.AppPassword(nil), pristine.Passwords...)
			a.Version = cur.Version
			change(&a)
			if _, err := st.PutAccount(ctx, &a); err != nil {
				t.Fatal(err)
			}
		}
		for what, change := range map[string]func(a *state.Account){
			"upstream":       func(a *state.Account) { a.Upstream = "evil" },
			"identity":       func(a *state.Account) { a.Identity = "mallory@contoso.example" },
			"mailbox":        func(a *state.Account) { a.Mailbox = "ceo@contoso.example" },
			"kind":           func(a *state.Account) { a.Kind = string(AppOnly) },
			"grant version":  func(a *state.Account) { a.GrantVersion++ },
			"grant of bob":   func(a *state.Account) { a.SealedGrant = bobRec.SealedGrant },
			"flipped byte":   func(a *state.Account) { a.SealedGrant = bytes.Clone(a.SealedGrant); a.SealedGrant[20] ^= 1 },
			"truncated":      func(a *state.Account) { a.SealedGrant = a.SealedGrant[:len(a.SealedGrant)-1] },
			"dek version":    func(a *state.Account) { a.DEKVersion++ },
			"renamed label":  func(a *state.Account) { a.Passwords[0].Label = "other" },
			"wrapped of bob": func(a *state.Account) { a.Passwords[0].WrappedDEK = bobRec.Passwords[0].WrappedDEK },
		} {
			alter(what, change)
			s, err := r.Verify(ctx, testSpec.Name, pwA)
			if err == nil {
				g, err := s.Grant(ctx)
				s.Close()
				if err == nil {
					t.Errorf("%s changed: the grant still opens: %+v", what, g)
				}
			} else if errors.Is(err, ErrBadPassword) {
				t.Errorf("%s changed: Verify says wrong password, want an error about the record: %v", what, err)
			}
		}
		// bob's password and hash copied over alice's check bob's
		// password, yet do not open alice's data key.
		alter("bob's password", func(a *state.Account) { a.Passwords[0].Hash = bobRec.Passwords[0].Hash })
		if s, err := r.Verify(ctx, testSpec.Name, pwB); err == nil {
			s.Close()
			t.Error("bob's password hash on alice's record opened alice's data key")
		}
		alter("restored", func(*state.Account) {})
		mustGrant(t, mustVerify(t, r, testSpec.Name, pwA))
	})
}

func TestRekey(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		st := b.open(t)
		r := newRegistry(t, st, &Options{ServerKey: secret.NewKey()})
		pw := mustAdd(t, r, testSpec, testGrant("a"))
		old := mustVerify(t, r, testSpec.Name, pw)
		before, _ := st.LoadAccount(ctx, testSpec.Name)
		g := testGrant("b")
		pw2, err := r.Rekey(ctx, testSpec.Name, g, "", "")
		if err != nil {
			t.Fatal(err)
		}
		_, err = r.Verify(ctx, testSpec.Name, pw)
		wantErr(t, err, ErrBadPassword, "Verify with a password from before Rekey")
		checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, pw2)), g)
		u, err := r.Unlock(ctx, testSpec.Name)
		must(t, err)
		checkGrant(t, mustGrant(t, u), g)
		_, err = old.Grant(ctx)
		wantErr(t, err, ErrStale, "Grant of a session from before Rekey")
		_, err = old.AddPassword(ctx, "x", "")
		wantErr(t, err, ErrStale, "AddPassword of a session from before Rekey")
		// The old data key opens nothing stored now.
		after, _ := st.LoadAccount(ctx, testSpec.Name)
		if after.DEKVersion != before.DEKVersion+1 || bytes.Equal(after.ServerWrappedDEK, before.ServerWrappedDEK) {
			t.Errorf("DEK version %d -> %d", before.DEKVersion, after.DEKVersion)
		}
		old.mu.Lock()
		oldKey := bytes.Clone(old.dek)
		old.mu.Unlock()
		if _, err := openGrant(oldKey, after); err == nil {
			t.Error("the data key from before Rekey opens the new grant")
		}
		_, err = r.Rekey(ctx, testSpec.Name, nil, "", "")
		if err == nil {
			t.Error("Rekey of a delegated account without a grant succeeded")
		}
	})
}

func TestReconsent(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		r := newRegistry(t, b.open(t), nil)
		pw := mustAdd(t, r, testSpec, testGrant("a"))
		s := mustVerify(t, r, testSpec.Name, pw)
		_, err := s.UpdateGrant(ctx, func(*Grant) (*Grant, error) {
			return nil, fmt.Errorf("%w: oauth2: \"invalid_grant\" AADSTS700082", ErrReconsentNeeded)
		})
		wantErr(t, err, ErrReconsentNeeded, "UpdateGrant whose refresh was refused")
		list, err := r.List(ctx)
		must(t, err)
		if len(list) != 1 || list[0].Grant.Status != GrantReconsentNeeded || !strings.Contains(list[0].Grant.Reason, "AADSTS700082") || list[0].Grant.Since.IsZero() {
			t.Fatalf("List = %+v", list[0].Grant)
		}
		_, err = s.Grant(ctx)
		wantErr(t, err, ErrReconsentNeeded, "Grant of a marked account")
		// An error that is not about consent leaves the grant alone.
		s2 := mustVerify(t, r, testSpec.Name, pw)
		must(t, s2.SetGrant(ctx, testGrant("b")))
		_, err = s2.UpdateGrant(ctx, func(*Grant) (*Grant, error) { return nil, errors.New("connection refused") })
		if err == nil || errors.Is(err, ErrReconsentNeeded) {
			t.Fatalf("UpdateGrant with a network error: %v", err)
		}
		if info, _ := r.Lookup(ctx, testSpec.Name); info.Grant.Status != GrantOK {
			t.Fatalf("status after a network error: %+v", info.Grant)
		}
		must(t, r.MarkReconsent(ctx, testSpec.Name, "operator says so"))
		g := testGrant("c")
		must(t, s.SetGrant(ctx, g))
		checkGrant(t, mustGrant(t, s), g)
		if info, _ := r.Lookup(ctx, testSpec.Name); info.Grant.Status != GrantOK || info.Grant.Reason != "" {
			t.Fatalf("status after SetGrant: %+v", info.Grant)
		}
	})
}

func TestAppOnly(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		r := newRegistry(t, b.open(t), nil)
		spec := Spec{Name: "scanner@contoso.example", Kind: AppOnly, Upstream: "m365", Provider: "microsoft", Identity: "scanner@contoso.example"}
		_, err := r.Add(ctx, Spec{Name: "x@y", Kind: AppOnly, Upstream: "m365", Provider: "microsoft", Identity: "x@y", Mailbox: "z@y"}, nil)
		if err == nil {
			t.Error("Add of an app-only account with a Mailbox succeeded")
		}
		pw := mustAdd(t, r, spec, nil)
		info, _ := r.Lookup(ctx, spec.Name)
		if info.Kind != AppOnly || info.Grant.Status != GrantNone || info.LoginUser() != spec.Identity {
			t.Fatalf("Lookup = %+v", info)
		}
		s := mustVerify(t, r, spec.Name, pw)
		_, err = s.Grant(ctx)
		wantErr(t, err, ErrNoGrant, "Grant of an app-only account before its first token")
		tok := &Grant{AccessToken: "app-token-" + randomToken(), TokenType: "Bearer", Expiry: time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)}
		got, err := s.UpdateGrant(ctx, func(old *Grant) (*Grant, error) {
			if old != nil {
				return nil, fmt.Errorf("old = %+v, want nil", old)
			}
			return tok, nil
		})
		must(t, err)
		checkGrant(t, got, tok)
		checkGrant(t, mustGrant(t, mustVerify(t, r, spec.Name, pw)), tok)
		// Delegated accounts need a token.
		_, err = r.Add(ctx, Spec{Name: "d@y", Upstream: "m365", Provider: "microsoft", Identity: "d@y"}, nil)
		if err == nil {
			t.Error("Add of a delegated account without a grant succeeded")
		}
	})
}

// TestRehash: a login through a registry with other parameters stores the
// password again under them; it keeps working under either.
func TestRehash(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		st := b.open(t)
		r1 := newRegistry(t, st, nil)
		g := testGrant("a")
		pw := mustAdd(t, r1, testSpec, g)
		p2 := secret.Params{Time: 2, Memory: 128, Threads: 1}
		r2 := newRegistry(t, st, &Options{Params: p2})
		checkGrant(t, mustGrant(t, mustVerify(t, r2, testSpec.Name, pw)), g)
		a, _ := st.LoadAccount(t.Context(), testSpec.Name)
		h, err := secret.ParsePHC(a.Passwords[0].Hash)
		must(t, err)
		wp, err := secret.PasswordWrapParams(a.Passwords[0].WrappedDEK)
		must(t, err)
		if h.Params != p2 || wp != p2 {
			t.Fatalf("after a login under %+v: hash %+v, wrap %+v", p2, h.Params, wp)
		}
		checkGrant(t, mustGrant(t, mustVerify(t, r1, testSpec.Name, pw)), g)
		checkGrant(t, mustGrant(t, mustVerify(t, r2, testSpec.Name, pw)), g)
	})
}

// TestDefaultParams runs one enrolment and login at the real cost.
func TestDefaultParams(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		st := b.open(t)
		r, err := New(st, nil)
		must(t, err)
		g := testGrant("a")
		pw := mustAdd(t, r, testSpec, g)
		checkGrant(t, mustGrant(t, mustVerify(t, r, testSpec.Name, pw)), g)
		a, _ := st.LoadAccount(t.Context(), testSpec.Name)
		if !strings.HasPrefix(a.Passwords[0].Hash, "$argon2id$v=19$m=19456,t=2,p=1$") {
			t.Errorf("hash %s, want the default parameters", a.Passwords[0].Hash)
		}
	})
}

func TestValidation(t *testing.T) {
	forEachBacking(t, func(t *testing.T, b *backing) {
		ctx := t.Context()
		r := newRegistry(t, b.open(t), nil)
		g := testGrant("a")
		for what, spec := range map[string]Spec{
			"device tag":     {Name: "alice@x#scanner", Upstream: "u", Provider: "p", Identity: "i"},
			"space":          {Name: "alice @x", Upstream: "u", Provider: "p", Identity: "i"},
			"empty":          {Name: "", Upstream: "u", Provider: "p", Identity: "i"},
			"no upstream":    {Name: "a@x", Provider: "p", Identity: "i"},
			"no identity":    {Name: "a@x", Upstream: "u", Provider: "p"},
			"unknown kind":   {Name: "a@x", Kind: "magic", Upstream: "u", Provider: "p", Identity: "i"},
			"short password": {Name: "a@x", Upstream: "u", Provider: "p", Identity: "i", Password: "short"},
			"label space":    {Name: "a@x", Upstream: "u", Provider: "p", Identity: "i", Label: " x"},
			"label control":  {Name: "a@x", Upstream: "u", Provider: "p", Identity: "i", Label: "x\ny"},
		} {
			if _, err := r.Add(ctx, spec, g); err == nil {
				t.Errorf("Add with %s succeeded", what)
			}
		}
		if list, _ := r.List(ctx); len(list) != 0 {
			t.Fatalf("refused Adds stored %d accounts", len(list))
		}
		pw, err := r.Add(ctx, Spec{Name: "a@x", Upstream: "u", Provider: "p", Identity: "i", Password: "Operator Chosen 2026"}, g)
		if err != nil || pw != "Operator Chosen 2026" {
			t.Fatalf("Add with an operator-set password = %q, %v", pw, err)
		}
		_, err = r.Verify(ctx, "a@x", "operator chosen 2026")
		wantErr(t, err, ErrBadPassword, "an operator-set password in another case")
		s := mustVerify(t, r, "a@x", pw)
		for i := 1; i < MaxPasswords; i++ {
			if _, err := s.AddPassword(ctx, fmt.Sprint("device ", i), ""); err != nil {
				t.Fatal(err)
			}
		}
		_, err = s.AddPassword(ctx, "one too many", "")
		wantErr(t, err, ErrTooManyPasswords, fmt.Sprintf("password %d", MaxPasswords+1))
		// SetPassword replaces one of a label.
		npw, err := s.SetPassword(ctx, "device 3", "")
		must(t, err)
		mustVerify(t, r, "a@x", npw)
		if info, _ := r.Lookup(ctx, "a@x"); len(info.Passwords) != MaxPasswords || info.Passwords[3].Label != "device 3" {
			t.Fatalf("after SetPassword: %+v", info.Passwords)
		}
	})
}

func TestSessionClose(t *testing.T) {
	r := newRegistry(t, (&backing{kind: "bolt", path: t.TempDir() + "/s.db"}).open(t), nil)
	pw := mustAdd(t, r, testSpec, testGrant("a"))
	s, err := r.Verify(t.Context(), testSpec.Name, pw)
	must(t, err)
	key := s.dek
	s.Close()
	if !bytes.Equal(key, make([]byte, len(key))) || s.dek != nil {
		t.Error("Close left the data key in memory")
	}
	_, err = s.Grant(t.Context())
	wantErr(t, err, ErrClosed, "Grant after Close")
	_, err = s.UpdateGrant(t.Context(), func(*Grant) (*Grant, error) { return testGrant("b"), nil })
	wantErr(t, err, ErrClosed, "UpdateGrant after Close")
	s.Close()
}

// TestHashSlots: argon2id runs wait for a free slot, or give up when the
// context ends.
func TestHashSlots(t *testing.T) {
	r := newRegistry(t, (&backing{kind: "bolt", path: t.TempDir() + "/s.db"}).open(t), &Options{MaxParallelHashes: 1})
	pw := mustAdd(t, r, testSpec, testGrant("a"))
	r.sem <- struct{}{} // the only slot is busy
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	ran := false
	wantErr(t, r.hashRun(ctx, func() { ran = true }), context.Canceled, "hashRun with no free slot and an ended context")
	if ran {
		t.Error("hashRun ran without a slot")
	}
	done := make(chan error, 1)
	go func() {
		s, err := r.Verify(t.Context(), testSpec.Name, pw)
		if err == nil {
			s.Close()
		}
		done <- err
	}()
	<-r.sem // free the slot: Verify goes on
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestToken(t *testing.T) {
	g := testGrant("a")
	tok := g.ToToken()
	if tok.AccessToken != g.AccessToken || tok.RefreshToken != g.RefreshToken || tok.TokenType != "Bearer" || !tok.Expiry.Equal(g.Expiry) || tok.Extra("scope") != g.Scope {
		t.Fatalf("ToToken = %+v, scope %v", tok, tok.Extra("scope"))
	}
	checkGrant(t, FromToken(tok), g)
	before := time.Now()
	fromWire := (&oauth2.Token{AccessToken: "at", ExpiresIn: 3600}).WithExtra(map[string]any{"scope": "a b", "expires_in": 3600})
	got := FromToken(fromWire)
	if got.Scope != "a b" || got.Expiry.Before(before.Add(time.Hour)) || got.Expiry.After(time.Now().Add(time.Hour)) {
		t.Errorf("FromToken(expires_in 3600) = %+v", got)
	}
	if FromToken(nil) != nil {
		t.Error("FromToken(nil) != nil")
	}
	if (&Grant{AccessToken: "x"}).Fresh(time.Now(), time.Hour) != true ||
		(&Grant{AccessToken: "x", Expiry: time.Now().Add(time.Minute)}).Fresh(time.Now(), 2*time.Minute) ||
		(&Grant{Expiry: time.Now().Add(time.Hour)}).Fresh(time.Now(), 0) {
		t.Error("Fresh")
	}
}

func TestServerKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := dir + "/key"
	must(t, WriteServerKeyFile(path))
	fi, err := os.Stat(path)
	must(t, err)
	if fi.Mode().Perm() != 0o600 || fi.Size() != ServerKeySize {
		t.Errorf("key file mode %v size %d", fi.Mode().Perm(), fi.Size())
	}
	if err := WriteServerKeyFile(path); err == nil {
		t.Error("WriteServerKeyFile overwrote a key")
	}
	k, err := ReadServerKeyFile(path)
	if err != nil || !bytes.Equal(k, readFile(t, path)) {
		t.Fatalf("ReadServerKeyFile = %x, %v", k, err)
	}
	must(t, os.WriteFile(dir+"/hex", []byte(hex.EncodeToString(k)+"\n"), 0o600))
	if k2, err := ReadServerKeyFile(dir + "/hex"); err != nil || !bytes.Equal(k2, k) {
		t.Fatalf("ReadServerKeyFile(hex) = %x, %v", k2, err)
	}
	must(t, os.WriteFile(dir+"/short", k[:31], 0o600))
	if _, err := ReadServerKeyFile(dir + "/short"); err == nil {
		t.Error("a 31-byte key file was read")
	}
	if _, err := New(nil, &Options{ServerKey: k[:16]}); err == nil {
		t.Error("New with a 16-byte server key succeeded")
	}
}
