package pgstore

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/popbridge/popbridge/state"
)

// TestClassify: the server's errors for a full disk and for damaged data
// are marked, so that popbridge can tell the client in words; others are
// left alone.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		code       string
		full, dmgd bool
	}{{"53100", true, false}, {"XX001", false, true}, {"XX002", false, true}, {"40001", false, false}, {"57P01", false, false}} {
		err := classify(fmt.Errorf("in a transaction: %w", &pgconn.PgError{Code: tc.code, Message: "m"}))
		if errors.Is(err, state.ErrFull) != tc.full || errors.Is(err, state.ErrDamaged) != tc.dmgd {
			t.Errorf("SQLSTATE %s: %v; want full %v, damaged %v", tc.code, err, tc.full, tc.dmgd)
		}
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != tc.code {
			t.Errorf("SQLSTATE %s: the server's error is lost: %v", tc.code, err)
		}
	}
	if err := errors.New("other"); classify(err) != err {
		t.Error("an error from elsewhere was changed")
	}
}
