package account

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/popbridge/popbridge/internal/secret"
	"github.com/popbridge/popbridge/state"
)

// ServerKeySize is the size of the server key: a file of exactly these many
// random bytes (or their hex form on one line).
const ServerKeySize = secret.KeySize

// ReadServerKeyFile reads the server key from path: 32 raw bytes, or 64 hex
// digits with an optional line end (as "openssl rand -hex 32" writes them).
func ReadServerKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("account: server key: %w", err)
	}
	if len(b) == ServerKeySize {
		return b, nil
	}
	t := bytes.TrimRight(b, "\r\n")
	if len(t) == 2*ServerKeySize {
		k := make([]byte, ServerKeySize)
		if _, err := hex.Decode(k, t); err == nil {
			secret.Zero(b)
			return k, nil
		}
	}
	secret.Zero(b)
	return nil, fmt.Errorf("account: server key file %s holds %d bytes, want %d random bytes or %d hex digits", path, len(b), ServerKeySize, 2*ServerKeySize)
}

// WriteServerKeyFile writes a new random server key to path (32 raw bytes,
// mode 0600). It refuses to overwrite an existing file: a replaced key
// loses every escrow made under the old one.
func WriteServerKeyFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("account: server key: %w", err)
	}
	k := secret.NewKey()
	defer secret.Zero(k)
	_, err = f.Write(k)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("account: server key: %w", err)
	}
	return nil
}

// serverKeyIDSize is the length of the key identifier that prefixes a data
// key wrapped under a server key.
const serverKeyIDSize = 8

// serverKeyID names a server key without revealing it.
func serverKeyID(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("popbridge server key id"))
	return m.Sum(nil)[:serverKeyIDSize]
}

// aad builds associated data: a fixed prefix, what is sealed (the purpose),
// then each part with its length, so that no two different lists of parts
// give the same bytes.
func aad(purpose string, parts ...string) []byte {
	b := []byte("popbridge account v1\x00" + purpose + "\x00")
	for _, p := range parts {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	return b
}

func u64(v uint64) string { return strconv.FormatUint(v, 10) }

// grantAAD binds a sealed grant to the account, to where and as whom its
// tokens are used, to the data key's version and to the grant's version: a
// sealed grant copied to another record, or to another version of the
// same one, or a record pointed at another upstream, does not open.
func grantAAD(a *state.Account, grantVersion uint64) []byte {
	return aad("grant", a.Name, a.Kind, a.Upstream, a.Provider, a.Identity, a.Mailbox, u64(a.DEKVersion), u64(grantVersion))
}

// passwordAAD binds a data key wrapped under an app password to the
// account, the password's label and the data key's version.
func passwordAAD(name, label string, dekVersion uint64) []byte {
	return aad("data key under app password", name, label, u64(dekVersion))
}

// serverAAD binds a data key wrapped under the server key to the account
// and the data key's version.
func serverAAD(name string, dekVersion uint64) []byte {
	return aad("data key under server key", name, u64(dekVersion))
}

// escrow wraps dek under the server key key for account name.
func escrow(key, dek []byte, name string, dekVersion uint64) ([]byte, error) {
	w, err := secret.Wrap(key, dek, serverAAD(name, dekVersion))
	if err != nil {
		return nil, err
	}
	return append(serverKeyID(key), w...), nil
}

// errNoEscrow says why a record's data key cannot be had with the server
// keys configured.
var errNoEscrow = errors.New("no data key escrowed under the configured server key")
