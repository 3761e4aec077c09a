package attachstate

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestKeyID(t *testing.T) {
	a := Key{Network: "net", ContainerID: "ab", IfName: "eth0"}
	tests := []struct {
		name string
		b    Key
		same bool
	}{
		{"the same key", Key{"net", "ab", "eth0"}, true},
		{"another interface", Key{"net", "ab", "eth1"}, false},
		{"another network (a rename must not reuse state)", Key{"net2", "ab", "eth0"}, false},
		{"fields shifted across the separator", Key{"neta", "b", "eth0"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := a.ID() == tt.b.ID(); got != tt.same {
				t.Fatalf("ID(%v) == ID(%v) is %v, want %v", a, tt.b, got, tt.same)
			}
		})
	}
	if len(a.ID()) != 64 {
		t.Fatalf("ID length %d, want 64 hex digits", len(a.ID()))
	}
}

func TestKeyIn(t *testing.T) {
	k := Key{"net", "ab", "eth0"}
	valid := []types.GCAttachment{{ContainerID: "ab", IfName: "eth1"}, {ContainerID: "cd", IfName: "eth0"}}
	if k.In(valid) {
		t.Fatal("matched on one field only")
	}
	if !k.In(append(valid, types.GCAttachment{ContainerID: "ab", IfName: "eth0"})) {
		t.Fatal("did not match its own attachment")
	}
}

func TestStore(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "state")}
	var got struct{ IPs []string }
	if found, err := s.Load("x", &got); found || err != nil {
		t.Fatalf("Load from a missing directory = %v, %v; want not found", found, err)
	}
	if names, err := s.Names(); len(names) != 0 || err != nil {
		t.Fatalf("Names of a missing directory = %v, %v", names, err)
	}
	if err := s.Save("x", map[string]any{"IPs": []string{"10.0.0.7"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save("y", map[string]any{}); err != nil {
		t.Fatal(err)
	}
	if found, err := s.Load("x", &got); !found || err != nil || !slices.Equal(got.IPs, []string{"10.0.0.7"}) {
		t.Fatalf("Load = %v, %v, %v", found, err, got)
	}
	// A temporary left by a crash between write and rename is not a record.
	if err := os.WriteFile(filepath.Join(s.Dir, ".tmp-z-123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if names, _ := s.Names(); !slices.Equal(names, []string{"x", "y"}) {
		t.Fatalf("Names = %v, want [x y]", names)
	}
	if err := s.Delete("x"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("x"); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if found, _ := s.Load("x", &got); found {
		t.Fatal("record still there after Delete")
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "broken"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load("broken", &got); err == nil {
		t.Fatal("a corrupt record loaded without error")
	}
}

func TestIsKeyID(t *testing.T) {
	k := Key{Network: "n", ContainerID: "c", IfName: "eth0"}
	for name, want := range map[string]bool{
		k.ID():                  true,
		strings.ToUpper(k.ID()): false,
		"route-192.168.1.2":     false,
		"answers-eno1.host":     false,
		k.ID()[:63] + "g":       false,
		k.ID()[:62]:             false,
	} {
		if got := IsKeyID(name); got != want {
			t.Errorf("IsKeyID(%q) = %v, want %v", name, got, want)
		}
	}
}
