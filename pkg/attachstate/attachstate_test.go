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

// TestTornRecord: a record that cannot be decoded is moved aside, out of
// Names, and reported as torn by every Load until Delete.
func TestTornRecord(t *testing.T) {
	s := Store{Dir: t.TempDir()}
	if err := s.Save("rec", map[string]int{"a": 1}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "rec"), []byte(`{"a":`), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		var v map[string]int
		found, err := s.Load("rec", &v)
		if found || !IsTorn(err) || !strings.Contains(err.Error(), "rec") {
			t.Fatalf("Load #%d of a torn record = %v, %v; want a TornError", i+1, found, err)
		}
	}
	if names, _ := s.Names(); len(names) != 0 {
		t.Fatalf("Names = %v: the torn record is still listed", names)
	}
	if err := s.Delete("rec"); err != nil {
		t.Fatal(err)
	}
	if found, err := s.Load("rec", new(map[string]int)); found || err != nil {
		t.Fatalf("Load after Delete = %v, %v; want nothing", found, err)
	}
	if entries, _ := os.ReadDir(s.Dir); len(entries) != 0 {
		t.Fatalf("%d files left after Delete", len(entries))
	}
}

// TestUnsafeStateDir: a stateDir that is a symbolic link, or that others
// may write to, is refused before anything is written into it.
func TestUnsafeStateDir(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]string{link: "symbolic link", open: "writable by group or others"} {
		s := Store{Dir: dir}
		if err := s.Save("rec", 1); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Save into %s = %v, want %q", dir, err, want)
		}
		if _, err := s.HoldAgainstRestore(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("HoldAgainstRestore in %s = %v, want %q", dir, err, want)
		}
	}
	if entries, _ := os.ReadDir(real); len(entries) != 0 {
		t.Errorf("%d files written through the link", len(entries))
	}
}
