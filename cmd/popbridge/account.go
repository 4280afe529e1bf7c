package main

// popbridge account: enrolled accounts (README, "OAuth providers").
//
// The commands open the state store of the configuration; with the bolt
// driver the file is locked by a running popbridge serve, so run them
// while it is stopped (PostgreSQL has no such limit).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/bridge/account"
	"github.com/popbridge/popbridge/bridge/oauth"
	"github.com/popbridge/popbridge/state"
)

const accountUsage = `usage:
  popbridge account init-key -config FILE
        create accounts.server_key_file (32 random bytes, mode 0600)
  popbridge account add NAME -config FILE -upstream UPSTREAM [-identity USER]
        [-mailbox SHARED] [-flow device|authcode|client_credentials]
        [-loopback] [-label LABEL] [-password-file FILE]
        sign in (device code, or authorization code + PKCE with the redirected
        address pasted back, or -loopback), store the grant, print the first
        app password once
  popbridge account list -config FILE
  popbridge account remove NAME -config FILE
  popbridge account passwd NAME -config FILE (-add LABEL [-password-file FILE] | -revoke LABEL)
  popbridge account test NAME -config FILE
        refresh the token if needed, log in upstream, count the messages
The app password that unlocks an account (passwd -add, test) is read from
POPBRIDGE_PASSWORD, else from the terminal (no echo) or stdin; with
accounts.server_key_file set and no POPBRIDGE_PASSWORD, the server key
unlocks it.
`

// accountCmd runs "popbridge account ...".
func accountCmd(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stdout, accountUsage)
		return errors.New("account needs a subcommand")
	}
	sub, args := args[0], args[1:]
	// NAME may come before the flags.
	var name string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	fs := flag.NewFlagSet("account "+sub, flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (TOML)")
	upName := fs.String("upstream", "", "the [[upstreams]] entry (add)")
	identity := fs.String("identity", "", "the upstream identity: the token's user, or app-only the mailbox (add; default NAME)")
	mailbox := fs.String("mailbox", "", "another mailbox the identity opens: a shared mailbox (add)")
	flow := fs.String("flow", "", "device, authcode or client_credentials (add; default the upstream's)")
	loopback := fs.Bool("loopback", false, "authcode: listen on the loopback redirect instead of asking for the redirected address (add)")
	label := fs.String("label", "", "label of the first app password (add)")
	pwFile := fs.String("password-file", "", "file holding the app password to set instead of a generated one (add, passwd -add)")
	addLabel := fs.String("add", "", "passwd: add an app password with this label")
	revokeLabel := fs.String("revoke", "", "passwd: revoke the app password with this label")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if name == "" && fs.NArg() > 0 {
		name = fs.Arg(0)
	}
	if *path == "" {
		return fmt.Errorf("account %s needs -config FILE", sub)
	}
	cfg, err := bridge.LoadConfig(*path)
	if err != nil {
		return err
	}
	if sub == "init-key" {
		f := cfg.Accounts.ServerKeyFile
		if f == "" {
			return errors.New("set accounts.server_key_file in the configuration first")
		}
		if err := account.WriteServerKeyFile(f); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "server key written to %s: back it up; without it, accounts open only with their app passwords\n", f)
		return nil
	}
	needName := map[string]bool{"add": true, "remove": true, "passwd": true, "test": true}
	if needName[sub] && name == "" {
		return fmt.Errorf("account %s needs NAME", sub)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	log := zap.NewNop()
	st, err := openStore(ctx, cfg, false, log)
	if err != nil {
		return err
	}
	defer st.Close()
	as, ok := st.(state.AccountStore)
	if !ok {
		return errors.New("the state store keeps no accounts")
	}
	reg, err := bridge.NewRegistry(cfg, as, log)
	if err != nil {
		return err
	}
	switch sub {
	case "add":
		pw, err := readPasswordFile(*pwFile)
		if err != nil {
			return err
		}
		return accountAdd(ctx, cfg, reg, addSpec{name: name, upstream: *upName, identity: *identity, mailbox: *mailbox,
			flow: *flow, loopback: *loopback, label: *label, password: pw}, stdin, stdout)
	case "list":
		return accountList(ctx, reg, stdout)
	case "remove":
		if err := reg.Remove(ctx, name); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "account %s removed\n", account.CanonicalName(name))
		return nil
	case "passwd":
		switch {
		case (*addLabel == "") == (*revokeLabel == ""):
			return errors.New("account passwd needs -add LABEL or -revoke LABEL")
		case *revokeLabel != "":
			if err := reg.RevokePassword(ctx, name, *revokeLabel); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "app password %q of %s revoked\n", *revokeLabel, account.CanonicalName(name))
			return nil
		}
		pw, err := readPasswordFile(*pwFile)
		if err != nil {
			return err
		}
		unlock, err := unlockPassword(reg, name, stdin)
		if err != nil {
			return err
		}
		got, err := reg.AddPassword(ctx, name, *addLabel, pw, unlock)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "app password %q of %s (shown once): %s\n", *addLabel, account.CanonicalName(name), got)
		return nil
	case "test":
		unlock, err := unlockPassword(reg, name, stdin)
		if err != nil {
			return err
		}
		b, err := bridge.NewBridgeWith(cfg, st, log, bridge.AccountOptions{Registry: reg})
		if err != nil {
			return err
		}
		tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		return b.CheckAccount(tctx, name, unlock, stdout)
	}
	fmt.Fprint(stdout, accountUsage)
	return fmt.Errorf("unknown account subcommand %q", sub)
}

// readPasswordFile returns the first line of file, or "" for no file.
func readPasswordFile(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	pw = strings.TrimRight(pw, "\r")
	if pw == "" {
		return "", fmt.Errorf("%s is empty", file)
	}
	return pw, nil
}

// unlockPassword returns the app password that unlocks name: from
// POPBRIDGE_PASSWORD, else "" when the server key can (the registry
// unlocks with it), else read from stdin.
func unlockPassword(reg *account.Registry, name string, stdin io.Reader) (string, error) {
	if pw := os.Getenv("POPBRIDGE_PASSWORD"); pw != "" {
		return pw, nil
	}
	if reg.HasServerKey() {
		return "", nil
	}
	return readPassword(stdin, os.Stderr, "app password of "+name)
}

type addSpec struct {
	name, upstream, identity, mailbox, flow string
	loopback                                bool
	label, password                         string
}

// accountAdd runs the enrollment flow of the upstream and stores the
// account.
func accountAdd(ctx context.Context, cfg bridge.Config, reg *account.Registry, a addSpec, stdin io.Reader, stdout io.Writer) error {
	if a.upstream == "" {
		return fmt.Errorf("account add needs -upstream (one of: %s)", strings.Join(cfg.UpstreamNames(), ", "))
	}
	oc, _, ok := cfg.OAuthUpstream(a.upstream)
	if !ok {
		return fmt.Errorf("no [[upstreams]] entry called %q (configured: %s)", a.upstream, strings.Join(cfg.UpstreamNames(), ", "))
	}
	if a.flow != "" {
		oc.Flow = a.flow
	}
	c, err := oauth.NewClient(oc)
	if err != nil {
		return err
	}
	if a.identity == "" {
		if !strings.Contains(a.name, "@") {
			return errors.New("account add needs -identity USER (the upstream user) when NAME is not that address")
		}
		a.identity = a.name
	}
	if _, err := reg.Lookup(ctx, a.name); err == nil {
		return fmt.Errorf("account %s is enrolled already (account remove it first to enroll it again)", account.CanonicalName(a.name))
	}
	spec := account.Spec{Name: a.name, Upstream: a.upstream, Provider: c.Provider(), Identity: a.identity,
		Mailbox: a.mailbox, Label: a.label, Password: a.password}
	var g *account.Grant
	fctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	switch c.Flow() {
	case oauth.FlowClientCredentials:
		if a.mailbox != "" {
			return errors.New("app-only: name the mailbox with -identity, not -mailbox")
		}
		spec.Kind = account.AppOnly
		tok, err := c.AppToken(fctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "app-only token obtained (expires %s)\n", tok.Expiry.Local().Format(time.RFC3339))
	case oauth.FlowDevice:
		tok, err := c.DeviceFlow(fctx, stdout)
		if err != nil {
			return err
		}
		g = bridge.ToAccountGrant(tok)
	case oauth.FlowAuthCode:
		var tok oauth.Grant
		if a.loopback {
			tok, err = c.AuthCodeLoopback(fctx, stdout, nil, a.identity)
		} else {
			tok, err = c.AuthCodePaste(fctx, stdin, stdout, a.identity)
		}
		if err != nil {
			return err
		}
		g = bridge.ToAccountGrant(tok)
	default:
		return fmt.Errorf("unknown flow %q", c.Flow())
	}
	if g != nil && g.RefreshToken == "" {
		fmt.Fprintln(stdout, "warning: the provider issued no refresh token (offline_access not granted?): the account works until the access token expires")
	}
	pw, err := reg.Add(ctx, spec, g)
	if err != nil {
		return err
	}
	label := a.label
	if label == "" {
		label = account.DefaultLabel
	}
	user := a.identity
	if a.mailbox != "" {
		user = a.mailbox
	}
	fmt.Fprintf(stdout, "account %s enrolled: upstream %s, logs in as %s\n", account.CanonicalName(a.name), a.upstream, user)
	fmt.Fprintf(stdout, "app password %q (shown once): %s\n", label, pw)
	return nil
}

// accountList prints one line per account: name, kind, upstream, the
// upstream login user, the grant's state, the access token's expiry and
// the app passwords' labels.
func accountList(ctx context.Context, reg *account.Registry, stdout io.Writer) error {
	list, err := reg.List(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tUPSTREAM\tLOGIN-AS\tGRANT\tEXPIRES\tPASSWORDS")
	for _, i := range list {
		exp := "-"
		if !i.Grant.Expiry.IsZero() {
			exp = i.Grant.Expiry.UTC().Format(time.RFC3339)
		}
		var labels []string
		for _, p := range i.Passwords {
			labels = append(labels, p.Label)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", i.Name, i.Kind, i.Upstream, i.LoginUser(), i.Grant.Status, exp, strings.Join(labels, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, i := range list {
		if i.Grant.Status == account.GrantReconsentNeeded {
			fmt.Fprintf(stdout, "%s: re-consent needed since %s (%s): account remove, then account add again\n",
				i.Name, i.Grant.Since.UTC().Format(time.RFC3339), i.Grant.Reason)
		}
	}
	return nil
}
