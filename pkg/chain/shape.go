package chain

import (
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/cnichain/plugins/pkg/cnierr"
)

// CheckShape refuses a result (as decoded JSON) whose lists hold null
// entries, or whose ips name an interface that is not in its interfaces
// list. libcni's converters between result versions dereference every entry
// and plugins index interfaces by those numbers: such a result would crash
// the plugin instead of failing it with an error naming the field (field is
// where the result came from, e.g. "prevResult").
func CheckShape(raw map[string]any, field string) error {
	var interfaces int
	for _, list := range []string{"interfaces", "ips", "routes"} {
		entries, ok := raw[list].([]any)
		if !ok {
			continue // absent, or not a list: the decoder names that
		}
		if list == "interfaces" {
			interfaces = len(entries)
		}
		for i, e := range entries {
			if e == nil {
				return cnierr.InvalidConfig(fmt.Sprintf("%s.%s[%d]", field, list, i), "null", "an entry must be an object")
			}
			ip, isObject := e.(map[string]any)
			if list != "ips" || !isObject || ip["interface"] == nil {
				continue
			}
			n, isNumber := ip["interface"].(float64)
			if isNumber && (n < 0 || n >= float64(interfaces) || n != float64(int(n))) {
				return cnierr.InvalidConfig(fmt.Sprintf("%s.ips[%d].interface", field, i), ip["interface"],
					fmt.Sprintf("no such entry in %s.interfaces, which has %d", field, interfaces))
			}
		}
	}
	return nil
}

// FromPlugin converts what a delegated plugin returned to a current result,
// refusing, as CheckShape does, what would crash the conversion; field
// names the delegate in the error.
func FromPlugin(res types.Result, field string) (*current.Result, error) {
	data, err := json.Marshal(res)
	if err != nil {
		return nil, cnierr.Decode(field, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, cnierr.Decode(field, err)
	}
	if err := CheckShape(raw, field); err != nil {
		return nil, err
	}
	out, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, cnierr.Decode(field, err)
	}
	return out, nil
}
