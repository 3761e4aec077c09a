package iptbatch

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// nodeRoot builds a node's root file system in a temporary directory:
// files (made executable) and symbolic links, each path as seen from
// inside it.
func nodeRoot(t *testing.T, files []string, links map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for from, to := range links {
		p := filepath.Join(root, from)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(to, p); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResolveInRoot(t *testing.T) {
	// Outside every root: what an absolute link would reach if it were
	// followed from the process's own root.
	outside := t.TempDir()
	for _, tc := range []struct {
		name  string
		files []string
		links map[string]string
		path  string
		want  string // inside the root; "" for an error
		errIs error
	}{
		{
			name:  "Debian's alternatives: two absolute links",
			files: []string{"/usr/sbin/xtables-nft-multi"},
			links: map[string]string{
				"/usr/sbin/iptables-save":         "/etc/alternatives/iptables-save",
				"/etc/alternatives/iptables-save": "/usr/sbin/iptables-nft-save",
				"/usr/sbin/iptables-nft-save":     "xtables-nft-multi",
			},
			path: "/usr/sbin/iptables-save",
			want: "/usr/sbin/xtables-nft-multi",
		},
		{
			name:  "merged /usr: /sbin a relative link to usr/sbin",
			files: []string{"/usr/sbin/iptables-save"},
			links: map[string]string{"/sbin": "usr/sbin"},
			path:  "/sbin/iptables-save",
			want:  "/usr/sbin/iptables-save",
		},
		{
			name:  "merged /usr: /sbin an absolute link",
			files: []string{"/usr/sbin/iptables-save"},
			links: map[string]string{"/sbin": "/usr/sbin"},
			path:  "/sbin/iptables-save",
			want:  "/usr/sbin/iptables-save",
		},
		{
			name:  "an absolute link to a path outside the root stays inside it",
			links: map[string]string{"/usr/sbin/iptables-save": filepath.Join(outside, "iptables-save")},
			path:  "/usr/sbin/iptables-save",
			errIs: os.ErrNotExist,
		},
		{
			name:  "a relative link climbing above the root stays inside it",
			files: []string{"/iptables-save"},
			links: map[string]string{"/usr/sbin/iptables-save": "../../../../../../iptables-save"},
			path:  "/usr/sbin/iptables-save",
			want:  "/iptables-save",
		},
		{
			name:  "a dangling link",
			links: map[string]string{"/usr/sbin/iptables-save": "/etc/alternatives/iptables-save"},
			path:  "/usr/sbin/iptables-save",
			errIs: os.ErrNotExist,
		},
		{
			name:  "a loop",
			links: map[string]string{"/usr/sbin/a": "b", "/usr/sbin/b": "a"},
			path:  "/usr/sbin/a",
			errIs: syscall.ELOOP,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(outside, "iptables-save"), nil, 0o755); err != nil {
				t.Fatal(err)
			}
			root := nodeRoot(t, tc.files, tc.links)
			got, err := ResolveInRoot(root, tc.path)
			if tc.errIs != nil {
				if !errors.Is(err, tc.errIs) {
					t.Fatalf("ResolveInRoot(%s) = %q, %v; want an error that is %v", tc.path, got, err, tc.errIs)
				}
				return
			}
			if err != nil || got != filepath.Join(root, tc.want) {
				t.Fatalf("ResolveInRoot(%s) = %q, %v; want %q", tc.path, got, err, filepath.Join(root, tc.want))
			}
		})
	}
}

// TestCommandInRootFollowsAlternatives: with a root set, the binary behind
// /etc/alternatives is found and run chrooted by its path in the root.
func TestCommandInRootFollowsAlternatives(t *testing.T) {
	// The links' first hop is where no machine has one: resolved outside
	// the root, they lead nowhere.
	const firstHop = "/etc/cnichain-test-alternatives/iptables-save"
	if _, err := os.Stat(firstHop); err == nil {
		t.Fatalf("%s exists on this machine: the test proves nothing", firstHop)
	}
	root := nodeRoot(t, []string{"/usr/sbin/xtables-nft-multi"}, map[string]string{
		"/usr/sbin/iptables-nft-save": "xtables-nft-multi",
		firstHop:                      "/usr/sbin/iptables-nft-save",
		"/usr/sbin/iptables-save":     firstHop,
	})
	t.Cleanup(func() { SetRoot("") })
	SetRoot(root)
	cmd := command("iptables-save", "-t", "nat")
	if cmd.Err != nil {
		t.Fatalf("command: %v", cmd.Err)
	}
	if cmd.Path != "/usr/sbin/iptables-save" || cmd.SysProcAttr == nil || cmd.SysProcAttr.Chroot != root {
		t.Fatalf("command runs %s chrooted into %+v; want /usr/sbin/iptables-save chrooted into %s", cmd.Path, cmd.SysProcAttr, root)
	}
	if cmd := command("ip6tables-save"); cmd.Err == nil {
		t.Fatalf("a binary the root lacks was found: %s", cmd.Path)
	}
}
