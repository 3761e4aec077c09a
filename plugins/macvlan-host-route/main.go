// Command macvlan-host-route, chained after macvlan, lets the node and its
// macvlan pods reach each other: it keeps a bridge-mode macvlan sub-device
// of the master on the node and a host route to each pod IP through it.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/buildinfo"
	"github.com/cnichain/plugins/plugins/macvlan-host-route/hostroute"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    hostroute.Add,
		Del:    hostroute.Del,
		Check:  hostroute.Check,
		GC:     hostroute.GC,
		Status: hostroute.Status,
	}, version.All, buildinfo.About("macvlan-host-route"))
}
