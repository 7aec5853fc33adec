# weir: see the README. Every target works from a fresh clone on Debian as root.
GO ?= go
BIN := bin

.PHONY: build test demo bench vet clean

# weir-cni is linked statically: the runtime starts it at every pod ADD, and
# a static binary starts faster (no dynamic loader, no libc; about 0.8 ms of
# a 3 ms start here) and runs on any host libc. weir-cni-rules, its rules
# helper, ships beside it (weir-cni install copies both).
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cni/cmd/weir-cni ./cni/cmd/weir-cni-rules
	$(GO) build -o $(BIN)/ ./agent/cmd/weir-agent ./agent/cmd/weirctl

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
