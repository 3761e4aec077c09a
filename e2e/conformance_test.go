package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/cnichain/plugins/pkg/sandbox"
)

var allVersions = []string{"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

func atLeast(v, min string) bool {
	ok, _ := version.GreaterThanOrEqualTo(v, min)
	return ok
}

// prevResultFor is a bridge-like result for 192.168.1.50 in version v's format.
func prevResultFor(v string) string {
	ipVersion := `"version":"4",`
	if atLeast(v, "1.0.0") {
		ipVersion = ""
	}
	return fmt.Sprintf(`"prevResult":{"cniVersion":%q,"interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{%s"address":"192.168.1.50/16","interface":0}]}`, v, ipVersion)
}

// TestConformance runs every verb of every plugin at every cniVersion it
// serves and checks the spec's rules: the result is in the configuration's
// version, CHECK is refused before 0.4.0, GC and STATUS before 1.1.0, and
// VERSION lists them all.
func TestConformance(t *testing.T) {
	sb := sandbox.New(t)
	pod := sb.NewPod(t)
	state := fmt.Sprintf(`"stateDir":%q`, sb.Dir+"/state")
	plugins := []struct {
		name    string
		chained bool // needs a prevResult, so 0.3.0 on
		conf    func(v string) string
	}{
		{"static-ipam", false, func(v string) string {
			return fmt.Sprintf(`{"cniVersion":%q,"name":"conf","type":"static-ipam","ipam":{"type":"static-ipam","addresses":[{"address":"192.168.1.50/16","gateway":"192.168.0.1"}]}}`, v)
		}},
		{"macvlan-host-route", true, func(v string) string {
			return fmt.Sprintf(`{"cniVersion":%q,"name":"conf","type":"macvlan-host-route","master":"eno1",%s,%s}`, v, state, prevResultFor(v))
		}},
		{"portmap-lite", true, func(v string) string {
			return fmt.Sprintf(`{"cniVersion":%q,"name":"conf","type":"portmap-lite",%s,"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80}]},%s}`, v, state, prevResultFor(v))
		}},
	}
	for _, p := range plugins {
		t.Run(p.name+"/VERSION", func(t *testing.T) {
			out, err := sb.Invoke(t, p.name, []byte(`{"cniVersion":"1.1.0"}`), sandbox.Invocation{Command: "VERSION"})
			if err != nil {
				t.Fatal(err)
			}
			var info struct {
				SupportedVersions []string `json:"supportedVersions"`
			}
			if err := json.Unmarshal(out, &info); err != nil || !slices.Equal(info.SupportedVersions, allVersions) {
				t.Fatalf("VERSION = %s, want all of %v", out, allVersions)
			}
		})
		for _, v := range allVersions {
			if p.chained && !atLeast(v, "0.3.0") {
				continue
			}
			t.Run(p.name+"/"+v, func(t *testing.T) {
				conf := []byte(p.conf(v))
				inv := sandbox.Invocation{ContainerID: "conf-" + v, NetNS: pod.Path(), IfName: "eth0"}
				call := func(cmd string, conf []byte) ([]byte, error) {
					inv.Command = cmd
					return sb.Invoke(t, p.name, conf, inv)
				}
				out, err := call("ADD", conf)
				if err != nil {
					t.Fatalf("ADD: %v", err)
				}
				var res struct {
					CNIVersion string `json:"cniVersion"`
				}
				if err := json.Unmarshal(out, &res); err != nil || res.CNIVersion != v {
					t.Fatalf("ADD printed %s, want a result of version %s", out, v)
				}
				check := conf
				if !p.chained {
					// An IPAM's CHECK gets the result of ADD as prevResult.
					check = []byte(fmt.Sprintf(`%s,"prevResult":%s}`, conf[:len(conf)-1], out))
				}
				_, err = call("CHECK", check)
				wantRefusal(t, "CHECK", err, !atLeast(v, "0.4.0"))
				for _, cmd := range []string{"GC", "STATUS"} {
					_, err := call(cmd, conf)
					wantRefusal(t, cmd, err, !atLeast(v, "1.1.0"))
				}
				for i := 0; i < 2; i++ {
					if _, err := call("DEL", conf); err != nil {
						t.Fatalf("DEL #%d: %v", i+1, err)
					}
				}
			})
		}
	}
}

// wantRefusal fails unless err is the spec's "incompatible version" when
// refused is true, and nil otherwise.
func wantRefusal(t *testing.T, verb string, err error, refused bool) {
	t.Helper()
	var cniErr *types.Error
	switch {
	case refused && (!errors.As(err, &cniErr) || cniErr.Code != types.ErrIncompatibleCNIVersion):
		t.Errorf("%s = %v, want code %d (not in this version)", verb, err, types.ErrIncompatibleCNIVersion)
	case !refused && err != nil:
		t.Errorf("%s: %v", verb, err)
	}
}
