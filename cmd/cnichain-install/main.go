// cnichain-install is the installer image's entry point: it copies the
// plugins into the node's CNI binary directory and, when given one, a
// conflist into its configuration directory, each atomically and only when
// different; then, as a DaemonSet's container, it runs the node agent
// (-agent: it puts back what a firewall reload takes of the pods' rules and
// routes) or sleeps (-sleep), so the pod stays running.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"

	"github.com/cnichain/plugins/internal/agentcmd"
	"github.com/cnichain/plugins/pkg/install"
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
	if err := run(*src, *binDir, *conflist, *conflistName, *confDir); err != nil {
		fmt.Fprintln(os.Stderr, "cnichain-install:", err)
		os.Exit(1)
	}
	if *runAgent {
		// What installing read is garbage now; the agent runs for days
		// within the container's memory limit.
		debug.FreeOSMemory()
		if err := agent.Run(os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "cnichain-install: agent:", err)
			os.Exit(1)
		}
		return
	}
	if *sleep {
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
		<-stop
	}
}

func run(src, binDir, conflist, conflistName, confDir string) error {
	results, err := install.Dir(src, binDir, pluginMode)
	for _, r := range results {
		fmt.Println(r.Outcome, r.Path)
	}
	if err != nil {
		return err
	}
	if conflist == "" {
		return nil
	}
	data, err := os.ReadFile(conflist)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return err
	}
	if conflistName == "" {
		conflistName = filepath.Base(conflist)
	}
	if conflistName != filepath.Base(conflistName) || conflistName == "." || conflistName == ".." {
		return fmt.Errorf("-conflist-name %q: a file name, not a path", conflistName)
	}
	target := filepath.Join(confDir, conflistName)
	o, err := install.File(target, data, 0o644)
	if err != nil {
		return err
	}
	fmt.Println(o, target)
	return nil
}
