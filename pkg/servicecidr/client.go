package servicecidr

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"
)

// ServiceAccountDir is where the kubelet mounts a pod's service account:
// the API server's CA (ca.crt) and the pod's bearer token (token).
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Config says where the API server is and how to trust and authenticate
// to it; tests point it at a stand-in.
type Config struct {
	// BaseURL is the API server's, such as https://10.96.0.1:443.
	BaseURL string
	// CAFile holds the certificates the API server's must chain to.
	CAFile string
	// TokenFile holds the bearer token.
	TokenFile string
}

// InCluster is a pod's Config: the `kubernetes` Service's address from
// KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT (as getenv returns
// them), the service account's CA and token.
func InCluster(getenv func(string) string) (Config, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return Config{}, fmt.Errorf("KUBERNETES_SERVICE_HOST %q, KUBERNETES_SERVICE_PORT %q: both are needed to reach the API server (set in every pod)", host, port)
	}
	return Config{
		// An IPv6 host needs its brackets: https://[fd00:10:96::1]:443.
		BaseURL:   "https://" + net.JoinHostPort(host, port),
		CAFile:    filepath.Join(ServiceAccountDir, "ca.crt"),
		TokenFile: filepath.Join(ServiceAccountDir, "token"),
	}, nil
}

// Client sends GET requests to the API server.
type Client struct {
	base      string
	caFile    string
	tokenFile string
	// trust is the HTTP client and the CA it trusts, replaced when the CA
	// file changes.
	trust atomic.Pointer[trust]
}

// trust is an HTTP client trusting the CA of pem.
type trust struct {
	pem  []byte
	http *http.Client
}

// NewClient reads the CA (and again after a request fails to verify the
// API server's certificate: the kubelet rewrites ca.crt when the cluster's
// CA rotates) and checks the URL; the token is read per request.
func NewClient(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("API server URL %q: want https://host:port", cfg.BaseURL)
	}
	c := &Client{base: strings.TrimSuffix(cfg.BaseURL, "/"), caFile: cfg.CAFile, tokenFile: cfg.TokenFile}
	if _, err := c.readCA(); err != nil {
		return nil, err
	}
	return c, nil
}

// readCA reads the CA file and, when it differs from the one trusted (or
// none is yet), trusts it from the next request on, telling whether it
// did. A CA file that cannot be read, or holds no certificate, is an
// error, and the one trusted stays.
func (c *Client) readCA() (bool, error) {
	pem, err := os.ReadFile(c.caFile)
	if err != nil {
		return false, fmt.Errorf("API server's CA: %w", err)
	}
	old := c.trust.Load()
	if old != nil && bytes.Equal(old.pem, pem) {
		return false, nil
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return false, fmt.Errorf("API server's CA %s: no PEM certificate in it", c.caFile)
	}
	transport := &http.Transport{
		// No proxy from the environment: the API server is the cluster's own.
		TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		IdleConnTimeout:       90 * time.Second,
	}
	if !c.trust.CompareAndSwap(old, &trust{pem: pem, http: &http.Client{Transport: transport, CheckRedirect: refuseRedirect}}) {
		return false, nil // another request's read won; it is as new
	}
	if old != nil {
		old.http.CloseIdleConnections()
	}
	return true, nil
}

// refuseRedirect keeps the bearer token with the API server, which never
// redirects these requests: a redirect (from whatever answers in its
// place) is an error naming where it pointed, not followed.
func refuseRedirect(req *http.Request, _ []*http.Request) error {
	return fmt.Errorf("redirected to %s: not followed, the token is the API server's alone", req.URL.Redacted())
}

// get sends GET to the API path (with its query) and returns the body of
// a 200 answer, for the caller to close; any other answer is an error
// naming the URL and what the API server said.
func (c *Client) get(ctx context.Context, path string) (io.ReadCloser, error) {
	u := c.base + path
	token, err := c.token()
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "cnichain-install")
	resp, err := c.trust.Load().http.Do(req)
	if err != nil {
		// A *url.Error: it names the method and URL.
		if isVerification(err) {
			// The cluster's CA may have rotated: the next attempt trusts
			// what ca.crt holds now.
			switch changed, rerr := c.readCA(); {
			case rerr != nil:
				err = fmt.Errorf("%w (reading the CA again: %v)", err, rerr)
			case changed:
				err = fmt.Errorf("%w (the CA file %s changed: the next attempt trusts it)", err, c.caFile)
			}
		}
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("GET %s: %w", u, statusOf(resp.StatusCode, body))
	}
	return resp.Body, nil
}

// token reads the bearer token anew: a bound service account token is
// rotated by the kubelet long before the installer ends.
func (c *Client) token() (string, error) {
	data, err := os.ReadFile(c.tokenFile)
	if err != nil {
		return "", fmt.Errorf("service account token: %w", err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return "", fmt.Errorf("service account token %s: empty", c.tokenFile)
	}
	return token, nil
}

// isVerification tells whether err is the API server's certificate failing
// to verify, as it does with a CA other than the one trusted.
func isVerification(err error) bool {
	var verify *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	return errors.As(err, &verify) || errors.As(err, &unknown)
}
