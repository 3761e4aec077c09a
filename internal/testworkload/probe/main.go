// probe is the cluster test's network workload, static and alone in the
// pods' image (busybox has no UDP server or client, and its static wget
// crashes in a root without the C library's name-service modules):
//
//	probe udp-serve PORT      answers each datagram with the pod's name and what it got
//	probe udp HOST:PORT MSG   sends MSG from a connected socket, as a resolver does; prints the answer
//	probe http URL            prints the body of a GET
//	probe http-serve PORT     answers every GET with "hello from a k8s pod" and the pod's name
//	probe dns PROTO NAME [SERVER]  resolves NAME over PROTO (udp or tcp) as the pod's
//	                          resolv.conf says (search list, ndots), or at SERVER (HOST:PORT);
//	                          prints each address
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

const timeout = 5 * time.Second

func main() {
	var err error
	switch {
	case len(os.Args) == 3 && os.Args[1] == "udp-serve":
		err = serveUDP(os.Args[2])
	case len(os.Args) == 4 && os.Args[1] == "udp":
		err = askUDP(os.Args[2], os.Args[3])
	case len(os.Args) == 3 && os.Args[1] == "http":
		err = get(os.Args[2])
	case len(os.Args) == 3 && os.Args[1] == "http-serve":
		err = serveHTTP(os.Args[2])
	case (len(os.Args) == 4 || len(os.Args) == 5) && os.Args[1] == "dns":
		err = resolve(os.Args[2], os.Args[3], os.Args[4:]...)
	default:
		fmt.Fprintln(os.Stderr, "usage: probe udp-serve PORT | probe udp HOST:PORT MESSAGE | probe http URL |\n"+
			"       probe http-serve PORT | probe dns udp|tcp NAME [SERVER:PORT]")
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func serveUDP(port string) error {
	conn, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	buf := make([]byte, 1500)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo([]byte(host+": "+string(buf[:n])), from); err != nil {
			fmt.Fprintln(os.Stderr, "probe: answering", from, err)
		}
	}
}

func askUDP(addr, message string) error {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte(message)); err != nil {
		return err
	}
	buf := make([]byte, 1500)
	n, err := conn.Read(buf)
	if err != nil {
		return fmt.Errorf("no answer from %s: %w", addr, err)
	}
	fmt.Println(string(buf[:n]))
	return nil
}

func get(url string) error {
	client := http.Client{Timeout: timeout}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}

func serveHTTP(port string) error {
	host, _ := os.Hostname()
	page := "hello from a k8s pod\n" + host + "\n"
	return http.ListenAndServe(":"+port, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, page)
	}))
}

// resolve asks over proto alone: Go's resolver would otherwise use UDP and
// fall back to TCP only for a truncated answer, and a test of TCP must not
// pass by UDP.
func resolve(proto, name string, server ...string) error {
	if proto != "udp" && proto != "tcp" {
		return fmt.Errorf("dns: protocol %q: udp or tcp", proto)
	}
	r := net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, address string) (net.Conn, error) {
		if len(server) > 0 {
			address = server[0]
		}
		var d net.Dialer
		return d.DialContext(ctx, proto, address)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	addrs, err := r.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		fmt.Println(a)
	}
	return nil
}
