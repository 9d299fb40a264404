// Package linktest relays TCP connections on loopback through a bad network link, for tests of
// what clients and servers do when the link between them drops, stalls, refuses or crawls, as the
// links to edge devices do.
package linktest

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Options describe the link. The zero value relays faithfully.
type Options struct {
	// Refuse is how many connections, the first ones, are closed as soon as they are accepted: a
	// link that is down for a moment.
	Refuse int32
	// After is how many bytes (both directions together) a connection carries before it fails;
	// 0 means it never does.
	After int64
	// Stall makes a failing connection fall silent instead of closing: no bytes and no FIN until
	// the test ends, as behind a NAT that forgot the connection.
	Stall bool
	// Faulty says which connections may fail, by accept order from 1; nil means all.
	Faulty func(n int32) bool
	// DownRate limits the server-to-client direction to about this many bytes per second; 0 means
	// no limit.
	DownRate int
}

// Link is a running relay.
type Link struct {
	// Addr is the address to dial instead of the target's.
	Addr string

	accepted, failed atomic.Int32
}

// Accepted is the number of connections accepted so far.
func (l *Link) Accepted() int32 { return l.accepted.Load() }

// Failed is the number of connections dropped or stalled after Options.After bytes.
func (l *Link) Failed() int32 { return l.failed.Load() }

// Start relays connections to target through a link described by o until the test ends.
func Start(t testing.TB, target string, o Options) *Link {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &Link{Addr: ln.Addr().String()}
	stop := make(chan struct{})
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		close(stop)
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := l.accepted.Add(1)
			if n <= o.Refuse {
				c.Close()
				continue
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			faulty := o.After > 0 && (o.Faulty == nil || o.Faulty(n))
			var moved atomic.Int64
			var once sync.Once
			closeBoth := func() { once.Do(func() { c.Close(); s.Close() }) }
			relay := func(dst, src net.Conn, rate int) {
				defer closeBoth()
				buf := make([]byte, 16<<10)
				for {
					k, err := src.Read(buf)
					if k > 0 {
						if faulty && moved.Add(int64(k)) > o.After {
							l.failed.Add(1)
							if o.Stall {
								<-stop
							}
							return
						}
						if _, err := dst.Write(buf[:k]); err != nil {
							return
						}
						if rate > 0 {
							time.Sleep(time.Duration(k) * time.Second / time.Duration(rate))
						}
					}
					if err != nil {
						return
					}
				}
			}
			go relay(s, c, 0)
			go relay(c, s, o.DownRate)
		}
	}()
	return l
}
