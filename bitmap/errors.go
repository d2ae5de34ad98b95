package bitmap

import "errors"

// Sentinel errors. Test for them with errors.Is.
var (
	// ErrClosed is returned by Begin after Close.
	ErrClosed = errors.New("bitmap: activity log closed")
	// ErrBusy is returned by Close while writes are still in flight.
	ErrBusy = errors.New("bitmap: writes in flight")
	// ErrTooLarge is returned by Begin for a range that spans more extents
	// than the activity log has slots.
	ErrTooLarge = errors.New("bitmap: range spans more extents than al-extents")
	// ErrOutOfRange is returned for a range outside the data.
	ErrOutOfRange = errors.New("bitmap: range outside the data")
	// ErrMismatch is returned by Merge for a bitmap of another geometry.
	ErrMismatch = errors.New("bitmap: geometry mismatch")
	// ErrBadConfig is returned for an invalid geometry or slot table.
	ErrBadConfig = errors.New("bitmap: invalid configuration")
	// ErrJournal wraps the failure of an activity-log transaction. After
	// one, the activity log refuses every Begin: the slot table on disk is
	// no longer known, so the caller must treat the meta-data as failed.
	ErrJournal = errors.New("bitmap: activity log transaction failed")
)
