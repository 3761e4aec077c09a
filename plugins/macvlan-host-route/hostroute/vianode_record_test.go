package hostroute

import (
	"net/netip"
	"testing"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/hostnet"
)

// TestLoadViaNode: viaNode's record is found under its own name, or under
// the name an earlier release gave it (the key's ID alone), but never
// mistaken for portmap-lite's record of that name in a shared stateDir.
func TestLoadViaNode(t *testing.T) {
	key := attachstate.Key{Network: "svc", ContainerID: "c1", IfName: "eth0"}
	routed := viaNodeRecord{Key: key, ViaNodePlan: ViaNodePlan{Routes: []hostnet.PodRoute{
		{Dst: netip.MustParsePrefix("10.96.0.0/12"), Via: netip.MustParseAddr("192.168.0.5")}}}}
	portmaps := struct {
		attachstate.Key
		Backend string `json:"backend"`
	}{key, "iptables"}
	for _, tc := range []struct {
		name     string
		saved    map[string]any
		wantName string // "" for none found
	}{
		{"its own name", map[string]any{viaNodeRecordName(key): routed, key.ID(): portmaps}, viaNodeRecordName(key)},
		{"an earlier release's name", map[string]any{key.ID(): routed}, key.ID()},
		{"only portmap-lite's record, of that name", map[string]any{key.ID(): portmaps}, ""},
		{"none", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := attachstate.Store{Dir: t.TempDir()}
			for name, rec := range tc.saved {
				if err := store.Save(name, rec); err != nil {
					t.Fatal(err)
				}
			}
			rec, name, found, err := loadViaNode(store, key)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantName == "" {
				if found {
					t.Fatalf("found %s: %+v; want none", name, rec)
				}
				return
			}
			if !found || name != tc.wantName || !rec.isViaNode() {
				t.Fatalf("found %v under %q (%+v); want viaNode's record under %q", found, name, rec, tc.wantName)
			}
		})
	}
}
