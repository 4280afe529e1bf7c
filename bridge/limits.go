package bridge

import (
	"errors"
	"net"
	"time"

	"github.com/popbridge/popbridge/internal/limits"
	"github.com/popbridge/popbridge/pop3"
)

// LimitsConfig is the [limits] table (see internal/limits).
type LimitsConfig = limits.Config

// limiter puts the abuse control of internal/limits in front of the POP3
// server: it answers a refusal with the RFC 3206 / RFC 2449 code the
// client should see, and counts it in the metrics.
type limiter struct {
	l *limits.Limits
	m *metrics // nil: not counted
}

var (
	_ pop3.ConnLimiter  = limiter{}
	_ pop3.LoginLimiter = limiter{}
	_ sessionLimiter    = limiter{}
)

// refusalCodes are the response codes of each limit: a full server is
// [SYS/TEMP], too many failures [LOGIN-DELAY], too many sessions of one
// account [IN-USE].
var refusalCodes = map[limits.Kind]string{
	limits.Connections:          pop3.CodeSysTemp,
	limits.ConnectionsPerIP:     pop3.CodeSysTemp,
	limits.LoginFailuresIP:      pop3.CodeLoginDelay,
	limits.LoginFailuresAccount: pop3.CodeLoginDelay,
	limits.SessionsPerAccount:   pop3.CodeInUse,
}

// refused turns a refusal into the error the client is answered with.
func (l limiter) refused(err error) error {
	var r *limits.Refusal
	if !errors.As(err, &r) {
		return err
	}
	if l.m != nil {
		l.m.limiterRefusals.WithLabelValues(string(r.Kind)).Inc()
	}
	return &pop3.Error{Code: refusalCodes[r.Kind], Text: r.Text, Err: r.Err}
}

// AcquireConn implements pop3.ConnLimiter.
func (l limiter) AcquireConn(remote net.Addr) (func(), error) {
	release, err := l.l.AcquireConn(remote)
	if err != nil {
		return nil, l.refused(err)
	}
	return release, nil
}

// BeginLogin implements pop3.LoginLimiter.
func (l limiter) BeginLogin(remote net.Addr, username string) (func(failed bool) time.Duration, error) {
	end, err := l.l.BeginLogin(remote, username)
	if err != nil {
		return nil, l.refused(err)
	}
	return end, nil
}

// AcquireSession implements sessionLimiter.
func (l limiter) AcquireSession(login string) (func(), error) {
	release, err := l.l.AcquireSession(login)
	if err != nil {
		return nil, l.refused(err)
	}
	return release, nil
}
