#!/bin/sh
# Runs every Go fuzz target in the module for FUZZTIME each (default 60s).
set -eu
FUZZTIME=${FUZZTIME:-60s}
status=0
for dir in $(go list -f '{{.Dir}}' ./...); do
	pkg=$(go list "$dir")
	for t in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
		echo "== $pkg $t ($FUZZTIME)"
		go test -run '^$' -fuzz "^$t\$" -fuzztime "$FUZZTIME" "$pkg" || status=1
	done
done
exit $status
