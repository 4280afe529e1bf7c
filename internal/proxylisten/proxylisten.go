// Package proxylisten puts the PROXY protocol (v1 and v2) in front of a
// listener for the peers an operator trusts, and refuses it from everyone
// else.
package proxylisten

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pires/go-proxyproto"
	"go.uber.org/zap"

	"github.com/popbridge/popbridge/internal/netlist"
)

// proxyHeaderTimeout bounds the wait for the PROXY header of a trusted
// peer. Load balancers send it at once.
const proxyHeaderTimeout = 5 * time.Second

// ErrUntrusted ends a connection whose peer, not in
// server.proxy_trusted, sent a PROXY header: it would pose as another
// client.
var ErrUntrusted = errors.New("PROXY protocol header from an address not in server.proxy_trusted")

// Signatures of the PROXY protocol headers, version 1 and 2.
var (
	proxySigV1 = []byte("PROXY")
	proxySigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// New wraps ln for the PROXY protocol (v1 and v2): a
// connection from a trusted address must begin with a header, which then
// gives the client's address (RemoteAddr) for the logs and the limits; a
// connection from any other address is served as it is, and refused if it
// sends a header. POP3 servers speak first, so only trusted peers are
// waited for: for the others the header is looked for in what they send
// after the greeting.
func New(ln net.Listener, trusted []netip.Prefix, log *zap.Logger) net.Listener {
	pl := &proxyproto.Listener{
		Listener:          ln,
		ReadHeaderTimeout: proxyHeaderTimeout,
		ConnPolicy: func(o proxyproto.ConnPolicyOptions) (proxyproto.Policy, error) {
			if ip, ok := netlist.AddrIP(o.Upstream); ok && netlist.Contains(trusted, ip) {
				return proxyproto.REQUIRE, nil
			}
			return proxyproto.SKIP, nil
		},
	}
	return &proxyListener{Listener: pl, log: log}
}

type proxyListener struct {
	net.Listener
	log *zap.Logger
}

func (l *proxyListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if pc, ok := nc.(*proxyproto.Conn); ok {
		return &proxiedConn{Conn: pc, log: l.log}, nil
	}
	return &guardConn{Conn: nc, br: bufio.NewReaderSize(nc, 16), log: l.log}, nil
}

// proxiedConn is a connection from a trusted peer: RemoteAddr reads the
// header (pop3 calls it first, on the connection's own goroutine) and
// logs once when the header is missing or malformed; every read and write
// then fails and the session ends.
type proxiedConn struct {
	*proxyproto.Conn
	log  *zap.Logger
	once sync.Once
}

func (c *proxiedConn) RemoteAddr() net.Addr {
	c.once.Do(func() {
		// A zero-length read returns the header's error, if any,
		// without consuming anything.
		if _, err := c.Conn.Read(nil); err != nil {
			c.log.Warn("connection refused: no valid PROXY protocol header from a trusted peer",
				zap.String("peer", c.Conn.Raw().RemoteAddr().String()), zap.Error(err))
		}
	})
	return c.Conn.RemoteAddr()
}

// guardConn is a connection from a peer outside server.proxy_trusted: if
// it begins with a PROXY header, every read fails with ErrUntrusted.
type guardConn struct {
	net.Conn
	br      *bufio.Reader
	log     *zap.Logger
	checked bool
	err     error
}

func (c *guardConn) Read(p []byte) (int, error) {
	if !c.checked {
		c.checked = true
		if c.startsWithHeader() {
			c.err = ErrUntrusted
			c.log.Warn("connection refused: PROXY protocol header from an untrusted address",
				zap.String("remote", c.Conn.RemoteAddr().String()))
		}
	}
	if c.err != nil {
		return 0, c.err
	}
	return c.br.Read(p)
}

// startsWithHeader reports whether the first octets are a PROXY
// signature. It reads only while they could still be one, so a client
// that sends a short command and waits is not held up.
func (c *guardConn) startsWithHeader() bool {
	for n := 1; n <= len(proxySigV2); n++ {
		b, err := c.br.Peek(n)
		if err != nil {
			return false // the next Read reports it
		}
		v1 := bytes.HasPrefix(proxySigV1, b[:min(n, len(proxySigV1))])
		v2 := bytes.HasPrefix(proxySigV2, b)
		switch {
		case v1 && n >= len(proxySigV1), v2 && n == len(proxySigV2):
			return true
		case !v1 && !v2:
			return false
		}
	}
	return false
}
