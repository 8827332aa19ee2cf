# Conventions: `make ci` is exactly what .ci/run does; `make lint` keeps fmt and clippy clean.
.PHONY: ci test demo lint world world-down release

ci: test

test:
	scripts/test

world:
	scripts/testworld up

world-down:
	scripts/testworld down

# Both static binaries and SHA256SUMS in target/dist/release/ (scripts/release).
release:
	scripts/release

lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
