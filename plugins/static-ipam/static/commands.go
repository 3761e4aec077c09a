package static

import (
	"encoding/json"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/chain"
	"github.com/cnichain/plugins/pkg/cnierr"
)

// Add prints the result for the attachment's addresses, routes and DNS.
func Add(args *skel.CmdArgs) error {
	cfg, err := Parse(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	log, closeLog := cfg.Log.Open("network", cfg.Name, "containerID", args.ContainerID, "verb", "ADD")
	defer closeLog()
	if len(cfg.Ignored) > 0 {
		log.Debug("lower-precedence inputs ignored", "source", cfg.Source, "ignored", cfg.Ignored)
	}
	for _, a := range cfg.Addresses {
		log.Info("address", "address", a.Prefix, "gateway", a.Gateway, "source", cfg.Source)
	}
	return chain.Print(Result(cfg), cfg.CNIVersion)
}

// Del succeeds always: a static IPAM holds nothing to release.
func Del(*skel.CmdArgs) error { return nil }

// GC succeeds always, for the same reason as Del.
func GC(*skel.CmdArgs) error { return nil }

// Status reports ready: static-ipam depends on nothing outside its input.
func Status(*skel.CmdArgs) error { return nil }

// Check verifies that the result of ADD (prevResult) still carries every
// address this configuration hands out, with its gateway, and every route.
func Check(args *skel.CmdArgs) error {
	cfg, err := Parse(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	var conf types.PluginConf
	if err := json.Unmarshal(args.StdinData, &conf); err != nil {
		return cnierr.Decode("network configuration", err)
	}
	prev, err := chain.RequirePrevResult(&conf, "CHECK compares against the result of ADD")
	if err != nil {
		return err
	}
	return Verify(cfg, prev)
}
