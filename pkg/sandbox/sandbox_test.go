package sandbox

import (
	"strings"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

func TestTopology(t *testing.T) {
	sb := New(t)
	t.Run("node reaches the lan host over IPv4 and IPv6", func(t *testing.T) {
		if err := Ping(sb.Node, LANIPv4.Addr()); err != nil {
			t.Fatal(err)
		}
		if err := Ping(sb.Node, LANIPv6.Addr()); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a pod starts with loopback only", func(t *testing.T) {
		out := MustRun(t, sb.NewPod(t), "ip", "-o", "link")
		if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != 1 || !strings.Contains(out, "lo:") {
			t.Fatalf("pod links = %q, want only lo", out)
		}
	})
	t.Run("the uplink is named like a NIC", func(t *testing.T) {
		if out := MustRun(t, sb.Node, "ip", "-o", "link", "show", Uplink); !strings.Contains(out, "eno1@") {
			t.Fatalf("node uplink = %q", out)
		}
	})
}

func TestCnitoolKeepsItsCacheInTheSandbox(t *testing.T) {
	sb := New(t)
	pod := sb.NewPod(t)
	list := func() string { out, _ := Run(sb.Node, nil, "sh", "-c", "ls -A /var/lib/cni 2>/dev/null"); return out }
	before := list()
	if out, err := sb.Cnitool(t, NetD(), "add", "static-macvlan", pod); err != nil {
		t.Fatalf("cnitool add: %v", err)
	} else if !strings.Contains(out, "192.168.1.20/16") {
		t.Fatalf("cnitool add printed %s", out)
	}
	if after := list(); after != before {
		t.Fatalf("the machine's /var/lib/cni changed: %q -> %q", before, after)
	}
	if out := MustRun(t, sb.Node, "sh", "-c", "ls "+sb.Dir+"/var-lib-cni/results"); !strings.Contains(out, "static-macvlan-cnitool-") {
		t.Fatalf("cnitool's cache is not in the sandbox: %q", out)
	}
	if _, err := sb.Cnitool(t, NetD(), "del", "static-macvlan", pod); err != nil {
		t.Fatalf("cnitool del: %v", err)
	}
}
