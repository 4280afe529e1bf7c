package secret

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math/bits"
	"strings"
	"testing"
)

// Known answers computed with the reference implementation of argon2
// (Debian's argon2 package, "argon2 SALT -id -t T -k KIB -p P -l 32 -e").
var phcVectors = []struct {
	password, salt string
	params         Params
	phc            string
}{
	{"password", "somesalt", Params{Time: 2, Memory: 65536, Threads: 1},
		"$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"},
	{"correct horse battery staple", "popbridge-salt16", DefaultParams,
		"$argon2id$v=19$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is"},
	{"S3cr3t pässword", "0123456789abcdef", Params{Time: 3, Memory: 12288, Threads: 2},
		"$argon2id$v=19$m=12288,t=3,p=2$MDEyMzQ1Njc4OWFiY2RlZg$OU3W6PAcVhjKE8NTCw+fY+Aph/OX36wqoF39yDQJbjs"},
}

func TestPHCKnownAnswers(t *testing.T) {
	for _, v := range phcVectors {
		if got := hashWithSalt([]byte(v.password), []byte(v.salt), v.params); got != v.phc {
			t.Errorf("hash of %q with salt %q, %+v:\n got %s\nwant %s", v.password, v.salt, v.params, got, v.phc)
		}
		ok, err := VerifyPassword([]byte(v.password), v.phc)
		if err != nil || !ok {
			t.Errorf("VerifyPassword(%q, reference hash) = %v, %v; want true", v.password, ok, err)
		}
		h, err := ParsePHC(v.phc)
		if err != nil {
			t.Fatalf("ParsePHC(%s): %v", v.phc, err)
		}
		if h.Params != v.params || string(h.Salt) != v.salt || len(h.Key) != 32 || h.String() != v.phc {
			t.Errorf("ParsePHC(%s) = %+v, salt %q, %d-byte key; re-encoded %s", v.phc, h.Params, h.Salt, len(h.Key), h.String())
		}
	}
}

func TestDeriveKeyKnownAnswer(t *testing.T) {
	// argon2 kek-salt-0123456 -id -t 2 -k 19456 -p 1 -l 32 -r
	want := "180b266bcecdf76899bdb3f4fc948dad4253b187fda631cfd52f1ffbee24e157"
	got := DeriveKey([]byte("abcde-fghij-kmnpq-rstuv"), []byte("kek-salt-0123456"), DefaultParams)
	if hex.EncodeToString(got) != want {
		t.Errorf("DeriveKey = %x, want %s", got, want)
	}
}

func TestHashPasswordRoundTrip(t *testing.T) {
	p := Params{Time: 1, Memory: 64, Threads: 1}
	h1, err := HashPassword([]byte("hunter2hunter2"), p)
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := HashPassword([]byte("hunter2hunter2"), p)
	if h1 == h2 {
		t.Errorf("two hashes of one password are equal (%s): the salt is not fresh", h1)
	}
	if !strings.HasPrefix(h1, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Errorf("hash %s does not carry its parameters", h1)
	}
	for _, pw := range []string{"hunter2hunter2", "hunter2hunter3", "Hunter2hunter2", "hunter2hunter", ""} {
		ok, err := VerifyPassword([]byte(pw), h1)
		if err != nil {
			t.Fatal(err)
		}
		if ok != (pw == "hunter2hunter2") {
			t.Errorf("VerifyPassword(%q) = %v", pw, ok)
		}
	}
	// A changed salt or key fails the check.
	h, _ := ParsePHC(h1)
	h.Salt[0] ^= 1
	if ok, _ := VerifyPassword([]byte("hunter2hunter2"), h.String()); ok {
		t.Error("hash with a changed salt still verifies")
	}
	h.Salt[0] ^= 1
	h.Key[31] ^= 0x80
	if ok, _ := VerifyPassword([]byte("hunter2hunter2"), h.String()); ok {
		t.Error("hash with a changed key still verifies")
	}
	if _, err := HashPassword([]byte("x"), Params{}); err == nil {
		t.Error("HashPassword with zero params succeeded")
	}
}

func TestParsePHCRejects(t *testing.T) {
	good := phcVectors[1].phc
	if _, err := ParsePHC(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		"",
		"argon2id$v=19$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2i$v=19$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=16$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$t=2,m=19456,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=2$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=2,p=1,x=3$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=0,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=4,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=4194304,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=99,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=2,p=0$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=2,p=300$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=02,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=-2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",
		"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is",                   // 4-byte salt
		"$argon2id$v=19$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg==$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is", // padded
		"$argon2id$v=19$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047L",                              // short hash
		"$argon2id$v=19$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1Is$",  // extra field
		"$argon2id$v=19$m=19456,t=2,p=1$cG9wYnJpZGdlLXNhbHQxNg$yLdVfoxhBOtI047LibjpF69wTCfxvuKMTDhOUN2r1I*",   // bad base64
	} {
		if h, err := ParsePHC(bad); err == nil {
			t.Errorf("ParsePHC(%q) = %+v, no error", bad, h)
		}
		if ok, err := VerifyPassword([]byte("correct horse battery staple"), bad); ok || err == nil {
			t.Errorf("VerifyPassword against %q = %v, %v; want false and an error", bad, ok, err)
		}
	}
}

func TestSealKnownAnswer(t *testing.T) {
	// AES-256-GCM, all-zero key, nonce and 16-byte plaintext (test case 14
	// of the GCM specification), in Seal's format.
	sealed, _ := hex.DecodeString("01" + "000000000000000000000000" + "cea7403d4d606b6e074ec5d3baf39d18" + "d0d1c8a799996bf0265b98b5d48ab919")
	pt, err := Open(make([]byte, 32), sealed, nil)
	if err != nil || !bytes.Equal(pt, make([]byte, 16)) {
		t.Errorf("Open(test case 14) = %x, %v", pt, err)
	}
	// With associated data (computed with Python's cryptography AESGCM).
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	nonce := make([]byte, 12)
	for i := range nonce {
		nonce[i] = byte(100 + i)
	}
	ct, _ := hex.DecodeString("3a7eb8141c9a3eb34a0d348db4485acc70f138da9f904f3eed34280c84b6648e3a49")
	sealed = append(append([]byte{1}, nonce...), ct...)
	pt, err = Open(key, sealed, []byte("popbridge aad"))
	if err != nil || string(pt) != "refresh-token-0123" {
		t.Errorf("Open(vector with aad) = %q, %v", pt, err)
	}
	if _, err := Open(key, sealed, []byte("popbridge aae")); !errors.Is(err, ErrMismatch) {
		t.Errorf("Open with other aad: %v, want ErrMismatch", err)
	}
}

func TestSealRoundTripAndTamper(t *testing.T) {
	key := NewKey()
	aad := []byte("account alice grant 7")
	msg := []byte(`{"access_token":"at-secret","refresh_token":"rt-secret"}`)
	s1, err := Seal(key, msg, aad)
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := Seal(key, msg, aad)
	if bytes.Equal(s1, s2) || bytes.Equal(s1[1:13], s2[1:13]) {
		t.Error("two seals of one message share a nonce")
	}
	if len(s1) != len(msg)+sealedExtra {
		t.Errorf("sealed %d bytes into %d, want %d", len(msg), len(s1), len(msg)+sealedExtra)
	}
	if bytes.Contains(s1, []byte("secret")) {
		t.Error("sealed bytes contain the plaintext")
	}
	pt, err := Open(key, s1, aad)
	if err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("Open = %q, %v", pt, err)
	}
	// Every single-bit change of the sealed bytes is detected.
	for i := range s1 {
		for bit := range 8 {
			c := bytes.Clone(s1)
			c[i] ^= 1 << bit
			if pt, err := Open(key, c, aad); !errors.Is(err, ErrMismatch) {
				t.Fatalf("Open with byte %d bit %d flipped = %q, %v; want ErrMismatch", i, bit, pt, err)
			}
		}
	}
	for _, c := range [][]byte{nil, s1[:len(s1)-1], s1[:sealedExtra-1], append(bytes.Clone(s1), 0)} {
		if _, err := Open(key, c, aad); !errors.Is(err, ErrMismatch) {
			t.Errorf("Open of %d of %d bytes: %v, want ErrMismatch", len(c), len(s1), err)
		}
	}
	for _, a := range [][]byte{nil, []byte("account alice grant 8"), []byte("account alicf grant 7"), append(bytes.Clone(aad), 0)} {
		if _, err := Open(key, s1, a); !errors.Is(err, ErrMismatch) {
			t.Errorf("Open with aad %q: %v, want ErrMismatch", a, err)
		}
	}
	other := NewKey()
	if _, err := Open(other, s1, aad); !errors.Is(err, ErrMismatch) {
		t.Errorf("Open with another key: %v, want ErrMismatch", err)
	}
	if _, err := Seal(key[:16], msg, aad); err == nil {
		t.Error("Seal with a 16-byte key succeeded")
	}
}

func TestWrap(t *testing.T) {
	kek, dek := NewKey(), NewKey()
	w, err := Wrap(kek, dek, []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unwrap(kek, w, []byte("a"))
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("Unwrap = %x, %v; want %x", got, err, dek)
	}
	if _, err := Unwrap(kek, w, []byte("b")); !errors.Is(err, ErrMismatch) {
		t.Errorf("Unwrap with other aad: %v", err)
	}
	if _, err := Wrap(kek, dek[:31], nil); err == nil {
		t.Error("Wrap of a 31-byte key succeeded")
	}
	// A sealed message that is not a key is refused by Unwrap.
	s, _ := Seal(kek, []byte("short"), nil)
	if _, err := Unwrap(kek, s, nil); !errors.Is(err, ErrMismatch) {
		t.Errorf("Unwrap of a 5-byte message: %v", err)
	}
}

func TestWrapWithPassword(t *testing.T) {
	p := Params{Time: 1, Memory: 256, Threads: 1}
	dek := NewKey()
	aad := []byte("alice password scanner")
	blob, err := WrapWithPassword([]byte("pw-one-123456"), dek, aad, p)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := PasswordWrapParams(blob); err != nil || got != p {
		t.Errorf("PasswordWrapParams = %+v, %v; want %+v", got, err, p)
	}
	got, err := UnwrapWithPassword([]byte("pw-one-123456"), blob, aad)
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("UnwrapWithPassword = %x, %v", got, err)
	}
	if _, err := UnwrapWithPassword([]byte("pw-one-123457"), blob, aad); !errors.Is(err, ErrMismatch) {
		t.Errorf("wrong password: %v, want ErrMismatch", err)
	}
	if _, err := UnwrapWithPassword([]byte("pw-one-123456"), blob, []byte("alice password laptop")); !errors.Is(err, ErrMismatch) {
		t.Errorf("other aad: %v, want ErrMismatch", err)
	}
	// Lowering the stored cost, or changing the salt, is detected: the
	// header is authenticated.
	weaker := bytes.Clone(blob)
	weaker[8] = 2 // time 1 -> 2
	if _, err := UnwrapWithPassword([]byte("pw-one-123456"), weaker, aad); !errors.Is(err, ErrMismatch) {
		t.Errorf("changed time parameter: %v, want ErrMismatch", err)
	}
	salted := bytes.Clone(blob)
	salted[11] ^= 1
	if _, err := UnwrapWithPassword([]byte("pw-one-123456"), salted, aad); !errors.Is(err, ErrMismatch) {
		t.Errorf("changed salt: %v, want ErrMismatch", err)
	}
	huge := bytes.Clone(blob)
	huge[1] = 0xff // memory of gigabytes
	if _, err := UnwrapWithPassword([]byte("pw-one-123456"), huge, aad); err == nil || errors.Is(err, ErrMismatch) {
		t.Errorf("memory out of range: %v, want a parameter error before any hashing", err)
	}
	// The KEK comes from a salt of its own: two wraps differ.
	blob2, _ := WrapWithPassword([]byte("pw-one-123456"), dek, aad, p)
	if bytes.Equal(blob[11:27], blob2[11:27]) {
		t.Error("two password wraps share a salt")
	}
}

func TestGeneratePassword(t *testing.T) {
	seen := map[string]bool{}
	var counts [32]int
	for range 2000 {
		pw := GeneratePassword()
		if len(pw) != 23 || pw[5] != '-' || pw[11] != '-' || pw[17] != '-' {
			t.Fatalf("password %q is not 4 dashed groups of 5", pw)
		}
		if seen[pw] {
			t.Fatalf("password %q generated twice", pw)
		}
		seen[pw] = true
		for _, c := range strings.ReplaceAll(pw, "-", "") {
			i := strings.IndexRune(PasswordAlphabet, c)
			if i < 0 {
				t.Fatalf("password %q has %q, not in the alphabet", pw, c)
			}
			counts[i]++
		}
		if NormalizePassword(pw) != pw {
			t.Fatalf("NormalizePassword changed generated %q", pw)
		}
	}
	if len(PasswordAlphabet) != 32 || bits.Len(uint(len(PasswordAlphabet)-1)) != 5 || PasswordBits < 100 {
		t.Fatalf("alphabet of %d, %d bits", len(PasswordAlphabet), PasswordBits)
	}
	for _, c := range "01lo" {
		if strings.ContainsRune(PasswordAlphabet, c) {
			t.Errorf("alphabet holds ambiguous %q", c)
		}
	}
	// 40,000 symbols: each of 32 is expected 1250 times; a symbol never or
	// seldom drawn means a broken mapping.
	for i, n := range counts {
		if n < 1000 || n > 1500 {
			t.Errorf("symbol %q drawn %d times of 40000", PasswordAlphabet[i], n)
		}
	}
}

func TestNormalizePassword(t *testing.T) {
	for in, want := range map[string]string{
		"k7m2x-q9dpa-3hv8e-wnt4c":    "k7m2x-q9dpa-3hv8e-wnt4c",
		"K7M2X-Q9DPA-3HV8E-WNT4C":    "k7m2x-q9dpa-3hv8e-wnt4c",
		"k7m2xq9dpa3hv8ewnt4c":       "k7m2x-q9dpa-3hv8e-wnt4c",
		"k7m2x q9dpa 3hv8e wnt4c":    "k7m2x-q9dpa-3hv8e-wnt4c",
		"k7m2x-q9dpa3hv8e-wnt4c":     "k7m2x-q9dpa-3hv8e-wnt4c",
		"k7m2x--q9dpa-3hv8e-wnt4c":   "k7m2x--q9dpa-3hv8e-wnt4c",   // two separators: not the shape
		"k7m2-xq9dpa-3hv8e-wnt4c":    "k7m2-xq9dpa-3hv8e-wnt4c",    // separator inside a group
		"k7m2x-q9dpa-3hv8e-wnt4c-":   "k7m2x-q9dpa-3hv8e-wnt4c-",   // trailing separator
		"k7m2x-q9dpa-3hv8e-wnt4":     "k7m2x-q9dpa-3hv8e-wnt4",     // too short
		"k7m2x-q9dpa-3hv8e-wnt4cc":   "k7m2x-q9dpa-3hv8e-wnt4cc",   // too long
		"k0m2x-q9dpa-3hv8e-wnt4c":    "k0m2x-q9dpa-3hv8e-wnt4c",    // 0 is not in the alphabet
		"Operator-Set Password 2026": "Operator-Set Password 2026", // any other string is kept
		"":                           "",
	} {
		if got := NormalizePassword(in); got != want {
			t.Errorf("NormalizePassword(%q) = %q, want %q", in, got, want)
		}
	}
}
