package integration

import (
	"os"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// TestMain removes the binaries the test world built once the tests are
// done.
func TestMain(m *testing.M) {
	code := m.Run()
	testworld.RemoveBuilds()
	os.Exit(code)
}
