// Package oauthtest is a fake OAuth 2.0 provider and an OAuth-only IMAP
// upstream for popbridge's tests and walk-throughs.
//
// Provider is an authorization server on HTTP: the device authorization
// grant (RFC 8628) with approval by a function or an HTTP request, the
// authorization code grant with PKCE (S256 checked), refresh tokens with
// selectable rotation, the client credentials grant for app-only access,
// revocation, short access-token lifetimes, injected failures and counters.
// Its Validate tells an IMAP server whom a token belongs to and which
// mailboxes it may open (own, shared with FullAccess, or an app's).
//
// IMAPServer is go-imap's memory server behind that check: LOGIN and
// AUTHENTICATE PLAIN are refused, AUTHENTICATE XOAUTH2 and OAUTHBEARER are
// let in when Validate allows the mailbox asked for.
//
// Neither depends on the testing package: cmd/fakeoauth runs both for a
// scripted walk-through. Start wires both for a test.
package oauthtest

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Rotation says what a refresh does to the refresh token.
type Rotation int

const (
	// RotateNever keeps the refresh token: the response carries none
	// (Google).
	RotateNever Rotation = iota
	// RotateStrict issues a new refresh token with every refresh; the
	// old one is dead at once. A client that loses the new one (a crash
	// between the answer and its state write) has lost the grant.
	RotateStrict
	// RotateGrace issues a new refresh token with every refresh; the old
	// one stays valid until the new one has been used once, and, with
	// Options.GracePeriod, at most that long (Microsoft's tokens outlive
	// their rotation).
	RotateGrace
)

func (r Rotation) String() string {
	switch r {
	case RotateNever:
		return "never"
	case RotateStrict:
		return "strict"
	case RotateGrace:
		return "grace"
	}
	return "Rotation(" + strconv.Itoa(int(r)) + ")"
}

// ParseRotation parses "never", "strict" or "grace".
func ParseRotation(s string) (Rotation, error) {
	for _, r := range []Rotation{RotateNever, RotateStrict, RotateGrace} {
		if s == r.String() {
			return r, nil
		}
	}
	return 0, fmt.Errorf("oauthtest: unknown rotation %q (never, strict, grace)", s)
}

// RoleIMAPAccessAsApp is the application permission an app needs to open
// mailboxes with a client-credentials token (Exchange Online's
// IMAP.AccessAsApp).
const RoleIMAPAccessAsApp = "IMAP.AccessAsApp"

// Grant type URN of RFC 8628.
const grantDeviceCode = "urn:ietf:params:oauth:grant-type:device_code"

// Options configure a Provider. The zero value is usable.
type Options struct {
	// AccessTokenLifetime is how long access tokens live (default 1h).
	AccessTokenLifetime time.Duration
	// DeviceCodeLifetime is how long a device code waits for approval
	// (default 15m).
	DeviceCodeLifetime time.Duration
	// DeviceInterval is the polling interval in seconds the device
	// endpoint announces (default 1). A poll sooner than the interval
	// after the previous one is answered slow_down, and the interval
	// grows by 5 seconds, as RFC 8628 §3.5 says.
	DeviceInterval int
	// Rotation of refresh tokens, and for RotateGrace the longest time a
	// rotated token stays valid (0: until its successor is used).
	Rotation    Rotation
	GracePeriod time.Duration
	// RequireOfflineAccess issues refresh tokens only when the scope
	// holds offline_access (Microsoft); otherwise every user grant gets
	// one.
	RequireOfflineAccess bool
	// IMAPScope, when set, is the scope a user token needs to pass
	// Validate.
	IMAPScope string
	// AutoApprove, when set, is the user every device code and every
	// browser authorization without login_hint is approved for.
	AutoApprove string
	// Now is the provider's clock for expiries (default time.Now). Poll
	// pacing is measured on the real clock.
	Now func() time.Time
	// OnDevicePoll, when set, is called at every poll of a device code
	// (numbered from 1) before it is answered, outside the provider's
	// lock: a test can Approve, Deny or SlowDown from it.
	OnDevicePoll func(userCode string, poll int)
	// OnRefresh, when set, is called at every successful refresh, outside
	// the provider's lock, with the refresh token redeemed and the one
	// issued in its place ("" without rotation): first with answered
	// false, once the provider has recorded the refresh (the rotation is
	// done) but before the answer is written, and then with answered
	// true, once the answer has been written and flushed to the client.
	// The handler waits for it: a test can kill the client at either
	// moment (the answer lost, or received and perhaps not yet stored).
	OnRefresh func(oldRT, newRT string, answered bool)
}

// Client is an app registration.
type Client struct {
	ID string
	// Secret is the client secret; "" makes a public client, which must
	// not send one.
	Secret string
	// RedirectURIs are the registered redirect URIs. Loopback URIs
	// (127.0.0.1, [::1], localhost) match with any port (RFC 8252 §7.3).
	// Empty: any loopback URI.
	RedirectURIs []string
	// Roles are the application permissions of client-credentials tokens
	// (RoleIMAPAccessAsApp), and Mailboxes the mailboxes the app may open
	// with them.
	Roles     []string
	Mailboxes []string
	// NoDeviceFlow refuses the device authorization grant for this
	// client (as Google refuses it for the mail scope).
	NoDeviceFlow bool
}

// Stats counts what the provider did.
type Stats struct {
	AccessTokensIssued  int
	RefreshTokensIssued int
	Refreshes           int // successful refresh_token grants
	RefreshFailures     int // refused refresh_token grants
	CodesExchanged      int
	DeviceGrants        int // device codes redeemed
	ClientCredentials   int // client_credentials tokens issued
	TokenRequests       int // every request to the token endpoint
}

type deviceGrant struct {
	deviceCode, userCode string
	client, scope        string
	expiry               time.Time
	interval             int // seconds
	lastPoll             time.Time
	polls                int
	answers              []string
	slowDown             bool
	user                 string // approved for
	denied, redeemed     bool
}

type authCode struct {
	client, redirectURI, scope, user string
	challenge                        string
	expiry                           time.Time
	used                             bool
}

type accessToken struct {
	user, client, scope string
	app                 bool
	expiry              time.Time
	revoked             bool
}

type refreshToken struct {
	user, client, scope string
	pred, succ          *refreshToken
	rotatedAt           time.Time
	used                int
	revoked             bool
	dead                bool // its successor has been used
}

// Provider is a fake OAuth 2.0 authorization server. Its methods are safe
// for concurrent use.
type Provider struct {
	opts Options

	mu       sync.Mutex
	clients  map[string]Client
	users    map[string]string   // lower-case address -> address
	shared   map[string][]string // shared mailbox (lower case) -> delegates (lower case)
	sharedAs map[string]string   // lower case -> as added
	devices  map[string]*deviceGrant
	byUser   map[string]*deviceGrant // user code -> grant
	codes    map[string]*authCode
	access   map[string]*accessToken
	refresh  map[string]*refreshToken
	stats    Stats
	failNext []int // HTTP statuses for the next token requests

	srv *http.Server
	url string
}

// NewProvider returns a provider with no clients and no users.
func NewProvider(opts Options) *Provider {
	if opts.AccessTokenLifetime <= 0 {
		opts.AccessTokenLifetime = time.Hour
	}
	if opts.DeviceCodeLifetime <= 0 {
		opts.DeviceCodeLifetime = 15 * time.Minute
	}
	if opts.DeviceInterval <= 0 {
		opts.DeviceInterval = 1
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Provider{
		opts:     opts,
		clients:  make(map[string]Client),
		users:    make(map[string]string),
		shared:   make(map[string][]string),
		sharedAs: make(map[string]string),
		devices:  make(map[string]*deviceGrant),
		byUser:   make(map[string]*deviceGrant),
		codes:    make(map[string]*authCode),
		access:   make(map[string]*accessToken),
		refresh:  make(map[string]*refreshToken),
	}
}

// AddClient registers (or replaces) an app.
func (p *Provider) AddClient(c Client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.clients[c.ID] = c
}

// AddUser adds a user who can sign in and consent; the address is also
// the user's own mailbox.
func (p *Provider) AddUser(address string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.users[strings.ToLower(address)] = address
}

// AddSharedMailbox adds a mailbox nobody signs in to, which the delegates
// (users) may open with their own tokens (Exchange's FullAccess).
func (p *Provider) AddSharedMailbox(mailbox string, delegates ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := strings.ToLower(mailbox)
	p.sharedAs[key] = mailbox
	for _, d := range delegates {
		p.shared[key] = append(p.shared[key], strings.ToLower(d))
	}
	if p.shared[key] == nil {
		p.shared[key] = []string{}
	}
}

// Mailboxes returns every mailbox address: the users' and the shared
// ones, sorted.
func (p *Provider) Mailboxes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, u := range p.users {
		out = append(out, u)
	}
	for _, m := range p.sharedAs {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

func (p *Provider) now() time.Time { return p.opts.Now() }

// newSecret returns prefix and 32 random bytes, base64url.
func newSecret(prefix string) string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b[:])
}

// newUserCode returns a code like "BKTW-QXRM" from letters that are hard
// to confuse.
func newUserCode() string {
	const alphabet = "BCDFGHJKLMNPQRSTVWXZ"
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	out := make([]byte, 0, 9)
	for i, c := range b {
		if i == 4 {
			out = append(out, '-')
		}
		out = append(out, alphabet[int(c)%len(alphabet)])
	}
	return string(out)
}

// --- HTTP ---

// Start listens on addr (such as "127.0.0.1:0") and serves the provider
// until Close.
func (p *Provider) Start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.url = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	srv := p.srv
	p.mu.Unlock()
	go srv.Serve(ln)
	return nil
}

// Close stops the server started by Start.
func (p *Provider) Close() error {
	p.mu.Lock()
	srv := p.srv
	p.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}

// URL is the base URL of the server started by Start.
func (p *Provider) URL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.url
}

// Endpoint paths, below URL.
const (
	PathAuthorize  = "/authorize"
	PathToken      = "/token"
	PathDeviceCode = "/devicecode"
	PathDevice     = "/device" // the verification page
	PathApprove    = "/fake/approve"
	PathDeny       = "/fake/deny"
	PathRevoke     = "/fake/revoke"
	PathExpire     = "/fake/expire"
	PathStats      = "/fake/stats"
	PathPending    = "/fake/pending"
)

// AuthURL, TokenURL and DeviceAuthURL are the endpoints of the server
// started by Start.
func (p *Provider) AuthURL() string       { return p.URL() + PathAuthorize }
func (p *Provider) TokenURL() string      { return p.URL() + PathToken }
func (p *Provider) DeviceAuthURL() string { return p.URL() + PathDeviceCode }

// ServeHTTP serves the endpoints: the authorization, token and device
// authorization endpoints, the verification page, and for scripts
// POST /fake/approve (user_code, user), /fake/deny (user_code),
// /fake/revoke (user), /fake/expire (user: its access tokens expire now)
// and GET /fake/stats (JSON) and /fake/pending (the user codes waiting
// for approval, one a line).
func (p *Provider) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case PathToken:
		p.serveToken(w, r)
	case PathDeviceCode:
		p.serveDeviceCode(w, r)
	case PathAuthorize:
		p.serveAuthorize(w, r)
	case PathDevice:
		p.serveDevicePage(w, r)
	case PathApprove, PathDeny, PathRevoke, PathExpire:
		p.serveAdmin(w, r)
	case PathStats:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(p.Stats())
	case PathPending:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, code := range p.PendingUserCodes() {
			fmt.Fprintln(w, code)
		}
	default:
		http.NotFound(w, r)
	}
}

// oauthError is an RFC 6749 §5.2 error response.
type oauthError struct {
	status      int
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

func errorf(status int, code, format string, args ...any) *oauthError {
	return &oauthError{status: status, Code: code, Description: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	var oe *oauthError
	if !errors.As(err, &oe) {
		oe = errorf(http.StatusBadRequest, "invalid_request", "%v", err)
	}
	writeJSON(w, oe.status, oe)
}

// tokenResponse is RFC 6749 §5.1.
type tokenResponse struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Scope        string `json:"scope,omitempty"`
}

// authenticate finds the client of a token or device request: HTTP Basic
// (RFC 6749 §2.3.1, form-encoded) or client_id and client_secret in the
// body. A public client must present no secret; a confidential one its
// secret, except with needSecret false (the device authorization request
// carries only the client ID, RFC 8628 §3.1), where a secret, if sent,
// must still be right.
func (p *Provider) authenticate(r *http.Request, needSecret bool) (Client, error) {
	id, secret, basic := r.BasicAuth()
	if basic {
		id, _ = url.QueryUnescape(id)
		secret, _ = url.QueryUnescape(secret)
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	p.mu.Lock()
	c, ok := p.clients[id]
	p.mu.Unlock()
	switch {
	case id == "" || !ok:
		return Client{}, errorf(http.StatusUnauthorized, "invalid_client", "unknown client %q", id)
	case c.Secret == "" && secret != "":
		return Client{}, errorf(http.StatusUnauthorized, "invalid_client", "the client is public: it must not present a client secret")
	case c.Secret != "" && secret == "" && !needSecret:
	case c.Secret != "" && secret != c.Secret:
		return Client{}, errorf(http.StatusUnauthorized, "invalid_client", "invalid client secret")
	}
	return c, nil
}

func (p *Provider) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, errorf(http.StatusMethodNotAllowed, "invalid_request", "POST only"))
		return
	}
	p.mu.Lock()
	p.stats.TokenRequests++
	var fail int
	if len(p.failNext) > 0 {
		fail, p.failNext = p.failNext[0], p.failNext[1:]
	}
	p.mu.Unlock()
	if fail != 0 {
		code := "server_error"
		if fail == http.StatusServiceUnavailable {
			code = "temporarily_unavailable"
		}
		writeError(w, errorf(fail, code, "injected failure"))
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, err)
		return
	}
	c, err := p.authenticate(r, true)
	if err != nil {
		writeError(w, err)
		return
	}
	var resp *tokenResponse
	switch gt := r.PostForm.Get("grant_type"); gt {
	case grantDeviceCode:
		resp, err = p.deviceToken(c, r.PostForm.Get("device_code"))
	case "authorization_code":
		resp, err = p.exchangeCode(c, r.PostForm)
	case "refresh_token":
		resp, err = p.refreshGrant(c, r.PostForm.Get("refresh_token"), r.PostForm.Get("scope"))
	case "client_credentials":
		resp, err = p.clientCredentials(c, r.PostForm.Get("scope"))
	default:
		err = errorf(http.StatusBadRequest, "unsupported_grant_type", "grant type %q", gt)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	hook := p.opts.OnRefresh
	if hook == nil || r.PostForm.Get("grant_type") != "refresh_token" {
		writeJSON(w, http.StatusOK, resp)
		return
	}
	old := r.PostForm.Get("refresh_token")
	hook(old, resp.RefreshToken, false)
	writeJSON(w, http.StatusOK, resp)
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	hook(old, resp.RefreshToken, true)
}

// issueLocked issues an access token (and a refresh token when refresh)
// for user or, with app, for the client itself.
func (p *Provider) issueLocked(user, client, scope string, app, refresh bool) *tokenResponse {
	now := p.now()
	at := newSecret("at-")
	p.access[at] = &accessToken{user: user, client: client, scope: scope, app: app, expiry: now.Add(p.opts.AccessTokenLifetime)}
	p.stats.AccessTokensIssued++
	resp := &tokenResponse{
		AccessToken: at,
		TokenType:   "Bearer",
		ExpiresIn:   int64(p.opts.AccessTokenLifetime / time.Second),
		Scope:       scope,
	}
	if refresh && (!p.opts.RequireOfflineAccess || hasScope(scope, "offline_access")) {
		resp.RefreshToken = p.newRefreshLocked(user, client, scope, nil)
	}
	return resp
}

func (p *Provider) newRefreshLocked(user, client, scope string, pred *refreshToken) string {
	rt := newSecret("rt-")
	tok := &refreshToken{user: user, client: client, scope: scope, pred: pred}
	p.refresh[rt] = tok
	if pred != nil {
		pred.succ = tok
		pred.rotatedAt = p.now()
	}
	p.stats.RefreshTokensIssued++
	return rt
}

func hasScope(scope, s string) bool { return slices.Contains(strings.Fields(scope), s) }

// --- device authorization grant (RFC 8628) ---

func (p *Provider) serveDeviceCode(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		writeError(w, errorf(http.StatusMethodNotAllowed, "invalid_request", "POST only"))
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, err)
		return
	}
	c, err := p.authenticate(r, false)
	if err != nil {
		writeError(w, err)
		return
	}
	if c.NoDeviceFlow {
		writeError(w, errorf(http.StatusBadRequest, "invalid_scope", "the device flow is not allowed for this client and scope"))
		return
	}
	base := p.baseURL(r)
	p.mu.Lock()
	g := &deviceGrant{
		deviceCode: newSecret("dc-"),
		userCode:   newUserCode(),
		client:     c.ID,
		scope:      r.PostForm.Get("scope"),
		expiry:     p.now().Add(p.opts.DeviceCodeLifetime),
		interval:   p.opts.DeviceInterval,
	}
	p.devices[g.deviceCode] = g
	p.byUser[g.userCode] = g
	p.mu.Unlock()
	verify := base + PathDevice
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               g.deviceCode,
		"user_code":                 g.userCode,
		"verification_uri":          verify,
		"verification_uri_complete": verify + "?user_code=" + g.userCode,
		"expires_in":                int64(p.opts.DeviceCodeLifetime / time.Second),
		"interval":                  g.interval,
		"message":                   "To sign in, open " + verify + " and enter the code " + g.userCode + ".",
	})
}

// baseURL is the URL the request came to.
func (p *Provider) baseURL(r *http.Request) string {
	if u := p.URL(); u != "" {
		return u
	}
	return "http://" + r.Host
}

// pollSlack is how much sooner than the interval a poll may come without
// being told to slow down (network jitter).
const pollSlack = 250 * time.Millisecond

func (p *Provider) deviceToken(c Client, deviceCode string) (*tokenResponse, error) {
	p.mu.Lock()
	g := p.devices[deviceCode]
	if g == nil || g.client != c.ID {
		p.mu.Unlock()
		return nil, errorf(http.StatusBadRequest, "invalid_grant", "unknown device code")
	}
	g.polls++
	n, userCode := g.polls, g.userCode
	p.mu.Unlock()
	if hook := p.opts.OnDevicePoll; hook != nil {
		hook(userCode, n)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.autoApproveLocked(g)
	answer := func(code string) error {
		g.answers = append(g.answers, code)
		return errorf(http.StatusBadRequest, code, "device code poll %d", n)
	}
	wall := time.Now()
	early := !g.lastPoll.IsZero() && wall.Sub(g.lastPoll) < time.Duration(g.interval)*time.Second-pollSlack
	g.lastPoll = wall
	switch {
	case g.redeemed:
		return nil, answer("invalid_grant")
	case !p.now().Before(g.expiry):
		return nil, answer("expired_token")
	case g.slowDown || early:
		g.slowDown = false
		g.interval += 5
		return nil, answer("slow_down")
	case g.denied:
		return nil, answer("access_denied")
	case g.user == "":
		return nil, answer("authorization_pending")
	}
	g.redeemed = true
	g.answers = append(g.answers, "ok")
	p.stats.DeviceGrants++
	return p.issueLocked(g.user, g.client, g.scope, false, true), nil
}

// Approve approves a pending device code for user, as the user would on
// the verification page.
func (p *Provider) Approve(userCode, user string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, err := p.pendingLocked(userCode)
	if err != nil {
		return err
	}
	u, ok := p.users[strings.ToLower(user)]
	if !ok {
		return fmt.Errorf("oauthtest: unknown user %q", user)
	}
	g.user = u
	return nil
}

// Deny declines a pending device code: the next poll gets access_denied.
func (p *Provider) Deny(userCode string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, err := p.pendingLocked(userCode)
	if err != nil {
		return err
	}
	g.denied = true
	return nil
}

// SlowDown makes the next poll of the device code get slow_down.
func (p *Provider) SlowDown(userCode string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, err := p.pendingLocked(userCode)
	if err != nil {
		return err
	}
	g.slowDown = true
	return nil
}

func (p *Provider) pendingLocked(userCode string) (*deviceGrant, error) {
	g := p.byUser[strings.ToUpper(strings.TrimSpace(userCode))]
	switch {
	case g == nil:
		return nil, fmt.Errorf("oauthtest: unknown user code %q", userCode)
	case g.redeemed || g.denied || g.user != "":
		return nil, fmt.Errorf("oauthtest: user code %q is no longer pending", userCode)
	case !p.now().Before(g.expiry):
		return nil, fmt.Errorf("oauthtest: user code %q has expired", userCode)
	}
	return g, nil
}

// DevicePolls returns the answers given to the polls of a device code,
// in order: "authorization_pending", "slow_down", "ok" ...
func (p *Provider) DevicePolls(userCode string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if g := p.byUser[userCode]; g != nil {
		return slices.Clone(g.answers)
	}
	return nil
}

// PendingUserCodes returns the user codes waiting for approval.
func (p *Provider) PendingUserCodes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for code, g := range p.byUser {
		if !g.redeemed && !g.denied && g.user == "" && p.now().Before(g.expiry) {
			out = append(out, code)
		}
	}
	slices.Sort(out)
	return out
}

var devicePage = template.Must(template.New("device").Parse(`<!doctype html>
<title>oauthtest: device sign-in</title>
<form method="post" action="/fake/approve">
<p>Code: <input name="user_code" value="{{.Code}}"></p>
<p>Sign in as: <input name="user" value="{{.User}}"></p>
<p><button>Approve</button></p>
</form>
`))

func (p *Provider) serveDevicePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = devicePage.Execute(w, map[string]string{"Code": r.URL.Query().Get("user_code"), "User": p.opts.AutoApprove})
}

// autoApproveLocked approves a pending device code for
// Options.AutoApprove.
func (p *Provider) autoApproveLocked(g *deviceGrant) {
	if p.opts.AutoApprove == "" || g.user != "" || g.denied {
		return
	}
	if u, ok := p.users[strings.ToLower(p.opts.AutoApprove)]; ok {
		g.user = u
	}
}

// --- authorization code grant with PKCE ---

// loopbackHost reports whether host names the loopback interface.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// redirectAllowed matches a redirect URI against the registration.
func redirectAllowed(c Client, uri string) bool {
	u, err := url.Parse(uri)
	if err != nil || u.Fragment != "" {
		return false
	}
	loop := u.Scheme == "http" && loopbackHost(u.Hostname())
	if len(c.RedirectURIs) == 0 {
		return loop
	}
	for _, reg := range c.RedirectURIs {
		if reg == uri {
			return true
		}
		ru, err := url.Parse(reg)
		if err != nil || !loop {
			continue
		}
		if ru.Scheme == u.Scheme && ru.Hostname() == u.Hostname() && strings.TrimSuffix(ru.Path, "/") == strings.TrimSuffix(u.Path, "/") {
			return true
		}
	}
	return false
}

// authRequest is an authorization request that passed the checks that
// come before any redirect.
type authRequest struct {
	client      Client
	redirectURI string
	q           url.Values
}

func (p *Provider) parseAuthRequest(q url.Values) (*authRequest, error) {
	p.mu.Lock()
	c, ok := p.clients[q.Get("client_id")]
	p.mu.Unlock()
	switch {
	case !ok:
		return nil, fmt.Errorf("oauthtest: unknown client %q", q.Get("client_id"))
	case !redirectAllowed(c, q.Get("redirect_uri")):
		return nil, fmt.Errorf("oauthtest: redirect_uri %q is not registered", q.Get("redirect_uri"))
	}
	return &authRequest{client: c, redirectURI: q.Get("redirect_uri"), q: q}, nil
}

// redirect returns the redirect URI with params and the request's state.
func (a *authRequest) redirect(params url.Values) string {
	u, _ := url.Parse(a.redirectURI)
	q := u.Query()
	for k, v := range params {
		q[k] = v
	}
	if s := a.q.Get("state"); s != "" {
		q.Set("state", s)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// grant approves a for user and returns the redirect with the code, or
// with an error the client is told about (RFC 6749 §4.1.2.1).
func (p *Provider) grant(a *authRequest, user string) (string, error) {
	errRedirect := func(code, desc string) string {
		return a.redirect(url.Values{"error": {code}, "error_description": {desc}})
	}
	if a.q.Get("response_type") != "code" {
		return errRedirect("unsupported_response_type", "response_type must be code"), nil
	}
	challenge, method := a.q.Get("code_challenge"), a.q.Get("code_challenge_method")
	switch {
	case challenge == "" && a.client.Secret == "":
		return errRedirect("invalid_request", "a public client must use PKCE"), nil
	case challenge != "" && method != "S256":
		return errRedirect("invalid_request", "code_challenge_method must be S256"), nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	u, ok := p.users[strings.ToLower(user)]
	if !ok {
		return "", fmt.Errorf("oauthtest: unknown user %q", user)
	}
	code := newSecret("code-")
	p.codes[code] = &authCode{
		client: a.client.ID, redirectURI: a.redirectURI, scope: a.q.Get("scope"),
		user: u, challenge: challenge, expiry: p.now().Add(10 * time.Minute),
	}
	return a.redirect(url.Values{"code": {code}}), nil
}

// Authorize does what the user's browser and the sign-in page do with the
// authorization URL authURL: the user signs in as user and consents. It
// returns the URL the browser is redirected to (with code and state, or
// an error the client is told about).
func (p *Provider) Authorize(authURL, user string) (string, error) {
	u, err := url.Parse(authURL)
	if err != nil {
		return "", err
	}
	a, err := p.parseAuthRequest(u.Query())
	if err != nil {
		return "", err
	}
	return p.grant(a, user)
}

// AuthorizeDeny is Authorize where the user declines: the redirect
// carries error=access_denied.
func (p *Provider) AuthorizeDeny(authURL string) (string, error) {
	u, err := url.Parse(authURL)
	if err != nil {
		return "", err
	}
	a, err := p.parseAuthRequest(u.Query())
	if err != nil {
		return "", err
	}
	return a.redirect(url.Values{"error": {"access_denied"}, "error_description": {"the user declined"}}), nil
}

var signInPage = template.Must(template.New("signin").Parse(`<!doctype html>
<title>oauthtest: sign in</title>
<form method="post">
{{range $k, $vs := .Query}}{{range $vs}}<input type="hidden" name="{{$k}}" value="{{.}}">{{end}}{{end}}
<p>Sign in as: <input name="login" value="{{.User}}"></p>
<p><button name="consent" value="yes">Accept</button> <button name="consent" value="no">Decline</button></p>
</form>
`))

// serveAuthorize is the sign-in page: with login_hint and AutoApprove,
// or AutoApprove alone, it redirects at once; otherwise it asks.
func (p *Provider) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a, err := p.parseAuthRequest(r.Form)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var user string
	switch {
	case r.Method == http.MethodPost && r.PostForm.Get("consent") == "no":
		http.Redirect(w, r, a.redirect(url.Values{"error": {"access_denied"}}), http.StatusFound)
		return
	case r.Method == http.MethodPost:
		user = r.PostForm.Get("login")
	case p.opts.AutoApprove != "" && r.Form.Get("login_hint") != "":
		user = r.Form.Get("login_hint")
	case p.opts.AutoApprove != "":
		user = p.opts.AutoApprove
	default:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		q := r.URL.Query()
		_ = signInPage.Execute(w, map[string]any{"Query": q, "User": q.Get("login_hint")})
		return
	}
	to, err := p.grant(a, user)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, to, http.StatusFound)
}

func (p *Provider) exchangeCode(c Client, form url.Values) (*tokenResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	code := p.codes[form.Get("code")]
	switch {
	case code == nil || code.used || !p.now().Before(code.expiry):
		return nil, errorf(http.StatusBadRequest, "invalid_grant", "the authorization code is unknown, expired or already used")
	case code.client != c.ID:
		return nil, errorf(http.StatusBadRequest, "invalid_grant", "the authorization code was issued to another client")
	}
	// A code is good for one attempt (RFC 6749 §4.1.2).
	code.used = true
	switch {
	case form.Get("redirect_uri") != code.redirectURI:
		return nil, errorf(http.StatusBadRequest, "invalid_grant", "redirect_uri does not match the authorization request")
	case code.challenge != "" && form.Get("code_verifier") == "":
		return nil, errorf(http.StatusBadRequest, "invalid_grant", "code_verifier is missing")
	case code.challenge != "" && s256(form.Get("code_verifier")) != code.challenge:
		return nil, errorf(http.StatusBadRequest, "invalid_grant", "code_verifier does not match the code_challenge")
	case code.challenge == "" && form.Get("code_verifier") != "":
		return nil, errorf(http.StatusBadRequest, "invalid_grant", "code_verifier sent for a request without code_challenge")
	}
	p.stats.CodesExchanged++
	return p.issueLocked(code.user, c.ID, code.scope, false, true), nil
}

func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// --- refresh tokens ---

func (p *Provider) refreshGrant(c Client, rt, scope string) (*tokenResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fail := func(format string, args ...any) (*tokenResponse, error) {
		p.stats.RefreshFailures++
		return nil, errorf(http.StatusBadRequest, "invalid_grant", format, args...)
	}
	tok := p.refresh[rt]
	switch {
	case tok == nil:
		return fail("unknown refresh token")
	case tok.revoked:
		return fail("the grant has been revoked")
	case tok.client != c.ID:
		return fail("the refresh token was issued to another client")
	case tok.dead:
		return fail("the refresh token was rotated and its successor has been used")
	case tok.succ != nil && p.opts.Rotation == RotateStrict:
		return fail("the refresh token has already been used")
	case tok.succ != nil && p.opts.GracePeriod > 0 && !p.now().Before(tok.rotatedAt.Add(p.opts.GracePeriod)):
		return fail("the refresh token was rotated and its grace period is over")
	}
	if scope != "" {
		for _, s := range strings.Fields(scope) {
			if !hasScope(tok.scope, s) {
				p.stats.RefreshFailures++
				return nil, errorf(http.StatusBadRequest, "invalid_scope", "scope %q was not granted", s)
			}
		}
	} else {
		scope = tok.scope
	}
	tok.used++
	if tok.used == 1 && tok.pred != nil {
		// The first use of a rotated token retires its predecessor.
		tok.pred.dead = true
	}
	p.stats.Refreshes++
	resp := p.issueLocked(tok.user, c.ID, scope, false, false)
	if p.opts.Rotation != RotateNever {
		resp.RefreshToken = p.newRefreshLocked(tok.user, c.ID, tok.scope, tok)
	}
	return resp, nil
}

// RefreshCount returns how many times a refresh token was redeemed.
func (p *Provider) RefreshCount(rt string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if tok := p.refresh[rt]; tok != nil {
		return tok.used
	}
	return 0
}

// RefreshTokenValid reports whether rt would be accepted now.
func (p *Provider) RefreshTokenValid(rt string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	tok := p.refresh[rt]
	switch {
	case tok == nil || tok.revoked || tok.dead:
		return false
	case tok.succ != nil && p.opts.Rotation == RotateStrict:
		return false
	case tok.succ != nil && p.opts.GracePeriod > 0 && !p.now().Before(tok.rotatedAt.Add(p.opts.GracePeriod)):
		return false
	}
	return true
}

// --- client credentials ---

func (p *Provider) clientCredentials(c Client, scope string) (*tokenResponse, error) {
	if c.Secret == "" {
		return nil, errorf(http.StatusBadRequest, "unauthorized_client", "a public client cannot use client credentials")
	}
	fields := strings.Fields(scope)
	if len(fields) != 1 || !strings.HasSuffix(fields[0], "/.default") {
		return nil, errorf(http.StatusBadRequest, "invalid_scope", "client credentials need one resource/.default scope, got %q", scope)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stats.ClientCredentials++
	return p.issueLocked("", c.ID, scope, true, false), nil
}

// --- tokens seen by the resource (IMAP) ---

// Validate tells whom an access token belongs to (the user, or the client
// ID of an app-only token) and which mailboxes it may open: a user's own
// and the shared mailboxes delegated to the user; an app's Mailboxes when
// it holds RoleIMAPAccessAsApp. ok is false for an unknown, expired or
// revoked token, and for a user token without Options.IMAPScope.
func (p *Provider) Validate(token string) (subject string, mailboxes []string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at := p.access[token]
	if at == nil || at.revoked || !p.now().Before(at.expiry) {
		return "", nil, false
	}
	if at.app {
		c := p.clients[at.client]
		if slices.Contains(c.Roles, RoleIMAPAccessAsApp) {
			mailboxes = slices.Clone(c.Mailboxes)
		}
		return at.client, mailboxes, true
	}
	if p.opts.IMAPScope != "" && !hasScope(at.scope, p.opts.IMAPScope) {
		return "", nil, false
	}
	mailboxes = []string{at.user}
	me := strings.ToLower(at.user)
	for box, delegates := range p.shared {
		if slices.Contains(delegates, me) {
			mailboxes = append(mailboxes, p.sharedAs[box])
		}
	}
	slices.Sort(mailboxes[1:])
	return at.user, mailboxes, true
}

// IssueAccessToken mints an access token for user with scope, as if a
// client had obtained it (for tests that need a token without a flow).
func (p *Provider) IssueAccessToken(user, scope string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.issueLocked(user, "", scope, false, false).AccessToken
}

// Revoke withdraws every grant of user (consent withdrawn, password
// changed, account disabled): its refresh tokens get invalid_grant and its
// access tokens stop validating. It returns how many tokens it revoked.
func (p *Provider) Revoke(user string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, at := range p.access {
		if strings.EqualFold(at.user, user) && !at.app && !at.revoked {
			at.revoked = true
			n++
		}
	}
	for _, rt := range p.refresh {
		if strings.EqualFold(rt.user, user) && !rt.revoked {
			rt.revoked = true
			n++
		}
	}
	return n
}

// ExpireAccessTokens makes the access tokens of user (or of the app with
// that client ID) expire now, as if their lifetime had passed; refresh
// tokens stay valid. It returns how many it expired.
func (p *Provider) ExpireAccessTokens(subject string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	now := p.now()
	for _, at := range p.access {
		who := at.user
		if at.app {
			who = at.client
		}
		if strings.EqualFold(who, subject) && now.Before(at.expiry) {
			at.expiry = now
			n++
		}
	}
	return n
}

// FailTokenRequests makes the next len(statuses) token requests fail with
// those HTTP statuses (503: temporarily_unavailable, others server_error).
func (p *Provider) FailTokenRequests(statuses ...int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failNext = append(p.failNext, statuses...)
}

// Stats returns the counters.
func (p *Provider) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// --- script endpoints ---

func (p *Provider) serveAdmin(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var err error
	var msg string
	switch r.URL.Path {
	case PathApprove:
		user := r.Form.Get("user")
		if user == "" {
			user = p.opts.AutoApprove
		}
		err = p.Approve(r.Form.Get("user_code"), user)
		msg = "approved"
	case PathDeny:
		err = p.Deny(r.Form.Get("user_code"))
		msg = "denied"
	case PathRevoke:
		msg = fmt.Sprintf("revoked %d tokens", p.Revoke(r.Form.Get("user")))
	case PathExpire:
		msg = fmt.Sprintf("expired %d access tokens", p.ExpireAccessTokens(r.Form.Get("user")))
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	fmt.Fprintln(w, msg)
}
