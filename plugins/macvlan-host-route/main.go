// Command macvlan-host-route, chained after macvlan, lets the node and its
// macvlan pods reach each other: it keeps a bridge-mode macvlan sub-device
// of the master on the node and a host route to each pod IP through it.
// `macvlan-host-route restore` puts back, from its records, what a network
// manager took away.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/buildinfo"
	"github.com/cnichain/plugins/plugins/macvlan-host-route/hostroute"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "restore" {
		os.Exit(hostroute.RestoreMain(os.Args[2:], os.Stdout, os.Stderr))
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    hostroute.Add,
		Del:    hostroute.Del,
		Check:  hostroute.Check,
		GC:     hostroute.GC,
		Status: hostroute.Status,
	}, version.All, buildinfo.About("macvlan-host-route"))
}
