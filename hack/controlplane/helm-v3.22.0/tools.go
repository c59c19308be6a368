//go:build tools

// Package tools pins the commands hack/envtest-assets.sh builds; it is never compiled.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
