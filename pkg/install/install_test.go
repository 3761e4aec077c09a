package install

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestFile(t *testing.T) {
	for _, tt := range []struct {
		name     string
		existing []byte // nil: no file yet
		mode     os.FileMode
		want     Outcome
	}{
		{"a new file is written", nil, 0o755, Written},
		{"the same content and mode is left alone", []byte("v1"), 0o755, Unchanged},
		{"other content is replaced", []byte("v0"), 0o755, Written},
		{"the same content with another mode is rewritten", []byte("v1"), 0o644, Written},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			dst := filepath.Join(dir, "bridge")
			if tt.existing != nil {
				if err := os.WriteFile(dst, tt.existing, tt.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(dst, tt.mode); err != nil {
					t.Fatal(err)
				}
			}
			got, err := File(dst, []byte("v1"), 0o755)
			if err != nil || got != tt.want {
				t.Fatalf("File = %v, %v; want %v", got, err, tt.want)
			}
			data, _ := os.ReadFile(dst)
			info, _ := os.Stat(dst)
			if string(data) != "v1" || info.Mode().Perm() != 0o755 {
				t.Errorf("after File: %q mode %v", data, info.Mode())
			}
			if n := names(t, dir); !slices.Equal(n, []string{"bridge"}) {
				t.Errorf("directory holds %v, want only the target", n)
			}
		})
	}
}

// TestReplaceRunningBinary: a binary being executed cannot be opened for
// writing (ETXTBSY); a rename replaces it while it runs, and the running
// process is untouched.
func TestReplaceRunningBinary(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	orig, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	dst := filepath.Join(dir, "plugin")
	if err := os.WriteFile(dst, orig, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dst, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if err := os.WriteFile(dst, []byte("#!/bin/sh\necho new\n"), 0o755); err == nil {
		t.Fatal("writing over a running binary succeeded: this test proves nothing here")
	}
	if _, err := File(dst, []byte("#!/bin/sh\necho new\n"), 0o755); err != nil {
		t.Fatalf("File over a running binary: %v", err)
	}
	if out, err := exec.Command(dst).Output(); err != nil || string(out) != "new\n" {
		t.Errorf("the new binary runs: %q, %v", out, err)
	}
	if err := syscall.Kill(cmd.Process.Pid, 0); err != nil {
		t.Errorf("the process running the old binary went: %v", err)
	}
}

func TestDir(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "opt", "cni", "bin")
	for name, data := range map[string]string{"portmap-lite": "a", "static-ipam": "b"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(src, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	first, err := Dir(src, dst, 0o755)
	if err != nil || len(first) != 2 || first[0].Outcome != Written || first[1].Outcome != Written {
		t.Fatalf("first run: %v, %v", first, err)
	}
	second, err := Dir(src, dst, 0o755)
	if err != nil || len(second) != 2 || second[0].Outcome != Unchanged || second[1].Outcome != Unchanged {
		t.Fatalf("second run: %v, %v; want both unchanged", second, err)
	}
	if n := names(t, dst); !slices.Equal(n, []string{"portmap-lite", "static-ipam"}) {
		t.Errorf("installed %v", n)
	}
}

func TestDiffering(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	for name, data := range map[string]string{"portmap-lite": "new", "static-ipam": "same"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	differing := func() []string {
		t.Helper()
		d, err := Differing(src, dst, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if d := differing(); !slices.Equal(d, []string{filepath.Join(dst, "portmap-lite"), filepath.Join(dst, "static-ipam")}) {
		t.Errorf("nothing installed: differing %v, want both", d)
	}
	if _, err := Dir(src, dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if d := differing(); len(d) != 0 {
		t.Errorf("after Dir: differing %v, want none", d)
	}
	if err := os.WriteFile(filepath.Join(dst, "portmap-lite"), []byte("old"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dst, "static-ipam"), 0o700); err != nil {
		t.Fatal(err)
	}
	if d := differing(); !slices.Equal(d, []string{filepath.Join(dst, "portmap-lite"), filepath.Join(dst, "static-ipam")}) {
		t.Errorf("old content and another mode: differing %v, want both", d)
	}
}

func TestSameFileLongerThanItsBuffer(t *testing.T) {
	dir := t.TempDir()
	big := make([]byte, 200<<10)
	for i := range big {
		big[i] = byte(i)
	}
	want, installed := filepath.Join(dir, "want"), filepath.Join(dir, "installed")
	if err := os.WriteFile(want, big, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func([]byte) []byte
		same   bool
	}{
		{"identical", func(b []byte) []byte { return b }, true},
		{"one byte differs in the third block", func(b []byte) []byte { c := slices.Clone(b); c[150<<10]++; return c }, false},
		{"one byte shorter", func(b []byte) []byte { return b[:len(b)-1] }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(installed, tc.change(big), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(installed, 0o755); err != nil {
				t.Fatal(err)
			}
			same, err := sameFile(want, installed, 0o755)
			if err != nil || same != tc.same {
				t.Errorf("sameFile = %v, %v; want %v", same, err, tc.same)
			}
		})
	}
}
