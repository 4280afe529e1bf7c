package bridge

import (
	"context"
	"fmt"
	"io"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/upstream"
)

// Check logs in to the upstream as account, selects the configured mailbox
// and reports to w what popbridge will be able to do there: the mailbox's
// size, the capabilities the delete policy needs, and the Trash mailbox of
// the move policy. It changes nothing upstream.
func Check(ctx context.Context, cfg Config, account, password string, w io.Writer, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	up, err := dialConfig(cfg.Upstream, log)
	if err != nil {
		return err
	}
	conn, err := upstream.Dial(ctx, up)
	if err != nil {
		return err
	}
	defer conn.Close()
	fmt.Fprintf(w, "upstream %s (%s): connected\n", cfg.Upstream.Address, cfg.Upstream.Security)
	if err := conn.Login(ctx, account, password); err != nil {
		return err
	}
	fmt.Fprintf(w, "login as %s: ok\n", account)
	st, err := conn.Select(ctx, cfg.Upstream.Mailbox)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "mailbox %s: %d messages, UIDVALIDITY %d, UIDNEXT %d\n", cfg.Upstream.Mailbox, st.NumMessages, st.UIDValidity, st.UIDNext)
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(w, "capabilities: UIDPLUS %s, MOVE %s, CONDSTORE %s\n", yes(conn.HasUIDPlus()), yes(conn.HasMove()), yes(conn.HasCondStore()))
	if err := policyNeeds(conn, cfg.Delete.Policy); err != nil {
		return err
	}
	if cfg.Delete.Policy == PolicyMove {
		target := cfg.Delete.MoveTo
		if target == "" {
			if target, err = conn.SpecialUse(ctx, `\Trash`); err != nil {
				return err
			}
			if target == "" {
				return fmt.Errorf("delete.policy = move: the server has no \\Trash special-use mailbox; set delete.move_to")
			}
		}
		fmt.Fprintf(w, "move target: %s\n", target)
	}
	fmt.Fprintf(w, "delete policy %s: ok\n", cfg.Delete.Policy)
	return nil
}
