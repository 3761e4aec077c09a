package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// agentWait is how long a test waits for the agent to put things back: far
// longer than it takes (well under a second), for a busy machine.
const agentWait = 60 * time.Second

// agentProc is a running cnichain-agent.
type agentProc struct {
	cmd  *exec.Cmd
	logs func() string // what it has logged so far
}

// waitIdle waits until the agent has made its second look after its last
// restore, after which it waits for events.
func (a *agentProc) waitIdle(t *testing.T) {
	t.Helper()
	waitFor(t, "the agent's second look after its last restore", func() bool {
		logs := a.logs()
		last := strings.LastIndex(logs, "msg=restore ")
		return last >= 0 && strings.Contains(logs[last:], `after="a second look"`)
	})
}

// pause stops the agent (SIGSTOP), so that what happens meanwhile waits
// in its sockets; resume continues it.
func (a *agentProc) pause(t *testing.T)  { t.Helper(); a.signal(t, syscall.SIGSTOP) }
func (a *agentProc) resume(t *testing.T) { t.Helper(); a.signal(t, syscall.SIGCONT) }
func (a *agentProc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	// nsenter execs the agent: its process is the agent's.
	if err := a.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// agentShape is how the agent is run: as a program of the node, or as the
// DaemonSet runs it (asTheDaemonSet).
type agentShape string

const (
	onTheNode      agentShape = "as a program on the node"
	asTheDaemonSet agentShape = "as the DaemonSet runs it"
)

// startAgent runs cnichain-agent in the node namespace against the
// sandbox's records until the test ends, then stops it with SIGTERM and
// checks that it exits cleanly.
func startAgent(t *testing.T, sb *sandbox.Sandbox, extra ...string) *agentProc {
	t.Helper()
	return startAgentAs(t, sb, onTheNode, extra...)
}

// startAgentAs is startAgent in the given shape.
func startAgentAs(t *testing.T, sb *sandbox.Sandbox, shape agentShape, extra ...string) *agentProc {
	t.Helper()
	agent := filepath.Join(sandbox.Plugins(t), "cnichain-agent")
	flags := append([]string{
		"-portmap-state-dir", filepath.Join(sb.Dir, "state", "portmap-lite"),
		"-hostroute-state-dir", filepath.Join(sb.Dir, "state", "macvlan-host-route")}, extra...)
	var cmd *exec.Cmd
	if shape == asTheDaemonSet {
		cmd = daemonSetCommand(t, sb, agent, flags)
	} else {
		cmd = exec.Command("nsenter", append([]string{"--net=" + sb.Node.Path(), agent}, flags...)...)
	}
	var mu sync.Mutex
	var buf bytes.Buffer
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logs := func() string { mu.Lock(); defer mu.Unlock(); return buf.String() }
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("the agent did not exit cleanly on SIGTERM: %v\n%s", err, logs())
			}
		case <-time.After(agentWait):
			_ = cmd.Process.Kill()
			t.Errorf("gave up after %s waiting for the agent to exit on SIGTERM\n%s", agentWait, logs())
		}
	})
	// Watching once its first restore is done.
	waitFor(t, "the agent's first restore", func() bool { return strings.Contains(logs(), "msg=restore") })
	return &agentProc{cmd, logs}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// waitFor polls cond every 20ms until it holds, for agentWait at most, and
// returns how long it took.
func waitFor(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > agentWait {
			t.Fatalf("gave up after %s waiting for %s", agentWait, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// TestAgent: with the agent running, as a program on the node and as the
// DaemonSet runs it (a scratch root, the node's iptables behind
// /etc/alternatives, /proc/sys read-only, three capabilities), pods on the
// whole chain and on bridge + portmap-lite (iptables, nftables, and the
// legacy flavour) lose their traffic to each kind of flush and get it back
// with no manual step; SIGTERM ends it.
func TestAgent(t *testing.T) {
	for _, shape := range []agentShape{onTheNode, asTheDaemonSet} {
		t.Run(string(shape), func(t *testing.T) { testAgent(t, shape) })
	}
}

func testAgent(t *testing.T, shape agentShape) {
	sb := sandbox.New(t)
	sb.EnableForwarding(t)
	rtm := sb.Runtime(t)
	bridge := func(name, entry string) *libcni.NetworkConfigList {
		text := strings.NewReplacer("BACKEND", entry, `"restore-br"`, `"`+name+`"`, "rbr0", name[:min(len(name), 8)]+"0").Replace(bridgeHostPort)
		return sb.Localize(t, sandbox.ListFromJSON(t, text))
	}
	lists := []*libcni.NetworkConfigList{
		wholeChainList(t, sb, ""),
		bridge("agent-nft", `"backend":"nftables",`),
		bridge("agent-leg", `"iptablesFlavour":"legacy",`),
	}
	// Separate subnets for the two extra bridges.
	lists[2] = sandbox.ListFromJSON(t, strings.NewReplacer("10.252.0.", "10.253.0.", "fd00:fc::", "fd00:fd::").Replace(string(lists[2].Bytes)))
	ports := []int{8080, 9090, 9191}
	var pods []ns.NetNS
	for i, list := range lists {
		pod := sb.NewPod(t)
		att := sandbox.Attachment(pod, fmt.Sprintf("agent-%d", i), "eth0")
		att.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": ports[i], "containerPort": 80, "protocol": "tcp"}}}
		mustAdd(t, rtm, list, att)
		t.Cleanup(func() { _ = rtm.Del(list, att) })
		sandbox.WaitDAD(t, pod)
		sandbox.ServeTCP(t, pod, 80, fmt.Sprintf("pod %d", i))
		pods = append(pods, pod)
	}
	node4 := sandbox.NodeIPv4.Addr()
	paths := []path{
		{"lan -> macvlan pod's hostPort", sb.LAN, netip.AddrPortFrom(node4, 8080), "tcp", "pod 0"},
		{"node -> macvlan pod", sb.Node, netip.AddrPortFrom(podV4, 80), "tcp", "pod 0"},
		{"lan -> nftables bridge pod's hostPort", sb.LAN, netip.AddrPortFrom(node4, 9090), "tcp", "pod 1"},
		{"lan -> legacy bridge pod's hostPort", sb.LAN, netip.AddrPortFrom(node4, 9191), "tcp", "pod 2"},
	}
	// A probe is a connection given 200ms: one whose SYN went out while
	// the path was cut would wait for TCP's retransmission (a second) and
	// time that, not the agent.
	allWork := func() bool {
		return !slices.ContainsFunc(paths, func(p path) bool { return quickDial(p.from, p.to) != p.want })
	}
	if !allWork() {
		t.Fatalf("the pods do not work before any flush: %v", paths[0].check())
	}
	// Each flush below is a new event, not an admin fighting the agent:
	// the back-off has its own test.
	agent := startAgentAs(t, sb, shape, "-canary-every", "1s", "-backoff-window", "1ms")
	nftFlushRuleset := func() error {
		return sb.Node.Do(func(ns.NetNS) error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			c.FlushRuleset()
			return c.Flush()
		})
	}
	run := func(args ...string) func() error {
		return func() error { _, err := sandbox.Run(sb.Node, nil, args[0], args[1:]...); return err }
	}
	rounds := envInt("CNICHAIN_AGENT_ROUNDS", 1)
	for _, f := range []struct {
		name  string
		flush func() error
	}{
		{"iptables -t nat -F (iptables-nft)", run("iptables", "-t", "nat", "-F")},
		{"nft flush ruleset", nftFlushRuleset},
		{"ip link del eno1.host", run("ip", "link", "del", "eno1.host")},
		{"ip route flush proto 197", run("ip", "route", "flush", "proto", "197")},
		{"ip link set eno1.host down (its routes and pinned neighbours go with no event of their own)", run("ip", "link", "set", "eno1.host", "down")},
		{"iptables-legacy -t nat -F (the canary's rule, every 1s)", run("iptables-legacy", "-t", "nat", "-F")},
		{"iptables-legacy -t nat -F and -X (the canary, every 1s)", func() error {
			return errors.Join(run("iptables-legacy", "-t", "nat", "-F")(), run("iptables-legacy", "-t", "nat", "-X")())
		}},
	} {
		t.Run(f.name, func(t *testing.T) {
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("the agent's log:\n%s", agent.logs())
				}
			})
			// The agent is paused while the flush is made and seen to cut
			// traffic; the time to traffic back counts from its resuming,
			// with the flush's events waiting for it.
			var took []time.Duration
			for range rounds {
				// Paused between restores, never in one: a flush in the
				// middle of a restore is another test's (the agent then
				// restores again).
				agent.waitIdle(t)
				agent.pause(t)
				if err := f.flush(); err != nil {
					agent.resume(t)
					t.Fatal(err)
				}
				broken := !allWork()
				agent.resume(t)
				if !broken {
					t.Fatalf("every path still works after %s: the test proves nothing", f.name)
				}
				took = append(took, waitFor(t, "every path to work again after "+f.name, allWork))
			}
			slices.Sort(took)
			t.Logf("traffic back after %s: median %s, worst %s of %d", f.name,
				took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond), len(took))
		})
	}
	// The sub-device it made anew answers ARP only for its pods.
	if out, err := sandbox.Run(sb.Node, nil, "cat", "/proc/sys/net/ipv4/conf/eno1.host/arp_filter"); err != nil || strings.TrimSpace(out) != "1" {
		t.Errorf("arp_filter of the sub-device the agent made anew: %q, %v; want 1", out, err)
	}
	if logs := agent.logs(); strings.Contains(logs, "level=ERROR") {
		t.Errorf("the agent logged errors:\n%s", logs)
	}
}

// TestAgentBacksOff: an admin who deletes the sub-device again and again
// gets a logged back-off, not a hot loop, and the pod's route back at last.
func TestAgentBacksOff(t *testing.T) {
	sb, _, _ := wholeChainNode(t, "fought", false)
	logs := startAgent(t, sb, "-no-canary").logs
	subDevice := func() bool { _, err := sandbox.Run(sb.Node, nil, "ip", "link", "show", "eno1.host"); return err == nil }
	for i := 0; i < 8 && !strings.Contains(logs(), "backing off"); i++ {
		if _, err := sandbox.Run(sb.Node, nil, "ip", "link", "del", "eno1.host"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "eno1.host back", subDevice)
	}
	if !strings.Contains(logs(), "backing off") {
		t.Fatalf("no back-off logged:\n%s", logs())
	}
	if err := sandbox.Ping(sb.Node, podV4); err != nil {
		t.Errorf("the pod after the back-off: %v", err)
	}
}

// quickDial is what the server at to says to a connection from netns, ""
// when none is made and answered within 200ms.
func quickDial(netns ns.NetNS, to netip.AddrPort) string {
	var got string
	_ = netns.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", to.String(), 200*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(200 * time.Millisecond))
		b, _ := io.ReadAll(c)
		got = string(b)
		return nil
	})
	return got
}

// firewalld is a real firewalld (Debian's) serving the node namespace.
type firewalld struct {
	bus string // its system bus's address
}

// cmd runs firewall-cmd against it.
func (f *firewalld) cmd(args ...string) (string, error) {
	c := exec.Command("firewall-cmd", args...)
	c.Env = append(c.Environ(), "DBUS_SYSTEM_BUS_ADDRESS="+f.bus)
	out, err := c.CombinedOutput()
	return string(out), err
}

// startFirewalld runs firewalld with backend in the node namespace until
// the test ends: its own system bus (a dbus-daemon of the test's, on a
// socket in the test's directory), its configuration there too (the default
// zone trusted, which lets every connection through: what a reload does to
// our rules is then all that is seen), and its run directory in a private
// mount namespace. Nothing of the machine's own firewall is touched.
func startFirewalld(t *testing.T, sb *sandbox.Sandbox, backend string) *firewalld {
	t.Helper()
	for _, bin := range []string{"firewalld", "firewall-cmd", "dbus-daemon"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, systemd := os.Stat("/run/systemd/system"); systemd == nil {
				t.Skipf("%s: %v: scripts/ensure-tools.sh does not install firewalld where systemd would start it on the machine itself; install it (masked) to run this test", bin, err)
			}
			t.Fatalf("%s: %v (scripts/ensure-tools.sh installs firewalld)", bin, err)
		}
	}
	dir := t.TempDir()
	bus := filepath.Join(dir, "bus")
	conf := fmt.Sprintf(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path=%s</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/></policy>
</busconfig>`, bus)
	if err := os.WriteFile(filepath.Join(dir, "bus.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	etc := filepath.Join(dir, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	settings := fmt.Sprintf("DefaultZone=trusted\nFirewallBackend=%s\nFlushAllOnReload=yes\nCleanupOnExit=yes\nLogDenied=off\n", backend)
	if err := os.WriteFile(filepath.Join(etc, "firewalld.conf"), []byte(settings), 0o644); err != nil {
		t.Fatal(err)
	}
	daemons := []*exec.Cmd{
		exec.Command("dbus-daemon", "--config-file="+filepath.Join(dir, "bus.conf"), "--nofork", "--nopidfile"),
		exec.Command("nsenter", "--net="+sb.Node.Path(), "unshare", "-m", "sh", "-c",
			`mount --make-rprivate / && mkdir -p /run/firewalld && mount -t tmpfs cnichain-test /run/firewalld &&
			 exec firewalld --nofork --nopid --system-config "$1" --log-target file --log-file "$2"`,
			"sh", etc, filepath.Join(dir, "firewalld.log")),
	}
	_, runDirBefore := os.Stat("/run/firewalld")
	for i, d := range daemons {
		d.Env = append(os.Environ(), "DBUS_SYSTEM_BUS_ADDRESS=unix:path="+bus)
		if err := d.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Process.Signal(syscall.SIGTERM); _ = d.Wait() })
		if i == 0 {
			waitFor(t, "the test's dbus-daemon", func() bool { _, err := os.Stat(bus); return err == nil })
		}
	}
	t.Cleanup(func() {
		if os.IsNotExist(runDirBefore) {
			_ = os.Remove("/run/firewalld") // the mount point made in the machine's /run
		}
	})
	f := &firewalld{bus: "unix:path=" + bus}
	waitFor(t, "firewalld to run", func() bool { out, _ := f.cmd("--state"); return strings.TrimSpace(out) == "running" })
	return f
}

// TestAgentWithFirewalld: on a node where a real firewalld runs, with its
// iptables backend and with its nftables backend, `firewall-cmd --reload`
// does not take the pods' hostPorts and host routes for good: the agent
// puts back what the reload took, with no manual step.
func TestAgentWithFirewalld(t *testing.T) {
	for _, backend := range []string{"iptables", "nftables"} {
		t.Run("firewalld with its "+backend+" backend", func(t *testing.T) {
			sb := sandbox.New(t)
			sb.EnableForwarding(t)
			fw := startFirewalld(t, sb, backend)
			rtm := sb.Runtime(t)
			lists := []*libcni.NetworkConfigList{
				wholeChainList(t, sb, ""),
				sb.Localize(t, sandbox.ListFromJSON(t, strings.Replace(bridgeHostPort, "BACKEND", `"backend":"nftables",`, 1))),
			}
			for i, list := range lists {
				pod := sb.NewPod(t)
				att := sandbox.Attachment(pod, fmt.Sprintf("fw-%d", i), "eth0")
				att.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080 + i, "containerPort": 80, "protocol": "tcp"}}}
				mustAdd(t, rtm, list, att)
				t.Cleanup(func() { _ = rtm.Del(list, att) })
				sandbox.WaitDAD(t, pod)
				sandbox.ServeTCP(t, pod, 80, fmt.Sprintf("pod %d", i))
			}
			node4 := sandbox.NodeIPv4.Addr()
			paths := []path{
				{"lan -> macvlan pod's hostPort (iptables)", sb.LAN, netip.AddrPortFrom(node4, 8080), "tcp", "pod 0"},
				{"node -> macvlan pod", sb.Node, netip.AddrPortFrom(podV4, 80), "tcp", "pod 0"},
				{"lan -> bridge pod's hostPort (nftables)", sb.LAN, netip.AddrPortFrom(node4, 8081), "tcp", "pod 1"},
			}
			allWork := func() bool {
				return !slices.ContainsFunc(paths, func(p path) bool { return quickDial(p.from, p.to) != p.want })
			}
			waitFor(t, "every path to work with firewalld running", allWork)
			agent := startAgent(t, sb, "-no-canary", "-backoff-window", "1ms")
			agent.pause(t)
			if out, err := fw.cmd("--reload"); err != nil {
				agent.resume(t)
				t.Fatalf("firewall-cmd --reload: %v\n%s", err, out)
			}
			broken := !allWork()
			agent.resume(t)
			took := waitFor(t, "every path to work again after firewall-cmd --reload", allWork)
			t.Logf("firewalld %s backend: the reload cut traffic: %v; back %s after the agent saw it", backend, broken, took.Round(time.Millisecond))
			if backend == "iptables" && !broken {
				t.Errorf("firewall-cmd --reload with the iptables backend cut nothing: the test proves nothing")
			}
		})
	}
}
