package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/stores"
)

const stateUsage = `usage: popbridge state COMMAND -config FILE [ARGS]
  list                      mailbox records (UIDVALIDITY, entries) and client
                            records (device, last login, hidden UIDLs,
                            pending UPDATE)
  show ACCOUNT[#DEVICE]     the UIDLs of the account's mailbox record; with a
                            device tag, as that device sees them, and its
                            last login, hidden UIDLs and pending UPDATE
  forget ACCOUNT[#DEVICE]   clear the device's client record (hidden UIDLs
                            and a pending UPDATE, which is then not carried
                            out); its last login stays
  export [-o FILE]          write every record as JSON lines (default stdout)
  import [-i FILE]          read an export into an empty store (default stdin)
  check                     verify the store's invariants; exit 1 on a problem
The store is the one of the configuration's [state] table (environment
overrides apply: POPBRIDGE_STATE_DRIVER, POPBRIDGE_STATE_PATH,
POPBRIDGE_STATE_DSN...). A bolt file cannot be opened while popbridge serves
it: stop popbridge first. With PostgreSQL, run export, import and check while
no popbridge serves the database, for a consistent copy.
`

// stateCmd runs `popbridge state ...`.
func stateCmd(args []string, stdin io.Reader, stdout io.Writer) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" {
		fmt.Fprint(stdout, stateUsage)
		if len(args) == 0 {
			return errors.New("state needs a command")
		}
		return nil
	}
	cmd := args[0]
	fs := flag.NewFlagSet("state "+cmd, flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (TOML)")
	out := fs.String("o", "", "export: the file to write (default: stdout)")
	in := fs.String("i", "", "import: the file to read (default: stdin)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("state %s needs -config FILE\n\n%s", cmd, stateUsage)
	}
	rest := fs.Args()
	wantArgs := map[string]int{"list": 0, "show": 1, "forget": 1, "export": 0, "import": 0, "check": 0}
	n, ok := wantArgs[cmd]
	if !ok {
		return fmt.Errorf("state: unknown command %q\n\n%s", cmd, stateUsage)
	}
	if len(rest) != n {
		return fmt.Errorf("state %s takes %d argument(s), got %q\n\n%s", cmd, n, rest, stateUsage)
	}
	cfg, err := bridge.LoadConfig(*path)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	st, err := stores.Open(octx, cfg.State, stores.Options{MaxLocks: 4}, zap.NewNop())
	cancel()
	if err != nil {
		return err
	}
	defer st.Close()
	ex, ok := st.(state.Exporter)
	if !ok {
		return fmt.Errorf("the %s store cannot be walked", cfg.State.Driver)
	}
	switch cmd {
	case "list":
		return stateList(ctx, ex, stdout)
	case "show":
		return stateShow(ctx, cfg, st, ex, rest[0], stdout)
	case "forget":
		return stateForget(ctx, cfg, st, rest[0], stdout)
	case "export":
		w := stdout
		if *out != "" {
			f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			defer f.Close()
			w = f
		}
		stats, err := state.Export(ctx, ex, w)
		if err != nil {
			return err
		}
		if f, ok := w.(*os.File); ok && f != os.Stdout {
			if err := f.Sync(); err != nil {
				return err
			}
		}
		fmt.Fprintf(os.Stderr, "exported %d mailboxes (%d entries), %d clients (%d hidden UIDLs, %d pending UPDATEs)\n",
			stats.Mailboxes, stats.Entries, stats.Clients, stats.Hidden, stats.Pending)
		return nil
	case "import":
		r := stdin
		if *in != "" {
			f, err := os.Open(*in)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		stats, err := state.Import(ctx, st, r)
		if err != nil {
			return fmt.Errorf("import: %w (after %d mailboxes, %d clients)", err, stats.Mailboxes, stats.Clients)
		}
		fmt.Fprintf(stdout, "imported %d mailboxes (%d entries), %d clients (%d hidden UIDLs, %d pending UPDATEs)\n",
			stats.Mailboxes, stats.Entries, stats.Clients, stats.Hidden, stats.Pending)
		return nil
	case "check":
		n, err := state.Check(ctx, ex, func(p state.Problem) { fmt.Fprintln(stdout, "problem:", p) })
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("state check: %d problem(s)", n)
		}
		fmt.Fprintln(stdout, "state check: no problem")
		return nil
	}
	return nil
}

// stateList prints every mailbox record and every client record.
func stateList(ctx context.Context, ex state.Exporter, w io.Writer) error {
	fmt.Fprintln(w, "mailboxes:")
	err := ex.ForEachMailbox(ctx, func(name string, version uint64, mk state.Markers) error {
		n := 0
		if err := ex.ForEachEntry(ctx, name, func(state.Entry) error { n++; return nil }); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %s  entries=%d uidvalidity=%d uidnext=%d messages=%d version=%d\n", name, n, mk.UIDValidity, mk.UIDNext, mk.NumMessages, version)
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(w, "clients:")
	return ex.ForEachClient(ctx, func(k state.ClientKey, p *state.Pending, lastLogin time.Time) error {
		n := 0
		if err := ex.ForEachHidden(ctx, k, func(string) error { n++; return nil }); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %s  device=%q last_login=%s hidden=%d pending=%s\n", k.Mailbox, k.Client, describeLastLogin(lastLogin), n, describePending(p))
		return nil
	})
}

// describeLastLogin is a last login in UTC to the second (RFC 3339), or
// "-" for none.
func describeLastLogin(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// describePending says what a pending UPDATE is, in one line.
func describePending(p *state.Pending) string {
	if p == nil {
		return "none"
	}
	s := fmt.Sprintf("%s of %d messages", p.Policy, len(p.UIDLs))
	if p.Target != "" {
		s += " to " + p.Target
	}
	if len(p.Flags) > 0 {
		s += " flags " + strings.Join(p.Flags, ",")
	}
	return s + fmt.Sprintf(" (decided %s, %d failed attempts)", p.Created.UTC().Format(time.RFC3339), p.Attempts)
}

// stateShow prints the mailbox record of login's account, and the client
// records of its devices (of one device with a tag).
func stateShow(ctx context.Context, cfg bridge.Config, st state.Store, ex state.Exporter, login string, w io.Writer) error {
	key, tagged, err := bridge.StateKey(cfg, login)
	if err != nil {
		return err
	}
	// A merged maildrop: the other sources' records, by number, and the
	// device under which this maildrop keeps its records there.
	sources := map[string]uint32{}
	var order []string
	merged := bridge.MergedSources(key.Mailbox)
	names := map[string]bool{}
	if err := ex.ForEachMailbox(ctx, func(name string, _ uint64, _ state.Markers) error { names[name] = true; return nil }); err != nil {
		return err
	}
	if names[merged] {
		if err := ex.ForEachEntry(ctx, merged, func(e state.Entry) error {
			sources[e.UIDL], order = e.UID, append(order, e.UIDL)
			return nil
		}); err != nil {
			return err
		}
	}
	if !names[key.Mailbox] {
		fmt.Fprintf(w, "mailbox %s: no record\n", key.Mailbox)
	}
	if err := showRecord(ctx, st, ex, key, key.Client, tagged, 0, "mailbox "+key.Mailbox, w); err != nil {
		return err
	}
	for _, rec := range order {
		if !names[rec] {
			continue
		}
		n := sources[rec]
		k := state.ClientKey{Mailbox: rec, Client: bridge.MergedClient(key.Client, key.Mailbox)}
		if err := showRecord(ctx, st, ex, k, key.Client, tagged, n, fmt.Sprintf("merged source %d: mailbox %s", n, rec), w); err != nil {
			return err
		}
	}
	// The client records: the own mailbox's first, then each source's, in
	// the order of the sources' numbers.
	suffix := "/" + key.Mailbox
	blocks := map[uint32]*strings.Builder{}
	err = ex.ForEachClient(ctx, func(k state.ClientKey, p *state.Pending, lastLogin time.Time) error {
		var title string
		n, ok := sources[k.Mailbox]
		switch {
		case k.Mailbox == key.Mailbox && (!tagged || k.Client == key.Client):
			n, title = 0, fmt.Sprintf("device %q:", k.Client)
		case ok && strings.HasSuffix(k.Client, suffix) && (!tagged || k.Client == bridge.MergedClient(key.Client, key.Mailbox)):
			title = fmt.Sprintf("device %q in merged source %d:", strings.TrimSuffix(k.Client, suffix), n)
		default:
			return nil
		}
		if blocks[n] == nil {
			blocks[n] = &strings.Builder{}
		}
		w := blocks[n]
		fmt.Fprintf(w, "%s\n  last login: %s\n  pending: %s\n", title, describeLastLogin(lastLogin), describePending(p))
		if p != nil {
			for i, u := range p.UIDLs {
				fmt.Fprintf(w, "    %d %s\n", p.UIDs[min(i, len(p.UIDs)-1)], u)
			}
		}
		var hs []string
		if err := ex.ForEachHidden(ctx, k, func(u string) error { hs = append(hs, u); return nil }); err != nil {
			return err
		}
		slices.Sort(hs)
		fmt.Fprintf(w, "  hidden: %d\n", len(hs))
		for _, u := range hs {
			fmt.Fprintf(w, "    %s\n", u)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range slices.Sorted(maps.Keys(blocks)) {
		io.WriteString(w, blocks[n].String())
	}
	return nil
}

// showRecord writes the mailbox record of key under title: its markers
// and its UIDLs, as the merged maildrop lists them for a source numbered
// number (0: the login's own mailbox), less what device (whose client
// record there is key's) hid when tagged.
func showRecord(ctx context.Context, st state.Store, ex state.Exporter, key state.ClientKey, device string, tagged bool, number uint32, title string, w io.Writer) error {
	var hidden map[string]bool
	if tagged {
		c, err := st.LoadClient(ctx, key)
		if err != nil {
			return err
		}
		hidden = c.Hidden
	}
	return ex.ForEachMailbox(ctx, func(name string, version uint64, mk state.Markers) error {
		if name != key.Mailbox {
			return nil
		}
		fmt.Fprintf(w, "%s\n  uidvalidity=%d uidnext=%d messages=%d version=%d\n", title, mk.UIDValidity, mk.UIDNext, mk.NumMessages, version)
		if tagged {
			fmt.Fprintf(w, "UIDLs as device %q sees them (UID UIDL SIZE):\n", device)
		} else {
			fmt.Fprintln(w, "UIDLs (UID UIDL SIZE):")
		}
		return ex.ForEachEntry(ctx, name, func(e state.Entry) error {
			if !hidden[e.UIDL] {
				fmt.Fprintf(w, "  %d %s %d\n", e.UID, bridge.MergedUIDL(number, e.UIDL), e.Size)
			}
			return nil
		})
	})
}

// stateForget removes the client record of login: its hidden UIDLs come
// back, and its pending UPDATE is not carried out. Its last login stays:
// it is what happened, not what the device sees. It takes the maildrop
// lock, so that no session of that device is open meanwhile.
func stateForget(ctx context.Context, cfg bridge.Config, st state.Store, login string, w io.Writer) error {
	key, _, err := bridge.StateKey(cfg, login)
	if err != nil {
		return err
	}
	release, err := st.Lock(ctx, key)
	if errors.Is(err, state.ErrLocked) {
		return fmt.Errorf("%s is in session now; try again when it has ended", login)
	}
	if err != nil {
		return err
	}
	defer release()
	c, err := st.LoadClient(ctx, key)
	if err != nil {
		return err
	}
	if c.Pending == nil && len(c.Hidden) == 0 {
		fmt.Fprintf(w, "device %q of %s hides nothing and has no pending UPDATE; nothing to forget\n", key.Client, key.Mailbox)
		return nil
	}
	hidden := make([]string, 0, len(c.Hidden))
	for u := range c.Hidden {
		hidden = append(hidden, u)
	}
	if err := st.ApplyClient(ctx, key, state.ClientChange{Unhide: hidden, ClearPending: true}); err != nil {
		return err
	}
	fmt.Fprintf(w, "forgot device %q of %s: %d hidden UIDLs shown again, pending UPDATE dropped: %s\n",
		key.Client, key.Mailbox, len(hidden), describePending(c.Pending))
	return nil
}
