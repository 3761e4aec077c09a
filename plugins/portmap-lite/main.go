// Command portmap-lite, chained after a plugin that yields a container IP
// (bridge, ptp, macvlan), turns the runtime's portMappings into iptables
// DNAT and MASQUERADE rules: one iptables-restore per address family,
// recorded so that DEL and GC remove exactly what ADD installed.
// `portmap-lite restore` puts back, from those records, what a firewall
// reload took away.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/buildinfo"
	"github.com/cnichain/plugins/plugins/portmap-lite/portmap"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "restore" {
		os.Exit(portmap.RestoreMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    portmap.Add,
		Del:    portmap.Del,
		Check:  portmap.Check,
		GC:     portmap.GC,
		Status: portmap.Status,
	}, version.All, buildinfo.About("portmap-lite"))
}
