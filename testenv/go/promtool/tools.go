//go:build tools

// Package tools pins the promtool command built from this module.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
