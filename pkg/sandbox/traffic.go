package sandbox

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// ServeTCP listens on port (all addresses) inside netns and answers every
// connection with reply; it stops when the test ends. The socket belongs to
// netns from its creation, whichever thread serves it.
func ServeTCP(t testing.TB, netns ns.NetNS, port int, reply string) {
	t.Helper()
	var ln net.Listener
	err := netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort("::", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen tcp/%d in %s: %v", port, netns.Path(), err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(reply))
			c.Close()
		}
	}()
}

// ServeUDP answers every datagram to port inside netns with reply.
func ServeUDP(t testing.TB, netns ns.NetNS, port int, reply string) {
	t.Helper()
	var pc net.PacketConn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp", net.JoinHostPort("::", strconv.Itoa(port)))
		return err
	})
	if err != nil {
		t.Fatalf("listen udp/%d in %s: %v", port, netns.Path(), err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo([]byte(reply), from)
		}
	}()
}

// DialTCP connects from netns to addr and returns what the server sent.
func DialTCP(netns ns.NetNS, addr netip.AddrPort) (string, error) {
	var c net.Conn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 2*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

// DialUDP sends a datagram from netns to addr and returns the answer.
func DialUDP(netns ns.NetNS, addr netip.AddrPort) (string, error) {
	var c net.Conn
	err := netns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.Dial("udp", addr.String())
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 64)
	// UDP may lose the first datagram while ARP resolves: try a few times.
	for i := 0; i < 5; i++ {
		_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := c.Write([]byte("ping")); err != nil {
			return "", err
		}
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return "", err
		}
	}
	return "", errors.New("no UDP answer from " + addr.String())
}

// ServeHTTP serves handler on a loopback port inside netns (a stand-in for a
// service the plugins call, such as multinic's resource manager) until the
// test ends, and returns its listener, whose Close takes the server down.
func ServeHTTP(t testing.TB, netns ns.NetNS, handler http.Handler) net.Listener {
	t.Helper()
	var ln net.Listener
	err := netns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", netns.Path(), err)
	}
	srv := &http.Server{Handler: handler}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln
}
