//go:build tools

// Package tools pins the command hack/promtool.sh builds; it is never compiled.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
