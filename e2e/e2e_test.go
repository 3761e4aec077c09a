// Package e2e holds the tests that span plugins: malformed and hostile
// input, the spec's verbs at every version, faults, and the soak.
package e2e

import (
	"testing"

	"github.com/cnichain/plugins/pkg/sandbox"
)

func TestMain(m *testing.M) { sandbox.Main(m) }
