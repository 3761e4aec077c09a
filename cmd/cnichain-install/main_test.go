package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRunServiceCIDRsRefuses: -service-cidrs asks for what cannot be done
// with a conflist without macvlan-host-route, or outside a pod: an error
// naming why, before the conflist is installed.
func TestRunServiceCIDRsRefuses(t *testing.T) {
	src, binDir, confDir := t.TempDir(), t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "macvlan-host-route"), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) string {
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	bridge := write("10-bridge.conflist", `{"cniVersion":"1.1.0","name":"b","plugins":[{"type":"bridge"}]}`)
	macvlan := write("30-macvlan.conflist", `{"cniVersion":"1.1.0","name":"m","plugins":[{"type":"macvlan"},{"type":"macvlan-host-route"}]}`)
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	for conflist, want := range map[string]string{
		bridge:  `-service-cidrs with -conflist ` + bridge + `: conflist has no "macvlan-host-route" plugin`,
		macvlan: `-service-cidrs with -conflist ` + macvlan + `: KUBERNETES_SERVICE_HOST "", KUBERNETES_SERVICE_PORT`,
	} {
		if _, err := run(src, binDir, conflist, "", confDir, true); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("run with %s: %v, want an error containing %q", filepath.Base(conflist), err, want)
		}
	}
	if entries, _ := os.ReadDir(confDir); len(entries) != 0 {
		t.Errorf("%s holds %v, want no conflist installed", confDir, entries)
	}
}

// TestAlongside: when the work (the agent) fails, the keeper is stopped
// and has returned before alongside does, so main's os.Exit cuts no write
// short; when the work ends with the context, so does the keeper.
func TestAlongside(t *testing.T) {
	for _, tt := range []struct {
		name    string
		work    func(ctx context.Context, stop context.CancelFunc) error
		wantErr error
	}{
		{"the agent fails", func(context.Context, context.CancelFunc) error { return errAgent }, errAgent},
		{"a signal ends both", func(ctx context.Context, stop context.CancelFunc) error {
			stop()
			<-ctx.Done()
			return nil
		}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			var returned atomic.Bool
			keep := func(ctx context.Context) {
				<-ctx.Done()
				time.Sleep(20 * time.Millisecond) // a write being finished
				returned.Store(true)
			}
			err := alongside(ctx, stop, keep, func(ctx context.Context) error { return tt.work(ctx, stop) })
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("alongside = %v, want %v", err, tt.wantErr)
			}
			if !returned.Load() {
				t.Error("alongside returned before the keeper did")
			}
		})
	}
	if err := alongside(context.Background(), func() {}, nil, func(context.Context) error { return nil }); err != nil {
		t.Errorf("without a keeper: %v", err)
	}
}

var errAgent = errors.New("agent: netlink: permission denied")
