package servicecidr

import (
	"reflect"
	"strings"
	"testing"
)

func TestDecodeList(t *testing.T) {
	kubernetes := serviceCIDR("kubernetes", "10.96.0.0/12")
	kubernetes.Metadata.ResourceVersion = "5"
	tests := []struct {
		name    string
		body    string
		want    []ServiceCIDR
		wantRV  string
		wantErr string
	}{
		{name: "as the API server sends it", body: `{"kind":"ServiceCIDRList","apiVersion":"networking.k8s.io/v1","metadata":{"resourceVersion":"42"},
			"items":[{"metadata":{"name":"kubernetes","resourceVersion":"5"},"spec":{"cidrs":["10.96.0.0/12"]}}]}`,
			want: []ServiceCIDR{kubernetes}, wantRV: "42"},
		{name: "no items", body: `{"metadata":{"resourceVersion":"1"},"items":[]}`, want: []ServiceCIDR{}, wantRV: "1"},
		{name: "no resourceVersion", body: `{"items":[]}`, wantErr: "ServiceCIDRList: no metadata.resourceVersion to watch from"},
		{name: "an item without a name", body: `{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a"}},{"spec":{}}]}`,
			wantErr: "ServiceCIDRList items[1]: no metadata.name"},
		{name: "a Status, not a list", body: `{"kind":"Status","code":403}`, wantErr: "no metadata.resourceVersion"},
		{name: "not JSON", body: `forbidden`, wantErr: "ServiceCIDRList: invalid character"},
		{name: "items not a list", body: `{"metadata":{"resourceVersion":"1"},"items":{}}`, wantErr: "ServiceCIDRList: json: cannot unmarshal object"},
		{name: "larger than the bound", body: `{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"` + strings.Repeat("a", maxListBytes) + `"}}]}`,
			wantErr: "ServiceCIDRList larger than 16777216 bytes: too large"},
		{name: "cut short, within the bound", body: `{"metadata":{"resourceVersion":"1"},"items":[`, wantErr: "ServiceCIDRList: unexpected EOF"},
		{name: "more items than the bound", body: `{"metadata":{"resourceVersion":"1"},"items":[` + strings.Repeat(`{"metadata":{"name":"a"}},`, maxListItems) + `{"metadata":{"name":"a"}}]}`,
			wantErr: "ServiceCIDRList of 10001 items, more than 10000: too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeList(strings.NewReader(tt.body))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("DecodeList error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Metadata.ResourceVersion != tt.wantRV || !reflect.DeepEqual(got.Items, tt.want) {
				t.Errorf("DecodeList = %+v, want items %+v at %q", got, tt.want, tt.wantRV)
			}
		})
	}
}

// FuzzDecodeList: a list decoded names its resourceVersion and every
// item's name.
func FuzzDecodeList(f *testing.F) {
	for _, seed := range []string{`{"metadata":{"resourceVersion":"42"},"items":[{"metadata":{"name":"kubernetes"},"spec":{"cidrs":["10.96.0.0/12"]}}]}`,
		`{"items":null}`, `{}`, `[]`} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		list, err := DecodeList(strings.NewReader(string(body)))
		if err != nil {
			return
		}
		if list.Metadata.ResourceVersion == "" {
			t.Fatalf("list from %q without a resourceVersion", body)
		}
		for i, item := range list.Items {
			if item.Metadata.Name == "" {
				t.Fatalf("list from %q: items[%d] without a name", body, i)
			}
		}
	})
}
