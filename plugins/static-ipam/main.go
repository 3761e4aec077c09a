// Command static-ipam is a CNI IPAM plugin that hands out the addresses,
// routes and DNS settings it is given: in the config, by the runtime
// (capability "ips"), by the args convention ("args.cni.ips") or in CNI_ARGS.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/buildinfo"
	"github.com/cnichain/plugins/plugins/static-ipam/static"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    static.Add,
		Del:    static.Del,
		Check:  static.Check,
		GC:     static.GC,
		Status: static.Status,
	}, version.All, buildinfo.About("static-ipam"))
}
