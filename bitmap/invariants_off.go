//go:build !invariants

package bitmap

// invariantsEnabled turns on the costly self-checks (see doc.go).
const invariantsEnabled = false
