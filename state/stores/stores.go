// Package stores opens the state store a configuration names: the embedded
// bbolt file (state/boltstore) or a PostgreSQL database shared by several
// instances (state/pgstore).
package stores

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore"
)

// Options are what the opener of a store knows beyond its [state] table.
type Options struct {
	// MaxLocks is how many maildrop locks PostgreSQL may hold at once (one
	// connection each); size it to the most sessions the server admits,
	// so that the store is never what refuses one. 0: the driver's default.
	MaxLocks int
	// InitEmpty: as state.Config.InitEmpty (serve -init-state).
	InitEmpty bool
}

// Open opens the store of c.
//
// A bolt file that exists already and that users other than its owner may
// read or write is used, with a warning naming it and its mode: it names
// every account and device. A new file is created 0600. An existing file
// of 0 bytes lost what it held: it is refused, with an error that says so
// and names the way out, unless c.InitEmpty or opts.InitEmpty asks for it
// to become a new state file (logged as a warning).
func Open(ctx context.Context, c state.Config, opts Options, log *zap.Logger) (state.Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	switch c.Driver {
	case "postgres":
		max := opts.MaxLocks
		if max <= 0 {
			max = pgstore.DefaultMaxLocks
		}
		return pgstore.Open(ctx, c.DSN, &pgstore.Options{MaxLocks: max})
	case "bolt", "":
	default:
		return nil, fmt.Errorf("state.driver %q: want bolt or postgres", c.Driver)
	}
	initEmpty := opts.InitEmpty || c.InitEmpty
	fi, statErr := os.Stat(c.Path)
	if statErr == nil && fi.Mode().Perm()&0o077 != 0 {
		log.Warn("the state file is readable by others than its owner: it names every account and device; chmod 600 it",
			zap.String("path", c.Path), zap.String("mode", fmt.Sprintf("%04o", fi.Mode().Perm())))
	}
	st, err := boltstore.Open(c.Path, &boltstore.Options{InitEmpty: initEmpty})
	if errors.Is(err, boltstore.ErrEmptyFile) {
		log.Error("the state file is empty (0 bytes): refusing to start", zap.String("path", c.Path),
			zap.String("way_out", "restore the file from a backup; or, to start with an empty state, remove it, or run serve -init-state once (state.init_empty = true)"))
		return nil, fmt.Errorf("%w. To start with an empty state on purpose: popbridge serve -init-state (once), or state.init_empty = true", err)
	}
	if err == nil && statErr == nil && fi.Size() == 0 {
		log.Warn("the state file was empty (0 bytes) and was initialised as a new one (-init-state / state.init_empty): "+
			"every UIDL is issued anew and earlier pending deletions are forgotten; remove the option again", zap.String("path", c.Path))
	}
	return st, err
}
