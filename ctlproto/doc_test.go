package ctlproto

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDocsListTheRegistry keeps docs/ctlproto.md, from which clients in
// other languages are written, in step with the registry: every tag,
// message type and error code must be in its tables with its number (and a
// tag with its type).
func TestDocsListTheRegistry(t *testing.T) {
	text, err := os.ReadFile("../docs/ctlproto.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| (\\d+) \\| `([^`]+)` \\| ([^|]*)\\|")
	rows := map[string][]string{} // name -> "num third-column"
	for _, m := range row.FindAllStringSubmatch(string(text), -1) {
		rows[m[2]] = append(rows[m[2]], m[1]+" "+strings.TrimSpace(m[3]))
	}
	has := func(name, num, third string) bool {
		for _, r := range rows[name] {
			n, col, _ := strings.Cut(r, " ")
			if n == num && strings.HasPrefix(col, third) {
				return true
			}
		}
		return false
	}
	reg := DefaultRegistry()
	for _, tg := range reg.Tags() {
		if !has(tg.Name, strconv.Itoa(int(tg.Num)), tg.Type.String()) {
			t.Errorf("docs/ctlproto.md lacks the row | %d | `%s` | %s", tg.Num, tg.Name, tg.Type)
		}
	}
	for _, m := range reg.Msgs() {
		if !has(m.Name, strconv.Itoa(int(m.Type)), "") {
			t.Errorf("docs/ctlproto.md lacks message type | %d | `%s` |", m.Type, m.Name)
		}
	}
	for _, c := range reg.Codes() {
		if !has(c.Name, strconv.Itoa(int(c.Code)), "") {
			t.Errorf("docs/ctlproto.md lacks error code | %d | `%s` |", c.Code, c.Name)
		}
	}
}
