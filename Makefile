# KeyGrid's two everyday commands. See README.md.
.PHONY: demo test build

# Run KeyGrid on this machine: core + agent with a private SoftHSM2 token (Ctrl-C stops).
demo:
	scripts/install-deps.sh run
	cargo build --bins --locked
	./target/debug/keygrid dev

# Install what the tests need and run the whole suite.
test:
	scripts/test.sh

build:
	cargo build --workspace --bins --locked
