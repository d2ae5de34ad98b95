// Package textclip bounds texts that go into messages with a size limit:
// error texts, a peer's reasons. A cut text stays valid UTF-8 (a message
// decoder refuses anything else) and says that it was cut.
package textclip

import "unicode/utf8"

// Cut returns s if it has at most n bytes, else its longest prefix that
// ends on a character boundary and leaves room for mark, followed by mark.
func Cut(s string, n int, mark string) string {
	if len(s) <= n {
		return s
	}
	cut := max(n-len(mark), 0)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}
