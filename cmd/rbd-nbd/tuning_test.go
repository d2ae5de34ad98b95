package main

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"testing"
)

func TestWithMonitorAwake(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []string
		want []string // nil: unchanged, no restart
	}{
		{"no GODEBUG", []string{"A=1", "B=2"}, []string{"A=1", "B=2", "GODEBUG=" + monitorSetting}},
		{"other settings kept", []string{"GODEBUG=madvdontneed=1", "A=1"}, []string{"A=1", "GODEBUG=madvdontneed=1," + monitorSetting}},
		{"empty GODEBUG", []string{"GODEBUG="}, []string{"GODEBUG=" + monitorSetting}},
		{"already restarted", []string{"GODEBUG=" + monitorSetting}, nil},
		{"the user's own trace", []string{"GODEBUG=gctrace=1,schedtrace=1000"}, nil},
	} {
		got, restart := withMonitorAwake(c.in)
		if restart != (c.want != nil) || (c.want != nil && !slices.Equal(got, c.want)) {
			t.Errorf("%s: got %q (restart %v), want %q", c.name, got, restart, c.want)
		}
	}
}

func TestTuningApply(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GODEBUG", "madvdontneed=1")
	var argv0 string
	var argv, envv []string
	exec := func(a0 string, a, e []string) error {
		argv0, argv, envv = a0, a, e
		return errors.New("exec refused in this test")
	}
	var warned []error
	warn := func(err error) { warned = append(warned, err) }

	o := tuningOptions{maxProcs: 1, lowLatency: true}
	if err := o.apply(exec, warn); err != nil {
		t.Fatal(err)
	}
	if runtime.GOMAXPROCS(0) != 1 {
		t.Errorf("GOMAXPROCS = %d after --max-procs 1", runtime.GOMAXPROCS(0))
	}
	self, _ := os.Executable()
	if argv0 != self || !slices.Equal(argv, os.Args) || !slices.Contains(envv, "GODEBUG=madvdontneed=1,"+monitorSetting) {
		t.Errorf("exec(%q, %q, env with %q)", argv0, argv, envv)
	}
	if len(warned) != 1 || warned[0] == nil || warned[0].Error() != "exec refused in this test" {
		t.Errorf("a failed restart was not reported: %v", warned)
	}

	argv0 = ""
	o = tuningOptions{lowLatency: false}
	if err := o.apply(exec, warn); err != nil || argv0 != "" {
		t.Errorf("--low-latency=false: err %v, restarted %q", err, argv0)
	}
	o = tuningOptions{lowLatency: true}
	if err := o.apply(nil, warn); err != nil {
		t.Errorf("no exec (tests): %v", err)
	}
	if err := (&tuningOptions{maxProcs: -1}).apply(exec, warn); err == nil {
		t.Error("--max-procs -1 accepted")
	}
	if len(warned) != 1 {
		t.Errorf("warnings without a failed restart: %v", warned[1:])
	}
}
