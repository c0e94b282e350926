// Package check holds deploy/'s tool-backed checks that need modules the server does not: Helm's
// Go library renders and lints the chart, every rendered object is decoded strictly into its
// published Go type (k8s.io/api, Gateway API, Gateway API Inference Extension, Prometheus
// Operator) and validated against the published CRD schema where there is one, and BuildKit's
// Dockerfile linter (the rules behind `docker build --check`) lints the Dockerfiles.
//
// It is a module of its own so that the server's go.mod (and its vendored tree) stays small.
// Run it with `make test` from the repository root, or `cd deploy/check && go test ./...`.
package check
