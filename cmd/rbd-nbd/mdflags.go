package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
)

// mdFlags are the flags that create-md, dump-md and wipe-md share: where
// the data and the meta-data are.
type mdFlags struct {
	disk string
	meta string
}

func (f *mdFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.disk, "disk", "", "backing file or block device (required)")
	cmd.Flags().StringVar(&f.meta, "meta", config.MetaInternal,
		`"internal" (meta-data at the end of --disk) or the path of an external meta-data file or device`)
	_ = cmd.MarkFlagRequired("disk")
}

// internal reports whether the meta-data lives on the disk itself.
func (f *mdFlags) internal() bool { return f.meta == "" || f.meta == config.MetaInternal }

// metaName is how output names the meta-data's place.
func (f *mdFlags) metaName() string {
	if f.internal() {
		return config.MetaInternal
	}
	return f.meta
}

// where names the meta-data's place in messages.
func (f *mdFlags) where() string {
	if f.internal() {
		return f.disk + " (internal meta-data)"
	}
	return f.meta + " (external meta-data)"
}

// mdStore is an opened meta-data store: the file holding the meta-data,
// its size, and the data disk's size.
type mdStore struct {
	meta     *os.File
	metaSize int64
	diskSize int64
	files    []*os.File
}

func (s *mdStore) Close() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	s.files = nil
	return errors.Join(errs...)
}

// open opens the disk and, when external, the meta-data file; write asks
// for the meta-data store writable. Block devices are opened exclusively, so
// that a mounted file system or a running daemon makes the command fail
// rather than write under it.
func (f *mdFlags) open(write bool) (*mdStore, error) {
	if f.disk == "" {
		return nil, errors.New("--disk is required")
	}
	s := &mdStore{}
	disk, err := mdOpenDev(f.disk, write && f.internal(), false)
	if err != nil {
		return nil, err
	}
	s.files = append(s.files, disk)
	if s.diskSize, err = mdDevSize(disk); err != nil {
		s.Close()
		return nil, err
	}
	if f.internal() {
		s.meta, s.metaSize = disk, s.diskSize
		return s, nil
	}
	if same, err := sameDevice(disk, f.meta); err != nil || same {
		s.Close()
		if err == nil {
			err = fmt.Errorf("--meta %s is the data disk %s: external meta-data needs a file or device of its own (or --meta internal)", f.meta, f.disk)
		}
		return nil, err
	}
	meta, err := mdOpenDev(f.meta, write, false)
	if err != nil {
		s.Close()
		return nil, err
	}
	s.files = append(s.files, meta)
	if s.metaSize, err = mdDevSize(meta); err != nil {
		s.Close()
		return nil, err
	}
	s.meta = meta
	return s, nil
}

// sameDevice reports whether path is the file or block device that disk
// has open (through another name or a link too). A missing path is not.
func sameDevice(disk *os.File, path string) (bool, error) {
	di, err := disk.Stat()
	if err != nil {
		return false, err
	}
	pi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if os.SameFile(di, pi) {
		return true, nil
	}
	ds, ok1 := di.Sys().(*syscall.Stat_t)
	ps, ok2 := pi.Sys().(*syscall.Stat_t)
	// Two device nodes of one block device.
	return ok1 && ok2 && di.Mode()&os.ModeDevice != 0 && pi.Mode()&os.ModeDevice != 0 && ds.Rdev == ps.Rdev, nil
}

// mdOpenDev opens path for reading, or reading and writing; create makes a
// missing regular file.
func mdOpenDev(path string, write, create bool) (*os.File, error) {
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
		if create {
			flag |= os.O_CREATE
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeDevice != 0 {
			flag |= os.O_EXCL
		}
	}
	f, err := os.OpenFile(path, flag, 0o600)
	if err != nil {
		return nil, err
	}
	if write && flag&os.O_EXCL == 0 {
		// A regular file: the lock a running daemon or serve holds
		// on it (disk.Open) keeps this command from writing under it.
		if err := disk.LockFile(int(f.Fd())); err != nil {
			f.Close()
			return nil, &os.PathError{Op: "lock", Path: path, Err: err}
		}
	}
	return f, nil
}

// mdDevSize returns the size of a regular file or a block device.
func mdDevSize(f *os.File) (int64, error) {
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("%s: size: %w", f.Name(), err)
	}
	return n, nil
}

// mdParseSize parses a byte count (config.ParseSize) that fits an int64.
func mdParseSize(s string) (int64, error) {
	v, err := config.ParseSize(s)
	if err != nil {
		return 0, err
	}
	if v > 1<<62 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return int64(v), nil
}

// mdHumanBytes formats n in binary units.
func mdHumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
