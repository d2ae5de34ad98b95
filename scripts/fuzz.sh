#!/bin/sh
# Runs every Go fuzz target in the module for FUZZTIME each (default 60s).
# It fails when a target fails, when the packages cannot be listed, and
# when it finds no target at all (a run that fuzzed nothing is no pass).
set -eu
FUZZTIME=${FUZZTIME:-60s}
# Listed first: a failing `go list` inside the for loop's word list would
# go unnoticed (set -e does not see it there).
dirs=$(go list -f '{{.Dir}}' ./...)
status=0
ran=0
for dir in $dirs; do
	pkg=$(go list "$dir")
	targets=$(cat "$dir"/*_test.go 2>/dev/null | sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' | sort -u)
	for t in $targets; do
		echo "== $pkg $t ($FUZZTIME)"
		ran=$((ran + 1))
		go test -run '^$' -fuzz "^$t\$" -fuzztime "$FUZZTIME" "$pkg" || status=1
	done
done
if [ "$ran" -eq 0 ]; then
	echo "fuzz: no fuzz target found" >&2
	exit 1
fi
echo "fuzz: $ran targets, $([ $status -eq 0 ] && echo all passed || echo some FAILED)"
exit $status
