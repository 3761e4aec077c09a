package portmap

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/chain"
	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/hostnet"
	"github.com/cnichain/plugins/pkg/iptbatch"
	"github.com/cnichain/plugins/pkg/nat"
)

const prevHint = "chain portmap-lite after a plugin that yields the container's IP, such as bridge"

// record is what an attachment's ADD installed, saved before it installs
// anything so that DEL and GC can always find and remove it.
type record struct {
	attachstate.Key
	Plan
	// Backend and IptablesFlavour are what installed the rules; DEL, CHECK
	// and restore use them whatever the configuration says now. Records of
	// earlier releases have no flavour (nil).
	Backend         string  `json:"backend"`
	IptablesFlavour *string `json:"iptablesFlavour,omitempty"`
	// Netns is the pod's, so that a restore can tell a pod that is gone.
	Netns string `json:"netns,omitempty"`
	// RandomFully is what the node's iptables supported at ADD, so that
	// CHECK rebuilds the same rules.
	RandomFully bool `json:"randomFully,omitempty"`
	// Added is when ADD ran: a restore puts attachments back in that order,
	// so the first pod to map a port keeps it (iptables).
	Added time.Time `json:"added,omitzero"`
}

// planTargets are the pod addresses of the record's plan with the
// masquerade decisions ADD made for them, so that CHECK rebuilds the same
// plan without asking the node again.
func (rec *record) planTargets() []Target {
	var out []Target
	for _, fp := range rec.Families {
		out = append(out, Target{IP: fp.PodIP, RepliesViaNode: !fp.MasqAll})
	}
	return out
}

// PodNetns and Describe are what a restore needs of a record.
func (rec *record) PodNetns() string { return rec.Netns }
func (rec *record) Describe(name string) string {
	return fmt.Sprintf("%s (network %q, container %s)", name[:nat.HashLen], rec.Network, rec.ContainerID)
}

// backend is the one that installed rec's rules.
func (rec *record) backend(cfg *Config) nat.Backend {
	return nat.BackendFor(rec.backendName(), rec.flavour(cfg.IptablesFlavour))
}

// flavour is the iptables flavour rec's rules were installed with; for a
// record of a release that did not keep it, unknown, as then.
func (rec *record) flavour(unknown string) string {
	if rec.IptablesFlavour == nil {
		return unknown
	}
	return *rec.IptablesFlavour
}

// backendName is rec's backend; records of the first release have none.
func (rec *record) backendName() string {
	if rec.Backend == "" {
		return BackendIPTables
	}
	return rec.Backend
}

func setup(args *skel.CmdArgs) (*Config, attachstate.Key, attachstate.Store, error) {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return nil, attachstate.Key{}, attachstate.Store{}, err
	}
	key := attachstate.Key{Network: cfg.Name, ContainerID: args.ContainerID, IfName: args.IfName}
	return cfg, key, attachstate.Store{Dir: cfg.StateDir}, nil
}

// Add installs the attachment's port mappings and passes prevResult on. A
// request without portMappings installs nothing and runs no process.
func Add(args *skel.CmdArgs) (err error) {
	cfg, key, store, err := setup(args)
	if err != nil {
		return err
	}
	prev, err := chain.RequirePrevResult(&cfg.PluginConf, prevHint)
	if err != nil {
		return err
	}
	unlock, err := store.HoldAgainstRestore()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	defer unlock()
	// A repeated ADD replaces what the earlier one installed.
	if err := removeRecorded(cfg, store, key); err != nil {
		return cnierr.Internal("remove the earlier ADD's rules", err)
	}
	if len(cfg.Mappings) == 0 {
		return chain.Print(prev, cfg.CNIVersion)
	}
	targets, err := findTargets(cfg, prev)
	if err != nil {
		return err
	}
	cfg.RandomFully = randomFully(cfg)
	plan, err := Build(cfg, key, targets)
	if err != nil {
		return cnierr.InvalidConfig("runtimeConfig.portMappings", "hostIP", err.Error())
	}
	rec := record{Key: key, Plan: *plan, Backend: cfg.Backend, IptablesFlavour: &cfg.IptablesFlavour, Netns: args.Netns, RandomFully: cfg.RandomFully, Added: time.Now()}
	if err := store.Save(key.ID(), rec); err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	log, closeLog := cfg.Open("network", cfg.Name, "containerID", args.ContainerID, "verb", "ADD")
	defer closeLog()
	defer func() {
		if err != nil {
			log.Error("add failed, removing what was installed", "error", err)
			_ = removeRecorded(cfg, store, key)
		}
	}()
	be := rec.backend(cfg)
	defer be.Close()
	for i := range plan.Families {
		fp := &plan.Families[i]
		if err := be.Install(fp); err != nil {
			return cnierr.Internal(fmt.Sprintf("install %s port mappings", fp.Family), err)
		}
		if fp.Localnet {
			err := hostnet.EnableRouteLocalnet(fp.PodIP)
			switch {
			case errors.Is(err, hostnet.ErrNoRoute):
				// Nothing on the node reaches the pod (macvlan without
				// macvlan-host-route): 127.0.0.1 cannot be forwarded either.
				fmt.Fprintf(os.Stderr, "portmap-lite: %v: 127.0.0.1:hostPort will not reach the pod\n", err)
			case err != nil:
				return cnierr.Internal("route_localnet towards "+fp.PodIP.String(), err)
			}
		}
		flushUDP(plan.UDPPorts, fp.Family)
		log.Info("installed", "family", fp.Family, "backend", cfg.Backend, "chain", fp.DNATChain, "podIP", fp.PodIP, "mappings", len(fp.Maps))
	}
	return chain.Print(prev, cfg.CNIVersion)
}

// findTargets are the container addresses of prev and, unless masqAll is
// set, whether each one's gateway is an address of this node.
func findTargets(cfg *Config, prev *current.Result) ([]Target, error) {
	ips := chain.ContainerAddrs(prev)
	if len(ips) == 0 {
		return nil, cnierr.InvalidConfig("prevResult.ips", "[]", "no container address to forward to")
	}
	targets := make([]Target, len(ips))
	for i, ip := range ips {
		targets[i].IP = ip
		if cfg.MasqAll != nil {
			continue
		}
		if gw := chain.Gateway(prev, ip); gw.IsValid() {
			local, err := hostnet.IsLocal(gw)
			if err != nil {
				return nil, cnierr.Internal("list the node's addresses", err)
			}
			targets[i].RepliesViaNode = local
		}
	}
	return targets, nil
}

// randomFully tells whether MASQUERADE rules of cfg's backend take
// --random-fully on this node (nftables says fully-random in its own way).
func randomFully(cfg *Config) bool {
	return cfg.Backend == BackendIPTables && iptbatch.Runner{Flavour: cfg.IptablesFlavour}.Features(cfg.StateDir).RandomFully
}

// Del removes exactly what the attachment's ADD installed, found by its
// record, whether or not the request carries portMappings or a prevResult.
// An attachment without a record has nothing installed: no process runs.
func Del(args *skel.CmdArgs) error {
	cfg, key, store, err := setup(args)
	if err != nil {
		return err
	}
	log, closeLog := cfg.Open("network", cfg.Name, "containerID", args.ContainerID, "verb", "DEL")
	defer closeLog()
	unlock, err := store.HoldAgainstRestore()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	defer unlock()
	if err := removeRecorded(cfg, store, key); err != nil {
		log.Error("remove", "error", err)
		return cnierr.Internal("remove port mappings", err)
	}
	log.Debug("removed")
	return nil
}

// removeRecorded removes what the attachment's record says its ADD
// installed, and the record. A torn record (moved aside by Load) leaves
// what the key alone names: the attachment's chains, in both families, of
// the configured backend.
func removeRecorded(cfg *Config, store attachstate.Store, key attachstate.Key) error {
	var rec record
	found, err := store.Load(key.ID(), &rec)
	if attachstate.IsTorn(err) {
		fmt.Fprintf(os.Stderr, "portmap-lite: %v; removing the chains the attachment's key names\n", err)
		chains := []string{nat.DNATChainName(key), nat.SNATChainName(key)}
		var errs []error
		for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
			errs = append(errs, nat.RemoveChains(cfg.Backend, cfg.IptablesFlavour, fam, chains))
		}
		if err := errors.Join(errs...); err != nil {
			return err
		}
		return store.Delete(key.ID())
	}
	if err != nil || !found {
		return err
	}
	be := rec.backend(cfg)
	defer be.Close()
	for i := range rec.Families {
		fp := &rec.Families[i]
		if err := be.Uninstall(fp); err != nil {
			return err
		}
		flushUDP(rec.UDPPorts, fp.Family)
	}
	return store.Delete(key.ID())
}

// Check fails when a rule of the attachment is missing: those the request's
// portMappings call for, or, without any, those its ADD recorded.
func Check(args *skel.CmdArgs) error {
	cfg, key, store, err := setup(args)
	if err != nil {
		return err
	}
	prev, err := chain.RequirePrevResult(&cfg.PluginConf, prevHint)
	if err != nil {
		return err
	}
	var rec record
	found, err := store.Load(key.ID(), &rec)
	if attachstate.IsTorn(err) {
		fmt.Fprintf(os.Stderr, "portmap-lite: %v; checking the request's portMappings\n", err)
	} else if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	plan := &rec.Plan
	if len(cfg.Mappings) > 0 {
		// What ADD decided, from its record; without one, decide now.
		targets, random := rec.planTargets(), rec.RandomFully
		if !found {
			if targets, err = findTargets(cfg, prev); err != nil {
				return err
			}
			random = randomFully(cfg)
		}
		cfg.RandomFully = random
		wanted, err := Build(cfg, key, targets)
		if err != nil {
			return cnierr.InvalidConfig("runtimeConfig.portMappings", "hostIP", err.Error())
		}
		// The same mappings as recorded: check what was installed, in the
		// layout of the release that installed it.
		if !found || !sameMappings(wanted, plan) {
			plan = wanted
		}
	} else if !found {
		return nil
	}
	if !found {
		rec.Backend, rec.IptablesFlavour = cfg.Backend, &cfg.IptablesFlavour
	}
	be := rec.backend(cfg)
	defer be.Close()
	for i := range plan.Families {
		fp := &plan.Families[i]
		what, missing, err := be.Missing(fp)
		if err != nil {
			return cnierr.Internal("read "+fp.Family.String()+" rules", err)
		}
		if missing {
			return cnierr.CheckFailed("%s rule missing: %s", fp.Family, what)
		}
	}
	return nil
}

// sameMappings reports whether a and b map the same ports in the same families.
func sameMappings(a, b *Plan) bool {
	return slices.EqualFunc(a.Families, b.Families, func(x, y nat.FamilyPlan) bool {
		return x.Family == y.Family && x.PodIP == y.PodIP && slices.Equal(x.Maps, y.Maps)
	})
}

// GC removes the rules of this network's attachments that are not in
// cni.dev/valid-attachments, then any attachment chain of this network (of
// the configured backend and flavour, told by its rules' comment) that no
// record accounts for: a crash between two steps, a lost state directory.
// What other networks installed, from whatever state directory or runtime,
// it leaves alone, and so chains whose comment names no network. It goes
// on past errors and reports them all.
func GC(args *skel.CmdArgs) error {
	cfg, _, store, err := setup(args)
	if err != nil {
		return err
	}
	unlock, err := store.HoldAgainstRestore()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	defer unlock()
	// Chains first, records second: ADD saves its record before its rules,
	// so every chain listed here has its record by the time we read them.
	chains, errs := attachmentChains(cfg)
	names, err := store.Names()
	if err != nil {
		return cnierr.Internal("state "+cfg.StateDir, err)
	}
	// A valid attachment's chains are never orphans, whether or not its
	// record can be read.
	accounted := map[string]bool{}
	for _, v := range cfg.ValidAttachments {
		accounted[attachstate.Key{Network: cfg.Name, ContainerID: v.ContainerID, IfName: v.IfName}.ID()[:nat.HashLen]] = true
	}
	for _, name := range names {
		if !attachstate.IsKeyID(name) {
			continue // another plugin's file, in a shared stateDir
		}
		var rec record
		found, err := store.Load(name, &rec)
		if attachstate.IsTorn(err) {
			fmt.Fprintf(os.Stderr, "portmap-lite: %v\n", err)
			if !accounted[name[:nat.HashLen]] {
				// Not a valid attachment: its chains, unaccounted, go below
				// if they are this network's, and nothing is left to DEL.
				errs = append(errs, store.Delete(name))
			}
			continue
		}
		if err != nil || !found {
			errs = append(errs, err)
			continue
		}
		accounted[rec.ID()[:nat.HashLen]] = true
		if rec.Network == cfg.Name && !rec.In(cfg.ValidAttachments) {
			errs = append(errs, removeRecorded(cfg, store, rec.Key))
		}
	}
	for fam, list := range chains {
		var orphans []string
		for _, c := range list {
			if id, _ := nat.IsAttachmentChain(c.Name); !accounted[id] && c.Network == cfg.Name {
				orphans = append(orphans, c.Name)
			}
		}
		errs = append(errs, nat.RemoveChains(cfg.Backend, cfg.IptablesFlavour, fam, orphans))
	}
	if err := errors.Join(errs...); err != nil {
		log, closeLog := cfg.Open("network", cfg.Name, "verb", "GC")
		defer closeLog()
		log.Error("gc", "error", err)
		return cnierr.Internal("gc", err)
	}
	return nil
}

// attachmentChains lists the attachment chains of the configured backend, per family.
func attachmentChains(cfg *Config) (map[iptbatch.Family][]nat.AttachmentChain, []error) {
	out := map[iptbatch.Family][]nat.AttachmentChain{}
	var errs []error
	for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
		list, err := nat.AttachmentChains(cfg.Backend, cfg.IptablesFlavour, fam)
		errs = append(errs, err)
		out[fam] = list
	}
	return out, errs
}

// Status fails while the configured backend cannot work: the iptables
// binaries missing, or nftables not answering.
func Status(args *skel.CmdArgs) error {
	cfg, _, _, err := setup(args)
	if err != nil {
		return err
	}
	if cfg.Backend == BackendNFTables {
		if _, err := nat.AttachmentChains(BackendNFTables, "", iptbatch.IPv4); err != nil {
			return cnierr.Unavailable("nftables: %v", err)
		}
		return nil
	}
	ipt := iptbatch.Runner{Flavour: cfg.IptablesFlavour}
	for _, fam := range []iptbatch.Family{iptbatch.IPv4, iptbatch.IPv6} {
		if err := ipt.Status(fam); err != nil {
			return cnierr.Unavailable("%v (install iptables; iptablesFlavour %q)", err, cfg.IptablesFlavour)
		}
	}
	return nil
}

// flushUDP drops stale UDP flows to the mapped host ports. Failing to is
// not fatal (a kernel without conntrack has none), so it is only logged.
func flushUDP(ports []uint16, fam iptbatch.Family) {
	if err := hostnet.FlushUDPConntrack(ports, fam == iptbatch.IPv6); err != nil {
		fmt.Fprintf(os.Stderr, "portmap-lite: flush UDP conntrack for ports %v: %v\n", ports, err)
	}
}
