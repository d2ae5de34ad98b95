package attach

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// Grown reports one device Grow told its new size.
type Grown struct {
	Index      int
	Identifier string
	// Was and Size are the device's size before and after, in bytes.
	Was, Size int64
}

// Grow tells every connected device whose backend identifier match
// accepts that its export is now size bytes, when that is larger than the
// device (in whole blocks of the device): NBD_CMD_RECONFIGURE with
// NBD_ATTR_SIZE_BYTES and no sockets, which Linux 5.3 and later apply to
// the running device and announce as a capacity change, so that a mounted
// file system can be grown. A device as large or larger is left alone (an
// export never shrinks under a device). It fails with ErrNoNetlink on
// kernels without the netlink family, and returns the devices it grew
// with the errors of those it could not.
func Grow(ctx context.Context, match func(identifier string) bool, size int64, log *zap.Logger) ([]Grown, error) {
	return realHost.grow(ctx, match, size, log)
}

func (h host) grow(ctx context.Context, match func(string) bool, size int64, log *zap.Logger) ([]Grown, error) {
	if match == nil {
		return nil, errors.New("attach: Grow needs a match function")
	}
	if log == nil {
		log = zap.NewNop()
	}
	nl, err := h.dial()
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	ds, err := nl.status(ctx, -1)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	var grown []Grown
	var errs []error
	for _, d := range ds {
		if !d.connected {
			continue
		}
		sd := sysDevice{h.sys, d.index}
		id := sd.backend()
		if id == "" || !match(id) {
			continue
		}
		dev := sd.state()
		n := grownSize(ExportInfo{Size: size}, dev)
		if n == 0 {
			continue
		}
		if err := nl.reconfigure(ctx, d.index, id, nil, n); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", DevicePath(d.index), id, err))
			continue
		}
		log.Info("the export grew: the device grows with it (grow the file system on it, e.g. resize2fs)",
			zap.String("device", DevicePath(d.index)), zap.Int64("was", dev.size), zap.Uint64("size", n))
		grown = append(grown, Grown{Index: d.index, Identifier: id, Was: dev.size, Size: int64(n)})
	}
	return grown, errors.Join(errs...)
}
