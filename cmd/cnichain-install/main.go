// cnichain-install is the installer image's entry point: it copies the
// plugins into the node's CNI binary directory and, when given one, a
// conflist into its configuration directory, each atomically and only when
// different; then, as a DaemonSet's container, it runs the node agent
// (-agent: it puts back what a firewall reload takes of the pods' rules and
// routes) or sleeps (-sleep), so the pod stays running. With
// -service-cidrs it keeps, meanwhile, the conflist's macvlan-host-route
// viaNode in step with the cluster's ServiceCIDRs.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync"
	"syscall"

	"github.com/cnichain/plugins/internal/agentcmd"
	"github.com/cnichain/plugins/pkg/install"
	"github.com/cnichain/plugins/pkg/servicecidr"
)

// Where the image holds the plugins, and where the DaemonSet mounts the
// node's directories (deploy/).
const (
	defaultSrc     = "/opt/cnichain/bin"
	defaultBinDir  = "/host/opt/cni/bin"
	defaultConfDir = "/host/etc/cni/net.d"
)

// pluginMode is every installed plugin's.
const pluginMode = 0o755

func main() {
	src := flag.String("src", defaultSrc, "the plugins to install (in the image)")
	binDir := flag.String("bin-dir", defaultBinDir, "the node's CNI binary directory, as mounted")
	conflist := flag.String("conflist", "", "a conflist to install too (e.g. from a ConfigMap); none by default")
	confDir := flag.String("conf-dir", defaultConfDir, "the node's CNI configuration directory, as mounted")
	conflistName := flag.String("conflist-name", "", "the file name to install the conflist under (default: its own);\n"+
		"with a ConfigMap key per node (-conflist=/config/$(NODE_NAME).conflist) every node's file has one name")
	sleep := flag.Bool("sleep", false, "after installing, sleep until terminated (as a DaemonSet's container)")
	runAgent := flag.Bool("agent", false, "after installing, run the node agent until terminated (its flags follow)")
	serviceCIDRs := flag.Bool("service-cidrs", false, "keep the installed conflist's macvlan-host-route viaNode in step with the cluster's\n"+
		"ServiceCIDRs (networking.k8s.io/v1, list and watch): its own viaNode and theirs, rewritten on every\n"+
		"change; needs -conflist, and -agent or -sleep to keep running. Only the families (IPv4, IPv6) the\n"+
		"pods have are taken, for the plugin refuses a range of a family its pod lacks: those the conflist's\n"+
		"ipam gives them (host-local ranges, static-ipam addresses), else those of the plugin's own viaNode,\n"+
		"else every family the cluster has; a range overlapping the ipam's subnets is left out too")
	verify := flag.Bool("verify", false, "install nothing: exit 0 when the node holds these plugins, else name\n"+
		"those it lacks and exit 1 (the DaemonSet's readiness probe: a rolling update\nmoves on once a node has the new binaries)")
	var agent agentcmd.Flags
	agent.Register(flag.CommandLine)
	flag.Parse()
	if *verify {
		differing, err := install.Differing(*src, *binDir, pluginMode)
		if err == nil && len(differing) > 0 {
			err = fmt.Errorf("not installed yet: %v", differing)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "cnichain-install:", err)
			os.Exit(1)
		}
		return
	}
	if *serviceCIDRs && (*conflist == "" || !*runAgent && !*sleep) {
		fmt.Fprintln(os.Stderr, "cnichain-install: -service-cidrs needs -conflist (whose viaNode it keeps), and -agent or -sleep (to keep running)")
		os.Exit(2)
	}
	// Registered before installing: a SIGTERM meanwhile lets the install
	// finish (no temporary file left beside a target), then ends the pod.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	keeper, err := run(*src, *binDir, *conflist, *conflistName, *confDir, *serviceCIDRs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnichain-install:", err)
		os.Exit(1)
	}
	if ctx.Err() != nil {
		return
	}
	var keep func(context.Context)
	if keeper != nil {
		keep = keeper.Run
	}
	err = alongside(ctx, stop, keep, func(ctx context.Context) error {
		if *runAgent {
			// What installing read is garbage now; the agent runs for days
			// within the container's memory limit.
			debug.FreeOSMemory()
			if err := agent.RunContext(ctx, os.Stderr); err != nil {
				return fmt.Errorf("agent: %w", err)
			}
			return nil
		}
		if *sleep {
			<-ctx.Done()
		}
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnichain-install:", err)
		os.Exit(1)
	}
}

// alongside runs work with keep (when not nil) beside it, then, whatever
// work returned, ends keep (stop cancels ctx) and waits for it: a conflist
// being written is finished, not left as a temporary file, before main
// exits.
func alongside(ctx context.Context, stop context.CancelFunc, keep func(context.Context), work func(context.Context) error) error {
	var keeping sync.WaitGroup
	if keep != nil {
		keeping.Go(func() { keep(ctx) })
	}
	err := work(ctx)
	stop()
	keeping.Wait()
	return err
}

// run installs the plugins and the conflist, if any; with serviceCIDRs it
// returns the Keeper of the conflist's viaNode, to run.
func run(src, binDir, conflist, conflistName, confDir string, serviceCIDRs bool) (*servicecidr.Keeper, error) {
	results, err := install.Dir(src, binDir, pluginMode)
	for _, r := range results {
		fmt.Println(r.Outcome, r.Path)
	}
	if err != nil || conflist == "" {
		return nil, err
	}
	data, err := os.ReadFile(conflist)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return nil, err
	}
	if conflistName == "" {
		conflistName = filepath.Base(conflist)
	}
	if conflistName != filepath.Base(conflistName) || conflistName == "." || conflistName == ".." {
		return nil, fmt.Errorf("-conflist-name %q: a file name, not a path", conflistName)
	}
	target := filepath.Join(confDir, conflistName)
	var keeper *servicecidr.Keeper
	if serviceCIDRs {
		if keeper, err = servicecidr.NewKeeper(data, target, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			return nil, fmt.Errorf("-service-cidrs with -conflist %s: %w", conflist, err)
		}
		// The node gets a conflist now, API server or not.
		data = keeper.Initial()
	}
	o, err := install.File(target, data, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Println(o, target)
	return keeper, nil
}
