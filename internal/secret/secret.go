// Package secret is popbridge's small kit of cryptography for secrets at
// rest: argon2id password hashes as PHC strings, argon2id key derivation,
// AES-256-GCM sealing with associated data, wrapping one key with another
// (or with a password), password generation and zeroising. It knows nothing
// of accounts, tokens or stores; callers choose what the associated data
// binds.
//
// Every random value comes from crypto/rand. Comparisons of secrets run in
// constant time.
package secret

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// KeySize is the size in bytes of every key: AES-256 keys, data keys and
// keys derived from passwords.
const KeySize = 32

// SaltSize is the size in bytes of the salts this package makes.
const SaltSize = 16

// Params are the cost parameters of argon2id (RFC 9106).
type Params struct {
	Time    uint32 // passes over the memory, at least 1
	Memory  uint32 // KiB, at least 8 × Threads
	Threads uint8  // lanes, at least 1
}

// DefaultParams cost 19 MiB and two passes per hash, single-threaded:
// OWASP's recommended minimum for argon2id. 64 MiB (RFC 9106's second
// recommendation) would take 64 MiB per login in progress, too much for
// many parallel logins on a small machine; as every run is single-threaded
// a caller can bound the memory in use by bounding the runs in parallel.
var DefaultParams = Params{Time: 2, Memory: 19 * 1024, Threads: 1}

// Bounds on parameters read back from a hash or a wrapped key, so that a
// damaged or hostile value cannot make a check take gigabytes or minutes.
const (
	MaxTime    = 16
	MaxMemory  = 1 << 20 // KiB: 1 GiB
	MaxThreads = 16
)

// Validate reports parameters outside what this package runs.
func (p Params) Validate() error {
	switch {
	case p.Time < 1 || p.Time > MaxTime:
		return fmt.Errorf("secret: argon2id time %d out of range 1..%d", p.Time, MaxTime)
	case p.Threads < 1 || p.Threads > MaxThreads:
		return fmt.Errorf("secret: argon2id threads %d out of range 1..%d", p.Threads, MaxThreads)
	case p.Memory < 8*uint32(p.Threads) || p.Memory > MaxMemory:
		return fmt.Errorf("secret: argon2id memory %d KiB out of range %d..%d", p.Memory, 8*uint32(p.Threads), MaxMemory)
	}
	return nil
}

// ErrMismatch is returned by Open, Unwrap and UnwrapWithPassword when the
// key (or password) is wrong, or the sealed bytes or the associated data are
// not the ones sealed: AES-GCM cannot tell these apart.
var ErrMismatch = errors.New("secret: wrong key or tampered data")

// Random returns n bytes from crypto/rand.
func Random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand crashes the program instead)
	return b
}

// NewKey returns a fresh random key of KeySize bytes.
func NewKey() []byte { return Random(KeySize) }

// Zero overwrites b with zeros. Go may have copied the bytes elsewhere (a
// grown slice, a string made from them, the stack); Zero clears this copy.
func Zero(b []byte) { clear(b) }

// DeriveKey derives a key of KeySize bytes from password and salt with
// argon2id. It panics on parameters Validate refuses.
func DeriveKey(password, salt []byte, p Params) []byte {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	return argon2.IDKey(password, salt, p.Time, p.Memory, p.Threads, KeySize)
}

// PHC is an argon2id hash in the PHC string format:
//
//	$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>
//
// with salt and hash in unpadded standard base64, as the reference
// implementation and libsodium write them.
type PHC struct {
	Params
	Salt []byte
	Key  []byte
}

// String encodes h.
func (h *PHC) String() string {
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, h.Memory, h.Time, h.Threads,
		b64.EncodeToString(h.Salt), b64.EncodeToString(h.Key))
}

// ParsePHC decodes an argon2id PHC string. It accepts salts of 8 to 64
// bytes and hashes of 16 to 64 bytes, and parameters Validate accepts.
func ParsePHC(s string) (*PHC, error) {
	fields := strings.Split(s, "$")
	if len(fields) != 6 || fields[0] != "" {
		return nil, errors.New("secret: not a PHC string ($argon2id$v=..$m=..,t=..,p=..$salt$hash)")
	}
	if fields[1] != "argon2id" {
		return nil, fmt.Errorf("secret: algorithm %q, want argon2id", fields[1])
	}
	if fields[2] != "v="+strconv.Itoa(argon2.Version) {
		return nil, fmt.Errorf("secret: argon2 version %q, want v=%d", fields[2], argon2.Version)
	}
	h := &PHC{}
	seen := 0
	for _, kv := range strings.Split(fields[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if !ok || err != nil || (len(v) > 1 && v[0] == '0') {
			return nil, fmt.Errorf("secret: bad parameter %q", kv)
		}
		switch {
		case k == "m" && seen == 0:
			h.Memory = uint32(n)
		case k == "t" && seen == 1:
			h.Time = uint32(n)
		case k == "p" && seen == 2 && n <= 255:
			h.Threads = uint8(n)
		default:
			return nil, fmt.Errorf("secret: unexpected parameter %q (want m, t, p in this order)", kv)
		}
		seen++
	}
	if seen != 3 {
		return nil, errors.New("secret: parameters m, t and p are required")
	}
	if err := h.Params.Validate(); err != nil {
		return nil, err
	}
	var err error
	b64 := base64.RawStdEncoding.Strict()
	if h.Salt, err = b64.DecodeString(fields[4]); err != nil || len(h.Salt) < 8 || len(h.Salt) > 64 {
		return nil, errors.New("secret: bad salt")
	}
	if h.Key, err = b64.DecodeString(fields[5]); err != nil || len(h.Key) < 16 || len(h.Key) > 64 {
		return nil, errors.New("secret: bad hash")
	}
	return h, nil
}

// HashPassword hashes password with argon2id under p and a fresh salt, and
// returns the PHC string.
func HashPassword(password []byte, p Params) (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	return hashWithSalt(password, Random(SaltSize), p), nil
}

func hashWithSalt(password, salt []byte, p Params) string {
	h := &PHC{Params: p, Salt: salt, Key: argon2.IDKey(password, salt, p.Time, p.Memory, p.Threads, KeySize)}
	return h.String()
}

// VerifyPassword reports whether password hashes to the PHC string phc,
// comparing in constant time. It fails only when phc cannot be parsed.
func VerifyPassword(password []byte, phc string) (bool, error) {
	h, err := ParsePHC(phc)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey(password, h.Salt, h.Time, h.Memory, h.Threads, uint32(len(h.Key)))
	ok := subtle.ConstantTimeCompare(got, h.Key) == 1
	Zero(got)
	return ok, nil
}

// Sealed bytes are: the format byte sealV1, the 12-byte GCM nonce, then
// the ciphertext with its 16-byte tag.
const (
	sealV1      = 1
	nonceSize   = 12
	tagSize     = 16
	sealedExtra = 1 + nonceSize + tagSize
)

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secret: key of %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// Seal encrypts and authenticates plaintext with AES-256-GCM under key, with
// a fresh random nonce, binding aad (which is authenticated, not stored).
// With random 96-bit nonces one key may seal up to 2^32 messages.
func Seal(key, plaintext, aad []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+nonceSize, sealedExtra+len(plaintext))
	out[0] = sealV1
	rand.Read(out[1:])
	return aead.Seal(out, out[1:1+nonceSize], plaintext, aad), nil
}

// Open authenticates and decrypts what Seal made under key with the same
// aad, or returns ErrMismatch.
func Open(key, sealed, aad []byte) ([]byte, error) {
	aead, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < sealedExtra || sealed[0] != sealV1 {
		return nil, ErrMismatch
	}
	pt, err := aead.Open(nil, sealed[1:1+nonceSize], sealed[1+nonceSize:], aad)
	if err != nil {
		return nil, ErrMismatch
	}
	return pt, nil
}

// Wrap encrypts the key k under the key-encryption key kek, binding aad.
func Wrap(kek, k, aad []byte) ([]byte, error) {
	if len(k) != KeySize {
		return nil, fmt.Errorf("secret: key of %d bytes, want %d", len(k), KeySize)
	}
	return Seal(kek, k, aad)
}

// Unwrap returns the key Wrap wrapped, or ErrMismatch.
func Unwrap(kek, wrapped, aad []byte) ([]byte, error) {
	k, err := Open(kek, wrapped, aad)
	if err != nil {
		return nil, err
	}
	if len(k) != KeySize {
		Zero(k)
		return nil, ErrMismatch
	}
	return k, nil
}

// A key wrapped with a password is: the format byte pwWrapV1, argon2id's
// memory (u32 big-endian, KiB), time (u32) and threads (u8), the salt
// length (u8) and salt, then what Wrap makes with the derived key. The
// header is bound into the associated data, so parameters and salt cannot be
// changed without Unwrap failing.
const pwWrapV1 = 'P'

// WrapWithPassword wraps k under a key derived from password with argon2id
// under p and a fresh salt, binding aad.
func WrapWithPassword(password, k, aad []byte, p Params) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	salt := Random(SaltSize)
	hdr := make([]byte, 0, 11+len(salt))
	hdr = append(hdr, pwWrapV1)
	hdr = binary.BigEndian.AppendUint32(hdr, p.Memory)
	hdr = binary.BigEndian.AppendUint32(hdr, p.Time)
	hdr = append(hdr, p.Threads, byte(len(salt)))
	hdr = append(hdr, salt...)
	kek := DeriveKey(password, salt, p)
	defer Zero(kek)
	w, err := Wrap(kek, k, bindHeader(hdr, aad))
	if err != nil {
		return nil, err
	}
	return append(hdr, w...), nil
}

// bindHeader is the associated data of a password-wrapped key: the header's
// length and bytes, then the caller's aad.
func bindHeader(hdr, aad []byte) []byte {
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(hdr)+len(aad)), uint16(len(hdr)))
	return append(append(b, hdr...), aad...)
}

// parsePasswordWrap splits what WrapWithPassword made.
func parsePasswordWrap(blob []byte) (hdr []byte, p Params, salt, wrapped []byte, err error) {
	if len(blob) < 11 || blob[0] != pwWrapV1 {
		return nil, p, nil, nil, errors.New("secret: not a password-wrapped key")
	}
	p.Memory = binary.BigEndian.Uint32(blob[1:])
	p.Time = binary.BigEndian.Uint32(blob[5:])
	p.Threads = blob[9]
	n := int(blob[10])
	if n < 8 || len(blob) < 11+n {
		return nil, p, nil, nil, errors.New("secret: password-wrapped key: bad salt")
	}
	if err := p.Validate(); err != nil {
		return nil, p, nil, nil, err
	}
	return blob[:11+n], p, blob[11 : 11+n], blob[11+n:], nil
}

// PasswordWrapParams returns the argon2id parameters of a password-wrapped
// key, to tell whether it should be wrapped again under newer ones.
func PasswordWrapParams(blob []byte) (Params, error) {
	_, p, _, _, err := parsePasswordWrap(blob)
	return p, err
}

// UnwrapWithPassword returns the key WrapWithPassword wrapped, or
// ErrMismatch when the password or aad is wrong or the bytes were changed.
func UnwrapWithPassword(password, blob, aad []byte) ([]byte, error) {
	hdr, p, salt, wrapped, err := parsePasswordWrap(blob)
	if err != nil {
		return nil, err
	}
	kek := DeriveKey(password, salt, p)
	defer Zero(kek)
	return Unwrap(kek, wrapped, bindHeader(hdr, aad))
}
