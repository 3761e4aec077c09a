package multinic

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnichain/plugins/pkg/cnierr"
)

// confExtensions are tried in this order for a network type's configuration.
var confExtensions = []string{".conflist", ".conf", ".json"}

// LoadDelegate reads confDir/<type> (.conflist, .conf or .json) as a list.
func LoadDelegate(confDir, netType string) ([]byte, error) {
	for _, ext := range confExtensions {
		path := filepath.Join(confDir, netType+ext)
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, cnierr.Internal("read "+path, err)
		}
		if ext == ".conflist" {
			if _, err := libcni.ConfListFromBytes(data); err != nil {
				return nil, cnierr.InvalidConfig(path, netType, err.Error())
			}
			return data, nil
		}
		conf, err := libcni.ConfFromBytes(data)
		if err != nil {
			return nil, cnierr.InvalidConfig(path, netType, err.Error())
		}
		list, err := libcni.ConfListFromConf(conf)
		if err != nil {
			return nil, cnierr.InvalidConfig(path, netType, err.Error())
		}
		return list.Bytes, nil
	}
	return nil, cnierr.InvalidConfig("confDir", confDir,
		fmt.Sprintf("no configuration for network type %q (%s)", netType, strings.Join(withExt(netType), ", ")))
}

// ConfDirLists are the delegate lists of every network type in confDir,
// as LoadDelegate reads them; unreadable ones are left out.
func ConfDirLists(confDir string) [][]byte {
	entries, err := os.ReadDir(confDir)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out [][]byte
	for _, e := range entries {
		netType := strings.TrimSuffix(e.Name(), filepath.Ext(e.Name()))
		if e.IsDir() || seen[netType] || !slices.Contains(confExtensions, filepath.Ext(e.Name())) {
			continue
		}
		seen[netType] = true
		if list, err := LoadDelegate(confDir, netType); err == nil {
			out = append(out, list)
		}
	}
	return out
}

func withExt(netType string) []string {
	out := make([]string, len(confExtensions))
	for i, ext := range confExtensions {
		out[i] = netType + ext
	}
	return out
}

// WithIPAM returns the list with its main (first) plugin's ipam replaced
// by ipamType handing out n's address and gateway. Routes and dns of the
// original ipam are kept; the master network without routes gets a
// default route through its gateway, as a pod's primary NIC needs.
func WithIPAM(list []byte, ipamType string, n Network) ([]byte, error) {
	var raw map[string]any
	if err := json.Unmarshal(list, &raw); err != nil {
		return nil, err
	}
	plugins, _ := raw["plugins"].([]any)
	if len(plugins) == 0 {
		return nil, fmt.Errorf("network %q has no plugins", n.Type)
	}
	main, ok := plugins[0].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("network %q: first plugin is not an object", n.Type)
	}
	address := map[string]any{"address": n.Address.String()}
	if n.Gateway.IsValid() {
		address["gateway"] = n.Gateway.String()
	}
	ipam := map[string]any{"type": ipamType, "addresses": []any{address}}
	if old, ok := main["ipam"].(map[string]any); ok {
		for _, key := range []string{"routes", "dns"} {
			if v, ok := old[key]; ok {
				ipam[key] = v
			}
		}
	}
	if _, ok := ipam["routes"]; !ok && n.Master && n.Gateway.IsValid() {
		ipam["routes"] = []any{map[string]any{"dst": "0.0.0.0/0"}}
	}
	main["ipam"] = ipam
	return json.Marshal(raw)
}

// Merge is the master network's result with the other networks'
// interfaces and addresses appended (interface indexes shifted), as
// multi-network plugins report; routes and dns are the master's.
func Merge(master *current.Result, others []*current.Result) *current.Result {
	out := *master
	out.Interfaces = append([]*current.Interface(nil), master.Interfaces...)
	out.IPs = append([]*current.IPConfig(nil), master.IPs...)
	for _, r := range others {
		offset := len(out.Interfaces)
		out.Interfaces = append(out.Interfaces, r.Interfaces...)
		for _, ip := range r.IPs {
			c := *ip
			if c.Interface != nil {
				idx := *c.Interface + offset
				c.Interface = &idx
			}
			out.IPs = append(out.IPs, &c)
		}
	}
	return &out
}

// delegateError names the network a delegate failed for, keeping the
// delegate's error code when it gave one.
func delegateError(verb string, n Network, err error) error {
	code := types.ErrInternal
	var cniErr *types.Error
	if errors.As(err, &cniErr) {
		code = cniErr.Code
	}
	return types.NewError(code, fmt.Sprintf("network %q (ifName %s): %s: %v", n.Type, n.IfName, verb, err), "")
}
