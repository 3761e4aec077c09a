// cnichain-agent puts back, within a second, what a firewall reload, a
// network manager or an admin takes of the cnichain plugins' state on a
// node (portmap-lite's rules, macvlan-host-route's sub-devices and routes),
// from their records. It runs until SIGTERM; see pkg/agent.
package main

import (
	"os"

	"github.com/cnichain/plugins/internal/agentcmd"
)

func main() { os.Exit(agentcmd.Main(os.Args[1:], os.Stderr)) }
