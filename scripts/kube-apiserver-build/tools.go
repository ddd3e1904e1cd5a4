//go:build tools

// Package build pins the two commands scripts/test-apiserver.sh builds from k8s.io/kubernetes,
// so that `go mod tidy` keeps in go.mod and go.sum every module their build needs.
package build

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
