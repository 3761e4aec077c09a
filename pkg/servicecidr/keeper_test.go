package servicecidr

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKeeper: the installed conflist follows the ServiceCIDRs, each
// change written once, and says so in the log, naming the CIDRs written,
// with a warning at each for the CIDR of a family the conflist's own
// viaNode lacks.
func TestKeeper(t *testing.T) {
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("watch") == "" {
			io.WriteString(w, listJSON("10", kubernetesJSON))
			return
		}
		writeEvent(w, `{"type":"ADDED","object":`+objectJSON("extra", "11", "", "10.100.0.0/16")+`}`)
		<-r.Context().Done()
	})
	target := filepath.Join(t.TempDir(), "30-macvlan-hostport.conflist")
	if err := os.WriteFile(target, []byte(headline), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	k := &Keeper{Source: []byte(headline), Target: target, Client: api.client(t), Log: slog.New(slog.NewTextHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		k.Run(ctx)
		close(done)
	}()
	want := mustRewrite(t, []byte(headline), prefixes("10.96.0.0/12", "10.100.0.0/16", "fd00:10:96::/112"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := os.ReadFile(target)
		if bytes.Equal(got, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds\n%s\nwant\n%s", target, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if info, err := os.Stat(target); err != nil || info.Mode().Perm() != 0o644 {
		t.Errorf("%s: %v, %v: want mode 0644", target, info.Mode(), err)
	}
	written := linesWith(logs.String(), `msg="viaNode follows the cluster's ServiceCIDRs"`)
	// What was written: fd00:10:96::/112, left out, is warned of alone.
	wantLines := []string{`cidrs=10.96.0.0/12 conflist=` + target + ` outcome=written`,
		`cidrs=10.96.0.0/12,10.100.0.0/16 conflist=` + target + ` outcome=written`}
	if len(written) != len(wantLines) {
		t.Fatalf("log %q, want a line per change", written)
	}
	for i, line := range written {
		if !strings.Contains(line, wantLines[i]) {
			t.Errorf("log %q, want it to contain %q", line, wantLines[i])
		}
	}
	leftOut := linesWith(logs.String(), "level=WARN")
	if len(leftOut) != 2 {
		t.Fatalf("warnings %q, want one per change of the union", leftOut)
	}
	for _, line := range leftOut {
		if want := `msg="a ServiceCIDR's CIDR is left out of viaNode" error="ServiceCIDR value fd00:10:96::/112: left out of conflist plugins[1] (macvlan-host-route): IPv6, and the plugin's own viaNode lists IPv4 ranges alone`; !strings.Contains(line, want) {
			t.Errorf("warning %q, want it to contain %q", line, want)
		}
	}
}

func TestKeeperInitial(t *testing.T) {
	source := []byte(headline)
	rewritten := mustRewrite(t, source, prefixes("10.96.0.0/12"))
	for _, tt := range []struct {
		name      string
		installed []byte // nil: none
		want      []byte
	}{
		{"a new node: the source", nil, source},
		{"a restart: the last rewrite of this source stays", rewritten, rewritten},
		{"a conflist of another source: the source", []byte(`{"plugins":[{"type":"macvlan-host-route","viaNode":["10.96.0.0/12"]}]}`), source},
		{"an earlier release's rewrite, with a family the source's viaNode lacks: the source",
			[]byte(strings.Replace(string(rewritten), `"169.254.20.10/32"`, `"169.254.20.10/32",`+"\n        "+`"fd00:10:96::/112"`, 1)), source},
	} {
		t.Run(tt.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "c.conflist")
			if tt.installed != nil {
				if err := os.WriteFile(target, tt.installed, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			k := &Keeper{Source: source, Target: target}
			if got := k.Initial(); !bytes.Equal(got, tt.want) {
				t.Errorf("Initial =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

func TestNewKeeperRefuses(t *testing.T) {
	if _, err := NewKeeper([]byte(`{"plugins":[{"type":"bridge"}]}`), "/x", nil); err == nil || !strings.Contains(err.Error(), `no "macvlan-host-route" plugin`) {
		t.Errorf("a conflist without macvlan-host-route: %v", err)
	}
	bad := `{"plugins":[{"type":"macvlan"},{"type":"macvlan-host-route","viaNode":["10.96.0.0/12","169.254.0.0/16"]}]}`
	if _, err := NewKeeper([]byte(bad), "/x", nil); err == nil || !strings.Contains(err.Error(), `conflist plugins[1] (macvlan-host-route): viaNode[1] "169.254.0.0/16": holds the cloud metadata address`) {
		t.Errorf("a viaNode the plugin refuses: %v", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := NewKeeper([]byte(headline), "/x", nil); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Errorf("out of a pod: %v", err)
	}
}

// syncBuffer is a log the keeper's goroutine writes while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
