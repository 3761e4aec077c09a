package sandbox

import (
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
