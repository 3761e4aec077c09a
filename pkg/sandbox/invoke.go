package sandbox

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/plugins/pkg/ns"
)

// Invocation is one direct call of a plugin, as a runtime makes it.
type Invocation struct {
	Command     string // ADD, DEL, CHECK, GC, STATUS
	ContainerID string
	NetNS       string
	IfName      string
	CNIArgs     string
}

// Invoke runs plugin with conf on stdin inside the node namespace and
// returns its stdout. A failing plugin's error comes back as the
// *types.Error it printed.
func (sb *Sandbox) Invoke(t testing.TB, plugin string, conf []byte, inv Invocation) ([]byte, error) {
	t.Helper()
	bin := Plugins(t)
	args := &invoke.Args{
		Command: inv.Command, ContainerID: inv.ContainerID, NetNS: inv.NetNS,
		IfName: inv.IfName, PluginArgsStr: inv.CNIArgs, Path: bin,
	}
	var out []byte
	err := sb.Node.Do(func(ns.NetNS) error {
		var err error
		out, err = (&invoke.RawExec{}).ExecPlugin(context.Background(), filepath.Join(bin, plugin), conf, args.AsEnv())
		return err
	})
	return out, err
}
