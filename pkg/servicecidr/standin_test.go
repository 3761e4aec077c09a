package servicecidr

import (
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// standIn plays the API server's part over TLS, answering as handle
// does; the client trusts it through a CA file and sends the token of a
// file, as in a pod.
type standIn struct {
	server *httptest.Server
	cfg    Config
}

func newStandIn(t *testing.T, handle http.HandlerFunc) *standIn {
	t.Helper()
	server := httptest.NewUnstartedServer(handle)
	// A client refusing the certificate is a test's point, not news.
	server.Config.ErrorLog = log.New(io.Discard, "", 0)
	server.StartTLS()
	t.Cleanup(server.Close)
	dir := t.TempDir()
	cfg := Config{BaseURL: server.URL, CAFile: filepath.Join(dir, "ca.crt"), TokenFile: filepath.Join(dir, "token")}
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw})
	if err := os.WriteFile(cfg.CAFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	s := &standIn{server: server, cfg: cfg}
	s.setToken(t, "token-1")
	return s
}

// setToken writes the token file, as the kubelet does when it rotates it.
func (s *standIn) setToken(t *testing.T, token string) {
	t.Helper()
	if err := os.WriteFile(s.cfg.TokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (s *standIn) client(t *testing.T) *Client {
	t.Helper()
	c, err := NewClient(s.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeEvent sends one watch event line and flushes it to the client.
func writeEvent(w http.ResponseWriter, line string) {
	w.Write([]byte(line + "\n"))
	w.(http.Flusher).Flush()
}
