package bridge

import (
	"bytes"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/popbridge/popbridge/upstream"
)

// dialFor returns the upstream dial settings for a session of account:
// the shared ones, with a protocol trace into the log when log.upstream_trace
// covers the account.
func (b *Bridge) dialFor(account string) upstream.Config {
	cfg := b.up
	lc := b.cfg.Log
	if lc.UpstreamTrace && (len(lc.UpstreamTraceAccounts) == 0 || slices.Contains(lc.UpstreamTraceAccounts, account)) {
		cfg.Trace = &traceLog{log: b.log.Named("trace").With(zap.String("account", account))}
	}
	return cfg
}

// traceLog turns the upstream's protocol trace (already redacted, one
// "C: " or "S: " line at a time) into one log line per protocol line.
type traceLog struct {
	log *zap.Logger
	mu  sync.Mutex
	buf []byte
}

func (t *traceLog) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	for {
		i := bytes.IndexByte(t.buf, '\n')
		if i < 0 {
			break
		}
		t.log.Info("upstream", zap.ByteString("line", bytes.TrimRight(t.buf[:i], "\r")))
		t.buf = t.buf[i+1:]
	}
	if len(t.buf) == 0 {
		t.buf = nil
	}
	return len(p), nil
}
