package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/sandbox"
)

func TestMain(m *testing.M) { sandbox.Main(m) }

// rm is a resource manager stand-in listening on loopback inside the node
// namespace, answering what the test sets.
type rm struct {
	mu     sync.Mutex
	status int
	body   string
	asked  []string // the query strings it was asked
	url    string
	ln     net.Listener
}

func startRM(t *testing.T, sb *sandbox.Sandbox) *rm {
	t.Helper()
	r := &rm{status: 200}
	r.ln = sandbox.ServeHTTP(t, sb.Node, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.asked = append(r.asked, req.URL.RawQuery)
		w.WriteHeader(r.status)
		fmt.Fprint(w, r.body)
	}))
	r.url = "http://" + r.ln.Addr().String() + "/rmController/getPodMultiNetwork"
	return r
}

func (r *rm) answer(status int, body string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status, r.body = status, body
}

func answer(nets ...string) string {
	return `{"code":0,"reqId":"1234","message":"success","data":[` + strings.Join(nets, ",") + `]}`
}

const (
	eth0 = `{"type":"test","podIp":"192.168.1.2","subnetMask":"255.255.255.0","gateway":"192.168.1.1","ifName":"eth0","master":true}`
	net0 = `{"type":"dockin","podIp":"192.168.2.2","subnetMask":"255.255.255.0","gateway":"192.168.2.1","ifName":"net0","master":false}`
)

// setupNetworks writes the delegate configurations of the source document
// (one bridge per network type) and returns multinic's list.
func setupNetworks(t *testing.T, sb *sandbox.Sandbox, backend string) *libcni.NetworkConfigList {
	t.Helper()
	dir := filepath.Join(sb.Dir, "multinic.d")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range map[string]string{
		"test.json":   `{"cniVersion":"0.4.0","name":"test","type":"bridge","bridge":"br0","isGateway":true}`,
		"dockin.json": `{"cniVersion":"0.3.1","name":"dockin","type":"bridge","bridge":"br1","isGateway":true}`,
		"broken.json": `{"cniVersion":"0.3.1","name":"broken","type":"bridge","bridge":"br2","vlan":5000}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sandbox.ListFromJSON(t, fmt.Sprintf(`{"cniVersion":"1.0.0","name":"dockin-cni","plugins":[{"type":"multinic",
		"confDir":%q,"backend":%q,"timeout":"10s","stateDir":%q,"logFile":%q,"logLevel":"debug"}]}`,
		dir, backend, filepath.Join(sb.Dir, "state"), filepath.Join(sb.Dir, "multinic.log")))
}

func podArgs(name string) [][2]string {
	return [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name}}
}

func TestTwoNetworks(t *testing.T) {
	sb := sandbox.New(t)
	r := startRM(t, sb)
	r.answer(200, answer(eth0, net0))
	rtm := sb.Runtime(t)
	list := setupNetworks(t, sb, r.url)
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "dockin-pod-1", "eth0")
	att.Args = podArgs("web 0&x")
	res, err := rtm.Add(list, att)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })

	t.Run("the RM was asked for the pod by name and namespace, URL-encoded", func(t *testing.T) {
		if len(r.asked) != 1 || r.asked[0] != "podName=web+0%26x&podNamespace=default" {
			t.Fatalf("RM asked %q", r.asked)
		}
	})
	t.Run("the pod has eth0 and net0 with exactly the RM's addresses", func(t *testing.T) {
		addrs := sandbox.MustRun(t, pod, "ip", "-o", "-4", "addr")
		for _, want := range []string{"eth0    inet 192.168.1.2/24", "net0    inet 192.168.2.2/24"} {
			if !strings.Contains(addrs, want) {
				t.Errorf("pod addresses lack %q:\n%s", want, addrs)
			}
		}
		if routes := sandbox.MustRun(t, pod, "ip", "route"); !strings.Contains(routes, "default via 192.168.1.1 dev eth0") {
			t.Errorf("pod routes lack the master's default route:\n%s", routes)
		}
	})
	t.Run("the result is the master's, with net0 listed too", func(t *testing.T) {
		data, _ := json.Marshal(res)
		out := string(data)
		if !strings.Contains(out, `"address":"192.168.1.2/24","gateway":"192.168.1.1"`) || !strings.Contains(out, `"address":"192.168.2.2/24"`) || !strings.Contains(out, `"name":"net0"`) {
			t.Fatalf("result %s", out)
		}
	})
	t.Run("the node reaches both NICs", func(t *testing.T) {
		for _, ip := range []string{"192.168.1.2", "192.168.2.2"} {
			if err := sandbox.Ping(sb.Node, netip.MustParseAddr(ip)); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("CHECK passes", func(t *testing.T) {
		if err := rtm.Check(list, att); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("logs go to logFile, never stdout", func(t *testing.T) {
		data, _ := os.ReadFile(filepath.Join(sb.Dir, "multinic.log"))
		if !strings.Contains(string(data), "delegated") || !strings.Contains(string(data), "containerID=dockin-pod-1") {
			t.Fatalf("log:\n%s", data)
		}
	})
	t.Run("DEL with the RM down removes both NICs, and a second DEL succeeds", func(t *testing.T) {
		r.answer(500, "down")
		r.ln.Close()
		if err := rtm.Del(list, att); err != nil {
			t.Fatal(err)
		}
		if out := sandbox.MustRun(t, pod, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
			t.Fatalf("pod links after DEL:\n%s", out)
		}
		if err := rtm.Del(list, att); err != nil {
			t.Fatalf("second DEL: %v", err)
		}
	})
}

func TestBadAnswersLeaveNothing(t *testing.T) {
	sb := sandbox.New(t)
	r := startRM(t, sb)
	rtm := sb.Runtime(t)
	list := setupNetworks(t, sb, r.url)
	tests := []struct {
		name     string
		status   int
		body     string
		wantCode uint
		wantMsg  string
	}{
		{"two masters", 200, answer(eth0, strings.Replace(net0, `"master":false`, `"master":true`, 1)), 101, "marked 2 networks master"},
		{"an unknown type", 200, answer(eth0, strings.Replace(net0, `"dockin"`, `"nosuch"`, 1)), types.ErrInvalidNetworkConfig, `no configuration for network type "nosuch"`},
		{"a bad IP", 200, answer(strings.Replace(eth0, "192.168.1.2", "192.168.1.256", 1)), 101, `data[0].podIp "192.168.1.256"`},
		{"the RM refuses", 200, `{"code":7,"reqId":"r9","message":"no such pod"}`, types.ErrTryAgainLater, `code 7, message "no such pod"`},
		{"the RM fails", 503, "busy", types.ErrTryAgainLater, "HTTP 503"},
		{"the RM does not know the URL", 404, "not found", 101, "HTTP 404"},
		{"a huge answer", 200, strings.Repeat(" ", 2<<20), 101, "larger than"},
		{"the second delegate fails after the first was added", 200, answer(eth0, strings.Replace(net0, `"dockin"`, `"broken"`, 1)), 999, `network "broken" (ifName net0): ADD`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r.answer(tt.status, tt.body)
			pod := sb.NewPod(t)
			att := sandbox.Attachment(pod, fmt.Sprintf("bad-%d", i), "eth0")
			att.Args = podArgs("web-1")
			_, err := rtm.Add(list, att)
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || (tt.wantCode != 999 && cniErr.Code != tt.wantCode) || !strings.Contains(cniErr.Msg, tt.wantMsg) {
				t.Fatalf("ADD error = %v, want code %d containing %q", err, tt.wantCode, tt.wantMsg)
			}
			if out := sandbox.MustRun(t, pod, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
				t.Errorf("pod links after a failed ADD:\n%s", out)
			}
			if out := sandbox.MustRun(t, sb.Node, "ip", "-o", "link", "show", "type", "veth"); strings.Count(out, "\n") != 1 {
				t.Errorf("node veths after a failed ADD (want the uplink only):\n%s", out)
			}
			if entries, _ := os.ReadDir(filepath.Join(sb.Dir, "state")); len(entries) > 1 { // the libcni cache dir
				t.Errorf("state left: %v", entries)
			}
		})
	}
	t.Run("the pod name is required", func(t *testing.T) {
		att := sandbox.Attachment(sb.NewPod(t), "noname", "eth0")
		_, err := rtm.Add(list, att)
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(cniErr.Msg, "K8S_POD_NAME") {
			t.Fatalf("ADD error = %v", err)
		}
	})
}

func TestGCAndStatus(t *testing.T) {
	sb := sandbox.New(t)
	r := startRM(t, sb)
	r.answer(200, answer(eth0, net0))
	rtm := sb.Runtime(t)
	list := setupNetworks(t, sb, r.url)
	list = sandbox.ListFromJSON(t, strings.Replace(string(list.Bytes), `"cniVersion":"1.0.0"`, `"cniVersion":"1.1.0"`, 1))
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "gc-pod", "eth0")
	att.Args = podArgs("web-2")
	if _, err := rtm.Add(list, att); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rtm.Del(list, att) })
	if err := rtm.Status(list); err != nil {
		t.Fatalf("STATUS with the RM up: %v", err)
	}
	if err := rtm.GC(list, []types.GCAttachment{{ContainerID: "gc-pod", IfName: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	if out := sandbox.MustRun(t, pod, "ip", "-o", "link"); !strings.Contains(out, "net0") {
		t.Fatalf("GC removed a valid attachment:\n%s", out)
	}
	if err := rtm.GC(list, nil); err != nil {
		t.Fatal(err)
	}
	if out := sandbox.MustRun(t, pod, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
		t.Fatalf("GC left the stale attachment's links:\n%s", out)
	}
	r.ln.Close()
	err := rtm.Status(list)
	if err == nil || !strings.Contains(err.Error(), "resource manager") {
		t.Fatalf("STATUS with the RM down = %v", err)
	}
}

// flakyBin is a plugin directory with every plugin of the sandbox and
// "flaky-bridge": bridge, whose ADD fails after doing its work, and whose
// first DEL fails; the DELs after it are bridge's.
func flakyBin(t *testing.T, sb *sandbox.Sandbox) string {
	t.Helper()
	dir := filepath.Join(sb.Dir, "flaky-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(sandbox.Plugins(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(sandbox.Plugins(t), e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	script := fmt.Sprintf(`#!/bin/sh
real=%s
case "$CNI_COMMAND" in
ADD) "$real" >/dev/null
     echo '{"cniVersion":"0.4.0","code":11,"msg":"flaky: ADD fails after bridge did its work"}'; exit 1;;
DEL) if [ ! -e %s ]; then
       touch %s
       echo '{"cniVersion":"0.4.0","code":11,"msg":"flaky: the first DEL fails"}'; exit 1
     fi
     exec "$real";;
*)   exec "$real";;
esac
`, filepath.Join(sandbox.Plugins(t), "bridge"), filepath.Join(sb.Dir, "flaky-del-failed"), filepath.Join(sb.Dir, "flaky-del-failed"))
	if err := os.WriteFile(filepath.Join(dir, "flaky-bridge"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestFailedDelegateKeepsTheRecord: the second delegate's ADD fails after
// creating its interface, and its DEL in the rollback fails too: the ADD
// fails with the delegate's error, the record stays, and the runtime's
// DEL after the failed ADD removes what both delegates left.
func TestFailedDelegateKeepsTheRecord(t *testing.T) {
	sb := sandbox.New(t)
	r := startRM(t, sb)
	r.answer(200, answer(eth0, strings.Replace(net0, `"dockin"`, `"flaky"`, 1)))
	rtm := sb.Runtime(t)
	list := setupNetworks(t, sb, r.url)
	flaky := `{"cniVersion":"0.4.0","name":"flaky","type":"flaky-bridge","bridge":"br3","isGateway":true}`
	if err := os.WriteFile(filepath.Join(sb.Dir, "multinic.d", "flaky.json"), []byte(flaky), 0o644); err != nil {
		t.Fatal(err)
	}
	list = sandbox.ListFromJSON(t, strings.Replace(string(list.Bytes), `"type":"multinic",`, fmt.Sprintf(`"type":"multinic","binDir":%q,`, flakyBin(t, sb)), 1))
	pod := sb.NewPod(t)
	att := sandbox.Attachment(pod, "flaky-pod", "eth0")
	att.Args = podArgs("web-3")
	_, err := rtm.Add(list, att)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != 11 || !strings.Contains(cniErr.Msg, `network "flaky" (ifName net0): ADD`) {
		t.Fatalf("ADD = %v, want the flaky delegate's error", err)
	}
	if _, err := os.Stat(filepath.Join(sb.Dir, "flaky-del-failed")); err != nil {
		t.Fatal("the rollback did not DEL the failed delegate")
	}
	if n := records(t, sb); n != 1 {
		t.Fatalf("%d records after the failed ADD whose rollback failed, want the attachment's", n)
	}
	if err := rtm.Del(list, att); err != nil {
		t.Fatalf("the runtime's DEL after the failed ADD: %v", err)
	}
	if out := sandbox.MustRun(t, pod, "ip", "-o", "link"); strings.Count(out, "\n") != 1 {
		t.Errorf("pod links after DEL (want lo only):\n%s", out)
	}
	if out := sandbox.MustRun(t, sb.Node, "ip", "-o", "link", "show", "type", "veth"); strings.Count(out, "\n") != 1 {
		t.Errorf("node veths after DEL (want the uplink only):\n%s", out)
	}
	if n := records(t, sb); n != 0 {
		t.Errorf("%d records after DEL", n)
	}
}

// TestGCPassedOnToDelegates: multinic loses an attachment's record (a
// state directory wiped); GC, passed on to the delegate networks, removes
// the interfaces the delegates still hold for it, and keeps a valid pod's
// and those of another multinic network's pod, which uses the same
// delegate networks (one confDir, one stateDir).
func TestGCPassedOnToDelegates(t *testing.T) {
	sb := sandbox.New(t)
	r := startRM(t, sb)
	r.answer(200, answer(eth0, net0))
	rtm := sb.Runtime(t)
	list := setupNetworks(t, sb, r.url)
	list = sandbox.ListFromJSON(t, strings.Replace(string(list.Bytes), `"cniVersion":"1.0.0"`, `"cniVersion":"1.1.0"`, 1))
	other := sandbox.ListFromJSON(t, strings.Replace(string(list.Bytes), `"name":"dockin-cni"`, `"name":"dockin-cni-b"`, 1))
	pods := map[string]ns.NetNS{}
	for id, in := range map[string]*libcni.NetworkConfigList{"kept": list, "lost": list, "other": other} {
		pods[id] = sb.NewPod(t)
		att := sandbox.Attachment(pods[id], id, "eth0")
		att.Args = podArgs("web-" + id)
		if _, err := rtm.Add(in, att); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = rtm.Del(in, att) })
	}
	lost := attachstate.Key{Network: "dockin-cni", ContainerID: "lost", IfName: "eth0"}.ID()
	if err := os.Remove(filepath.Join(sb.Dir, "state", lost)); err != nil {
		t.Fatalf("remove lost's record: %v", err)
	}
	if err := rtm.GC(list, []types.GCAttachment{{ContainerID: "kept", IfName: "eth0"}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	links := func(id string) int { return strings.Count(sandbox.MustRun(t, pods[id], "ip", "-o", "link"), "\n") }
	if n := links("lost"); n != 1 {
		t.Errorf("the lost attachment's pod has %d links after GC, want lo only", n)
	}
	if n := links("kept"); n != 3 {
		t.Errorf("the valid pod has %d links after GC, want lo, eth0 and net0", n)
	}
	if n := links("other"); n != 3 {
		t.Errorf("the other multinic network's pod has %d links after GC, want lo, eth0 and net0", n)
	}
}

// records counts multinic's attachment records in the sandbox.
func records(t *testing.T, sb *sandbox.Sandbox) int {
	t.Helper()
	names, err := attachstate.Store{Dir: filepath.Join(sb.Dir, "state")}.Names()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, name := range names {
		if attachstate.IsKeyID(name) {
			n++
		}
	}
	return n
}
