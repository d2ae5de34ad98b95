package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeFioVerify runs fio's nbd engine with several jobs, each on its
// own connection and region, writing with crc32c checksums and reading
// everything back to verify, at queue depth 16 with mixed block sizes.
func TestServeFioVerify(t *testing.T) {
	RequireTools(t, "fio")
	dir := t.TempDir()
	s := StartServe(t, filepath.Join(dir, "fio.img"), "fio", "--size", "64M")
	job := filepath.Join(dir, "verify.fio")
	if err := os.WriteFile(job, []byte(`[global]
ioengine=nbd
uri=`+s.URI+`
size=16m
offset_increment=16m
numjobs=4
iodepth=16
bsrange=4k-64k
bs_unaligned=0
verify=crc32c
do_verify=1
verify_fatal=1
verify_state_save=0
group_reporting=0

[randwrite-verify]
rw=randwrite

[seqwrite-verify]
stonewall
rw=write
bs=128k
`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := Run(t, 5*time.Minute, "fio", "--output-format=json", job)
	if r.Err != nil {
		t.Fatalf("fio: %v\n%s\n%s", r.Err, r.Stdout, r.Stderr)
	}
	// fio prints a line about connecting before its JSON.
	i := strings.Index(r.Stdout, "{")
	if i < 0 {
		t.Fatalf("no JSON in fio's output:\n%s\n%s", r.Stdout, r.Stderr)
	}
	out := r.Stdout[i:]
	var res struct {
		Jobs []struct {
			Name  string `json:"jobname"`
			Error int    `json:"error"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
			Read struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("fio JSON: %v\n%s", err, r.Stdout)
	}
	if len(res.Jobs) != 8 {
		t.Fatalf("fio ran %d jobs, want 8", len(res.Jobs))
	}
	for _, j := range res.Jobs {
		if j.Error != 0 || j.Write.IOBytes < 16<<20 || j.Read.IOBytes < 16<<20 {
			t.Errorf("job %s: error %d, wrote %d, verified %d bytes", j.Name, j.Error, j.Write.IOBytes, j.Read.IOBytes)
		}
	}
}
