package e2e

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/cnichain/plugins/pkg/sandbox"
)

// daemonSetShape runs a program as deploy/daemonset.yaml runs the agent,
// in a private mount namespace of its own, so nothing of it is seen
// outside and all of it goes when the program ends:
//   - alone in a scratch root (a tmpfs holding only the program), as the
//     installer image is FROM scratch, with the devices a container
//     runtime gives every container (/dev/null and its like);
//   - the machine's / at /host, read-only (the node-root volume: its
//     submounts, /run's xtables lock among them, as they are), so that
//     /host/usr/sbin/iptables-save is the machine's link into
//     /etc/alternatives;
//   - /proc mounted anew, with /proc/sys read-only, as CRI mounts it in an
//     unprivileged container;
//   - the netns directory read-only with the host's mounts propagating
//     (HostToContainer), and the test's state directory read-write, both at
//     the paths the records name;
//   - the scratch root itself read-only (readOnlyRootFilesystem);
//   - no new privileges, and no capability but NET_ADMIN, NET_RAW and
//     SYS_CHROOT (the DaemonSet's drop ALL, add three).
//
// One difference stays: the program shares the machine's PID namespace,
// where the DaemonSet's container has its own (records naming a netns as
// /proc/PID/ns/net would look gone to it: containerd and CRI-O name
// /var/run/netns paths).
//
// $1 is the scratch root's directory, $2 the program, $3 the state
// directory; the rest are the program's arguments.
const daemonSetShape = `set -eu
root=$1 program=$2 state=$3
shift 3
mount -t tmpfs -o mode=0755 cnichain-scratch-root "$root"
mkdir -p "$root/host" "$root/proc" "$root/run/netns" "$root/var" "$root/$state"
ln -s ../run "$root/var/run"
cp "$program" "$root/program"
mount --rbind / "$root/host"
mount -o remount,bind,ro "$root/host"
mkdir "$root/dev"
mount -t tmpfs -o mode=0755,nosuid cnichain-scratch-dev "$root/dev"
for dev in null zero full random urandom tty; do
	touch "$root/dev/$dev"
	mount --bind "/dev/$dev" "$root/dev/$dev"
done
mount -t proc proc "$root/proc"
mount --bind "$root/proc/sys" "$root/proc/sys"
mount -o remount,bind,ro "$root/proc/sys"
mount --rbind /run/netns "$root/run/netns"
mount --make-rslave "$root/run/netns"
mount -o remount,bind,ro "$root/run/netns"
mount --bind "$state" "$root/$state"
mount -o remount,ro "$root"
exec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,+net_admin,+net_raw,+sys_chroot \
	chroot "$root" /program "$@"
`

// daemonSetCommand is the command that runs the agent program in the
// node namespace as the DaemonSet runs it (daemonSetShape), with the
// node's iptables (-iptables-root=/host) and flags.
func daemonSetCommand(t *testing.T, sb *sandbox.Sandbox, program string, flags []string) *exec.Cmd {
	t.Helper()
	if f, err := elf.Open(program); err != nil {
		t.Fatal(err)
	} else {
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Fatalf("%s is linked dynamically: it cannot run alone in a scratch root (build it with CGO_ENABLED=0, as make build does)", program)
			}
		}
	}
	args := append([]string{"--net=" + sb.Node.Path(), "unshare", "--mount", "--propagation", "private",
		"sh", "-c", daemonSetShape, "sh", t.TempDir(), program, sb.Dir, "-iptables-root=/host"}, flags...)
	return exec.Command("nsenter", args...)
}

// wholeChainNode is a sandbox whose node holds one pod on the whole chain
// (at podV4 and podV6), with hostPort 8080 mapped to its port 80 when
// hostPort is set; the pod is deleted when the test ends.
func wholeChainNode(t *testing.T, id string, hostPort bool) (*sandbox.Sandbox, *sandbox.Runtime, *libcni.NetworkConfigList) {
	t.Helper()
	sb := sandbox.New(t)
	rtm := sb.Runtime(t)
	list := wholeChainList(t, sb, "")
	att := sandbox.Attachment(sb.NewPod(t), id, "eth0")
	if hostPort {
		att.CapabilityArgs = map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}
	}
	mustAdd(t, rtm, list, att)
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	return sb, rtm, list
}

// restores counts the restores an agent's log shows.
func restores(logs string) int { return strings.Count(logs, "msg=restore ") }

// settledAgent starts the agent as the DaemonSet runs it and waits for the
// second look that follows its first restore, so that every restore after
// it is one that events called for.
func settledAgent(t *testing.T, sb *sandbox.Sandbox, flags ...string) *agentProc {
	t.Helper()
	agent := startAgentAs(t, sb, asTheDaemonSet, append([]string{"-no-canary"}, flags...)...)
	waitFor(t, "the agent's second look after its first restore", func() bool { return restores(agent.logs()) >= 2 })
	return agent
}

// TestAgentLeavesPodChurnAlone: pods added and deleted at a kubelet's pace
// on the whole chain (the reference macvlan moving links into pods, DELs
// deleting their host routes, pod chains and rules) make the agent run no
// restore and no back-off; a route an admin deletes afterwards is put back
// by a restore that waited for no back-off.
func TestAgentLeavesPodChurnAlone(t *testing.T) {
	sb, rtm, list := wholeChainNode(t, "stays", true)
	sb.EnableForwarding(t)
	agent := settledAgent(t, sb)
	before := restores(agent.logs())
	// One verb every 300ms, each pod deleted after the next is added.
	pods := envInt("CNICHAIN_CHURN_PODS", 12)
	var last *libcni.RuntimeConf
	for i := range pods {
		p := sb.NewPod(t)
		a := sandbox.Attachment(p, fmt.Sprintf("churn-%d", i), "eth0")
		a.CapabilityArgs = map[string]any{
			"ips":          []string{fmt.Sprintf("192.168.51.%d/16", i+10), fmt.Sprintf("fd00:c0a8::51:%d/64", i+10)},
			"portMappings": []map[string]any{{"hostPort": 9000 + i, "containerPort": 80, "protocol": "tcp"}},
		}
		mustAdd(t, rtm, list, a)
		t.Cleanup(func() { _ = rtm.Del(list, a) })
		time.Sleep(300 * time.Millisecond)
		if last != nil {
			if err := rtm.Del(list, last); err != nil {
				t.Fatalf("DEL %s: %v", last.ContainerID, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
		last = a
	}
	// A restore the churn called for would have run by now: the burst
	// settles in 100ms.
	time.Sleep(2 * time.Second)
	if n := restores(agent.logs()) - before; n != 0 {
		t.Errorf("%d pods added and deleted made the agent restore %d times:\n%s", pods, n, agent.logs())
	}
	if _, err := sandbox.Run(sb.Node, nil, "ip", "route", "del", podV4.String()+"/32", "dev", "eno1.host"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the node to reach the pod again after its host route was deleted", func() bool { return sandbox.Ping(sb.Node, podV4) == nil })
	if logs := agent.logs(); strings.Contains(logs, "backing off") || !strings.Contains(logs, "after=\"host route to "+podV4.String()+" deleted\"") {
		t.Errorf("the deleted route was not put back by a restore it called for, without a back-off:\n%s", logs)
	}
}

// TestAgentHearsAfterAFlood: a flush of thousands of our host routes while
// the agent is busy (stopped) overflows no event socket of its (64 MiB
// each); one that overflows anyway (given 64 KiB here) is subscribed anew,
// said in the log: either way the pod's routes come back, and so does one
// deleted alone afterwards.
func TestAgentHearsAfterAFlood(t *testing.T) {
	for _, tc := range []struct {
		name     string
		flags    []string
		overflow bool
	}{
		{"with its own buffers", nil, false},
		{"with buffers the flood overflows", []string{"-event-buffer", "65536"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sb, _, _ := wholeChainNode(t, "flooded", false)
			// 4000 routes of protocol 197 that no record claims (ip route
			// flush deletes them with the pod's, one event each).
			var batch strings.Builder
			for i := range 4000 {
				fmt.Fprintf(&batch, "route add 10.201.%d.%d/32 dev eno1 proto 197 scope link\n", i/250, i%250+1)
			}
			file := filepath.Join(t.TempDir(), "routes")
			if err := os.WriteFile(file, []byte(batch.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			sandbox.MustRun(t, sb.Node, "ip", "-batch", file)
			agent := settledAgent(t, sb, tc.flags...)
			reachable := func() bool { return sandbox.Ping(sb.Node, podV4) == nil }
			agent.pause(t)
			sandbox.MustRun(t, sb.Node, "ip", "route", "flush", "proto", "197")
			agent.resume(t)
			waitFor(t, "the node to reach the pod again after the flood", reachable)
			sandbox.MustRun(t, sb.Node, "ip", "route", "del", podV4.String()+"/32", "dev", "eno1.host")
			waitFor(t, "the node to reach the pod again after its route alone was deleted", reachable)
			logs := agent.logs()
			if lost := strings.Contains(logs, "netlink events lost"); lost != tc.overflow {
				t.Errorf("the log says netlink events were lost: %v, want %v:\n%s", lost, tc.overflow, logs)
			}
			if strings.Contains(logs, "level=ERROR") {
				t.Errorf("the agent logged errors:\n%s", logs)
			}
		})
	}
}

// TestAgentCanaryLeavesLegacyAlone: on a node whose pods use iptables-nft,
// the agent's iptables-legacy canary creates nothing in legacy: its nat
// table stays absent (once there, every iptables-nft command on the node
// warns of legacy tables present).
func TestAgentCanaryLeavesLegacyAlone(t *testing.T) {
	for _, shape := range []agentShape{onTheNode, asTheDaemonSet} {
		t.Run(string(shape), func(t *testing.T) {
			sb, _, _ := wholeChainNode(t, "nft-only", true)
			legacyNAT := func() bool {
				out, _ := sandbox.Run(sb.Node, nil, "cat", "/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")
				return slices.Contains(strings.Fields(out), "nat")
			}
			if legacyNAT() {
				t.Fatal("iptables-legacy's nat table exists before the agent runs: the test proves nothing")
			}
			agent := startAgentAs(t, sb, shape, "-canary-every", "50ms")
			// Twenty looks at the canary, at least.
			time.Sleep(time.Second)
			if legacyNAT() {
				t.Errorf("the agent's canary created iptables-legacy's nat table:\n%s", agent.logs())
			}
		})
	}
}
