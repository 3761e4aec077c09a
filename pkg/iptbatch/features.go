package iptbatch

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/coreos/go-iptables/iptables"

	"github.com/cnichain/plugins/pkg/atomicfile"
)

// Features are what the node's iptables can do that a rule set depends on.
type Features struct {
	// RandomFully: MASQUERADE takes --random-fully (iptables 1.6.2 and
	// later), which keeps many clients masqueraded to one address from
	// colliding on source ports.
	RandomFully bool `json:"randomFully"`
}

// xtablesMulti is the multi-call binary of iptables 1.8 and later, legacy
// or nft: what every current distribution's iptables-restore links to.
var xtablesMulti = regexp.MustCompile(`^xtables-(nft|legacy)-multi$`)

// Features tells what r's iptables supports. Per-pod commands must not pay
// a process for it: an xtables multi-binary is 1.8 or later, which needs
// no question; an older iptables is asked once (go-iptables runs
// `iptables --version`) and the answer is kept in cacheDir, keyed by the
// binary's path and modification time, so a package upgrade asks again.
// An iptables that cannot be found or asked gets no optional feature.
func (r Runner) Features(cacheDir string) Features {
	path, err := exec.LookPath(r.binary(IPv4, "restore"))
	if err != nil {
		return Features{}
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return Features{}
	}
	if xtablesMulti.MatchString(filepath.Base(real)) {
		return Features{RandomFully: true}
	}
	info, err := os.Stat(real)
	if err != nil {
		return Features{}
	}
	key := fmt.Sprintf("%s@%d", real, info.ModTime().UnixNano())
	cache := filepath.Join(cacheDir, ".iptables-features.json")
	var cached map[string]Features
	if data, err := os.ReadFile(cache); err == nil && json.Unmarshal(data, &cached) == nil {
		if f, ok := cached[key]; ok {
			return f
		}
	}
	ipt, err := iptables.New(iptables.Path(strings.TrimSuffix(path, "-restore")))
	if err != nil {
		return Features{}
	}
	f := Features{RandomFully: ipt.HasRandomFully()}
	if data, err := json.Marshal(map[string]Features{key: f}); err == nil && os.MkdirAll(cacheDir, 0o700) == nil {
		// Replaced whole, never written through (a symbolic link put there
		// is replaced, not followed); failing to keep it costs a process
		// next time.
		_ = atomicfile.Write(cache, data, 0o600)
	}
	return f
}

// Status tells whether r's iptables can serve f: its restore and save
// binaries are in PATH and the nat table can be listed (go-iptables runs
// `iptables --version` and `iptables -t nat -S`: a STATUS can afford two
// processes, a per-pod command could not).
func (r Runner) Status(f Family) error {
	var missing []string
	for _, bin := range []string{r.binary(f, "restore"), r.binary(f, "save")} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s not found in PATH", strings.Join(missing, ", "))
	}
	name := strings.TrimSuffix(r.binary(f, "restore"), "-restore")
	path, err := exec.LookPath(name)
	if err != nil {
		return fmt.Errorf("%s not found in PATH", name)
	}
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Path(path))
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if _, err := ipt.ListChains("nat"); err != nil {
		return fmt.Errorf("%s cannot list the nat table: %w", name, err)
	}
	return nil
}
