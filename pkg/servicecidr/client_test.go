package servicecidr

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestInCluster(t *testing.T) {
	for _, tt := range []struct {
		host, port, wantURL, wantErr string
	}{
		{host: "10.96.0.1", port: "443", wantURL: "https://10.96.0.1:443"},
		{host: "fd00:10:96::1", port: "443", wantURL: "https://[fd00:10:96::1]:443"},
		{host: "", port: "443", wantErr: `KUBERNETES_SERVICE_HOST "", KUBERNETES_SERVICE_PORT "443": both are needed`},
		{host: "10.96.0.1", port: "", wantErr: `KUBERNETES_SERVICE_PORT ""`},
	} {
		env := map[string]string{"KUBERNETES_SERVICE_HOST": tt.host, "KUBERNETES_SERVICE_PORT": tt.port}
		cfg, err := InCluster(func(k string) string { return env[k] })
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("InCluster(%q, %q) error = %v, want one containing %q", tt.host, tt.port, err, tt.wantErr)
			}
			continue
		}
		want := Config{BaseURL: tt.wantURL, CAFile: ServiceAccountDir + "/ca.crt", TokenFile: ServiceAccountDir + "/token"}
		if err != nil || cfg != want {
			t.Errorf("InCluster(%q, %q) = %+v, %v, want %+v", tt.host, tt.port, cfg, err, want)
		}
	}
}

func TestNewClientRefuses(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not-pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		cfg     Config
		wantErr string
	}{
		{Config{BaseURL: "http://10.96.0.1:443"}, `API server URL "http://10.96.0.1:443": want https://host:port`},
		{Config{BaseURL: "https://"}, `API server URL "https://"`},
		{Config{BaseURL: "https://10.96.0.1/api"}, `API server URL "https://10.96.0.1/api"`},
		{Config{BaseURL: "https://10.96.0.1", CAFile: filepath.Join(dir, "missing")}, "API server's CA: open " + filepath.Join(dir, "missing")},
		{Config{BaseURL: "https://10.96.0.1", CAFile: notPEM}, "API server's CA " + notPEM + ": no PEM certificate in it"},
	} {
		if _, err := NewClient(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("NewClient(%+v) error = %v, want one containing %q", tt.cfg, err, tt.wantErr)
		}
	}
}

// TestGet: every request carries the token as the file holds it then (a
// rotated one the next time), and a refusal is an error naming the URL
// and what the API server said.
func TestGet(t *testing.T) {
	var tokens []string
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		tokens = append(tokens, r.Header.Get("Authorization"))
		switch r.URL.Path {
		case "/ok":
			io.WriteString(w, "fine")
		case "/forbidden":
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"servicecidrs.networking.k8s.io is forbidden: User \"system:serviceaccount:kube-system:default\" cannot list resource \"servicecidrs\"","reason":"Forbidden","code":403}`)
		default:
			w.WriteHeader(http.StatusBadGateway)
			io.WriteString(w, "<html>upstream down</html>\n")
		}
	})
	c := api.client(t)
	ctx := context.Background()
	body, err := c.get(ctx, "/ok")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(body)
	body.Close()
	if string(data) != "fine" {
		t.Errorf("body %q", data)
	}
	api.setToken(t, "token-2")
	_, err = c.get(ctx, "/forbidden")
	if want := "GET " + api.server.URL + `/forbidden: 403 Forbidden: servicecidrs.networking.k8s.io is forbidden: User "system:serviceaccount:kube-system:default"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want one containing %q", err, want)
	}
	_, err = c.get(ctx, "/proxy")
	if want := "GET " + api.server.URL + "/proxy: 502 Bad Gateway: <html>upstream down</html>"; err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
	}
	if want := []string{"Bearer token-1", "Bearer token-2", "Bearer token-2"}; strings.Join(tokens, ",") != strings.Join(want, ",") {
		t.Errorf("Authorization headers %q, want %q", tokens, want)
	}

	api.setToken(t, " \n")
	if _, err := c.get(ctx, "/ok"); err == nil || !strings.Contains(err.Error(), "service account token "+api.cfg.TokenFile+": empty") {
		t.Errorf("with an empty token: %v", err)
	}
	os.Remove(api.cfg.TokenFile)
	if _, err := c.get(ctx, "/ok"); err == nil || !strings.Contains(err.Error(), "GET "+api.server.URL+"/ok: service account token: open "+api.cfg.TokenFile) {
		t.Errorf("without a token: %v", err)
	}
	if len(tokens) != 3 {
		t.Errorf("%d requests sent without a token", len(tokens)-3)
	}
}

// TestGetRefusesRedirects: a redirect is an error naming where it
// pointed, and the token never goes there, even on the same server.
func TestGetRefusesRedirects(t *testing.T) {
	var paths []string
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.Path)
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	_, err := api.client(t).get(context.Background(), Path)
	if want := "redirected to " + api.server.URL + "/elsewhere: not followed"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want one containing %q", err, want)
	}
	if len(paths) != 1 || paths[0] != Path {
		t.Errorf("requests to %v, want %s alone", paths, Path)
	}
}

// TestGetChecksTheCA: a server whose certificate the CA did not sign is
// refused.
func TestGetChecksTheCA(t *testing.T) {
	api := newStandIn(t, func(w http.ResponseWriter, r *http.Request) { t.Error("request reached an untrusted server") })
	// httptest's servers share one certificate: another CA is made here.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"}, IsCA: true,
		BasicConstraintsValid: true, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(api.cfg.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	c := api.client(t)
	if _, err := c.get(context.Background(), Path); err == nil || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("error %v, want a certificate error", err)
	}
}

// newCA makes a CA and a certificate it signs for 127.0.0.1 (where the
// stand-ins listen): the CA's PEM, as ca.crt holds it, and the server's
// certificate.
func newCA(t *testing.T, name string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestGetRereadsTheCA: after the cluster's CA rotates (the API server's
// certificate signed by a new CA, which the kubelet writes to ca.crt), the
// request that fails to verify has the CA read again, and the next one
// trusts it; a CA file unchanged, or unreadable, changes nothing.
func TestGetRereadsTheCA(t *testing.T) {
	ca1, cert1 := newCA(t, "cluster CA 1")
	ca2, cert2 := newCA(t, "cluster CA 2")
	ca3, cert3 := newCA(t, "cluster CA 3")
	var current atomic.Pointer[tls.Certificate]
	current.Store(&cert1)
	var requests atomic.Int32
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		io.WriteString(w, "fine")
	}))
	server.Config.ErrorLog = log.New(io.Discard, "", 0)
	server.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert1},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{Certificates: []tls.Certificate{*current.Load()}}, nil
		},
	}
	server.StartTLS()
	t.Cleanup(server.Close)
	dir := t.TempDir()
	cfg := Config{BaseURL: server.URL, CAFile: filepath.Join(dir, "ca.crt"), TokenFile: filepath.Join(dir, "token")}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(cfg.TokenFile, []byte("token-1"))
	write(cfg.CAFile, ca1)
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	get := func(step, wantErr string) {
		t.Helper()
		body, err := c.get(ctx, "/ok")
		if wantErr == "" {
			if err != nil {
				t.Fatalf("%s: %v", step, err)
			}
			body.Close()
			return
		}
		if err == nil {
			body.Close()
			t.Fatalf("%s: no error, want one containing %q", step, wantErr)
		}
		if !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("%s: error %v, want one containing %q", step, err, wantErr)
		}
	}
	// rotate has the server present cert from its next connection on.
	rotate := func(cert *tls.Certificate) {
		current.Store(cert)
		server.CloseClientConnections()
	}
	get("the first CA", "")

	rotate(&cert2)
	write(cfg.CAFile, ca2)
	get("the CA rotated: the first request after", "certificate signed by unknown authority (the CA file "+cfg.CAFile+" changed: the next attempt trusts it)")
	get("the CA rotated: the next request", "")

	rotate(&cert3)
	get("a certificate of a CA not in ca.crt", "certificate signed by unknown authority")
	if _, err := c.get(ctx, "/ok"); err == nil || strings.Contains(err.Error(), "changed") {
		t.Fatalf("ca.crt unchanged: %v, want the same certificate error", err)
	}
	os.Remove(cfg.CAFile)
	get("ca.crt gone", "certificate signed by unknown authority (reading the CA again: API server's CA: open "+cfg.CAFile)
	write(cfg.CAFile, []byte("not PEM"))
	get("ca.crt not PEM", "(reading the CA again: API server's CA "+cfg.CAFile+": no PEM certificate in it)")
	write(cfg.CAFile, ca3)
	get("ca.crt written at last", "the next attempt trusts it")
	get("ca.crt written at last: the next request", "")
	if n := requests.Load(); n != 3 {
		t.Errorf("%d requests reached the server, want the 3 that trusted it", n)
	}
}
