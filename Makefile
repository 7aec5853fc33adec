# weir: see the README. Every target works from a fresh clone on Debian as root.
GO ?= go
BIN := bin

.PHONY: build test demo bench vet clean

build:
	$(GO) build -o $(BIN)/ ./cni/cmd/weir-cni ./agent/cmd/weir-agent

vet:
	$(GO) vet ./...

test:
	hack/test.sh

demo:
	hack/demo.sh

bench:
	hack/bench.sh

clean:
	rm -rf $(BIN)
