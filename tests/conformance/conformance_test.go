// The official Gateway API conformance suite, run against Weft.
//
// This file only calls the suite: every flag (-gateway-class, -conformance-profiles,
// -supported-features, -namespace-labels, -report-output, ...) is the suite's own, and
// `cargo xtask conformance` passes them. Nothing here changes what a test checks.
package conformance

import (
	"testing"

	"sigs.k8s.io/gateway-api/conformance"
)

func TestConformance(t *testing.T) {
	conformance.RunConformance(t)
}
