// Package buildinfo carries the release version into each plugin's
// about-string (printed by a plugin run without CNI_COMMAND).
package buildinfo

// Version is set at link time: -ldflags "-X github.com/cnichain/plugins/pkg/buildinfo.Version=v1.2.3".
var Version = "dev"

// About returns the string skel prints for a plugin run by hand.
func About(plugin string) string {
	return "CNI " + plugin + " plugin (cnichain) " + Version
}
