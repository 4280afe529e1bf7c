package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/popbridge/popbridge/bridge"
)

// importUIDL runs popbridge import-uidl: it carries the UIDLs of an old
// POP3 server over to the mailbox record of one account (see
// bridge.ImportUIDLs), so that clients moved from that server to popbridge
// download nothing again. Run it before the account's clients first
// connect through popbridge.
func importUIDL(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("import-uidl", flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (TOML)")
	user := fs.String("user", "", "upstream account whose mailbox record receives the UIDLs")
	from := fs.String("from", "", "old POP3 server: pop3s://host[:port] (or pop3://host[:port] on loopback)")
	oldUser := fs.String("old-user", "", "login name on the old server (default: -user)")
	insecure := fs.Bool("insecure", false, "do not verify the old server's TLS certificate")
	force := fs.Bool("force", false, "replace UIDLs popbridge has already served to clients")
	dryRun := fs.Bool("dry-run", false, "report what would be imported; store nothing")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" || *user == "" || *from == "" {
		return errors.New("import-uidl needs -config FILE -user ACCOUNT -from pop3s://HOST[:PORT]")
	}
	if *oldUser == "" {
		*oldUser = *user
	}
	cfg, err := bridge.LoadConfig(*path)
	if err != nil {
		return err
	}
	// Both passwords may come from stdin, one line each: upstream first.
	in := bufio.NewReader(stdin)
	pass := os.Getenv("POPBRIDGE_PASSWORD")
	if pass == "" {
		if pass, err = readPasswordFrom(stdin, in, os.Stderr, *user+" (upstream)", "POPBRIDGE_PASSWORD"); err != nil {
			return err
		}
	}
	oldPass := os.Getenv("POPBRIDGE_OLD_PASSWORD")
	if oldPass == "" {
		if oldPass, err = readPasswordFrom(stdin, in, os.Stderr, *oldUser+" (old server)", "POPBRIDGE_OLD_PASSWORD"); err != nil {
			return err
		}
	}
	log, err := newLogger(cfg.Log)
	if err != nil {
		return err
	}
	defer log.Sync()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Hour)
	defer cancel()
	st, err := openStore(ctx, cfg, false, log)
	if err != nil {
		return fmt.Errorf("opening the state store (with the bolt driver, stop popbridge serve first): %w", err)
	}
	defer st.Close()
	b, err := bridge.NewBridge(cfg, st, log)
	if err != nil {
		return err
	}
	old, err := bridge.DialOldPOP3(ctx, bridge.OldPOP3Options{URL: *from, User: *oldUser, Password: oldPass, Insecure: *insecure, Timeout: 2 * cfg.Upstream.Timeout})
	if err != nil {
		return err
	}
	defer old.Close()
	rep, err := b.ImportUIDLs(ctx, *user, pass, old, bridge.ImportOptions{Force: *force, DryRun: *dryRun})
	if err != nil {
		return err
	}
	for _, n := range rep.Notes {
		fmt.Fprintln(stdout, n)
	}
	verb := "imported"
	if *dryRun {
		verb = "would import"
	}
	fmt.Fprintf(stdout, "old server: %d messages; upstream: %d messages\n", rep.Old, rep.Upstream)
	fmt.Fprintf(stdout, "matched %d: %s %d (replacing %d served), already imported %d, refused %d (served; -force replaces), conflicts %d\n",
		rep.Matched, verb, rep.Imported, rep.Overwritten, rep.Already, rep.Refused, rep.Conflicts)
	fmt.Fprintf(stdout, "ambiguous %d, unmatched %d, invalid %d (these keep popbridge's UIDLs: their clients download them once more)\n",
		rep.Ambiguous, rep.Unmatched, rep.Invalid)
	switch {
	case *dryRun:
		fmt.Fprintln(stdout, "dry run: nothing stored")
	case rep.Stored:
		fmt.Fprintln(stdout, "stored")
	default:
		fmt.Fprintln(stdout, "nothing to store")
	}
	return nil
}

// readPasswordFrom prompts for the password of who and reads it: from a
// terminal with echo off (so that it does not show on the screen, or in a
// recording of it), else the next line of in (which reads stdin, so that two
// passwords can be read one line after the other). env names the variable
// that would have spared the prompt.
func readPasswordFrom(stdin io.Reader, in *bufio.Reader, prompt io.Writer, who, env string) (string, error) {
	fmt.Fprintf(prompt, "password for %s: ", who)
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt) // the Enter the terminal did not echo
		if err != nil {
			return "", fmt.Errorf("reading the password: %w", err)
		}
		if len(b) == 0 {
			return "", fmt.Errorf("no password given for %s (set %s or type it on stdin)", who, env)
		}
		return string(b), nil
	}
	line, err := in.ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("no password given for %s (set %s or type it on stdin)", who, env)
	}
	return strings.TrimRight(line, "\r\n"), nil
}
