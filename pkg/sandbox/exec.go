package sandbox

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Run runs a command inside netns and returns its combined output. The
// command inherits the namespace from the locked OS thread that starts it.
func Run(netns ns.NetNS, env []string, name string, args ...string) (string, error) {
	var out bytes.Buffer
	err := netns.Do(func(ns.NetNS) error {
		cmd := exec.Command(name, args...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = &out, &out
		return cmd.Run()
	})
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// MustRun runs a command inside netns and returns its standard output,
// failing the test on error. Stderr goes only into the failure message: a
// warning there (ip's "Peer netns reference is invalid" while another
// test's namespace goes away) is not the state a test compares.
func MustRun(t testing.TB, netns ns.NetNS, name string, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	err := netns.Do(func(ns.NetNS) error {
		cmd := exec.Command(name, args...)
		cmd.Stdout, cmd.Stderr = &out, &errOut
		return cmd.Run()
	})
	if err != nil {
		t.Fatalf("%s %s: %v: %s%s", name, strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

// MustRunHere runs a command in the namespace of the calling goroutine's
// thread (inside a netns.Do) and fails the test on error.
func MustRunHere(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dadWait is how long WaitDAD waits: DAD takes a second or two, far more
// on a busy machine.
const dadWait = 60 * time.Second

// WaitDAD waits until no IPv6 address in netns is still tentative: a
// plugin returns before duplicate address detection ends, and until then
// the address neither sends nor answers.
func WaitDAD(t testing.TB, netns ns.NetNS) {
	t.Helper()
	for deadline := time.Now().Add(dadWait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if out := MustRun(t, netns, "ip", "-6", "addr", "show", "tentative"); strings.TrimSpace(out) == "" {
			return
		}
	}
	t.Fatalf("gave up after %s waiting for the IPv6 addresses of %s to finish DAD:\n%s", dadWait, netns.Path(), MustRun(t, netns, "ip", "-6", "addr"))
}

// Ping sends a few echo requests from netns to dst and reports whether any
// came back.
func Ping(netns ns.NetNS, dst netip.Addr) error {
	_, err := Run(netns, nil, "ping", "-c", "2", "-i", "0.2", "-W", "1", dst.String())
	return err
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ExecShim puts wrappers for the named binaries first in PATH (for the rest
// of the test) that log each run, and returns a function that lists the
// runs since its last call: how tests and benchmarks count the processes a
// plugin spawns.
func ExecShim(t testing.TB, names ...string) func() []string {
	t.Helper()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "execs.log")
	for _, bin := range names {
		real, err := exec.LookPath(bin)
		if err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf("#!/bin/sh\necho %s >> %s\nexec %s \"$@\"\n", bin, logFile, real)
		if err := os.WriteFile(filepath.Join(dir, bin), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
	return func() []string {
		data, _ := os.ReadFile(logFile)
		_ = os.Remove(logFile)
		return strings.Fields(string(data))
	}
}
