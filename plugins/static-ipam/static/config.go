// Package static is the logic of the static-ipam plugin: parse the network
// configuration and the per-pod inputs, decide the addresses, and turn them
// into a CNI result.
package static

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/cniargs"
	"github.com/cnichain/plugins/pkg/cnierr"
	"github.com/cnichain/plugins/pkg/cnilog"
)

// Config is a validated static-ipam configuration for one attachment.
type Config struct {
	CNIVersion string
	Name       string
	// Addresses is what the container gets, from the winning source, with
	// gateways resolved.
	Addresses []Address
	Routes    []*types.Route
	DNS       types.DNS
	// Source names where Addresses came from, for messages.
	Source string
	// Ignored names the lower-precedence per-pod inputs that were given
	// but lost to Source, for the debug log.
	Ignored []string
	// Log is where to log (ipam.logFile, ipam.logLevel).
	Log cnilog.Config
}

// Address is one address of the container, in CIDR form (host bits kept),
// with an optional gateway in its subnet.
type Address struct {
	Prefix  netip.Prefix
	Gateway netip.Addr
}

// The sources of addresses, highest precedence first (as the Dockin static
// IPAM documents them); ipam.addresses is the default when none is given.
const (
	sourceCapability = "runtimeConfig.ips"
	sourceArgs       = "args.cni.ips"
	sourceEnv        = "CNI_ARGS IP"
	sourceConfig     = "ipam.addresses"
)

type netConf struct {
	CNIVersion    string    `json:"cniVersion"`
	Name          string    `json:"name"`
	IPAM          *ipamConf `json:"ipam"`
	RuntimeConfig struct {
		IPs []string `json:"ips"`
	} `json:"runtimeConfig"`
	Args *struct {
		CNI *struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
}

type ipamConf struct {
	Type      string `json:"type"`
	Addresses []struct {
		Address string `json:"address"`
		Gateway string `json:"gateway"`
	} `json:"addresses"`
	Routes []routeConf `json:"routes"`
	DNS    types.DNS   `json:"dns"`
	cnilog.Config
}

// routeConf keeps dst and gw as text so errors can quote what was written.
type routeConf struct {
	Dst      string `json:"dst"`
	GW       string `json:"gw"`
	MTU      int    `json:"mtu"`
	AdvMSS   int    `json:"advmss"`
	Priority int    `json:"priority"`
	Table    *int   `json:"table"`
	Scope    *int   `json:"scope"`
}

// Parse reads the plugin's stdin and CNI_ARGS into a Config. Every error is
// a CNI error naming the field and the value at fault.
func Parse(stdin []byte, rawArgs string) (*Config, error) {
	var n netConf
	if err := json.Unmarshal(stdin, &n); err != nil {
		return nil, cnierr.Decode("network configuration", err)
	}
	if n.IPAM == nil {
		return nil, cnierr.MissingConfig("ipam", `static-ipam reads its settings from the "ipam" object`)
	}
	env, err := cniargs.Parse(rawArgs, "IP", "GATEWAY")
	if err != nil {
		return nil, err
	}

	configured, err := parseConfigured(n.IPAM)
	if err != nil {
		return nil, err
	}
	if err := n.IPAM.Config.Validate(); err != nil {
		return nil, err
	}
	cfg := &Config{CNIVersion: n.CNIVersion, Name: n.Name, DNS: n.IPAM.DNS, Log: n.IPAM.Config}
	if cfg.Routes, err = parseRoutes(n.IPAM.Routes); err != nil {
		return nil, err
	}

	var argIPs []string
	if n.Args != nil && n.Args.CNI != nil {
		argIPs = n.Args.CNI.IPs
	}
	// One source wins whole: CNI_ARGS GATEWAY belongs to CNI_ARGS IP and
	// is dropped with it when a higher source wins.
	switch {
	case len(n.RuntimeConfig.IPs) > 0:
		cfg.Source = sourceCapability
		cfg.Addresses, err = parseOverride(sourceCapability, n.RuntimeConfig.IPs, configured)
	case len(argIPs) > 0:
		cfg.Source = sourceArgs
		cfg.Addresses, err = parseOverride(sourceArgs, argIPs, configured)
	case env["IP"] != "":
		cfg.Source = sourceEnv
		cfg.Addresses, err = parseOverride(sourceEnv, strings.Split(env["IP"], ","), configured)
	default:
		cfg.Source = sourceConfig
		cfg.Addresses = configured
	}
	if err != nil {
		return nil, err
	}
	cfg.Ignored = ignoredSources(cfg.Source, argIPs, env)
	if gw := env["GATEWAY"]; gw != "" && (cfg.Source == sourceEnv || cfg.Source == sourceConfig) {
		if err := applyGateways(cfg.Addresses, gw); err != nil {
			return nil, err
		}
	}
	if err := validateAddresses(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

func parseConfigured(ipam *ipamConf) ([]Address, error) {
	out := make([]Address, 0, len(ipam.Addresses))
	for i, a := range ipam.Addresses {
		field := fmt.Sprintf("ipam.addresses[%d].address", i)
		if a.Address == "" {
			return nil, cnierr.MissingConfig(field, "each address needs a CIDR such as 192.168.1.2/24")
		}
		prefix, err := parseCIDR(field, a.Address, cnierr.InvalidConfig)
		if err != nil {
			return nil, err
		}
		addr := Address{Prefix: prefix}
		if a.Gateway != "" {
			gwField := fmt.Sprintf("ipam.addresses[%d].gateway", i)
			gw, err := netip.ParseAddr(a.Gateway)
			if err != nil {
				return nil, cnierr.InvalidConfig(gwField, a.Gateway, "not an IP address")
			}
			if err := checkGateway(gwField, gw, prefix); err != nil {
				return nil, err
			}
			addr.Gateway = gw.Unmap()
		}
		out = append(out, addr)
	}
	return out, nil
}

// ignoredSources lists the per-pod inputs given below the winning source.
func ignoredSources(winner string, argIPs []string, env map[string]string) []string {
	var lower []string
	switch winner {
	case sourceCapability:
		if len(argIPs) > 0 {
			lower = append(lower, sourceArgs)
		}
		fallthrough
	case sourceArgs:
		for _, key := range []string{"IP", "GATEWAY"} {
			if env[key] != "" {
				lower = append(lower, "CNI_ARGS "+key)
			}
		}
	}
	return lower
}

// parseOverride parses the addresses of a per-pod source. An address inside
// the subnet of a configured address inherits that address's gateway: the
// reference static plugin drops it (containernetworking/plugins#406). A bare
// address (podman's --ip passes one) takes the prefix length of the
// configured subnet that holds it.
func parseOverride(source string, list []string, configured []Address) ([]Address, error) {
	fail := cnierr.InvalidConfig
	if source == sourceEnv {
		fail = cnierr.InvalidEnv
	}
	out := make([]Address, 0, len(list))
	for i, s := range list {
		field := source
		if source != sourceEnv {
			field = fmt.Sprintf("%s[%d]", source, i)
		}
		prefix, err := parsePodAddress(field, strings.TrimSpace(s), configured, fail)
		if err != nil {
			return nil, err
		}
		addr := Address{Prefix: prefix}
		for _, c := range configured {
			// The gateway must be on-link for the per-pod address too: a
			// narrower per-pod prefix may leave the configured gateway out.
			if c.Gateway.IsValid() && c.Prefix.Masked().Contains(prefix.Addr()) && prefix.Masked().Contains(c.Gateway) {
				addr.Gateway = c.Gateway
				break
			}
		}
		out = append(out, addr)
	}
	return out, nil
}

// applyGateways sets the gateways of CNI_ARGS GATEWAY (comma-separated) on
// every address whose subnet contains them. A gateway that fits no address
// is an error rather than silently dropped.
func applyGateways(addrs []Address, raw string) error {
	for _, s := range strings.Split(raw, ",") {
		gw, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return cnierr.InvalidEnv("CNI_ARGS GATEWAY", s, "not an IP address")
		}
		gw = gw.Unmap()
		matched := false
		for i := range addrs {
			if addrs[i].Prefix.Masked().Contains(gw) {
				addrs[i].Gateway = gw
				matched = true
			}
		}
		if !matched {
			return cnierr.InvalidEnv("CNI_ARGS GATEWAY", s, "inside the subnet of no address ("+listPrefixes(addrs)+")")
		}
	}
	return nil
}

func validateAddresses(cfg *Config) error {
	if len(cfg.Addresses) == 0 {
		return cnierr.MissingConfig("addresses",
			"no address from runtimeConfig.ips, args.cni.ips, CNI_ARGS IP or ipam.addresses")
	}
	seen := map[netip.Addr]bool{}
	var v4, v6 int
	for _, a := range cfg.Addresses {
		if seen[a.Prefix.Addr()] {
			return cnierr.InvalidConfig(cfg.Source, a.Prefix.Addr(), "duplicate address")
		}
		seen[a.Prefix.Addr()] = true
		if a.Prefix.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	// Results before 0.3.0 hold one address per family.
	if v4 > 1 || v6 > 1 {
		if ok, err := version.GreaterThanOrEqualTo(cfg.CNIVersion, "0.3.0"); err == nil && !ok {
			return cnierr.IncompatibleVersion(cfg.CNIVersion, "holds at most one IPv4 and one IPv6 address; use 0.3.0 or later")
		}
	}
	return nil
}

func parseRoutes(routes []routeConf) ([]*types.Route, error) {
	out := make([]*types.Route, 0, len(routes))
	for i, r := range routes {
		field := fmt.Sprintf("ipam.routes[%d]", i)
		if r.Dst == "" {
			return nil, cnierr.MissingConfig(field+".dst", "a route needs a destination such as 0.0.0.0/0")
		}
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			return nil, cnierr.InvalidConfig(field+".dst", r.Dst, "not a CIDR")
		}
		route := &types.Route{
			Dst: toIPNet(dst.Masked()), MTU: r.MTU, AdvMSS: r.AdvMSS,
			Priority: r.Priority, Table: r.Table, Scope: r.Scope,
		}
		if r.GW != "" {
			gw, err := netip.ParseAddr(r.GW)
			if err != nil {
				return nil, cnierr.InvalidConfig(field+".gw", r.GW, "not an IP address")
			}
			gw = gw.Unmap()
			if gw.Is4() != dst.Addr().Is4() {
				return nil, cnierr.InvalidConfig(field+".gw", r.GW, "not of the family of dst "+r.Dst)
			}
			route.GW = gw.AsSlice()
		}
		out = append(out, route)
	}
	return out, nil
}

// parseCIDR parses an address with its prefix length; fail makes the error
// of the input's kind.
func parseCIDR(field, s string, fail func(string, any, string) *types.Error) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fail(field, s, "not an address in CIDR notation such as 192.168.1.2/24")
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fail(field, s, "zoned addresses are not allowed")
	}
	addr, bits := p.Addr(), p.Bits()
	if addr.Is4In6() {
		// ::ffff:a.b.c.d/n is the IPv4 address a.b.c.d with n-96 prefix bits.
		if bits < 96 {
			return netip.Prefix{}, fail(field, s, "an IPv4-mapped address needs a prefix of /96 or longer")
		}
		addr, bits = addr.Unmap(), bits-96
	}
	return netip.PrefixFrom(addr, bits), nil
}

// parsePodAddress parses one per-pod address: a CIDR, or a bare address
// that takes the prefix length of the configured subnet holding it. fail
// makes the error of the source's kind (code 4 for CNI_ARGS, 7 otherwise).
func parsePodAddress(field, s string, configured []Address, fail func(string, any, string) *types.Error) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return parseCIDR(field, s, fail)
	}
	addr, err := netip.ParseAddr(s)
	if err != nil || addr.Zone() != "" {
		return netip.Prefix{}, fail(field, s, "not an address such as 192.168.1.2/24 or 192.168.1.2")
	}
	addr = addr.Unmap()
	for _, c := range configured {
		if c.Prefix.Masked().Contains(addr) {
			return netip.PrefixFrom(addr, c.Prefix.Bits()), nil
		}
	}
	if len(configured) == 0 {
		return netip.Prefix{}, fail(field, s, "an address without a prefix length takes it from a subnet of ipam.addresses, and none is configured")
	}
	return netip.Prefix{}, fail(field, s, "an address without a prefix length must be inside a configured subnet ("+subnets(configured)+")")
}

func checkGateway(field string, gw netip.Addr, prefix netip.Prefix) error {
	gw = gw.Unmap()
	if gw.Is4() != prefix.Addr().Is4() {
		return cnierr.InvalidConfig(field, gw, "not of the family of address "+prefix.String())
	}
	if !prefix.Masked().Contains(gw) {
		return cnierr.InvalidConfig(field, gw, "outside the subnet "+prefix.Masked().String())
	}
	return nil
}

func subnets(addrs []Address) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.Prefix.Masked().String()
	}
	return strings.Join(s, ", ")
}

func listPrefixes(addrs []Address) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.Prefix.String()
	}
	return strings.Join(s, ", ")
}
