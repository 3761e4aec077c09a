// Command multinic is a meta plugin for multi-NIC pods with fixed addresses
// (the Dockin system): it asks a resource manager over HTTP which networks
// a pod gets and with which addresses, and delegates each network to its
// main plugin with static-ipam as the IPAM.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/buildinfo"
	"github.com/cnichain/plugins/plugins/multinic/multinic"
)

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    multinic.Add,
		Del:    multinic.Del,
		Check:  multinic.Check,
		GC:     multinic.GC,
		Status: multinic.Status,
	}, version.All, buildinfo.About("multinic"))
}
