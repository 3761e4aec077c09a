// Package netnslock provides locks whose scope is the network namespace
// of the caller: what the plugins of every network, state directory and
// runtime on a node share, the node's nat tables above all.
//
// A lock is an abstract unix socket bound to a name: abstract names belong
// to the network namespace, the kernel frees one when its holder exits,
// however it exits, and nothing is left on any filesystem.
package netnslock

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Wait is how long Acquire waits for a lock before it gives up: far longer
// than any holder keeps one (a few iptables processes), so that only a
// stuck holder makes it fail, on however busy a node.
const Wait = 2 * time.Minute

// Acquire takes the lock called name in the caller's network namespace,
// waiting up to Wait for it; release gives it back.
func Acquire(name string) (release func(), err error) {
	return acquire(name, Wait)
}

func acquire(name string, wait time.Duration) (func(), error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	addr := &unix.SockaddrUnix{Name: "@cnichain/" + name}
	deadline := time.Now().Add(wait)
	pause := time.Millisecond
	for {
		err := unix.Bind(fd, addr)
		if err == nil {
			return func() { unix.Close(fd) }, nil
		}
		if err != unix.EADDRINUSE || time.Now().After(deadline) {
			unix.Close(fd)
			if err == unix.EADDRINUSE {
				return nil, fmt.Errorf("lock %s of this network namespace: still held by another process after %s", name, wait)
			}
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}
