package sandbox

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Plugins returns a directory with our plugins and the reference peers
// pinned by go.mod's tool lines. `make test` builds them once and passes the
// directory in CNICHAIN_BIN; a bare `go test` builds them here, once per
// test binary, into a directory that Main removes.
func Plugins(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv("CNICHAIN_BIN"); dir != "" {
		return dir
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "cnichain-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "tool", "github.com/cnichain/plugins/plugins/...")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// Main runs the tests of a package that uses Plugins and removes what it built.
func Main(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// Runtime is a container runtime in miniature: libcni with its cache in the
// sandbox, executing plugins inside the node namespace.
type Runtime struct {
	sb  *Sandbox
	CNI *libcni.CNIConfig
}

// Runtime returns a libcni runtime whose plugins come from Plugins(t). It
// is given its exec: libcni sets a missing one on first use, which races
// between the goroutines of a test that adds pods at once.
func (sb *Sandbox) Runtime(t testing.TB) *Runtime {
	run := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return &Runtime{sb: sb, CNI: libcni.NewCNIConfigWithCacheDir([]string{Plugins(t)}, filepath.Join(sb.Dir, "cache"), run)}
}

// Attachment names one pod's attachment to a network.
func Attachment(pod ns.NetNS, containerID, ifName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: containerID, NetNS: pod.Path(), IfName: ifName}
}

// Add runs ADD of list for rt inside the node namespace.
func (r *Runtime) Add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (res types.Result, err error) {
	err = r.sb.Node.Do(func(ns.NetNS) error {
		res, err = r.CNI.AddNetworkList(context.Background(), list, rt)
		return err
	})
	return res, err
}

// Check runs CHECK of list for rt inside the node namespace.
func (r *Runtime) Check(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return r.sb.Node.Do(func(ns.NetNS) error { return r.CNI.CheckNetworkList(context.Background(), list, rt) })
}

// Del runs DEL of list for rt inside the node namespace.
func (r *Runtime) Del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return r.sb.Node.Do(func(ns.NetNS) error { return r.CNI.DelNetworkList(context.Background(), list, rt) })
}

// GC runs GC of list inside the node namespace.
func (r *Runtime) GC(list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	return r.sb.Node.Do(func(ns.NetNS) error {
		return r.CNI.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// Status runs STATUS of list inside the node namespace.
func (r *Runtime) Status(list *libcni.NetworkConfigList) error {
	return r.sb.Node.Do(func(ns.NetNS) error { return r.CNI.GetStatusNetworkList(context.Background(), list) })
}

// Cnitool runs `cnitool <command> <network> <pod>` the way the source
// documents do, inside the node namespace and inside a private mount
// namespace whose /var/lib/cni is the sandbox's own directory, so cnitool's
// cache (and host-local's leases) never touch the machine's. env adds
// variables such as CAP_ARGS or CNI_ARGS.
func (sb *Sandbox) Cnitool(t testing.TB, netconfDir, command, network string, pod ns.NetNS, env ...string) (string, error) {
	t.Helper()
	bin := Plugins(t)
	state := filepath.Join(sb.Dir, "var-lib-cni")
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	// The mount point must exist; an empty /var/lib/cni is all this leaves.
	if err := os.MkdirAll("/var/lib/cni", 0o755); err != nil {
		t.Fatal(err)
	}
	script := `mount --bind "$1" /var/lib/cni && shift && exec "$@"`
	args := []string{"--mount", "--propagation", "private", "sh", "-c", script, "sh", state,
		filepath.Join(bin, "cnitool"), command, network, pod.Path()}
	env = append(os.Environ(), append([]string{"CNI_PATH=" + bin, "NETCONFPATH=" + netconfDir}, env...)...)
	out, err := Run(sb.Node, env, "unshare", args...)
	return strings.TrimSpace(out), err
}
