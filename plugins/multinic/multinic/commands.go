package multinic

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/chain"
	"github.com/cnichain/plugins/pkg/cniargs"
	"github.com/cnichain/plugins/pkg/cnierr"
)

// record is the plan of an attachment's ADD: each network and the exact
// delegate list it was added with, so DEL never needs the RM again.
type record struct {
	attachstate.Key
	Networks []delegated `json:"networks"`
}

type delegated struct {
	Network
	List string `json:"list"`
	// AddError is the delegate's error when its ADD failed (see refusedAlike).
	AddError *types.Error `json:"addError,omitempty"`
}

// podArgs are the CNI_ARGS keys runtimes send that we read.
var podArgs = []string{"K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}

type attachment struct {
	cfg   *Config
	key   attachstate.Key
	store attachstate.Store
	cni   *libcni.CNIConfig
	args  *skel.CmdArgs
}

func setup(args *skel.CmdArgs) (*attachment, error) {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	bin := filepath.SplitList(args.Path)
	if cfg.BinDir != "" {
		bin = []string{cfg.BinDir}
	}
	return &attachment{
		cfg:   cfg,
		key:   attachstate.Key{Network: cfg.Name, ContainerID: args.ContainerID, IfName: args.IfName},
		store: attachstate.Store{Dir: cfg.StateDir, Durable: true},
		cni:   libcni.NewCNIConfigWithCacheDir(bin, filepath.Join(cfg.StateDir, "cache"), nil),
		args:  args,
	}, nil
}

// setupWithRecord is setup and the attachment's record, nil when it has none.
func setupWithRecord(args *skel.CmdArgs) (*attachment, *record, error) {
	a, err := setup(args)
	if err != nil {
		return nil, nil, err
	}
	var rec record
	found, err := a.store.Load(a.key.ID(), &rec)
	if attachstate.IsTorn(err) {
		// Moved aside: which delegates the ADD ran cannot be known.
		fmt.Fprintf(os.Stderr, "multinic: %v; its networks' DEL cannot be run\n", err)
		log, closeLog := a.cfg.Open("network", a.cfg.Name, "containerID", args.ContainerID)
		log.Error("torn record", "error", err)
		closeLog()
		return a, nil, nil
	}
	if err != nil {
		return nil, nil, cnierr.Internal("state "+a.cfg.StateDir, err)
	}
	if !found {
		return a, nil, nil
	}
	return a, &rec, nil
}

// runtimeConf is the delegate call for network n: its ifName, and the
// runtime's CNI_ARGS without the address keys, which would override the
// address we give static-ipam.
func (a *attachment) runtimeConf(n Network) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: a.args.ContainerID, NetNS: a.args.Netns, IfName: n.IfName,
		Args:           [][2]string{{"IgnoreUnknown", "1"}},
		CapabilityArgs: map[string]any{ownerCapability: a.cfg.Name}}
	for _, pair := range strings.Split(a.args.Args, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "IP" || k == "GATEWAY" || strings.EqualFold(k, "IgnoreUnknown") {
			continue
		}
		rt.Args = append(rt.Args, [2]string{k, v})
	}
	return rt
}

// Add asks the RM for the pod's networks and delegates each; a failure
// part-way removes the networks already added.
func Add(args *skel.CmdArgs) (err error) {
	a, err := setup(args)
	if err != nil {
		return err
	}
	log, closeLog := a.cfg.Open("network", a.cfg.Name, "containerID", args.ContainerID, "verb", "ADD")
	defer closeLog()
	env, err := cniargs.Parse(args.Args, podArgs...)
	if err != nil {
		return err
	}
	if env["K8S_POD_NAME"] == "" {
		return cnierr.InvalidEnv("CNI_ARGS K8S_POD_NAME", "", "multinic asks the resource manager by pod name")
	}
	client, err := NewClient(a.cfg)
	if err != nil {
		return err
	}
	ctx := context.Background()
	nets, err := client.Networks(ctx, env["K8S_POD_NAME"], env["K8S_POD_NAMESPACE"])
	if err != nil {
		log.Error("resource manager", "pod", env["K8S_POD_NAME"], "error", err)
		return err
	}
	rec := record{Key: a.key}
	for _, n := range nets {
		base, err := LoadDelegate(a.cfg.ConfDir, n.Type)
		if err != nil {
			return err
		}
		list, err := WithIPAM(base, a.cfg.IPAMType, n)
		if err != nil {
			return cnierr.InvalidConfig("confDir "+n.Type, a.cfg.ConfDir, err.Error())
		}
		rec.Networks = append(rec.Networks, delegated{Network: n, List: string(list)})
	}
	if err := a.store.Save(a.key.ID(), rec); err != nil {
		return cnierr.Internal("state "+a.cfg.StateDir, err)
	}
	var results []*current.Result
	for i, d := range rec.Networks {
		res, err := a.addOne(ctx, d)
		if err != nil {
			log.Error("delegate", "type", d.Type, "ifName", d.IfName, "error", err)
			// The failed delegate may have done part of its work: it is
			// deleted with the others. Should any DEL fail, the record
			// stays, and the runtime's DEL after this failed ADD (or GC)
			// runs them all again.
			var cniErr *types.Error
			if errors.As(err, &cniErr) {
				rec.Networks[i].AddError = cniErr
			}
			if derr := a.delete(ctx, rec.Networks[:i+1]); derr != nil {
				log.Error("rollback, the record is kept for the runtime's DEL", "error", derr)
				if serr := a.store.Save(a.key.ID(), rec); serr != nil {
					log.Error("record", "error", serr)
				}
			}
			return delegateError("ADD", d.Network, err)
		}
		log.Info("delegated", "type", d.Type, "ifName", d.IfName, "address", d.Address)
		results = append(results, res)
	}
	// Results before 0.3.0 hold one IPv4 address: they carry the master's alone.
	if ok, _ := version.GreaterThanOrEqualTo(a.cfg.CNIVersion, "0.3.0"); !ok {
		return chain.Print(results[0], a.cfg.CNIVersion)
	}
	return chain.Print(Merge(results[0], results[1:]), a.cfg.CNIVersion)
}

func (a *attachment) addOne(ctx context.Context, d delegated) (*current.Result, error) {
	list, err := libcni.ConfListFromBytes([]byte(d.List))
	if err != nil {
		return nil, err
	}
	res, err := a.cni.AddNetworkList(ctx, list, a.runtimeConf(d.Network))
	if err != nil {
		return nil, err
	}
	return chain.FromPlugin(res, "the result of network "+d.Type)
}

// delete runs DEL of each network, last first, going on past failures; the
// record goes only when all succeeded, so a retried DEL finishes the job.
func (a *attachment) delete(ctx context.Context, nets []delegated) error {
	var errs []error
	for i := len(nets) - 1; i >= 0; i-- {
		if err := a.delOne(ctx, nets[i]); err != nil && !refusedAlike(nets[i], err) {
			errs = append(errs, delegateError("DEL", nets[i].Network, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return a.store.Delete(a.key.ID())
}

// refusedAlike reports whether a delegate of one plugin, whose ADD failed,
// failed its DEL with the very same error: it refused its configuration
// on both verbs before doing anything (bridge with a bad vlan, say), so
// there is nothing of it to remove, and a DEL that can never succeed must
// not keep the attachment's teardown failing for ever.
func refusedAlike(d delegated, delErr error) bool {
	var cniErr *types.Error
	if d.AddError == nil || !errors.As(delErr, &cniErr) {
		return false
	}
	list, err := libcni.ConfListFromBytes([]byte(d.List))
	return err == nil && len(list.Plugins) == 1 && cniErr.Code == d.AddError.Code && cniErr.Msg == d.AddError.Msg
}

func (a *attachment) delOne(ctx context.Context, d delegated) error {
	list, err := libcni.ConfListFromBytes([]byte(d.List))
	if err != nil {
		return err
	}
	return a.cni.DelNetworkList(ctx, list, a.runtimeConf(d.Network))
}

// Del removes every network the ADD set up, from its record: the RM is not
// asked, so DEL works when it is down or has forgotten the pod.
func Del(args *skel.CmdArgs) error {
	a, rec, err := setupWithRecord(args)
	if err != nil {
		return err
	}
	if rec == nil {
		// Nothing to delete; a torn record, moved aside, goes too.
		if err := a.store.Delete(a.key.ID()); err != nil {
			return cnierr.Internal("state "+a.cfg.StateDir, err)
		}
		return nil
	}
	log, closeLog := a.cfg.Open("network", a.cfg.Name, "containerID", args.ContainerID, "verb", "DEL")
	defer closeLog()
	if err := a.delete(context.Background(), rec.Networks); err != nil {
		log.Error("delete", "error", err)
		return cnierr.Internal("DEL", err)
	}
	log.Info("deleted", "networks", len(rec.Networks))
	return nil
}

// Check delegates CHECK to every network of the record whose configuration
// version knows CHECK (0.4.0 on); older delegates have nothing to check.
func Check(args *skel.CmdArgs) error {
	a, rec, err := setupWithRecord(args)
	if err != nil {
		return err
	}
	if rec == nil {
		return cnierr.CheckFailed("no record of an ADD for container %q ifname %q", args.ContainerID, args.IfName)
	}
	for _, d := range rec.Networks {
		list, err := libcni.ConfListFromBytes([]byte(d.List))
		if err == nil {
			if ok, _ := version.GreaterThanOrEqualTo(list.CNIVersion, "0.4.0"); !ok {
				continue
			}
			err = a.cni.CheckNetworkList(context.Background(), list, a.runtimeConf(d.Network))
		}
		if err != nil {
			return delegateError("CHECK", d.Network, err)
		}
	}
	return nil
}

// GC removes the networks of this network's attachments that are not in
// cni.dev/valid-attachments, then passes GC on to every delegate network
// (those the records name and those of confDir), with the delegates'
// attachments of the valid ones and those the delegates' cache holds for
// another multinic network: its pods may use the same delegate networks,
// and are not this GC's to remove. (The cache is the stateDir's: multinic
// networks that share delegate networks share a stateDir too, as they do
// by default.) What a delegate holds for an attachment
// of this network multinic lost track of goes too. It goes on past errors.
func GC(args *skel.CmdArgs) error {
	a, err := setup(args)
	if err != nil {
		return err
	}
	names, err := a.store.Names()
	if err != nil {
		return cnierr.Internal("state "+a.cfg.StateDir, err)
	}
	ctx := context.Background()
	var errs []error
	delegates := map[string]string{} // a delegate network's name: its list
	var valid []types.GCAttachment   // the delegates' attachments of the valid ones
	for _, name := range names {
		if !attachstate.IsKeyID(name) {
			continue // another plugin's file, in a shared stateDir
		}
		var rec record
		found, err := a.store.Load(name, &rec)
		if attachstate.IsTorn(err) {
			fmt.Fprintf(os.Stderr, "multinic: %v\n", err)
			continue
		}
		if err != nil || !found {
			errs = append(errs, err)
			continue
		}
		if rec.Network != a.cfg.Name {
			continue
		}
		for _, d := range rec.Networks {
			if list, err := libcni.ConfListFromBytes([]byte(d.List)); err == nil {
				delegates[list.Name] = d.List
			}
		}
		if rec.In(a.cfg.ValidAttachments) {
			for _, d := range rec.Networks {
				valid = append(valid, types.GCAttachment{ContainerID: rec.ContainerID, IfName: d.IfName})
			}
			continue
		}
		stale := *a
		stale.key = rec.Key
		stale.args = &skel.CmdArgs{ContainerID: rec.ContainerID, IfName: rec.IfName, Args: args.Args}
		errs = append(errs, stale.delete(ctx, rec.Networks))
	}
	for _, list := range ConfDirLists(a.cfg.ConfDir) {
		if conf, err := libcni.ConfListFromBytes(list); err == nil {
			if _, recorded := delegates[conf.Name]; !recorded {
				delegates[conf.Name] = string(list)
			}
		}
	}
	// A delegate network may be another multinic network's delegate too
	// (both read one confDir): what the cache holds of it for others stays.
	// Without it, no delegate is GCed: another's pods could not be told.
	cached, err := a.cni.GetCachedAttachments("")
	if err != nil {
		errs = append(errs, fmt.Errorf("the delegates' cache: %w; their GC is left out", err))
		delegates = nil
	}
	for _, name := range slices.Sorted(maps.Keys(delegates)) {
		list, err := libcni.ConfListFromBytes([]byte(delegates[name]))
		if err == nil {
			err = a.cni.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: withOthers(valid, cached, name, a.cfg.Name)})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("network %q: GC: %w", name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cnierr.Internal("gc", err)
	}
	return nil
}

// ownerCapability names, in each delegate's runtime configuration, the
// multinic network it was delegated for: a capability no plugin declares,
// so no plugin is given it, but libcni keeps it in its cache with the
// attachment, which is how a GC tells its own delegates from another
// multinic network's.
const ownerCapability = "cnichain.io/multinic-network"

// withOthers is valid and the cached attachments of the delegate network
// called network that another multinic network (or an earlier release,
// which named none) delegated.
func withOthers(valid []types.GCAttachment, cached []*libcni.NetworkAttachment, network, self string) []types.GCAttachment {
	out := slices.Clone(valid)
	for _, c := range cached {
		if c.Network != network || c.CapabilityArgs[ownerCapability] == self {
			continue
		}
		if v := (types.GCAttachment{ContainerID: c.ContainerID, IfName: c.IfName}); !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// Status fails while the RM cannot be reached.
func Status(args *skel.CmdArgs) error {
	cfg, err := Parse(args.StdinData)
	if err != nil {
		return err
	}
	client, err := NewClient(cfg)
	if err != nil {
		return err
	}
	if err := client.Reachable(context.Background()); err != nil {
		return cnierr.Unavailable("resource manager %s: %v", cfg.RMURL, err)
	}
	return nil
}
