package cniargs

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    map[string]string
		wantErr string
	}{
		{name: "empty", raw: "", want: map[string]string{}},
		{name: "one known key", raw: "IP=10.0.0.2/24", want: map[string]string{"IP": "10.0.0.2/24"}},
		{name: "two keys and a trailing separator", raw: "IP=10.0.0.2/24;GATEWAY=10.0.0.1;",
			want: map[string]string{"IP": "10.0.0.2/24", "GATEWAY": "10.0.0.1"}},
		{name: "kubelet keys skipped with IgnoreUnknown", raw: "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.0.0.2/24",
			want: map[string]string{"IP": "10.0.0.2/24"}},
		{name: "IgnoreUnknown may come last", raw: "K8S_POD_NAME=web;IgnoreUnknown=true", want: map[string]string{}},
		{name: "unknown key without IgnoreUnknown", raw: "IP=10.0.0.2/24;FOO=bar", wantErr: `CNI_ARGS "FOO": unknown keys`},
		{name: "IgnoreUnknown false keeps the check", raw: "IgnoreUnknown=0;FOO=bar", wantErr: `"FOO"`},
		{name: "pair without equals", raw: "IP", wantErr: `CNI_ARGS "IP": expected KEY=VALUE`},
		{name: "empty key", raw: "=x", wantErr: `CNI_ARGS "=x"`},
		{name: "IgnoreUnknown not a bool", raw: "IgnoreUnknown=maybe", wantErr: `CNI_ARGS IgnoreUnknown "maybe"`},
		{name: "value keeps further equals signs", raw: "IP=a=b", want: map[string]string{"IP": "a=b"}},
		{name: "last repeated key wins", raw: "IP=1;IP=2", want: map[string]string{"IP": "2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.raw, "IP", "GATEWAY")
			if tt.wantErr != "" {
				var cniErr *types.Error
				if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidEnvironmentVariables {
					t.Fatalf("Parse(%q) error = %v, want a CNI error with code 4", tt.raw, err)
				}
				if !strings.Contains(cniErr.Msg, tt.wantErr) {
					t.Fatalf("Parse(%q) error = %q, want it to contain %q", tt.raw, cniErr.Msg, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.raw, err)
			}
			if !maps.Equal(got, tt.want) {
				t.Fatalf("Parse(%q) = %v, want %v", tt.raw, got, tt.want)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, seed := range []string{"", "IP=10.0.0.2/24;GATEWAY=10.0.0.1", "IgnoreUnknown=1;K8S_POD_NAME=a", "=;;=", "IP"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		got, err := Parse(raw, "IP", "GATEWAY")
		if err != nil {
			var cniErr *types.Error
			if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("Parse(%q) returned %v, not a code-4 CNI error", raw, err)
			}
			return
		}
		for k, v := range got {
			if k != "IP" && k != "GATEWAY" {
				t.Fatalf("Parse(%q) returned unknown key %q", raw, k)
			}
			if strings.Contains(v, ";") {
				t.Fatalf("Parse(%q) value %q spans a separator", raw, v)
			}
		}
	})
}
