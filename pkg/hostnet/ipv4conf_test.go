package hostnet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// The settings setIPv4Conf makes, as its callers make them.
var ipv4Confs = []struct {
	key string
	id  int
}{{"arp_filter", ipv4DevconfARPFilter}, {"route_localnet", ipv4DevconfRouteLocalnet}}

// The read-only /proc/sys check runs in a child process of its own mount
// namespace: these carry the link to check and the namespaces of the test
// process, which the child refuses to touch.
const (
	roChildLinkEnv = "CNICHAIN_HOSTNET_RO_PROC_SYS_LINK"
	roChildMntEnv  = "CNICHAIN_HOSTNET_PARENT_MNT_NS"
	roChildNetEnv  = "CNICHAIN_HOSTNET_PARENT_NET_NS"
	roChildDone    = "set under a read-only /proc/sys"
)

// TestMain runs the tests, or the read-only /proc/sys check when this is
// that child.
func TestMain(m *testing.M) {
	if link := os.Getenv(roChildLinkEnv); link != "" {
		if err := readOnlyProcSysChild(link); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(roChildDone)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func ipv4ConfOf(link, key string) (string, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + link + "/" + key)
	return strings.TrimSpace(string(b)), err
}

func mustIPv4Conf(t *testing.T, link, key string) string {
	t.Helper()
	v, err := ipv4ConfOf(link, key)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestSetIPv4Conf(t *testing.T) {
	t.Run("sets arp_filter and route_localnet of that link only", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			others := map[string]string{}
			for _, c := range ipv4Confs {
				if v := mustIPv4Conf(t, "eno1", c.key); v != "0" {
					t.Fatalf("%s of eno1 is %s before, want 0: the test would prove nothing", c.key, v)
				}
				for _, l := range []string{"peer0", "all", "default"} {
					others[l+"/"+c.key] = mustIPv4Conf(t, l, c.key)
				}
			}
			link, _ := netlink.LinkByName("eno1")
			for _, c := range ipv4Confs {
				if err := setIPv4Conf(link, c.key, c.id, 1); err != nil {
					t.Fatal(err)
				}
				if v := mustIPv4Conf(t, "eno1", c.key); v != "1" {
					t.Errorf("%s of eno1 = %s, want 1", c.key, v)
				}
			}
			for lk, was := range others {
				l, key, _ := strings.Cut(lk, "/")
				if v := mustIPv4Conf(t, l, key); v != was {
					t.Errorf("%s of %s changed from %s to %s", key, l, was, v)
				}
			}
		})
	})
	t.Run("works where /proc/sys is read-only, as in a Kubernetes container", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			mntNS, err := os.Readlink("/proc/self/ns/mnt")
			if err != nil {
				t.Fatal(err)
			}
			// The test process's main thread never leaves the netns it
			// started in; this goroutine's thread is in the node's.
			netNS, err := os.Readlink("/proc/self/ns/net")
			if err != nil {
				t.Fatal(err)
			}
			// -test.run=^$: a child that missed TestMain runs nothing and
			// prints no roChildDone.
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), roChildLinkEnv+"=eno1", roChildMntEnv+"="+mntNS, roChildNetEnv+"="+netNS)
			// The child, forked from this thread, starts in the node's
			// netns, and in a new mount namespace with / private: its
			// remount is seen by no one else.
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), roChildDone) {
				t.Fatalf("child: %v\n%s", err, out)
			}
			for _, c := range ipv4Confs {
				if v := mustIPv4Conf(t, "eno1", c.key); v != "1" {
					t.Errorf("%s of eno1 = %s after the child, want 1", c.key, v)
				}
			}
		})
	})
	t.Run("leaves a setting already in place alone", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			link, _ := netlink.LinkByName("eno1")
			if err := setIPv4Conf(link, "arp_filter", ipv4DevconfARPFilter, 1); err != nil {
				t.Fatal(err)
			}
			// The right name but no such index: anything sent fails.
			stale := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eno1", Index: 1 << 30}}
			if err := setIPv4Conf(stale, "arp_filter", ipv4DevconfARPFilter, 1); err != nil {
				t.Fatalf("setting a value already there sent a request: %v", err)
			}
			if err := setIPv4Conf(stale, "route_localnet", ipv4DevconfRouteLocalnet, 1); err == nil {
				t.Fatal("setting a value not there sent nothing")
			}
		})
	})
	t.Run("names the setting, the link and the cause when it fails", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			gone := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "gone0", Index: 1 << 30}}
			err := setIPv4Conf(gone, "arp_filter", ipv4DevconfARPFilter, 1)
			if err == nil || !strings.Contains(err.Error(), "set arp_filter of gone0: ") || !errors.Is(err, unix.ENODEV) {
				t.Fatalf("err = %v, want one naming arp_filter, gone0 and ENODEV", err)
			}
		})
	})
}

func TestEnableRouteLocalnet(t *testing.T) {
	t.Run("turns it on for the link towards the address", func(t *testing.T) {
		inNode(t, func(t *testing.T) {
			sandbox.MustRunHere(t, "ip", "addr", "add", "192.168.0.5/16", "dev", "eno1")
			if v := mustIPv4Conf(t, "eno1", "route_localnet"); v != "0" {
				t.Fatalf("route_localnet of eno1 is %s before, want 0", v)
			}
			if err := EnableRouteLocalnet(netip.MustParseAddr("192.168.1.9")); err != nil {
				t.Fatal(err)
			}
			if v := mustIPv4Conf(t, "eno1", "route_localnet"); v != "1" {
				t.Fatalf("route_localnet of eno1 = %s, want 1", v)
			}
		})
	})
}

// readOnlyProcSysChild, in a mount namespace of its own and the node's
// netns, makes /proc/sys read-only as CRI does, shows that writing it
// fails, then sets the settings of link and reads them back.
func readOnlyProcSysChild(link string) error {
	for _, n := range []struct{ kind, env string }{{"mnt", roChildMntEnv}, {"net", roChildNetEnv}} {
		if cur, err := os.Readlink("/proc/self/ns/" + n.kind); err != nil || cur == os.Getenv(n.env) {
			return fmt.Errorf("not in a %s namespace of its own (%s, %v): not touching the test process's", n.kind, cur, err)
		}
	}
	if err := unix.Mount("/proc/sys", "/proc/sys", "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind /proc/sys: %w", err)
	}
	if err := unix.Mount("", "/proc/sys", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("remount /proc/sys read-only: %w", err)
	}
	l, err := netlink.LinkByName(link)
	if err != nil {
		return err
	}
	for _, c := range ipv4Confs {
		if v, err := ipv4ConfOf(link, c.key); err != nil || v != "0" {
			return fmt.Errorf("%s of %s is %q, %v before, want 0", c.key, link, v, err)
		}
		err := os.WriteFile("/proc/sys/net/ipv4/conf/"+link+"/"+c.key, []byte("1"), 0o644)
		if !errors.Is(err, unix.EROFS) {
			return fmt.Errorf("writing %s of %s: %v, want a read-only file system", c.key, link, err)
		}
		if err := setIPv4Conf(l, c.key, c.id, 1); err != nil {
			return err
		}
		if v, err := ipv4ConfOf(link, c.key); err != nil || v != "1" {
			return fmt.Errorf("%s of %s is %q, %v after, want 1", c.key, link, v, err)
		}
	}
	return nil
}
