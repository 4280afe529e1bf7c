package bridge

import (
	"context"
	"errors"

	"github.com/popbridge/popbridge/internal/admin"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// readiness returns what /readyz checks: the POP3 listeners serve, the
// state store answers, and the upstream answers a connection with its
// greeting (no login: a probe must not count against an account).
func (s *Server) readiness() []admin.Check {
	return []admin.Check{
		{Name: "listeners", Fn: func(context.Context) error {
			if !s.serving.Load() {
				return errors.New("not serving")
			}
			return nil
		}},
		{Name: "store", Fn: func(ctx context.Context) error {
			p, ok := s.store.(state.Pinger)
			if !ok {
				return nil
			}
			return p.Ping(ctx)
		}},
		{Name: "upstream", Fn: func(ctx context.Context) error {
			conn, err := upstream.Dial(ctx, s.backend.current().up)
			if err != nil {
				return err
			}
			conn.Close()
			return nil
		}},
	}
}
