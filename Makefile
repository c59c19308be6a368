# Entry points; each is documented in the README.
.PHONY: test lint crd assets demo demo-down bench build

test:            ## provision the test control plane and run every test
	hack/test.sh

lint:            ## formatting and clippy, as CI runs them
	cargo fmt --check
	cargo clippy --all-targets --locked -- -D warnings

crd:             ## regenerate the committed CRD (and the Helm chart's copy)
	cargo run --quiet -- crd > crds/inboxes.agentsend.io.yaml
	cp crds/inboxes.agentsend.io.yaml charts/inbox-operator/crds/inboxes.agentsend.io.yaml

assets:          ## build/cache etcd + kube-apiserver for tests
	hack/envtest-assets.sh

demo:            ## local control plane + simulator + operator + examples
	hack/demo.sh

demo-down:
	hack/demo.sh down

bench:           ## benchmark (not a test); figures go into BENCHMARKS.md
	hack/bench.sh --inboxes 100,1000,10000

build:
	cargo build --release
