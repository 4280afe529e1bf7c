package pop3_test

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/popbridge/popbridge/pop3"
)

// listen serves srv on a loopback port and returns its address and the
// channel Serve's result arrives on.
func listen(t *testing.T, srv *pop3.Server) (string, <-chan error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		srv.Shutdown(context.Background()) // wait for the handlers
	})
	return ln.Addr().String(), done
}

func serveResult(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func TestShutdownDeadline(t *testing.T) {
	be := newFakeBackend()
	srv := newServer(t, be)
	addr, served := listen(t, srv)

	trans := dialSession(t, addr)
	trans.login()
	trans.run([]step{{"DELE 1", ok("+OK message 1 deleted")}})
	auth := dialSession(t, addr)
	auth.expect("greeting", "+OK POP3 server ready")
	auth.run([]step{{"CAPA", capaAuth}})

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want DeadlineExceeded", err)
	}
	auth.expectClosed()
	trans.expectClosed()
	if err := serveResult(t, served); err != pop3.ErrServerClosed {
		t.Errorf("Serve = %v, want ErrServerClosed", err)
	}
	commits, closes, _ := be.drop(t).calls()
	if len(commits) != 0 || closes != 1 {
		t.Errorf("commits %v, closes %d; want none and 1", commits, closes)
	}
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("listener still accepts")
	}
	if err := srv.Serve(nil); err != pop3.ErrServerClosed {
		t.Errorf("Serve after Shutdown = %v", err)
	}
}

// TestShutdownLetsSessionsFinish: a session that ends with QUIT during
// Shutdown gets its Commit, and Shutdown returns nil.
func TestShutdownLetsSessionsFinish(t *testing.T) {
	be := newFakeBackend()
	srv := newServer(t, be)
	addr, served := listen(t, srv)
	c := dialSession(t, addr)
	c.login()
	c.run([]step{{"DELE 2", ok("+OK message 2 deleted")}})

	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	if err := serveResult(t, served); err != pop3.ErrServerClosed {
		t.Errorf("Serve = %v", err)
	}
	c.run([]step{
		{"STAT", ok("+OK 2 " + itoa(len(msg1)+len(msg3)))},
		{"QUIT", ok("+OK POP3 server signing off")},
	})
	c.expectClosed()
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	commits, closes, _ := be.drop(t).calls()
	if !slices.EqualFunc(commits, [][]int{{2}}, slices.Equal) || closes != 1 {
		t.Errorf("commits %v, closes %d", commits, closes)
	}
}

// TestShutdownWaitsForCommit: a Commit in progress when Shutdown's context
// ends keeps an uncancelled context, and Shutdown waits for it.
func TestShutdownWaitsForCommit(t *testing.T) {
	be := newFakeBackend()
	entered, release := make(chan struct{}), make(chan struct{})
	be.commitHook = func(ctx context.Context) {
		close(entered)
		<-release
	}
	srv := newServer(t, be)
	addr, _ := listen(t, srv)
	c := dialSession(t, addr)
	c.login()
	c.run([]step{{"DELE 3", ok("+OK message 3 deleted")}})
	c.send("QUIT\r\n")
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	cancel()
	c.expectClosed() // the connection is closed while Commit runs
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v before Commit finished", err)
	default:
	}
	close(release)
	if err := <-shut; !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown = %v, want Canceled", err)
	}
	d := be.drop(t)
	commits, closes, _ := d.calls()
	if !slices.EqualFunc(commits, [][]int{{3}}, slices.Equal) || closes != 1 || d.commitCtx != nil {
		t.Errorf("commits %v, closes %d, Commit ctx %v", commits, closes, d.commitCtx)
	}
}

func TestClose(t *testing.T) {
	be := newFakeBackend()
	srv := newServer(t, be)
	addr, served := listen(t, srv)
	c := dialSession(t, addr)
	c.login()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	c.expectClosed()
	if err := serveResult(t, served); err != pop3.ErrServerClosed {
		t.Errorf("Serve = %v", err)
	}
	// ServeConn after Close closes the connection at once.
	cc, sc := net.Pipe()
	srv.ServeConn(sc)
	cc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := cc.Read(make([]byte, 1)); err == nil {
		t.Error("ServeConn after Close served")
	}
}

func TestServeNeedsBackend(t *testing.T) {
	srv := pop3.NewServer(nil, nil)
	if err := srv.Serve(nil); err == nil || err == pop3.ErrServerClosed {
		t.Errorf("Serve without Backend = %v", err)
	}
}
