# Entry points; each is documented in docs/contributing/development.md (the demo in the README).
.PHONY: test test-all lint lint-deploy lint-monitoring monitoring crd chart-readme docs docs-site assets demo demo-down bench build image

test:            ## provision the test control plane and run every test
	hack/test.sh

lint:            ## formatting and clippy of every workspace member, as CI runs them
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

lint-deploy:     ## hadolint the Dockerfile; helm lint; the chart renders what deploy/ holds; its README is current
	hadolint Dockerfile
	python3 hack/chart-readme.py --check
	KUBEBUILDER_ASSETS="$$(hack/envtest-assets.sh)" python3 hack/compare-helm-kustomize.py

lint-monitoring: ## promtool check/test the alerts (promtool built and cached by hack/promtool.sh); check the dashboard, runbook links and copies
	python3 hack/check-monitoring.py

monitoring:      ## copy deploy/monitoring/alerts.yaml and dashboard.json to the chart and the kustomize PrometheusRule
	python3 hack/check-monitoring.py --write

crd:             ## regenerate the three committed CRDs (and the Helm chart's copies); tests/it/crd.rs checks them
	cargo run --quiet --locked -p inbox-operator --bin inbox-operator -- crd --dir crds
	cp crds/*.agentsend.io.yaml charts/inbox-operator/files/crds/

chart-readme:    ## regenerate charts/inbox-operator/README.md from values.yaml's comments (CI checks it)
	python3 hack/chart-readme.py

docs:            ## regenerate docs/reference/ from the code (CLI, CRDs, metrics, reasons, events, annotations)
	UPDATE_DOCS=1 cargo test --quiet --locked --lib commands::reference

docs-site:       ## build the docs site into site/ (mkdocs --strict; tools pinned in docs/requirements.txt)
	hack/docs-site.sh

assets:          ## build/cache the test control plane (K8S_VERSION=1.37.2|1.33.13; prints the dir)
	hack/envtest-assets.sh $(K8S_VERSION)

test-all:        ## the whole suite on 1.37.2, then on 1.33.13 (as CI runs it)
	K8S_VERSION=1.37.2 hack/test.sh
	K8S_VERSION=1.33.13 hack/test.sh

demo:            ## local control plane (no helm) + debug operator + simulator + three examples; says what it builds, and how long
	hack/demo.sh

demo-down:       ## stop the demo (with a real key: delete its Inboxes, and their inboxes, first)
	hack/demo.sh down

bench:           ## benchmark (not a test); current figures and method in docs/performance.md
	hack/bench.sh --inboxes 100,1000,10000

build:           ## release build of the operator, the simulator and the benchmark
	cargo build --release --workspace

# The image: IMAGE names it; CONTAINER_TOOL is docker (default) or podman. The labels say
# which commit it is built from. Multi-arch: see docs/local-cluster.md (docker buildx).
IMAGE ?= inbox-operator:dev
CONTAINER_TOOL ?= docker
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
image:           ## build the operator image (IMAGE=..., CONTAINER_TOOL=docker|podman)
	$(CONTAINER_TOOL) build -t $(IMAGE) --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) .
