package bridge

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/upstream"
)

// Check logs in to the upstream as account, selects the configured mailbox
// and reports to w, one line per finding, what popbridge will do there:
// the connection and its TLS, the login, the capabilities, the provider
// profile, the mailbox, how sizes are taken, the Trash of the move policy
// (found, or to be created at the first deletion), the flags the flag
// policy may set, the connection budget, and the delete policy; then one
// line of advice per problem. It changes nothing upstream (it creates no
// Trash). It returns an error when popbridge could not serve the account
// with this configuration.
func Check(ctx context.Context, cfg Config, account, password string, w io.Writer, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	var advice []string
	advise := func(format string, args ...any) { advice = append(advice, fmt.Sprintf(format, args...)) }
	defer func() {
		for _, a := range advice {
			fmt.Fprintf(w, "advice: %s\n", a)
		}
	}()
	up, err := dialConfig(cfg.Upstream, log)
	if err != nil {
		return err
	}
	conn, err := upstream.Dial(ctx, up)
	if err != nil {
		fmt.Fprintf(w, "upstream %s (%s): FAILED: %v\n", cfg.Upstream.Address, cfg.Upstream.Security, err)
		switch {
		case upstream.KindOf(err) == upstream.KindPerm && cfg.Upstream.Security != upstream.SecurityNone:
			advise("the TLS handshake or the certificate failed: check upstream.security (tls for port 993, starttls for 143), upstream.server_name and upstream.ca_file")
		default:
			advise("check upstream.address (host:port) and that this host may reach it")
		}
		return err
	}
	defer conn.Close()
	fmt.Fprintf(w, "upstream %s (%s): connected\n", cfg.Upstream.Address, cfg.Upstream.Security)
	switch {
	case cfg.Upstream.Security == upstream.SecurityNone:
		fmt.Fprintf(w, "TLS: none (cleartext)\n")
		if !loopbackAddr(cfg.Upstream.Address) {
			advise("passwords and mail cross the network in clear: use upstream.security = \"tls\" or \"starttls\"")
		}
	case cfg.Upstream.InsecureSkipVerify:
		fmt.Fprintf(w, "TLS: yes, certificate NOT verified\n")
		advise("upstream.insecure_skip_verify = true: set upstream.ca_file instead")
	default:
		fmt.Fprintf(w, "TLS: yes, certificate verified\n")
	}
	if err := conn.Login(ctx, account, password); err != nil {
		fmt.Fprintf(w, "login as %s: FAILED (%s)\n", account, upstream.KindOf(err))
		switch upstream.ReasonOf(err) {
		case upstream.ReasonThrottled:
			advise("the server throttles this account or has too many connections open for it: wait, and lower upstream.max_connections_per_account")
		default:
			advise("check the user name and password; Gmail, iCloud, Yahoo and Fastmail want an app password (or OAuth), Microsoft 365 OAuth")
		}
		return err
	}
	fmt.Fprintf(w, "login as %s: ok\n", account)
	host, _, _ := net.SplitHostPort(cfg.Upstream.Address)
	p := resolveProfile(cfg.Upstream.Profile, host, conn.HasCap, conn.ServerID())
	how := "recognized"
	if cfg.Upstream.Profile != "" && cfg.Upstream.Profile != ProfileAuto {
		how = "configured"
	}
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(w, "capabilities: UIDPLUS %s, MOVE %s, CONDSTORE %s, SPECIAL-USE %s, CREATE-SPECIAL-USE %s, ID %s\n",
		yes(conn.HasUIDPlus()), yes(conn.HasMove()), yes(conn.HasCondStore()), yes(conn.HasCap("SPECIAL-USE")),
		yes(conn.HasCreateSpecialUse()), yes(conn.HasCap("ID")))
	if id := conn.ServerID(); id.Name != "" || id.Vendor != "" {
		fmt.Fprintf(w, "server: %s\n", strings.TrimSpace(id.Name+" "+id.Version))
	}
	fmt.Fprintf(w, "profile: %s (%s)\n", p.Name, how)
	if p.Note != "" {
		fmt.Fprintf(w, "profile note: %s\n", p.Note)
	}
	fmt.Fprintf(w, "fingerprint: %s\n", p.Fingerprint)
	st, err := conn.Select(ctx, cfg.Upstream.Mailbox)
	if err != nil {
		fmt.Fprintf(w, "mailbox %s: FAILED: %v\n", cfg.Upstream.Mailbox, err)
		advise("check upstream.mailbox (%q): the server has no such mailbox, or refuses it", cfg.Upstream.Mailbox)
		return err
	}
	fmt.Fprintf(w, "mailbox %s: %d messages, UIDVALIDITY %d, UIDNEXT %d\n", cfg.Upstream.Mailbox, st.NumMessages, st.UIDValidity, st.UIDNext)
	if p.LimitedView && st.UIDNext > 1 && st.UIDNext-1 > st.NumMessages {
		advise("the mailbox shows %d messages but %d were delivered (UIDNEXT %d): if messages are missing, turn off the provider's IMAP \"limited mode\" (Yahoo: Settings, Security)", st.NumMessages, st.UIDNext-1, st.UIDNext)
	}
	if p.SizesUnreliable {
		fmt.Fprintf(w, "sizes: measured (the %s profile's RFC822.SIZE is not the octets sent): the first poll reads each new message once\n", p.Name)
	} else {
		fmt.Fprintf(w, "sizes: RFC822.SIZE (a RETR that finds it wrong switches to measuring)\n")
	}

	if err := policyNeeds(conn, cfg.Delete.Policy); err != nil {
		fmt.Fprintf(w, "delete policy %s: NOT POSSIBLE: %v\n", cfg.Delete.Policy, err)
		advise("%v", err)
		return err
	}
	switch cfg.Delete.Policy {
	case PolicyMove:
		if err := reportTrash(ctx, w, conn, cfg.Delete.MoveTo, p); err != nil {
			return err
		}
	case PolicyExpunge:
		if p.ExpungeArchives {
			fmt.Fprintf(w, "expunge: does NOT delete here\n")
			advise("%s", p.ExpungeNote)
		}
	case PolicyFlag:
		fc := permittedFlags(cfg.Delete.Flags, st.PermanentFlags)
		perm := "(none sent: every flag)"
		if st.PermanentFlags != nil {
			perm = "(" + strings.Join(st.PermanentFlags, " ") + ")"
		}
		fmt.Fprintf(w, "flags: PERMANENTFLAGS %s; the flag policy sets %s\n", perm, flagList(fc.Flags))
		if len(fc.Refused) > 0 {
			advise("the server does not keep %s: the flag policy sets %s instead, and the device no longer lists the messages all the same; "+
				"other POP3 devices and IMAP clients cannot tell them apart", strings.Join(fc.Refused, " "), flagList(fc.Flags))
		}
	}
	if n := maxConnections(cfg.Upstream.MaxConnectionsPerAccount, p); n > 0 {
		fmt.Fprintf(w, "connection budget: %d upstream connections per account\n", n)
	} else {
		fmt.Fprintf(w, "connection budget: no limit\n")
	}
	if sess := cfg.Limits.MaxSessionsPerAccount; p.MaxConnections > 0 && (sess <= 0 || sess > p.MaxConnections) && cfg.Upstream.MaxConnectionsPerAccount == 0 {
		advise("%s allows about %d connections per account; limits.max_sessions_per_account is %d: logins beyond the budget wait briefly and are refused with [SYS/TEMP]", p.Name, p.MaxConnections, sess)
	}
	fmt.Fprintf(w, "delete policy %s: ok\n", cfg.Delete.Policy)
	return checkMaildrops(ctx, cfg, conn, account, maxConnections(cfg.Upstream.MaxConnectionsPerAccount, p), w, advise)
}

// reportTrash writes the trash: line of check and account test: the
// mailbox the move policy would use with profile p, and how it was found
// (or that it is created at the first deletion). It creates nothing.
func reportTrash(ctx context.Context, w io.Writer, conn *upstream.Conn, moveTo string, p *Profile) error {
	tc, err := findTrash(ctx, conn, moveTo, p)
	if err != nil {
		return err
	}
	if tc.Create {
		fmt.Fprintf(w, "trash: %s (none found; created at the first deletion)\n", tc.Name)
	} else {
		fmt.Fprintf(w, "trash: %s (%s)\n", tc.Name, tc.How)
	}
	return nil
}

// checkMaildrops selects every source of the account's merged
// maildrops ([[maildrops]]) that is a mailbox of its own, and reports
// each; a source of another enrolled account is named, not opened (it
// logs in with that account's grant: popbridge account test checks it).
// A merged maildrop holds one upstream connection per source of the
// account, which budget (0: no limit) must leave room for.
func checkMaildrops(ctx context.Context, cfg Config, conn *upstream.Conn, account string, budget int, w io.Writer, advise func(string, ...any)) error {
	var failed error
	acct := cfg.foldName(account)
	for _, md := range cfg.Maildrops {
		if cfg.foldName(md.Account) != acct {
			continue
		}
		own := 0
		for _, src := range md.Sources {
			if src.Account != "" {
				fmt.Fprintf(w, "maildrop source %s: another account's (popbridge account test %s checks it)\n", src, src.Account)
				continue
			}
			own++
			st, err := conn.Select(ctx, src.Mailbox)
			if err != nil {
				fmt.Fprintf(w, "maildrop source %s: FAILED: %v\n", src.Mailbox, err)
				advise("the merged maildrop's source %q cannot be opened: every login of it fails with [SYS/TEMP] until the mailbox exists (or remove it from sources)", src.Mailbox)
				if failed == nil {
					failed = fmt.Errorf("maildrop source %s: %w", src.Mailbox, err)
				}
				continue
			}
			fmt.Fprintf(w, "maildrop source %s: %d messages, UIDVALIDITY %d\n", src.Mailbox, st.NumMessages, st.UIDValidity)
		}
		if budget > 0 && own > budget {
			advise("the merged maildrop holds %d upstream connections (one per source) and the budget is %d per account: its logins are refused with [SYS/TEMP]; raise upstream.max_connections_per_account or use fewer sources", own, budget)
		}
	}
	return failed
}

// CheckUpstreams writes one line per [[upstreams]] entry of cfg: the
// provider profile its accounts follow and their connection budget, as
// far as the configuration tells (an "auto" profile that the host name
// does not give is recognized at the first login; popbridge account test
// shows it).
func CheckUpstreams(cfg Config, w io.Writer) {
	for _, u := range cfg.Upstreams {
		r, _ := u.resolve()
		ps := newEntryState(r, zap.NewNop(), time.Now)
		profile := "auto (recognized at the first login)"
		budget := "the profile's"
		if ps.profile != nil {
			profile = fmt.Sprintf("%s (%s)", ps.profile.Name, ps.how)
		}
		switch n := maxConnections(r.MaxConnectionsPerAccount, ps.profile); {
		case n > 0:
			budget = fmt.Sprintf("%d upstream connections per account", n)
		case ps.profile != nil || r.MaxConnectionsPerAccount < 0:
			budget = "no limit"
		}
		fmt.Fprintf(w, "upstreams %s: profile %s, connection budget: %s\n", u.Name, profile, budget)
	}
}

func flagList(f []string) string {
	if len(f) == 0 {
		return "nothing (the device still hides the messages)"
	}
	return strings.Join(f, " ")
}
