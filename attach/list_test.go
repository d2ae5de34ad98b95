package attach

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// /sys/block/nbdN/pid is the thread that attached the device; List must
// report its process as pid, and the thread as task.
func TestListReportsProcessOfTask(t *testing.T) {
	sys := fakeSys(t, map[string]string{
		"nbd0/pid":     "4321\n", // a thread of process 4300
		"nbd0/size":    "2048\n",
		"nbd0/backend": "rbd-nbd:disk0@127.0.0.1:10809\n",
		"nbd1/pid":     "77\n", // the task has exited
		"nbd1/size":    "2048\n",
		"nbd2/size":    "0\n", // not connected
	}, "nbd0/mq/0")
	proc := fakeSys(t, map[string]string{
		"self/status": "Name:\trbd-nbd\nNSpid:\t10\n",
		"4321/status": "Name:\trbd-nbd\nTgid:\t4300\nNgid:\t0\nPid:\t4321\n",
	})
	h := host{dial: func() (*nlConn, error) { return nil, ErrNoNetlink }, sys: sys, proc: proc}
	ms, err := h.list(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 {
		t.Fatalf("listed %+v, want nbd0 and nbd1", ms)
	}
	if ms[0].PID != 4300 || ms[0].Task != 4321 || ms[0].Export != "disk0" || ms[0].Connections != 1 {
		t.Errorf("nbd0: %+v, want pid 4300 task 4321", ms[0])
	}
	// Nothing to map it with: the task id stands, as before.
	if ms[1].PID != 77 || ms[1].Task != 77 {
		t.Errorf("nbd1: %+v, want pid 77 task 77", ms[1])
	}
	b, err := json.Marshal(ms[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"pid":4300`, `"task":4321`, `"index":0`, `"device":"/dev/nbd0"`, `"size":1048576`, `"connections":1`, `"read_only":false`} {
		if !strings.Contains(string(b), field) {
			t.Errorf("JSON %s lacks %s", b, field)
		}
	}
}

// In a nested pid namespace a sysfs thread id (initial namespace) would
// name another task, or none: it is not mapped.
func TestProcessOfNestedNamespace(t *testing.T) {
	proc := fakeSys(t, map[string]string{
		"self/status": "Name:\trbd-nbd\nNSpid:\t5000\t12\n",
		"4321/status": "Tgid:\t4300\n",
	})
	if got := processes(proc)(4321); got != 0 {
		t.Fatalf("processOf in a nested namespace = %d, want 0", got)
	}
	top := fakeSys(t, map[string]string{"4321/status": "Tgid:\t4300\n"}) // no NSpid: before 4.1
	if got := processes(top)(4321); got != 4300 {
		t.Fatalf("processOf = %d, want 4300", got)
	}
	if got := processes(top)(0); got != 0 {
		t.Fatalf("processOf(0) = %d", got)
	}
}
