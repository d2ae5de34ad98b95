//go:build invariants

package metadata

// invariantsEnabled turns on the costly self-checks (see doc.go).
const invariantsEnabled = true
