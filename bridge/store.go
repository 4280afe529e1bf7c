package bridge

import (
	"context"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/boltstore"
	"github.com/popbridge/popbridge/state/pgstore"
)

// OpenStore opens the state store of cfg's [state] table, as `popbridge
// serve` does.
//
// A bolt file that exists already and that users other than its owner
// may read or write is used, with a warning naming it and its mode: it
// names every account and device. A new file is created 0600.
//
// The PostgreSQL store holds one database connection per open session,
// for its maildrop lock. Its pool of those connections is sized to
// limits.max_connections, so that it is never what refuses a session
// the limits allow (pgstore.DefaultMaxLocks when that limit is off).
func OpenStore(ctx context.Context, cfg Config, log *zap.Logger) (state.Store, error) {
	if log == nil {
		log = zap.NewNop()
	}
	switch cfg.State.Driver {
	case "postgres":
		return pgstore.Open(ctx, cfg.State.DSN, &pgstore.Options{MaxLocks: lockPoolSize(cfg.Limits)})
	default:
		if fi, err := os.Stat(cfg.State.Path); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("the state file is readable by others than its owner: it names every account and device; chmod 600 it",
				zap.String("path", cfg.State.Path), zap.String("mode", fmt.Sprintf("%04o", fi.Mode().Perm())))
		}
		return boltstore.Open(cfg.State.Path, nil)
	}
}

// lockPoolSize is the number of maildrop locks the PostgreSQL store may
// hold at once: one per connection limits.max_connections allows.
func lockPoolSize(l LimitsConfig) int {
	if l.MaxConnections > 0 {
		return l.MaxConnections
	}
	return pgstore.DefaultMaxLocks
}
