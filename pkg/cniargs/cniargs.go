// Package cniargs parses the CNI_ARGS environment variable
// ("KEY1=VAL1;KEY2=VAL2") the way runtimes send it.
//
// It follows the conventions of the CNI library's types.LoadArgs (unknown
// keys are an error unless IgnoreUnknown is true) but is a pure function
// returning a map, so each plugin can validate the values it reads and name
// the key in its errors.
package cniargs

import (
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/cnichain/plugins/pkg/cnierr"
)

// ignoreUnknown is the key runtimes set to say "skip keys you do not know";
// kubelet and containerd send K8S_POD_NAME and friends alongside it.
const ignoreUnknown = "IgnoreUnknown"

// Parse splits raw into its key/value pairs and keeps those whose key is in
// known (compared case-sensitively, as types.LoadArgs compares field tags
// loosely but runtimes always send the canonical case). A key outside known
// is an error unless IgnoreUnknown is true. Empty segments (a trailing ";")
// are skipped. The last of repeated keys wins.
func Parse(raw string, known ...string) (map[string]string, error) {
	out := map[string]string{}
	if raw == "" {
		return out, nil
	}
	var unknown []string
	ignore := false
	for _, pair := range strings.Split(raw, ";") {
		if pair == "" {
			continue
		}
		key, value, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			return nil, cnierr.InvalidEnv("CNI_ARGS", pair, "expected KEY=VALUE pairs separated by ';'")
		}
		switch {
		case strings.EqualFold(key, ignoreUnknown):
			var b types.UnmarshallableBool
			if err := b.UnmarshalText([]byte(value)); err != nil {
				return nil, cnierr.InvalidEnv("CNI_ARGS "+ignoreUnknown, value, "expected a boolean (1, true, 0, false)")
			}
			ignore = bool(b)
		case slices.Contains(known, key):
			out[key] = value
		default:
			unknown = append(unknown, key)
		}
	}
	if len(unknown) > 0 && !ignore {
		return nil, cnierr.InvalidEnv("CNI_ARGS", strings.Join(unknown, ","),
			"unknown keys (known: "+strings.Join(known, ", ")+"; set IgnoreUnknown=1 to skip others)")
	}
	return out, nil
}
