package bridge

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/popbridge/popbridge/internal/configfile"
	"github.com/popbridge/popbridge/internal/netlist"
	"github.com/popbridge/popbridge/internal/saslmech"
	"github.com/popbridge/popbridge/state"
	"github.com/popbridge/popbridge/upstream"
)

// Config is popbridge's configuration, read from TOML by LoadConfig.
// config.toml.example documents every key; the two must agree.
type Config struct {
	Server   ServerConfig   `toml:"server"`
	TLS      TLSConfig      `toml:"tls"`
	Upstream UpstreamConfig `toml:"upstream"`
	Auth     AuthConfig     `toml:"auth"`
	Delete   DeleteConfig   `toml:"delete"`
	UIDL     UIDLConfig     `toml:"uidl"`
	State    StateConfig    `toml:"state"`
	Limits   LimitsConfig   `toml:"limits"`
	Log      LogConfig      `toml:"log"`
	Admin    AdminConfig    `toml:"admin"`
	// Upstreams are the upstreams of enrolled accounts ([[upstreams]]),
	// Accounts how enrolled accounts are kept and who wins a login name
	// (config_accounts.go).
	Upstreams []OAuthUpstreamConfig `toml:"upstreams"`
	Accounts  AccountsConfig        `toml:"accounts"`
	// Maildrops are the merged maildrops ([[maildrops]],
	// config_maildrops.go): logins served from several mailboxes.
	Maildrops []MaildropConfig `toml:"maildrops"`
}

// AdminConfig is the [admin] table: the operator's HTTP endpoints
// (/healthz, /readyz, /metrics, and /debug/pprof when Pprof is set).
type AdminConfig struct {
	Listen string `toml:"listen"` // host:port; "" turns the endpoints off
	Pprof  bool   `toml:"pprof"`  // serve /debug/pprof/ too
	// ReadyCache is how long one round of readiness checks answers
	// /readyz, so that probes cannot hammer the store and the upstream.
	ReadyCache time.Duration `toml:"ready_cache"`
}

// ServerConfig is the [server] table: the POP3 side.
type ServerConfig struct {
	Listen          string        `toml:"listen"`           // POP3 (STLS offered when [tls] is set)
	ListenTLS       string        `toml:"listen_tls"`       // POP3 over implicit TLS (RFC 8314), "" for none
	ShutdownTimeout time.Duration `toml:"shutdown_timeout"` // how long sessions may finish after SIGTERM
	IdleTimeout     time.Duration `toml:"idle_timeout"`     // autologout in TRANSACTION (RFC 1939 §3: ≥ 10m)
	AuthTimeout     time.Duration `toml:"auth_timeout"`     // idle time allowed before login
	// ProxyTrusted lists the addresses and networks (CIDR) of the load
	// balancers that send a PROXY protocol header (v1 or v2). Connections
	// from them must start with one; from anywhere else a header is
	// refused. Empty: the PROXY protocol is off.
	ProxyTrusted netlist.List `toml:"proxy_trusted"`
}

// TLSConfig is the [tls] table: the certificate shown to POP3 clients,
// read again on SIGHUP (Server.ReloadTLS).
type TLSConfig struct {
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
}

// UpstreamConfig is the [upstream] table: the IMAP server.
type UpstreamConfig struct {
	// Name names the upstream in the state store: records are keyed on
	// it, the account and the mailbox, not on Address, so that Address can
	// be spelled otherwise or changed (a server move) without losing the
	// UIDLs. Letters, digits, '.', '_' and '-', at most 64.
	Name               string            `toml:"name"`
	Address            string            `toml:"address"`              // host:port
	Security           upstream.Security `toml:"security"`             // tls | starttls | none
	Mailbox            string            `toml:"mailbox"`              // the mailbox served as the maildrop
	CAFile             string            `toml:"ca_file"`              // PEM roots instead of the system's
	ServerName         string            `toml:"server_name"`          // TLS name to verify; default: the host of address
	InsecureSkipVerify bool              `toml:"insecure_skip_verify"` // never in production
	Timeout            time.Duration     `toml:"timeout"`              // dial and command timeout
	MarkSeenOnRetr     bool              `toml:"mark_seen_on_retr"`    // set \Seen upstream after each RETR
	// AllowCleartextRemote lets security "none" reach an upstream that
	// is not on loopback (passwords and mail cross that network in
	// clear); logged as a warning at every start.
	AllowCleartextRemote bool `toml:"allow_cleartext_remote"`
	// Profile names the provider (gmail, microsoft365, outlook, icloud,
	// yahoo, fastmail, generic), whose known behaviour popbridge follows
	// (see profile.go); "auto" recognizes it from the host name, the
	// capabilities and the ID answer.
	Profile string `toml:"profile"`
	// MaxConnectionsPerAccount bounds the upstream connections popbridge
	// holds for one account at once; a login beyond it waits briefly and
	// is then refused with [SYS/TEMP]. 0: the profile's (Gmail 15,
	// Microsoft 20, otherwise none); -1: no limit.
	MaxConnectionsPerAccount int `toml:"max_connections_per_account"`
	// WarmTTL is how long the upstream connection of a session that
	// ended well is kept, logged in and selected, for the next session of
	// the same account, mailbox and password (warm.go); 0 turns warm
	// connections off. A password changed upstream keeps working through a
	// warm connection for at most this long. At most 25 minutes (IDLE is
	// renewed before 29).
	WarmTTL time.Duration `toml:"warm_ttl"`
	// WarmPerAccount bounds the warm connections kept for one account;
	// WarmTotal those of the whole process. 0 turns them off.
	WarmPerAccount int `toml:"warm_per_account"`
	WarmTotal      int `toml:"warm_total"`
}

// AuthConfig is the [auth] table: how POP3 logins are read.
type AuthConfig struct {
	DeviceSeparator   string `toml:"device_separator"`    // "alice#phone": account "alice", device "phone"
	AllowInsecureAuth bool   `toml:"allow_insecure_auth"` // USER/PASS without TLS; loopback and sidecars only
	// AllowInsecureAuthRemote lets AllowInsecureAuth apply to a
	// server.listen that is not on loopback (a sidecar's private
	// network); logged as a warning at every start.
	AllowInsecureAuthRemote bool `toml:"allow_insecure_auth_remote"`
	// FoldCase says that the upstream reads user names without regard to
	// case (ASCII letters), as Dovecot's default auth_username_format %Lu,
	// Gmail and Microsoft do: "Bob" and "bob" are one account, under one
	// lock, one record and one count of failures and sessions. Set it to
	// false for an upstream whose user names are case-sensitive.
	FoldCase bool `toml:"fold_case"`
	// OAuthMechanisms are the SASL mechanisms whose bearer token is
	// passed through to the upstream: XOAUTH2, OAUTHBEARER. Empty: none.
	OAuthMechanisms []string `toml:"oauth_mechanisms"`
}

// DeleteConfig is the [delete] table: what a POP3 DELE becomes at QUIT.
type DeleteConfig struct {
	Policy Policy   `toml:"policy"`  // move | expunge | flag | hide
	MoveTo string   `toml:"move_to"` // for move: "" = the \Trash special-use mailbox
	Flags  []string `toml:"flags"`   // for flag
}

// UIDLConfig is the [uidl] table.
type UIDLConfig struct {
	Format state.UIDLFormatter `toml:"format"` // Dovecot-style template with %u and %v
}

// StateConfig is the [state] table (see state.Config).
type StateConfig = state.Config

// LogConfig is the [log] table.
type LogConfig struct {
	Level  zapcore.Level `toml:"level"`  // debug | info | warn | error
	Format string        `toml:"format"` // json | console
	// UpstreamTrace logs every line exchanged with the upstream (one log
	// line each, "C: " for what popbridge sent, "S: " for what it
	// received), with credentials redacted; UpstreamTraceAccounts limits
	// it to those accounts (empty: every account).
	UpstreamTrace         bool     `toml:"upstream_trace"`
	UpstreamTraceAccounts []string `toml:"upstream_trace_accounts"`
}

// DefaultConfig returns the configuration every key falls back to.
func DefaultConfig() Config {
	return Config{
		Server: ServerConfig{
			Listen:          "127.0.0.1:1110",
			ShutdownTimeout: 30 * time.Second,
			IdleTimeout:     10 * time.Minute,
			AuthTimeout:     time.Minute,
			ProxyTrusted:    netlist.List{},
		},
		Upstream: UpstreamConfig{
			Name:     DefaultUpstreamName,
			Security: upstream.SecurityTLS,
			Mailbox:  "INBOX",
			Timeout:  30 * time.Second,
			Profile:  ProfileAuto,
			// One minute covers clients that poll every minute or
			// faster, the ones that gain most, and bounds how long a
			// password changed upstream still works here.
			WarmTTL:        time.Minute,
			WarmPerAccount: 1,
			WarmTotal:      1000,
		},
		Auth: AuthConfig{
			DeviceSeparator: "#",
			FoldCase:        true,
			OAuthMechanisms: []string{saslmech.XOAuth2, saslmech.OAuthBearer},
		},
		Delete: DeleteConfig{Policy: PolicyMove, Flags: []string{`\Seen`, "$POP3Deleted"}},
		UIDL:   UIDLConfig{Format: state.MustUIDLFormatter(state.DefaultUIDLFormat)},
		State:  StateConfig{Driver: "bolt", Path: "popbridge.db"},
		Limits: LimitsConfig{
			MaxConnections:             1000,
			MaxConnectionsPerIP:        20,
			LoginFailureDelay:          time.Second,
			LoginFailureDelayMax:       15 * time.Second,
			MaxLoginFailuresPerIP:      10,
			MaxLoginFailuresPerAccount: 30,
			LoginFailureWindow:         15 * time.Minute,
			ExemptNetworks:             netlist.MustParse("127.0.0.0/8", "::1"),
			MaxSessionsPerAccount:      10,
		},
		Log:      LogConfig{Level: zapcore.InfoLevel, Format: "json", UpstreamTraceAccounts: []string{}},
		Admin:    AdminConfig{ReadyCache: 5 * time.Second},
		Accounts: AccountsConfig{Passthrough: true},
	}
}

// EnvPrefix starts the names of the environment variables that override
// configuration keys: POPBRIDGE_UPSTREAM_ADDRESS is upstream.address (see
// configfile.ApplyEnv).
const EnvPrefix = "POPBRIDGE_"

// LoadConfig reads the TOML file at path over DefaultConfig, applies the
// environment's overrides (EnvPrefix), reads the secrets kept in files
// (*_file keys) and validates the result. Unknown keys and bad values are
// errors that name the key (and the variable).
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return parseConfig(string(data), os.Environ())
}

// ParseConfig is LoadConfig for a TOML text, without the environment.
// Every problem is reported at once, not only the first: values that do not
// decode (each typed value checks itself), then values that do not fit
// together.
func ParseConfig(text string) (Config, error) {
	return parseConfig(text, nil)
}

// parseConfig is ParseConfig with the environment variables environ
// applied after the file.
func parseConfig(text string, environ []string) (Config, error) {
	cfg := DefaultConfig()
	var list []error
	failed := map[string]bool{}
	collect := func(err error) {
		j, ok := err.(interface{ Unwrap() []error })
		if !ok {
			list = append(list, err)
			return
		}
		for _, e := range j.Unwrap() {
			list = append(list, e)
			var ke *configfile.KeyError
			if errors.As(e, &ke) {
				failed[ke.Key] = true
				failed[strings.TrimSuffix(ke.Key, "_file")] = true // what a *_file key stands for
			}
		}
	}
	if err := configfile.Decode(text, &cfg); err != nil {
		if _, ok := err.(interface{ Unwrap() []error }); !ok {
			return Config{}, fmt.Errorf("config: %w", err) // a syntax error: nothing was decoded
		}
		collect(err)
	}
	if err := configfile.ApplyEnv(environ, EnvPrefix, &cfg); err != nil {
		collect(err)
	}
	if err := configfile.ResolveFiles(&cfg); err != nil {
		collect(err)
	}
	// Keys that did not decode kept their defaults: what validation says
	// of them would only repeat the problem.
	for _, pr := range cfg.problems() {
		if !failed[pr.key] {
			list = append(list, pr)
		}
	}
	if len(list) > 0 {
		return Config{}, configErrors(list)
	}
	return cfg, nil
}

// configErrors prefixes one problem with "config: ", and lists several on
// lines of their own.
func configErrors(list []error) error {
	if len(list) == 1 {
		return fmt.Errorf("config: %w", list[0])
	}
	var b strings.Builder
	fmt.Fprintf(&b, "config: %d problems:", len(list))
	for _, e := range list {
		b.WriteString("\n  " + e.Error())
	}
	return &multiError{text: b.String(), errs: list}
}

type multiError struct {
	text string
	errs []error
}

func (e *multiError) Error() string   { return e.text }
func (e *multiError) Unwrap() []error { return e.errs }

// problem is one value that does not validate.
type problem struct {
	key string
	msg string
}

func (p *problem) Error() string { return p.key + ": " + p.msg }

// problems collects what the tables' validate methods find.
type problems []*problem

func (p *problems) add(key, format string, args ...any) {
	*p = append(*p, &problem{key: key, msg: fmt.Sprintf(format, args...)})
}

// Validate checks every table, and what the tables ask of each other, and
// returns every problem found, each naming its key.
func (c *Config) Validate() error {
	p := c.problems()
	if len(p) == 0 {
		return nil
	}
	list := make([]error, len(p))
	for i, e := range p {
		list[i] = e
	}
	return configErrors(list)
}

func (c *Config) problems() problems {
	var p problems
	c.Server.validate(&p)
	c.TLS.validate(&p)
	// [upstream] may go without an address when it serves no one: with
	// [[upstreams]] or with pass-through off.
	c.Upstream.validate(&p, len(c.Upstreams) == 0 && c.Accounts.Passthrough)
	c.validateOAuth(&p)
	c.Auth.validate(&p)
	c.Delete.validate(&p)
	c.State.Check(func(key, msg string) { p.add("state."+key, "%s", msg) })
	c.Limits.Check(func(key, msg string) { p.add("limits."+key, "%s", msg) })
	c.Log.validate(&p)
	c.Admin.validate(&p)
	c.validateMaildrops(&p)
	if c.Server.ListenTLS != "" && c.TLS.CertFile == "" {
		p.add("server.listen_tls", "needs tls.cert_file and tls.key_file")
	}
	if c.Auth.AllowInsecureAuth && !loopbackAddr(c.Server.Listen) && !c.Auth.AllowInsecureAuthRemote {
		p.add("auth.allow_insecure_auth", "server.listen %q is not loopback: passwords would cross the network in clear; listen on loopback, use TLS, or, for a private network (a sidecar's), set auth.allow_insecure_auth_remote = true", c.Server.Listen)
	}
	return p
}

func (c *ServerConfig) validate(p *problems) {
	checkAddr(p, "server.listen", c.Listen)
	if c.ListenTLS != "" {
		checkAddr(p, "server.listen_tls", c.ListenTLS)
	}
	if c.ShutdownTimeout < 0 {
		p.add("server.shutdown_timeout", "must not be negative")
	}
	if c.IdleTimeout < 10*time.Minute {
		p.add("server.idle_timeout", "%v is below the 10 minutes RFC 1939 §3 requires", c.IdleTimeout)
	}
	if c.AuthTimeout <= 0 {
		p.add("server.auth_timeout", "must be positive")
	}
}

func (c *TLSConfig) validate(p *problems) {
	if (c.CertFile == "") != (c.KeyFile == "") {
		p.add("tls", "cert_file and key_file go together")
	}
}

func (c *UpstreamConfig) validate(p *problems, addressRequired bool) {
	if !validUpstreamName(c.Name) {
		p.add("upstream.name", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", c.Name)
	}
	switch {
	case c.Address == "" && addressRequired:
		p.add("upstream.address", "is required (host:port of the IMAP server), unless [[upstreams]] serve enrolled accounts or accounts.passthrough = false")
	case c.Security == upstream.SecurityNone && !loopbackAddr(c.Address) && !c.AllowCleartextRemote:
		p.add("upstream.security", `"none" would send passwords and mail in clear to %s, which is not loopback: use tls or starttls, or, for a private network, set upstream.allow_cleartext_remote = true`, c.Address)
	}
	if c.Address != "" {
		checkAddr(p, "upstream.address", c.Address)
	}
	if c.Mailbox == "" {
		p.add("upstream.mailbox", "must not be empty")
	}
	if c.Timeout <= 0 {
		p.add("upstream.timeout", "must be positive")
	}
	if err := validProfile(c.Profile); err != nil {
		p.add("upstream.profile", "%v", err)
	}
	if c.MaxConnectionsPerAccount < -1 {
		p.add("upstream.max_connections_per_account", "must be -1 (no limit), 0 (the profile's) or positive")
	}
	if c.WarmTTL < 0 || c.WarmTTL > maxWarmTTL {
		p.add("upstream.warm_ttl", "%v: want 0 (off) up to %v", c.WarmTTL, maxWarmTTL)
	}
	if c.WarmPerAccount < 0 {
		p.add("upstream.warm_per_account", "must be 0 (off) or positive")
	}
	if c.WarmTotal < 0 {
		p.add("upstream.warm_total", "must be 0 (off) or positive")
	}
}

func (c *AuthConfig) validate(p *problems) {
	if len(c.DeviceSeparator) > 1 {
		p.add("auth.device_separator", "must be one character, or empty for no device tags")
	}
	for i, m := range c.OAuthMechanisms {
		if !saslmech.IsToken(m) {
			p.add("auth.oauth_mechanisms", "unknown mechanism %q (want XOAUTH2 or OAUTHBEARER)", m)
		} else if slices.Contains(c.OAuthMechanisms[:i], m) {
			p.add("auth.oauth_mechanisms", "%s is listed twice", m)
		}
	}
}

func (c *DeleteConfig) validate(p *problems) {
	if c.Policy == PolicyFlag && len(c.Flags) == 0 {
		p.add("delete.flags", "the flag policy needs at least one flag")
	}
	for _, f := range c.Flags {
		if !upstream.ValidFlag(f) {
			p.add("delete.flags", "%q is not an IMAP flag or keyword", f)
		}
	}
}

func (c *LogConfig) validate(p *problems) {
	switch c.Level {
	case zapcore.DebugLevel, zapcore.InfoLevel, zapcore.WarnLevel, zapcore.ErrorLevel:
	default:
		p.add("log.level", "unknown value %q (want debug, info, warn or error)", c.Level)
	}
	switch c.Format {
	case "json", "console":
	default:
		p.add("log.format", "unknown value %q (want json or console)", c.Format)
	}
}

func (c *AdminConfig) validate(p *problems) {
	if c.Listen != "" {
		checkAddr(p, "admin.listen", c.Listen)
	}
	if c.ReadyCache <= 0 {
		p.add("admin.ready_cache", "must be positive")
	}
}

// validUpstreamName reports whether n can be upstream.name: it is part of
// every state key, so it is short and holds no separator.
func validUpstreamName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// loopbackAddr reports whether host:port addr names the loopback
// interface: "localhost" or a loopback IP address. An empty or
// unspecified host ("", 0.0.0.0, ::) listens on every interface, so it
// is not loopback; nor is any other name, which DNS could point
// anywhere.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// checkAddr checks that addr is host:port.
func checkAddr(p *problems, key, addr string) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		p.add(key, "%q is not host:port", addr)
	}
}
