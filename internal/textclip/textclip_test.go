package textclip

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCut(t *testing.T) {
	if got := Cut("short", 10, "…"); got != "short" {
		t.Errorf("short text: %q", got)
	}
	s := "xx" + strings.Repeat("€", 100) // 3 bytes each: cuts fall mid-rune
	for n := 5; n < 40; n++ {
		got := Cut(s, n, "…")
		if len(got) > n || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
			t.Errorf("Cut(%d) = %q (%d bytes)", n, got, len(got))
		}
	}
}
