package iptbatch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeIPTables puts an iptables that answers --version with version (and
// logs each run) and its -restore beside it, first in PATH.
func fakeIPTables(t *testing.T, version string) (log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "runs")
	script := "#!/bin/sh\necho run >> " + log + "\necho 'iptables " + version + " (legacy)'\n"
	for _, name := range []string{"iptables", "iptables-restore"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	return log
}

func runs(log string) int {
	data, _ := os.ReadFile(log)
	return strings.Count(string(data), "run")
}

func TestFeatures(t *testing.T) {
	t.Run("an xtables multi-binary is 1.8 or later: no process", func(t *testing.T) {
		dir := t.TempDir()
		multi := filepath.Join(dir, "xtables-nft-multi")
		if err := os.WriteFile(multi, []byte("#!/bin/sh\necho run >> "+dir+"/runs\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(multi, filepath.Join(dir, "iptables-restore")); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", dir)
		if f := (Runner{}).Features(t.TempDir()); !f.RandomFully {
			t.Fatal("RandomFully = false for iptables 1.8")
		}
		if n := runs(dir + "/runs"); n != 0 {
			t.Fatalf("%d processes ran", n)
		}
	})
	for _, tt := range []struct {
		version string
		want    bool
	}{{"v1.4.21", false}, {"v1.6.1", false}, {"v1.6.2", true}} {
		t.Run("an older iptables "+tt.version+" is asked once, then the cache answers", func(t *testing.T) {
			log := fakeIPTables(t, tt.version)
			cache := t.TempDir()
			for i := 0; i < 3; i++ {
				if f := (Runner{}).Features(cache); f.RandomFully != tt.want {
					t.Fatalf("RandomFully = %v, want %v", f.RandomFully, tt.want)
				}
			}
			if n := runs(log); n != 1 {
				t.Fatalf("iptables ran %d times, want once", n)
			}
		})
	}
	t.Run("no iptables: no optional feature", func(t *testing.T) {
		t.Setenv("PATH", t.TempDir())
		if f := (Runner{}).Features(t.TempDir()); f.RandomFully {
			t.Fatal("RandomFully without an iptables")
		}
	})
}
