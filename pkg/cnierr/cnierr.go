// Package cnierr builds the CNI error objects our plugins return.
//
// Every constructor names the offending field and quotes its value, so an
// operator reading a runtime's log learns what to fix without the source.
// Values are quoted with %q: a hostile value cannot forge a second line.
package cnierr

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// CodeCheckFailed is our plugin-specific code (the spec reserves 100 and
// above for plugins) for a CHECK that found the kernel or the result not as
// ADD left it.
const CodeCheckFailed uint = 100

// InvalidConfig reports a bad value in the network configuration (code 7).
func InvalidConfig(field string, value any, reason string) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, describe(field, value, reason), "")
}

// MissingConfig reports a required configuration field that is absent (code 7).
func MissingConfig(field, reason string) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("%s: missing: %s", field, reason), "")
}

// InvalidEnv reports a bad environment variable such as CNI_ARGS (code 4).
func InvalidEnv(field string, value any, reason string) *types.Error {
	return types.NewError(types.ErrInvalidEnvironmentVariables, describe(field, value, reason), "")
}

// Decode reports input that is not the JSON it should be (code 6).
func Decode(what string, err error) *types.Error {
	return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("%s: cannot decode: %v", what, err), "")
}

// IncompatibleVersion reports a request the config's cniVersion cannot express (code 1).
func IncompatibleVersion(cniVersion, reason string) *types.Error {
	return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("cniVersion %q: %s", cniVersion, reason), "")
}

// CheckFailed reports a CHECK mismatch (code CodeCheckFailed).
func CheckFailed(format string, a ...any) *types.Error {
	return types.NewError(CodeCheckFailed, fmt.Sprintf(format, a...), "")
}

// Internal reports a failure of the node rather than of the input (code 999).
func Internal(what string, err error) *types.Error {
	return types.NewError(types.ErrInternal, fmt.Sprintf("%s: %v", what, err), "")
}

func describe(field string, value any, reason string) string {
	return fmt.Sprintf("%s %q: %s", field, fmt.Sprint(value), reason)
}

// CodeUnavailable is the spec's STATUS code 50: the plugin cannot service ADD.
const CodeUnavailable uint = 50

// Unavailable reports, from STATUS, what keeps ADD from working (code 50).
func Unavailable(format string, a ...any) *types.Error {
	return types.NewError(CodeUnavailable, fmt.Sprintf(format, a...), "")
}
