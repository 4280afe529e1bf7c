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

	"github.com/BurntSushi/toml"

	"github.com/popbridge/popbridge/bridge/pop3"
	"github.com/popbridge/popbridge/bridge/upstream"
	"github.com/popbridge/popbridge/state"
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
	ProxyTrusted []string `toml:"proxy_trusted"`
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
	Name               string        `toml:"name"`
	Address            string        `toml:"address"`              // host:port
	Security           string        `toml:"security"`             // tls | starttls | none
	Mailbox            string        `toml:"mailbox"`              // the mailbox served as the maildrop
	CAFile             string        `toml:"ca_file"`              // PEM roots instead of the system's
	ServerName         string        `toml:"server_name"`          // TLS name to verify; default: the host of address
	InsecureSkipVerify bool          `toml:"insecure_skip_verify"` // never in production
	Timeout            time.Duration `toml:"timeout"`              // dial and command timeout
	MarkSeenOnRetr     bool          `toml:"mark_seen_on_retr"`    // set \Seen upstream after each RETR
}

// AuthConfig is the [auth] table: how POP3 logins are read.
type AuthConfig struct {
	DeviceSeparator   string `toml:"device_separator"`    // "alice#phone": account "alice", device "phone"
	AllowInsecureAuth bool   `toml:"allow_insecure_auth"` // USER/PASS without TLS; loopback and sidecars only
	// OAuthMechanisms are the SASL mechanisms whose bearer token is
	// passed through to the upstream: XOAUTH2, OAUTHBEARER. Empty: none.
	OAuthMechanisms []string `toml:"oauth_mechanisms"`
}

// LimitsConfig is the [limits] table: abuse control. A zero count turns
// its limit off. Per-address limits count an IPv6 client by its /64.
type LimitsConfig struct {
	MaxConnections      int `toml:"max_connections"`        // open POP3 connections in total
	MaxConnectionsPerIP int `toml:"max_connections_per_ip"` // open POP3 connections per client address
	// LoginFailureDelay is the pause before a failed login is answered;
	// it doubles with each further recent failure of the address or the
	// account, up to LoginFailureDelayMax.
	LoginFailureDelay    time.Duration `toml:"login_failure_delay"`
	LoginFailureDelayMax time.Duration `toml:"login_failure_delay_max"`
	// Failed logins allowed per client address and per account within
	// LoginFailureWindow; beyond them logins are refused with
	// [LOGIN-DELAY] until the window lets one more through (the count
	// decays steadily: one failure per window/max).
	MaxLoginFailuresPerIP      int           `toml:"max_login_failures_per_ip"`
	MaxLoginFailuresPerAccount int           `toml:"max_login_failures_per_account"`
	LoginFailureWindow         time.Duration `toml:"login_failure_window"`
	// ExemptNetworks are client addresses and networks (CIDR) the
	// per-address limits do not apply to; the account and total limits
	// still do.
	ExemptNetworks []string `toml:"exempt_networks"`
}

// DeleteConfig is the [delete] table: what a POP3 DELE becomes at QUIT.
type DeleteConfig struct {
	Policy string   `toml:"policy"`  // move | expunge | flag | hide
	MoveTo string   `toml:"move_to"` // for move: "" = the \Trash special-use mailbox
	Flags  []string `toml:"flags"`   // for flag
}

// UIDLConfig is the [uidl] table.
type UIDLConfig struct {
	Format string `toml:"format"` // Dovecot-style template with %u and %v
}

// StateConfig is the [state] table.
type StateConfig struct {
	Driver string `toml:"driver"` // bolt | postgres
	Path   string `toml:"path"`   // bolt: the database file
	DSN    string `toml:"dsn"`    // postgres: the connection string
	// InitEmpty lets the bolt driver start on an existing file of 0 bytes
	// as a new state file. Without it popbridge refuses such a file: it
	// lost the UIDLs and pending deletions it held. Set it once, on purpose
	// (or run serve -init-state), then remove it again.
	InitEmpty bool `toml:"init_empty"`
}

// LogConfig is the [log] table.
type LogConfig struct {
	Level  string `toml:"level"`  // debug | info | warn | error
	Format string `toml:"format"` // json | console
}

// Delete policies (DESIGN.md, "Delete policies").
const (
	PolicyMove    = "move"
	PolicyExpunge = "expunge"
	PolicyFlag    = "flag"
	PolicyHide    = "hide"
)

// DefaultConfig returns the configuration every key falls back to.
func DefaultConfig() Config {
	return Config{
		Server: ServerConfig{
			Listen:          "127.0.0.1:1110",
			ShutdownTimeout: 30 * time.Second,
			IdleTimeout:     10 * time.Minute,
			AuthTimeout:     time.Minute,
			ProxyTrusted:    []string{},
		},
		Upstream: UpstreamConfig{
			Name:     DefaultUpstreamName,
			Security: "tls",
			Mailbox:  "INBOX",
			Timeout:  30 * time.Second,
		},
		Auth: AuthConfig{
			DeviceSeparator: "#",
			OAuthMechanisms: []string{pop3.MechXOAuth2, pop3.MechOAuthBearer},
		},
		Delete: DeleteConfig{Policy: PolicyMove, Flags: []string{`\Seen`, "$POP3Deleted"}},
		UIDL:   UIDLConfig{Format: state.DefaultUIDLFormat},
		State:  StateConfig{Driver: "bolt", Path: "popbridge.db"},
		Limits: LimitsConfig{
			MaxConnections:             1000,
			MaxConnectionsPerIP:        20,
			LoginFailureDelay:          time.Second,
			LoginFailureDelayMax:       15 * time.Second,
			MaxLoginFailuresPerIP:      10,
			MaxLoginFailuresPerAccount: 30,
			LoginFailureWindow:         15 * time.Minute,
			ExemptNetworks:             []string{"127.0.0.0/8", "::1"},
		},
		Log: LogConfig{Level: "info", Format: "json"},
	}
}

// LoadConfig reads the TOML file at path over DefaultConfig and validates
// it. Unknown keys and bad values are errors that name the key.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(string(data))
}

// ParseConfig is LoadConfig for a TOML text.
func ParseConfig(text string) (Config, error) {
	cfg := DefaultConfig()
	md, err := toml.Decode(text, &cfg)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if key := keyAtLine(text, pe.Position.Line); key != "" {
				return Config{}, fmt.Errorf("config: %s (line %d): %s", key, pe.Position.Line, pe.Message)
			}
			return Config{}, fmt.Errorf("config: line %d: %s", pe.Position.Line, pe.Message)
		}
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return Config{}, fmt.Errorf("config: unknown key %s", strings.Join(keys, ", "))
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// Validate checks every value and returns the first problem, naming its key.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("config: %s: %s", key, fmt.Sprintf(format, args...))
	}
	if err := checkAddr(c.Server.Listen); err != nil {
		return bad("server.listen", "%v", err)
	}
	if c.Server.ListenTLS != "" {
		if err := checkAddr(c.Server.ListenTLS); err != nil {
			return bad("server.listen_tls", "%v", err)
		}
		if c.TLS.CertFile == "" {
			return bad("server.listen_tls", "needs tls.cert_file and tls.key_file")
		}
	}
	if c.Server.ShutdownTimeout < 0 {
		return bad("server.shutdown_timeout", "must not be negative")
	}
	if c.Server.IdleTimeout < 10*time.Minute {
		return bad("server.idle_timeout", "%v is below the 10 minutes RFC 1939 §3 requires", c.Server.IdleTimeout)
	}
	if c.Server.AuthTimeout <= 0 {
		return bad("server.auth_timeout", "must be positive")
	}
	if _, err := parseNetworks(c.Server.ProxyTrusted); err != nil {
		return bad("server.proxy_trusted", "%v", err)
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		return bad("tls", "cert_file and key_file go together")
	}
	if !validUpstreamName(c.Upstream.Name) {
		return bad("upstream.name", "%q: want 1 to 64 letters, digits, '.', '_' or '-'", c.Upstream.Name)
	}
	if c.Upstream.Address == "" {
		return bad("upstream.address", "is required (host:port of the IMAP server)")
	}
	if _, _, err := net.SplitHostPort(c.Upstream.Address); err != nil {
		return bad("upstream.address", "%q is not host:port", c.Upstream.Address)
	}
	if _, err := upstream.ParseSecurity(c.Upstream.Security); err != nil {
		return bad("upstream.security", "unknown value %q (want tls, starttls or none)", c.Upstream.Security)
	}
	if c.Upstream.Mailbox == "" {
		return bad("upstream.mailbox", "must not be empty")
	}
	if c.Upstream.Timeout <= 0 {
		return bad("upstream.timeout", "must be positive")
	}
	if len(c.Auth.DeviceSeparator) > 1 {
		return bad("auth.device_separator", "must be one character, or empty for no device tags")
	}
	for i, m := range c.Auth.OAuthMechanisms {
		if m != pop3.MechXOAuth2 && m != pop3.MechOAuthBearer {
			return bad("auth.oauth_mechanisms", "unknown mechanism %q (want XOAUTH2 or OAUTHBEARER)", m)
		}
		if slices.Contains(c.Auth.OAuthMechanisms[:i], m) {
			return bad("auth.oauth_mechanisms", "%s is listed twice", m)
		}
	}
	switch c.Delete.Policy {
	case PolicyMove, PolicyExpunge, PolicyHide:
	case PolicyFlag:
		if len(c.Delete.Flags) == 0 {
			return bad("delete.flags", "the flag policy needs at least one flag")
		}
	default:
		return bad("delete.policy", "unknown value %q (want move, expunge, flag or hide)", c.Delete.Policy)
	}
	for _, f := range c.Delete.Flags {
		if !validFlag(f) {
			return bad("delete.flags", "%q is not an IMAP flag or keyword", f)
		}
	}
	if err := state.CheckUIDLFormat(c.UIDL.Format); err != nil {
		return bad("uidl.format", "%v", err)
	}
	switch c.State.Driver {
	case "bolt":
		if c.State.Path == "" {
			return bad("state.path", "the bolt driver needs a file path")
		}
	case "postgres":
		if c.State.DSN == "" {
			return bad("state.dsn", "the postgres driver needs a connection string")
		}
	default:
		return bad("state.driver", "unknown value %q (want bolt or postgres)", c.State.Driver)
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return bad("log.level", "unknown value %q (want debug, info, warn or error)", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		return bad("log.format", "unknown value %q (want json or console)", c.Log.Format)
	}
	return nil
}

// keyAtLine returns the dotted key ("server.idle_timeout") assigned on line
// n (1-based) of a TOML text, or "".
func keyAtLine(text string, n int) string {
	lines := strings.Split(text, "\n")
	if n < 1 || n > len(lines) {
		return ""
	}
	key, _, ok := strings.Cut(lines[n-1], "=")
	key = strings.TrimSpace(key)
	if !ok || key == "" || strings.HasPrefix(key, "#") || strings.HasPrefix(key, "[") {
		return ""
	}
	for i := n - 2; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "[") {
			return strings.Trim(l, "[] ") + "." + key
		}
	}
	return key
}

// validate checks the [limits] table.
func (l *LimitsConfig) validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("config: limits.%s: %s", key, fmt.Sprintf(format, args...))
	}
	for _, c := range []struct {
		key string
		n   int
	}{
		{"max_connections", l.MaxConnections},
		{"max_connections_per_ip", l.MaxConnectionsPerIP},
		{"max_login_failures_per_ip", l.MaxLoginFailuresPerIP},
		{"max_login_failures_per_account", l.MaxLoginFailuresPerAccount},
	} {
		if c.n < 0 {
			return bad(c.key, "must not be negative (0 turns the limit off)")
		}
	}
	if l.LoginFailureDelay < 0 {
		return bad("login_failure_delay", "must not be negative")
	}
	if l.LoginFailureDelayMax < l.LoginFailureDelay {
		return bad("login_failure_delay_max", "%v is below login_failure_delay (%v)", l.LoginFailureDelayMax, l.LoginFailureDelay)
	}
	if (l.MaxLoginFailuresPerIP > 0 || l.MaxLoginFailuresPerAccount > 0) && l.LoginFailureWindow <= 0 {
		return bad("login_failure_window", "must be positive")
	}
	if _, err := parseNetworks(l.ExemptNetworks); err != nil {
		return bad("exempt_networks", "%v", err)
	}
	return nil
}

// parseNetworks parses addresses ("10.1.2.3", "::1") and networks
// ("10.0.0.0/8") into prefixes.
func parseNetworks(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%q is not an address or a network (CIDR)", s)
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or a network (CIDR)", s)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
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

func checkAddr(addr string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	return nil
}

// validFlag reports whether f is a system flag (\Seen) or a keyword atom
// (RFC 9051 §2.3.2, flag-keyword).
func validFlag(f string) bool {
	switch strings.ToLower(f) {
	case `\seen`, `\answered`, `\flagged`, `\deleted`, `\draft`:
		return true
	}
	if f == "" || strings.HasPrefix(f, `\`) {
		return false
	}
	for i := 0; i < len(f); i++ {
		c := f[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`(){%*"\]`, c) >= 0 {
			return false
		}
	}
	return true
}
