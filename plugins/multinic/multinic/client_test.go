package multinic

import (
	"context"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// The servers here listen on loopback in the test's own namespace.
func TestClient(t *testing.T) {
	var mu sync.Mutex
	var lastQuery string
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		lastQuery = r.URL.RawQuery
		mu.Unlock()
		if r.URL.Query().Get("podName") == "slow" {
			time.Sleep(500 * time.Millisecond)
		}
		_, _ = w.Write([]byte(sourceAnswer))
	})
	t.Run("https with caFile, and the backend's own query kept", func(t *testing.T) {
		srv := httptest.NewTLSServer(handler)
		defer srv.Close()
		caFile := filepath.Join(t.TempDir(), "ca.pem")
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
		if err := os.WriteFile(caFile, pemBytes, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := NewClient(&Config{RMURL: srv.URL + "/rm?cluster=a", CAFile: caFile, TimeoutDur: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		nets, err := c.Networks(context.Background(), "web-0", "prod")
		if err != nil || len(nets) != 2 {
			t.Fatalf("Networks = %v, %v", nets, err)
		}
		mu.Lock()
		defer mu.Unlock()
		if lastQuery != "cluster=a&podName=web-0&podNamespace=prod" {
			t.Fatalf("query = %q", lastQuery)
		}
	})
	t.Run("https without the CA is refused", func(t *testing.T) {
		srv := httptest.NewTLSServer(handler)
		defer srv.Close()
		c, _ := NewClient(&Config{RMURL: srv.URL, TimeoutDur: 30 * time.Second})
		_, err := c.Networks(context.Background(), "web-0", "")
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err = %v, want a certificate error", err)
		}
	})
	t.Run("slower than the timeout is try-again-later", func(t *testing.T) {
		srv := httptest.NewServer(handler)
		defer srv.Close()
		c, _ := NewClient(&Config{RMURL: srv.URL, TimeoutDur: 100 * time.Millisecond})
		_, err := c.Networks(context.Background(), "slow", "")
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(cniErr.Msg, "did not answer within 100ms") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("a caFile without a certificate", func(t *testing.T) {
		bad := filepath.Join(t.TempDir(), "bad.pem")
		_ = os.WriteFile(bad, []byte("not pem"), 0o600)
		_, err := NewClient(&Config{RMURL: "https://rm.example", CAFile: bad})
		var cniErr *types.Error
		if !errors.As(err, &cniErr) || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, "caFile") {
			t.Fatalf("err = %v", err)
		}
	})
}
