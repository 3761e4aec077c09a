package nat

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cnichain/plugins/pkg/attachstate"
	"github.com/cnichain/plugins/pkg/iptbatch"
)

var key = attachstate.Key{Network: "mynet", ContainerID: "cnitool-77383ca0a0715733ca6f", IfName: "eth0"}

func TestChainNames(t *testing.T) {
	dn, sn := DNATChainName(key), SNATChainName(key)
	if len(dn) != 28 || len(sn) != 28 || !strings.HasPrefix(dn, "CNI-LITE-DN-") || !strings.HasPrefix(sn, "CNI-LITE-SN-") {
		t.Fatalf("chain names %q %q: want CNI-LITE-DN-/SN- and 28 characters", dn, sn)
	}
	other := key
	other.IfName = "net1"
	if DNATChainName(other) == dn {
		t.Fatal("two interfaces of one container share a chain")
	}
	renamed := key
	renamed.Network = "mynet2"
	if DNATChainName(renamed) == dn {
		t.Fatal("a renamed network reuses the chain (plugins#752)")
	}
	if id, ok := IsAttachmentChain(dn); !ok || !strings.HasPrefix(key.ID(), id) {
		t.Fatalf("IsAttachmentChain(%q) = %q, %v", dn, id, ok)
	}
	for _, c := range []string{"CNI-HOSTPORT-DNAT", "CNI-DN-be1eedf7a76853f303ebd", HostPortsChain, SNATChain} {
		if _, ok := IsAttachmentChain(c); ok {
			t.Errorf("IsAttachmentChain(%q) claims a chain that is not an attachment's", c)
		}
	}
}

// TestSharedBatch: on an empty nat table the shared chains, their
// buckets and their entry jumps are created, the SNAT jump first in
// POSTROUTING and the buckets of mappings on one address first in
// CNI-LITE-HOSTPORTS; on a node set up already nothing is; on a node of
// the previous release (HP buckets only) the HA buckets go in at the head.
func TestSharedBatch(t *testing.T) {
	lines := strings.Split(SharedBatch(iptbatch.Saved{}).Text(), "\n")
	for _, want := range []string{
		":CNI-LITE-HOSTPORTS - [0:0]", ":CNI-LITE-SNAT - [0:0]", ":CNI-LITE-HA-00 - [0:0]", ":CNI-LITE-HP-00 - [0:0]", ":CNI-LITE-MS-1f - [0:0]",
		"-I CNI-LITE-HOSTPORTS -j CNI-LITE-HA-00", "-A CNI-LITE-HOSTPORTS -j CNI-LITE-HP-00", "-A CNI-LITE-HOSTPORTS -j CNI-LITE-HP-1f", "-A CNI-LITE-SNAT -j CNI-LITE-MS-1f",
		"-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-LITE-HOSTPORTS",
		"-I POSTROUTING -j CNI-LITE-SNAT",
	} {
		if !slices.Contains(lines, want) {
			t.Errorf("on an empty table, no %q in:\n%s", want, strings.Join(lines, "\n"))
		}
	}
	if n := len(lines); n != 1+2+3*Buckets+3*Buckets+3+2 { // *nat, chains, buckets, their jumps, entry jumps, COMMIT, ""
		t.Errorf("%d lines on an empty table", n)
	}
	if slices.Index(lines, ":CNI-LITE-MS-1f - [0:0]") > slices.Index(lines, "-A CNI-LITE-HOSTPORTS -j CNI-LITE-HP-00") {
		t.Error("a chain is declared after the first rule")
	}
	if got := hostPortsOrder(applied(lines)); got[0] != "CNI-LITE-HA-00" || got[Buckets-1] != "CNI-LITE-HA-1f" || got[Buckets] != "CNI-LITE-HP-00" {
		t.Errorf("CNI-LITE-HOSTPORTS walks %v, want HA-00..1f, then HP-00..1f", got)
	}
	done := iptbatch.ParseSave(strings.Join(applied(lines), "\n"))
	if b := SharedBatch(done); !b.Empty() {
		t.Fatalf("on a node set up:\n%s", b.Text())
	}
	var old []string
	for _, l := range applied(lines) {
		if !strings.Contains(l, "CNI-LITE-HA-") {
			old = append(old, l)
		}
	}
	upgraded := applied(append(old[:len(old)-2:len(old)-2], strings.Split(SharedBatch(iptbatch.ParseSave(strings.Join(old, "\n"))).Text(), "\n")[1:]...))
	if got := hostPortsOrder(upgraded); len(got) != 2*Buckets || got[0] != "CNI-LITE-HA-00" || got[Buckets] != "CNI-LITE-HP-00" {
		t.Errorf("on the previous release's node, CNI-LITE-HOSTPORTS walks %v", got)
	}
}

// applied is the table a batch's lines leave, as iptables-save prints it:
// -I rules at the head of their chain, -D rules gone.
func applied(lines []string) []string {
	var chains, rules []string
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, ":"):
			chains = append(chains, l)
		case strings.HasPrefix(l, "-A "):
			rules = append(rules, l)
		case strings.HasPrefix(l, "-I "):
			f := strings.Fields(l)
			at := slices.IndexFunc(rules, func(r string) bool { return strings.HasPrefix(r, "-A "+f[1]+" ") })
			if at < 0 {
				at = len(rules)
			}
			rules = slices.Insert(rules, at, "-A"+strings.TrimPrefix(l, "-I"))
		case strings.HasPrefix(l, "-D "):
			rules = slices.DeleteFunc(rules, func(r string) bool { return r == "-A"+strings.TrimPrefix(l, "-D") })
		}
	}
	return append(append([]string{"*nat"}, append(chains, rules...)...), "COMMIT", "")
}

// hostPortsOrder lists the chains CNI-LITE-HOSTPORTS jumps to, in order.
func hostPortsOrder(lines []string) []string {
	var out []string
	for _, l := range lines {
		if c, ok := strings.CutPrefix(l, "-A CNI-LITE-HOSTPORTS -j "); ok {
			out = append(out, c)
		}
	}
	return out
}

// TestBuckets: the dispatch jumps of a mapping go to the bucket of its
// hostPort, in the tier of mappings on one address or on every address;
// the masquerade jumps to the bucket of the attachment's key, the same
// whenever asked, and keys spread over all buckets.
func TestBuckets(t *testing.T) {
	for _, tt := range []struct {
		m    Mapping
		want string
	}{
		{Mapping{HostPort: 8080, Protocol: "tcp"}, "CNI-LITE-HP-12"},
		{Mapping{HostPort: 8087, Protocol: "udp"}, "CNI-LITE-HP-12"},
		{Mapping{HostPort: 8088, Protocol: "tcp"}, "CNI-LITE-HP-13"},
		{Mapping{HostPort: 8080 + 256, Protocol: "tcp"}, "CNI-LITE-HP-12"},
		{Mapping{HostPort: 8080, Protocol: "tcp", HostIP: netip.MustParseAddr("0.0.0.0")}, "CNI-LITE-HP-12"},
		{Mapping{HostPort: 8080, Protocol: "tcp", HostIP: netip.MustParseAddr("127.0.0.1")}, "CNI-LITE-HA-12"},
		{Mapping{HostPort: 31, Protocol: "tcp", HostIP: netip.MustParseAddr("fd00::5")}, "CNI-LITE-HA-03"},
	} {
		if got := DispatchBucket(tt.m); got != tt.want {
			t.Errorf("DispatchBucket(%+v) = %s, want %s", tt.m, got, tt.want)
		}
	}
	if SNATBucket(key) != SNATBucket(key) {
		t.Fatal("SNATBucket differs between two calls")
	}
	seen := map[string]bool{}
	for i := range 1000 {
		seen[SNATBucket(attachstate.Key{Network: "n", ContainerID: fmt.Sprint(i), IfName: "eth0"})] = true
	}
	if len(seen) != Buckets {
		t.Errorf("1000 keys fill %d buckets, want %d", len(seen), Buckets)
	}
}

// TestDispatchJumps: one multiport jump per bucket, protocol and address.
func TestDispatchJumps(t *testing.T) {
	node := netip.MustParseAddr("192.168.0.5")
	maps := []Mapping{
		{HostPort: 8080, Protocol: "tcp"}, {HostPort: 8087, Protocol: "tcp"}, // one bucket
		{HostPort: 8088, Protocol: "tcp"},               // another
		{HostPort: 8080, Protocol: "udp"},               // another protocol
		{HostPort: 8080, Protocol: "tcp", HostIP: node}, // one address
	}
	var got []string
	for _, j := range dispatchJumps("CNI-LITE-DN-x", maps, nil, "c") {
		got = append(got, "-A "+j.Chain+" "+j.Rule.String())
	}
	want := []string{
		"-A CNI-LITE-HA-12 -d 192.168.0.5/32 -p tcp -m multiport --dports 8080 -m comment --comment c -j CNI-LITE-DN-x",
		"-A CNI-LITE-HP-12 -p tcp -m multiport --dports 8080,8087 -m comment --comment c -j CNI-LITE-DN-x",
		"-A CNI-LITE-HP-12 -p udp -m multiport --dports 8080 -m comment --comment c -j CNI-LITE-DN-x",
		"-A CNI-LITE-HP-13 -p tcp -m multiport --dports 8088 -m comment --comment c -j CNI-LITE-DN-x",
	}
	if !slices.Equal(got, want) {
		t.Errorf("dispatchJumps =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestNewFamilyPlan: what one attachment's family plan holds, per option.
func TestNewFamilyPlan(t *testing.T) {
	pod := netip.MustParseAddr("10.0.0.7")
	maps := []Mapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}
	tests := []struct {
		name string
		spec Spec
		want func(fp FamilyPlan) string // "" when right
	}{
		{"DNAT and the dispatch jump, no SNAT with snat off", Spec{Family: iptbatch.IPv4, Key: key, PodIP: pod, Maps: maps, Comment: "c"},
			func(fp FamilyPlan) string {
				if len(fp.DNAT) != 1 || len(fp.SNAT) != 0 || fp.SNATChain != "" || len(fp.Jumps) != 1 {
					return fmt.Sprintf("%+v", fp)
				}
				return ""
			}},
		{"hairpin and localhost masquerade", Spec{Family: iptbatch.IPv4, Key: key, PodIP: pod, Maps: maps, Comment: "c", SNAT: true},
			func(fp FamilyPlan) string {
				if len(fp.SNAT) != 2 || !fp.Localnet || len(fp.Jumps) != 2 {
					return fmt.Sprintf("%+v", fp)
				}
				return ""
			}},
		{"everything masqueraded, random-fully", Spec{Family: iptbatch.IPv4, Key: key, PodIP: pod, Maps: maps, Comment: "c", SNAT: true, MasqAll: true, RandomFully: true},
			func(fp FamilyPlan) string {
				if len(fp.SNAT) != 1 || !strings.HasSuffix(fp.SNAT[0].String(), "-j MASQUERADE --random-fully") || !fp.MasqAll {
					return fmt.Sprintf("%+v", fp.SNAT)
				}
				return ""
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if msg := tt.want(NewFamilyPlan(tt.spec)); msg != "" {
				t.Fatal(msg)
			}
		})
	}
}

// TestCommentNetwork: the network a rule's comment names, as GC reads it.
func TestCommentNetwork(t *testing.T) {
	long := strings.Repeat("n", 300)
	for _, tt := range []struct {
		comment, want string
		ok            bool
	}{
		{Comment("dualnet", "c1"), "dualnet", true},
		{Comment(`we"ird net`, `id "x"`), `we"ird net`, true},
		{Comment("n", strings.Repeat("c", 300)), "n", true}, // cut short in the container ID
		{Comment(long, "c"), "", false},                     // cut short in the network's name
		{"name: dualnet id: c1", "", false},
		{"left by hand", "", false},
		{"", "", false},
	} {
		if got, ok := CommentNetwork(tt.comment); got != tt.want || ok != tt.ok {
			t.Errorf("CommentNetwork(%q) = %q, %v; want %q, %v", tt.comment, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzCommentNetwork(f *testing.F) {
	f.Add("dualnet", "c1")
	f.Add(`a"b\c`, strings.Repeat("x", 260))
	f.Fuzz(func(t *testing.T, network, id string) {
		c := Comment(network, id)
		if len(c) > 255 {
			t.Fatalf("Comment is %d bytes", len(c))
		}
		if got, ok := CommentNetwork(c); ok && got != network {
			t.Fatalf("CommentNetwork(%q) = %q, want %q", c, got, network)
		}
	})
}
