package multinic

import (
	"errors"
	"fmt"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestRefusedAlike(t *testing.T) {
	one := `{"cniVersion":"0.4.0","name":"n","plugins":[{"type":"bridge"}]}`
	two := `{"cniVersion":"0.4.0","name":"n","plugins":[{"type":"bridge"},{"type":"tuning"}]}`
	refusal := types.NewError(999, "invalid VLAN ID 5000", "")
	wrapped := fmt.Errorf("plugin type=%q failed (delete): %w", "bridge", types.NewError(999, "invalid VLAN ID 5000", ""))
	for _, tt := range []struct {
		name   string
		d      delegated
		delErr error
		want   bool
	}{
		{"the same refusal on ADD and DEL", delegated{List: one, AddError: refusal}, wrapped, true},
		{"another DEL error", delegated{List: one, AddError: refusal}, types.NewError(999, "netlink: busy", ""), false},
		{"another code", delegated{List: one, AddError: refusal}, types.NewError(7, "invalid VLAN ID 5000", ""), false},
		{"an ADD that did not fail", delegated{List: one}, wrapped, false},
		{"a list of two plugins, whose first may have done its work", delegated{List: two, AddError: refusal}, wrapped, false},
		{"not a CNI error", delegated{List: one, AddError: refusal}, errors.New("invalid VLAN ID 5000"), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := refusedAlike(tt.d, tt.delErr); got != tt.want {
				t.Errorf("refusedAlike = %v, want %v", got, tt.want)
			}
		})
	}
}
