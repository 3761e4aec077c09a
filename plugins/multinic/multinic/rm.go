package multinic

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/cnichain/plugins/pkg/cnierr"
)

// MaxBody bounds the RM's answer: a pod's networks fit in far less.
const MaxBody = 1 << 20

// Response is the RM's answer, in the Dockin format.
type Response struct {
	Code    int         `json:"code"`
	ReqID   string      `json:"reqId"`
	Message string      `json:"message"`
	Data    []RMNetwork `json:"data"`
}

// RMNetwork is one network of the pod as the RM describes it.
type RMNetwork struct {
	Type       string `json:"type"`
	PodIP      string `json:"podIp"`
	SubnetMask string `json:"subnetMask"`
	Gateway    string `json:"gateway"`
	IfName     string `json:"ifName"`
	Master     bool   `json:"master"`
}

// Network is a validated network of the plan.
type Network struct {
	Type    string       `json:"type"`
	IfName  string       `json:"ifName"`
	Address netip.Prefix `json:"address"`
	Gateway netip.Addr   `json:"gateway"`
	Master  bool         `json:"master"`
}

// ParseResponse decodes and validates an RM answer into the pod's networks,
// the master first. Every error names the entry and field at fault.
func ParseResponse(body []byte) ([]Network, error) {
	var resp Response
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, upstream("resource manager answer is not the expected JSON: %v", err)
	}
	if resp.Code != 0 {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("resource manager refused: code %d, message %q, reqId %q", resp.Code, resp.Message, resp.ReqID), "")
	}
	if len(resp.Data) == 0 {
		return nil, upstream("resource manager gave no network (reqId %q)", resp.ReqID)
	}
	var nets []Network
	masters := 0
	for i, d := range resp.Data {
		field := fmt.Sprintf("data[%d]", i)
		n := Network{Type: d.Type, IfName: d.IfName, Master: d.Master}
		if d.Type == "" || strings.ContainsAny(d.Type, "/\\") || strings.HasPrefix(d.Type, ".") {
			return nil, upstream("%s.type %q: not a network type name", field, d.Type)
		}
		if err := utils.ValidateInterfaceName(d.IfName); err != nil {
			return nil, upstream("%s.ifName %q: %s", field, d.IfName, err.Msg)
		}
		ip, err := netip.ParseAddr(d.PodIP)
		if err != nil || !ip.Is4() {
			return nil, upstream("%s.podIp %q: not an IPv4 address", field, d.PodIP)
		}
		mask, err := netip.ParseAddr(d.SubnetMask)
		bits := maskBits(mask)
		if err != nil || bits < 0 {
			return nil, upstream("%s.subnetMask %q: not a netmask such as 255.255.255.0", field, d.SubnetMask)
		}
		n.Address = netip.PrefixFrom(ip, bits)
		if d.Gateway != "" {
			gw, err := netip.ParseAddr(d.Gateway)
			if err != nil || !n.Address.Masked().Contains(gw) || gw == ip {
				return nil, upstream("%s.gateway %q: not an address inside %s other than the pod's", field, d.Gateway, n.Address.Masked())
			}
			n.Gateway = gw
		}
		for _, other := range nets {
			if other.IfName == n.IfName {
				return nil, upstream("%s.ifName %q: given to two networks", field, d.IfName)
			}
			if other.Address.Addr() == ip {
				return nil, upstream("%s.podIp %q: given to two networks", field, d.PodIP)
			}
		}
		if d.Master {
			masters++
		}
		nets = append(nets, n)
	}
	if masters != 1 {
		return nil, upstream("resource manager marked %d networks master, want exactly one", masters)
	}
	// The master first: its result is the one the runtime reads.
	for i, n := range nets {
		if n.Master {
			nets[0], nets[i] = nets[i], nets[0]
		}
	}
	return nets, nil
}

// maskBits is the prefix length of a dotted netmask, or -1.
func maskBits(mask netip.Addr) int {
	if !mask.Is4() {
		return -1
	}
	ones, bits := net.IPMask(mask.AsSlice()).Size()
	if bits == 0 {
		return -1
	}
	return ones
}

// CodeUpstream is our code for an RM answer that cannot be used as it is.
const CodeUpstream uint = 101

func upstream(format string, a ...any) *types.Error {
	return types.NewError(CodeUpstream, fmt.Sprintf(format, a...), "")
}

// Client asks the RM.
type Client struct {
	http    *http.Client
	backend *url.URL
}

// NewClient builds the RM client of cfg.
func NewClient(cfg *Config) (*Client, error) {
	u, err := url.Parse(cfg.RMURL)
	if err != nil {
		return nil, cnierr.InvalidConfig("backend", cfg.RMURL, err.Error())
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil // the RM is on the node's network; a proxy would see pod names
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, cnierr.InvalidConfig("caFile", cfg.CAFile, err.Error())
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, cnierr.InvalidConfig("caFile", cfg.CAFile, "no PEM certificate in it")
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &Client{http: &http.Client{Timeout: cfg.TimeoutDur, Transport: transport}, backend: u}, nil
}

// Networks asks the RM for the networks of a pod.
func (c *Client) Networks(ctx context.Context, podName, podNamespace string) ([]Network, error) {
	u := *c.backend
	q := u.Query()
	q.Set("podName", podName)
	if podNamespace != "" {
		q.Set("podNamespace", podNamespace)
	}
	u.RawQuery = q.Encode()
	body, err := c.get(ctx, u.String())
	if err != nil {
		return nil, err
	}
	return ParseResponse(body)
}

// Reachable reports whether the RM answers HTTP at all (for STATUS).
func (c *Client) Reachable(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.backend.String(), nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func (c *Client) get(ctx context.Context, u string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, upstream("request to the resource manager: %v", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("resource manager did not answer within %s", c.http.Timeout), "")
		}
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("resource manager unreachable: %v", err), "")
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("reading the resource manager's answer: %v", err), "")
	}
	if len(body) > MaxBody {
		return nil, upstream("resource manager answer larger than %d bytes", MaxBody)
	}
	switch {
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests:
		return nil, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("resource manager answered HTTP %d: %s", resp.StatusCode, snippet(body)), "")
	case resp.StatusCode >= 300:
		return nil, upstream("resource manager answered HTTP %d: %s", resp.StatusCode, snippet(body))
	}
	return body, nil
}

func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return fmt.Sprintf("%q", s)
}
