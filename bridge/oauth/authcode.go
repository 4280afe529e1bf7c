package oauth

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
)

// AuthRequest is one authorization request of the authorization code
// flow with PKCE (RFC 7636, S256): URL is to be opened in a browser; the
// redirect that comes back is checked against the request's state and the
// code is exchanged with the request's verifier.
type AuthRequest struct {
	URL         string
	RedirectURL string

	c        *Client
	state    string
	verifier string
}

// NewAuthRequest prepares an authorization request whose redirect goes
// to redirectURL ("" for the configured one). loginHint, when set,
// pre-fills the account on the sign-in page.
func (c *Client) NewAuthRequest(redirectURL, loginHint string) (*AuthRequest, error) {
	if redirectURL == "" {
		redirectURL = c.r.redirectURL
	}
	if err := checkRedirect(redirectURL); err != nil {
		return nil, err
	}
	state, err := randomState()
	if err != nil {
		return nil, err
	}
	verifier := oauth2.GenerateVerifier()
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}
	for k, v := range c.r.preset.AuthParams {
		opts = append(opts, oauth2.SetAuthURLParam(k, v))
	}
	if loginHint != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", loginHint))
	}
	return &AuthRequest{
		URL:         c.oauth2Config(redirectURL).AuthCodeURL(state, opts...),
		RedirectURL: redirectURL,
		c:           c,
		state:       state,
		verifier:    verifier,
	}, nil
}

func randomState() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// CodeFromRedirect reads the authorization code out of the URL the
// browser was redirected to (the whole URL as pasted, or only its query).
// It fails with ErrStateMismatch for another request's redirect, with
// ErrAccessDenied when the user declined, and with a classified error for
// another error the provider put in the redirect.
func (r *AuthRequest) CodeFromRedirect(redirected string) (string, error) {
	const op = "authorize"
	redirected = strings.TrimSpace(redirected)
	query := redirected
	if u, err := url.Parse(redirected); err == nil && (u.Scheme != "" || u.RawQuery != "") {
		query = u.RawQuery
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", &Error{Op: op, Err: fmt.Errorf("cannot read the pasted address: %w", err)}
	}
	if q.Get("state") != r.state {
		return "", &Error{Op: op, kind: ErrStateMismatch}
	}
	if code := q.Get("error"); code != "" {
		return "", &Error{Op: op, Code: code, Description: q.Get("error_description"), kind: codeKinds[code]}
	}
	code := q.Get("code")
	if code == "" {
		return "", &Error{Op: op, Err: errors.New("the pasted address holds no code")}
	}
	return code, nil
}

// Exchange trades the code for a grant, with the request's PKCE verifier.
func (r *AuthRequest) Exchange(ctx context.Context, code string) (Grant, error) {
	tok, err := r.c.oauth2Config(r.RedirectURL).Exchange(r.c.ctx(ctx), code, oauth2.VerifierOption(r.verifier))
	if err != nil {
		return Grant{}, classify("exchange", err)
	}
	return r.c.grantOf(tok), nil
}

// Finish is CodeFromRedirect and Exchange.
func (r *AuthRequest) Finish(ctx context.Context, redirected string) (Grant, error) {
	code, err := r.CodeFromRedirect(redirected)
	if err != nil {
		return Grant{}, err
	}
	return r.Exchange(ctx, code)
}

// AuthCodePaste runs the flow for a machine without a browser: it writes
// the URL to out, and reads from in the address the browser (on any
// machine) ended up at, which fails to load since nothing listens there;
// the user copies it from the address bar.
func (c *Client) AuthCodePaste(ctx context.Context, in io.Reader, out io.Writer, loginHint string) (Grant, error) {
	r, err := c.NewAuthRequest("", loginHint)
	if err != nil {
		return Grant{}, err
	}
	fmt.Fprintf(out, "Open this address in a browser and sign in:\n\n%s\n\n"+
		"The browser then goes to %s..., which will not load. Copy that address from the address bar and paste it here:\n", r.URL, r.RedirectURL)
	line, err := readLine(ctx, in)
	if err != nil {
		return Grant{}, err
	}
	return r.Finish(ctx, line)
}

// readLine reads one line from in, giving up when ctx ends.
func readLine(ctx context.Context, in io.Reader) (string, error) {
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := bufio.NewReader(in).ReadString('\n')
		if err == io.EOF && s != "" {
			err = nil
		}
		ch <- result{s, err}
	}()
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// AuthCodeLoopback runs the flow where a browser can reach this machine:
// it listens on the loopback address of the configured redirect URI with
// a port of its own, writes the URL to out and calls open with it (nil:
// the user opens it), then waits for the browser's redirect.
func (c *Client) AuthCodeLoopback(ctx context.Context, out io.Writer, open func(url string) error, loginHint string) (Grant, error) {
	base, err := url.Parse(c.r.redirectURL)
	if err != nil {
		return Grant{}, err
	}
	host := base.Hostname()
	listenHost := host
	if host == "localhost" {
		listenHost = "127.0.0.1"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(listenHost, "0"))
	if err != nil {
		return Grant{}, fmt.Errorf("oauth: loopback listener: %w", err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	redirect := *base
	redirect.Host = net.JoinHostPort(host, port)
	if redirect.Path == "" {
		redirect.Path = "/"
	}
	r, err := c.NewAuthRequest(redirect.String(), loginHint)
	if err != nil {
		return Grant{}, err
	}

	type result struct {
		code string
		err  error
	}
	got := make(chan result, 1)
	var once sync.Once
	srv := &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if req.URL.Path != redirect.Path {
				http.NotFound(w, req)
				return
			}
			code, err := r.CodeFromRedirect(req.URL.String())
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				fmt.Fprintf(w, "<!doctype html><p>popbridge: sign-in failed: %s</p>", html.EscapeString(err.Error()))
			} else {
				fmt.Fprint(w, "<!doctype html><p>popbridge: signed in. You can close this window.</p>")
			}
			if errors.Is(err, ErrStateMismatch) {
				return // not our redirect: keep waiting for it
			}
			once.Do(func() { got <- result{code, err} })
		}),
	}
	go srv.Serve(ln)
	defer srv.Close()

	fmt.Fprintf(out, "Open this address in a browser and sign in:\n\n%s\n\n", r.URL)
	if open != nil {
		if err := open(r.URL); err != nil {
			fmt.Fprintf(out, "(could not open a browser: %v)\n", err)
		}
	}
	select {
	case res := <-got:
		if res.err != nil {
			return Grant{}, res.err
		}
		return r.Exchange(ctx, res.code)
	case <-ctx.Done():
		return Grant{}, ctx.Err()
	}
}
