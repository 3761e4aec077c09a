package sandbox

import (
	"encoding/json"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// NetD is the repository's net.d directory of example configurations.
func NetD() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "net.d")
}

// LoadList reads an example configuration from net.d; a single-plugin
// ".conf" becomes a list of one, as runtimes treat it.
func LoadList(t testing.TB, name string) *libcni.NetworkConfigList {
	t.Helper()
	path := filepath.Join(NetD(), name)
	if filepath.Ext(name) == ".conflist" {
		list, err := libcni.ConfListFromFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return list
	}
	conf, err := libcni.ConfFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromConf(conf)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// ListFromJSON parses a configuration list written in a test.
func ListFromJSON(t testing.TB, text string) *libcni.NetworkConfigList {
	t.Helper()
	list, err := libcni.ConfListFromBytes([]byte(text))
	if err != nil {
		t.Fatalf("%v in %s", err, text)
	}
	return list
}

// Localize points the state of a list's plugins into the sandbox:
// host-local's dataDir and our plugins' stateDir, which otherwise default to
// the machine's /var/lib/cni. (cnitool runs get a private /var/lib/cni.)
func (sb *Sandbox) Localize(t testing.TB, list *libcni.NetworkConfigList) *libcni.NetworkConfigList {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		t.Fatal(err)
	}
	plugins, _ := raw["plugins"].([]any)
	for _, p := range plugins {
		plugin, _ := p.(map[string]any)
		if ipam, ok := plugin["ipam"].(map[string]any); ok && ipam["type"] == "host-local" {
			ipam["dataDir"] = filepath.Join(sb.Dir, "host-local")
		}
		if typ, _ := plugin["type"].(string); ours[typ] {
			plugin["stateDir"] = filepath.Join(sb.Dir, "state", typ)
		}
	}
	text, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ListFromJSON(t, string(text))
}

// ours are the plugins of this repository that keep state.
var ours = map[string]bool{"macvlan-host-route": true, "portmap-lite": true, "multinic": true}
