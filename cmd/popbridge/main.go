// Command popbridge serves POP3 clients from an upstream IMAP mailbox.
//
//	popbridge serve -config FILE   run the server (SIGHUP reloads the configuration)
//	                               (-init-state: accept an empty state file as new)
//	popbridge demo                 run against an in-process IMAP server with sample mail
//	popbridge check -config FILE   validate the configuration, then try the upstream
//	popbridge account ...          enrolled accounts: init-key, add, list, remove, passwd, test
//	popbridge import-uidl ...      carry an old POP3 server's UIDLs over (before clients move)
//	popbridge health [-ready]      ask a running popbridge's admin listener (for container health checks)
//	popbridge state COMMAND        list, show, forget, export, import and check the state store
//	popbridge version              print the version
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/popbridge/popbridge/bridge"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/state/stores"
)

// version is set at build time with -ldflags "-X main.version=…"
// (contrib/build.sh); empty means: ask the build information.
var version string

const usage = `usage:
  popbridge serve -config FILE [-init-state]
                                   serve POP3 from the upstream IMAP server
                                   (SIGHUP reloads the configuration);
                                   -init-state accepts an empty (0-byte) state
                                   file as a new one
  popbridge demo [-listen ADDR]    serve sample mail from an in-process IMAP server
  popbridge check -config FILE [-user NAME]
                                   validate the configuration; with -user, log in
                                   upstream (password from POPBRIDGE_PASSWORD or stdin)
  popbridge account SUBCOMMAND ... enrolled accounts of OAuth-only providers
                                   (init-key, add, list, remove, passwd, test;
                                   popbridge account help)
  popbridge import-uidl -config FILE -user ACCOUNT -from pop3s://HOST[:PORT]
                   [-old-user NAME] [-insecure] [-force] [-dry-run]
                                   give the account's messages the UIDLs the old POP3
                                   server gave them, so that its clients download
                                   nothing again (passwords from POPBRIDGE_PASSWORD
                                   and POPBRIDGE_OLD_PASSWORD, or stdin)
  popbridge health [-addr HOST:PORT] [-ready]
                                   ask the admin listener of a running popbridge:
                                   /healthz, or /readyz with -ready; exit 1 unless OK
  popbridge state COMMAND -config FILE [ARGS]
                                   inspect, move and check the state store:
                                   list, show, forget, export, import, check
                                   (popbridge state help)
  popbridge version                print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "demo":
		err = demo(os.Args[2:])
	case "check":
		err = check(os.Args[2:], os.Stdin, os.Stdout)
	case "import-uidl":
		err = importUIDL(os.Args[2:], os.Stdin, os.Stdout)
	case "health":
		err = health(os.Args[2:], os.Stdout)
	case "account":
		if len(os.Args) > 2 && (os.Args[2] == "help" || os.Args[2] == "-h") {
			fmt.Print(accountUsage)
			return
		}
		err = accountCmd(os.Args[2:], os.Stdin, os.Stdout)
	case "state":
		err = stateCmd(os.Args[2:], os.Stdin, os.Stdout)
	case "version", "-version", "--version":
		fmt.Println("popbridge", buildVersion())
	case "help", "-h", "-help", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "popbridge: unknown command %q\n\n%s", os.Args[1], usage)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "popbridge:", err)
		os.Exit(1)
	}
}

func newLogger(c bridge.LogConfig) (*zap.Logger, error) {
	log, _, err := newLoggerLevel(c)
	return log, err
}

// newLoggerLevel is newLogger, with the level the logger can be set to
// later (a reload).
func newLoggerLevel(c bridge.LogConfig) (*zap.Logger, *zap.AtomicLevel, error) {
	var zc zap.Config
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
		zc.Development = false
	} else {
		zc = zap.NewProductionConfig()
		zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	}
	zc.Level = zap.NewAtomicLevelAt(c.Level)
	zc.Sampling = nil
	log, err := zc.Build()
	return log, &zc.Level, err
}

// openStore opens the state store of cfg's [state] table. initEmpty (serve
// -init-state) lets the bolt driver start on an existing empty file.
func openStore(ctx context.Context, cfg bridge.Config, initEmpty bool, log *zap.Logger) (state.Store, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return stores.Open(ctx, cfg.State, stores.Options{MaxLocks: bridge.StateLocks(cfg), InitEmpty: initEmpty}, log)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (TOML)")
	initState := fs.Bool("init-state", false, "accept an existing empty (0-byte) state file as a new one (state.init_empty)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("serve needs -config FILE (see config.toml.example)")
	}
	cfg, err := bridge.LoadConfig(*path)
	if err != nil {
		return err
	}
	log, level, err := newLoggerLevel(cfg.Log)
	if err != nil {
		return err
	}
	defer log.Sync()
	st, err := openStore(context.Background(), cfg, *initState, log)
	if err != nil {
		return err
	}
	defer st.Close()
	srv, err := bridge.NewServer(cfg, st, log)
	if err != nil {
		return err
	}
	srv.LogLevel = level
	if err := srv.Listen(); err != nil {
		return err
	}
	fields := []zap.Field{zap.String("pop3", srv.Addr().String()), zap.String("upstream", cfg.Upstream.Address),
		zap.String("delete_policy", string(cfg.Delete.Policy)), zap.String("version", buildVersion())}
	if a := srv.TLSAddr(); a != nil {
		fields = append(fields, zap.String("pop3s", a.String()))
	}
	log.Info("popbridge started", fields...)
	return runUntilSignal(srv, cfg.Server.ShutdownTimeout, log, func() { reload(srv, *path, log) })
}

// reload reads the configuration file again (SIGHUP), with the
// environment's overrides, and applies it (Server.Reload logs what
// changed and what it kept). A file that does not load or apply changes
// nothing; every reason is logged.
func reload(srv *bridge.Server, path string, log *zap.Logger) {
	cfg, err := bridge.LoadConfig(path)
	if err == nil {
		err = srv.Reload(cfg)
	}
	if err != nil {
		log.Error("SIGHUP: configuration not reloaded; the running one stays", zap.String("config", path), zap.Error(err))
	}
}

// runUntilSignal serves until SIGTERM or SIGINT, then shuts down gracefully
// within timeout. Each SIGHUP calls reload.
func runUntilSignal(srv interface {
	Serve() error
	Shutdown(context.Context) error
}, timeout time.Duration, log *zap.Logger, reload func()) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
wait:
	for {
		select {
		case err := <-errc:
			return err
		case <-hup:
			reload()
		case <-ctx.Done():
			break wait
		}
	}
	stop()
	log.Info("shutting down; waiting for sessions", zap.Duration("timeout", timeout))
	sctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	<-errc
	log.Info("stopped")
	return err
}

func demo(args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:1110", "POP3 address (loopback)")
	level := fs.String("log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	lvl, err := zapcore.ParseLevel(*level)
	if err != nil {
		return err
	}
	log, err := newLogger(bridge.LogConfig{Level: lvl, Format: "console"})
	if err != nil {
		return err
	}
	defer log.Sync()
	d, err := startDemo(*listen, log)
	if err != nil {
		return err
	}
	addr := d.Addr().String()
	fmt.Printf(`popbridge demo: POP3 on %[1]s, upstream IMAP (in-process) on %[2]s
  user:      %[3]s      (or %[3]s#laptop, %[3]s#phone: one view per device)
  password:  %[4]s
  list:      curl -s pop3://%[1]s/ -u %[3]s:%[4]s
  retrieve:  curl -s pop3://%[1]s/1 -u %[3]s:%[4]s
  uidl:      curl -s pop3://%[1]s/ -u %[3]s:%[4]s -X UIDL
Delete policy: move (DELE + QUIT moves the message to Trash). Ctrl-C stops.
`, addr, d.IMAPAddr, demoUser, demoPassword)
	os.Stdout.Sync()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- d.Serve() }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = d.Close(sctx)
		<-errc
	}
	return err
}

func check(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	path := fs.String("config", "", "configuration file (TOML)")
	user := fs.String("user", "", "upstream account to log in with (optional)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return errors.New("check needs -config FILE")
	}
	cfg, err := bridge.LoadConfig(*path)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: configuration ok\n", *path)
	bridge.CheckUpstreams(cfg, stdout)
	if *user == "" {
		return nil
	}
	pass := os.Getenv("POPBRIDGE_PASSWORD")
	if pass == "" {
		if pass, err = readPassword(stdin, os.Stderr, *user); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*cfg.Upstream.Timeout)
	defer cancel()
	return bridge.Check(ctx, cfg, *user, pass, stdout, nil)
}

// readPassword prompts on prompt and reads the password for user: the
// first line of stdin. From a terminal it is read with echo off, so that
// it does not show on the screen (or in a recording of it).
func readPassword(stdin io.Reader, prompt io.Writer, user string) (string, error) {
	return readPasswordFrom(stdin, bufio.NewReader(stdin), prompt, user, "POPBRIDGE_PASSWORD")
}
