package servicecidr

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// ServiceCIDR is what the watcher reads of a networking.k8s.io/v1
// ServiceCIDR. Its deletionTimestamp is left unread on purpose: one being
// deleted stays while Services still hold addresses of it, and those
// stay reachable only through viaNode, so it counts until it is gone.
type ServiceCIDR struct {
	Metadata ObjectMeta `json:"metadata"`
	Spec     struct {
		// CIDRs are one or two, one of each family: "10.96.0.0/12",
		// "fd00:10:96::/112".
		CIDRs []string `json:"cidrs"`
	} `json:"spec"`
}

// ObjectMeta is the part of an object's metadata the watcher keeps.
type ObjectMeta struct {
	Name            string `json:"name"`
	ResourceVersion string `json:"resourceVersion"`
}

// List is a ServiceCIDRList: the objects and the resourceVersion to
// watch from.
type List struct {
	Metadata ObjectMeta    `json:"metadata"`
	Items    []ServiceCIDR `json:"items"`
}

// maxListBytes and maxListItems bound a list in memory: a cluster has a
// handful of ServiceCIDRs of a few hundred bytes each.
const (
	maxListBytes = 16 << 20
	maxListItems = 10000
)

// DecodeList reads a ServiceCIDRList. It must name its resourceVersion
// (the watch starts there) and every item its name (the key of the
// union's map), and stay within maxListBytes and maxListItems.
func DecodeList(r io.Reader) (*List, error) {
	var list List
	// One byte past the bound tells a list too large from one cut short.
	in := &io.LimitedReader{R: r, N: maxListBytes + 1}
	if err := json.NewDecoder(in).Decode(&list); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) && in.N <= 0 {
			return nil, fmt.Errorf("ServiceCIDRList larger than %d bytes: too large", maxListBytes)
		}
		return nil, fmt.Errorf("ServiceCIDRList: %w", err)
	}
	if len(list.Items) > maxListItems {
		return nil, fmt.Errorf("ServiceCIDRList of %d items, more than %d: too large", len(list.Items), maxListItems)
	}
	if list.Metadata.ResourceVersion == "" {
		return nil, fmt.Errorf("ServiceCIDRList: no metadata.resourceVersion to watch from")
	}
	for i, item := range list.Items {
		if item.Metadata.Name == "" {
			return nil, fmt.Errorf("ServiceCIDRList items[%d]: no metadata.name", i)
		}
	}
	return &list, nil
}
