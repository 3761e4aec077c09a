package nat

import (
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/cnichain/plugins/pkg/iptbatch"
)

// elemAnswer is an NFT_MSG_NEWSETELEM answer as the kernel sends it for
// one element whose data is a verdict.
func elemAnswer(t *testing.T, code uint32, chain string) []byte {
	t.Helper()
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, nftTable)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, podMap)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(list *netlink.AttributeEncoder) error {
		list.Nested(unix.NFTA_LIST_ELEM, func(elem *netlink.AttributeEncoder) error {
			elem.Nested(unix.NFTA_SET_ELEM_KEY, func(k *netlink.AttributeEncoder) error {
				k.Bytes(unix.NFTA_DATA_VALUE, []byte{10, 244, 0, 2})
				return nil
			})
			elem.Nested(unix.NFTA_SET_ELEM_DATA, func(d *netlink.AttributeEncoder) error {
				d.Nested(unix.NFTA_DATA_VERDICT, func(v *netlink.AttributeEncoder) error {
					v.Uint32(unix.NFTA_VERDICT_CODE, code)
					if chain != "" {
						v.String(unix.NFTA_VERDICT_CHAIN, chain)
					}
					return nil
				})
				return nil
			})
			return nil
		})
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{unix.NFPROTO_IPV4, 0, 0, 0}, b...)
}

// verdictJump is NFT_JUMP (-3) as the kernel sends it, a 32-bit pattern.
const verdictJump = 0xfffffffd

func TestElemChain(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"a jump to an attachment's chain", elemAnswer(t, verdictJump, "CNI-LITE-SN-0123456789abcdef"), "CNI-LITE-SN-0123456789abcdef"},
		{"a verdict without a chain", elemAnswer(t, 1 /* NF_ACCEPT */, ""), ""},
		{"nothing but the header", []byte{2, 0, 0, 0}, ""},
		{"shorter than the header", []byte{2}, ""},
		{"a truncated attribute", append([]byte{2, 0, 0, 0}, 0xff, 0x00, 0x03, 0x00), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := elemChain(tc.data); got != tc.want {
				t.Errorf("elemChain = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestGetElemRequest checks the request's layout: the table and map by
// name, then the key nested as the kernel's nft_get_set_elem reads it.
func TestGetElemRequest(t *testing.T) {
	key := []byte{6, 0, 0, 0, 0x1f, 0x90, 0, 0} // tcp . 8080, each part padded to 4 bytes
	m, err := getElemRequest(iptbatch.IPv6, anyAddrMap, key)
	if err != nil {
		t.Fatal(err)
	}
	if want := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM); m.Header.Type != want {
		t.Errorf("type %#x, want %#x", m.Header.Type, want)
	}
	if m.Header.Flags&netlink.Dump != 0 {
		t.Error("a dump was asked for: its answer would grow with the node")
	}
	if m.Data[0] != unix.NFPROTO_IPV6 {
		t.Errorf("family %d, want %d", m.Data[0], unix.NFPROTO_IPV6)
	}
	var table, set string
	var gotKey []byte
	walk(m.Data[4:], func(typ uint16, b []byte) {
		switch typ {
		case unix.NFTA_SET_ELEM_LIST_TABLE:
			table = string(trimNUL(b))
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = string(trimNUL(b))
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			walk(b, func(_ uint16, elem []byte) {
				walk(elem, func(typ uint16, b []byte) {
					if typ == unix.NFTA_SET_ELEM_KEY {
						walk(b, func(typ uint16, b []byte) {
							if typ == unix.NFTA_DATA_VALUE {
								gotKey = b
							}
						})
					}
				})
			})
		}
	})
	if table != nftTable || set != anyAddrMap || string(gotKey) != string(key) {
		t.Errorf("asked for table %q, map %q, key %x; want %q, %q, %x", table, set, gotKey, nftTable, anyAddrMap, key)
	}
}

// FuzzElemChain: the kernel's answers are parsed, never trusted to be
// well formed.
func FuzzElemChain(f *testing.F) {
	f.Add([]byte{2, 0, 0, 0})
	f.Add([]byte{2, 0, 0, 0, 8, 0, 3, 0x80, 4, 0, 1, 0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = elemChain(data)
	})
}
