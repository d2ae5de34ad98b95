package attach

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// sysBlock is where the kernel shows block devices.
const sysBlock = "/sys/block"

// DevicePath returns /dev/nbdN.
func DevicePath(index int) string { return "/dev/nbd" + strconv.Itoa(index) }

// ParseDevice accepts /dev/nbdN, nbdN or N and returns N.
func ParseDevice(s string) (int, error) {
	t := strings.TrimPrefix(strings.TrimPrefix(s, "/dev/"), "nbd")
	n, err := strconv.Atoi(t)
	if err != nil || n < 0 || n > MaxIndex || strconv.Itoa(n) != t {
		return 0, fmt.Errorf("%q is not an nbd device (want /dev/nbdN, nbdN or N)", s)
	}
	return n, nil
}

// sysDevice reads one device's sysfs attributes under root (/sys/block).
type sysDevice struct {
	root  string
	index int
}

func (d sysDevice) path(name string) string {
	return filepath.Join(d.root, "nbd"+strconv.Itoa(d.index), name)
}

func (d sysDevice) read(name string) (string, error) {
	b, err := os.ReadFile(d.path(name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// exists reports whether the kernel has the device at all.
func (d sysDevice) exists() bool {
	_, err := os.Stat(d.path(""))
	return err == nil
}

// backend is the backend identifier; "" when none was set or the device
// is not connected.
func (d sysDevice) backend() string {
	s, err := d.read("backend")
	if err != nil {
		return ""
	}
	return s
}

// pid is the task (thread) that connected the device, as the initial
// pid namespace numbers it; 0 when it is not connected (the file exists
// only while it is). It is a thread id, not a process id: the driver
// records task_pid_nr(current) of whichever thread sent NBD_CMD_CONNECT or
// NBD_DO_IT, and a Go program runs those on any of its threads (see
// processes).
func (d sysDevice) pid() int {
	s, err := d.read("pid")
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(s)
	return n
}

// processes returns the function that maps a task, a thread id from
// sysfs, to the process (thread group) it belongs to, read from "Tgid:" in
// proc/TASK/status (/proc has every thread under its id, listed or not);
// it returns 0 when that cannot be known: the task has exited (a netlink
// attach's does, the device staying) or this process is not in the
// initial pid namespace, where a sysfs thread id would name some other
// task of ours, or nothing. The namespace is looked up once, here, for
// all the tasks of one listing.
func processes(proc string) func(task int) int {
	if !initialPIDNamespace(proc) {
		return func(int) int { return 0 }
	}
	return func(task int) int {
		if task <= 0 {
			return 0
		}
		n, _ := strconv.Atoi(statusField(filepath.Join(proc, strconv.Itoa(task), "status"), "Tgid"))
		return n
	}
}

// initialPIDNamespace reports whether this process sees pids as the
// initial namespace does: "NSpid:" in proc/self/status lists one id per
// namespace level, a single one at the top. Kernels before 4.1 have no
// NSpid; they are taken to be at the top.
func initialPIDNamespace(proc string) bool {
	ns := statusField(filepath.Join(proc, "self", "status"), "NSpid")
	return len(strings.Fields(ns)) <= 1
}

// statusField returns the value of "NAME:\tVALUE" in a /proc status
// file, trimmed; "" when the file or the field is missing.
func statusField(path, name string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// size is the device's size in bytes.
func (d sysDevice) size() int64 {
	s, err := d.read("size")
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(s, 10, 64)
	return n * 512
}

func (d sysDevice) readOnly() bool {
	s, _ := d.read("ro")
	return s == "1"
}

// connections is the device's number of connections: the driver sizes
// its hardware queues to it, one directory each under mq/.
func (d sysDevice) connections() int {
	ents, err := os.ReadDir(d.path("mq"))
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil && e.IsDir() {
			n++
		}
	}
	return n
}

// devState is what compatible checks an export against: the device's
// size and mode, and what the kernel took from the first attach's
// transmission flags (it keeps them across reconnects).
type devState struct {
	size        int64
	readOnly    bool
	connections int
	// writeCache: the kernel sends FLUSH (NBD_FLAG_SEND_FLUSH); fua: it
	// sends FUA (NBD_FLAG_SEND_FUA); discard: it sends TRIM
	// (NBD_FLAG_SEND_TRIM).
	writeCache, fua, discard bool
	// blockSize is the device's logical block size, fixed at its first
	// attach (0: unknown).
	blockSize int64
}

// state reads the device's devState; what sysfs does not show counts as
// not in use.
func (d sysDevice) state() devState {
	st := devState{size: d.size(), readOnly: d.readOnly(), connections: d.connections()}
	wc, _ := d.read("queue/write_cache")
	st.writeCache = wc == "write back"
	fua, _ := d.read("queue/fua")
	st.fua = fua == "1"
	dm, _ := d.read("queue/discard_max_bytes")
	n, _ := strconv.ParseUint(dm, 10, 64)
	st.discard = n > 0
	bs, _ := d.read("queue/logical_block_size")
	st.blockSize, _ = strconv.ParseInt(bs, 10, 64)
	return st
}

// listSysDevices returns the indexes of every nbdN under root, sorted.
func listSysDevices(root string) ([]int, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var out []int
	for _, e := range ents {
		if t, ok := strings.CutPrefix(e.Name(), "nbd"); ok {
			if n, err := strconv.Atoi(t); err == nil {
				out = append(out, n)
			}
		}
	}
	sort.Ints(out)
	return out, nil
}
