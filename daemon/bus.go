package daemon

import (
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// bus fans events out to subscribers. It keeps the last status of every
// resource, so that it can both dump the existing objects to a new
// subscriber and turn a new status into change events for what differs,
// under one lock: a subscriber sees every event after its dump exactly once,
// in order.
type bus struct {
	now   func() time.Time
	queue int
	log   *zap.Logger

	mu     sync.Mutex
	objs   map[string]resource.Status
	subs   map[*sub]struct{}
	closed bool
}

type sub struct {
	filter string // resource name, or "" for all
	// fields are the status fields the subscriber's protocol version
	// may receive (ctlproto.StatusFieldsFor), as for a status reply.
	fields ctlproto.FieldSet
	st     *ctlproto.Stream
}

func newBus(now func() time.Time, queue int, log *zap.Logger) *bus {
	return &bus{now: now, queue: queue, log: log, objs: map[string]resource.Status{}, subs: map[*sub]struct{}{}}
}

// objects returns the per-resource objects, in the order events report them.
func objects() [4]ctlproto.ObjectKind {
	return [...]ctlproto.ObjectKind{ctlproto.ObjectResource, ctlproto.ObjectConnection, ctlproto.ObjectDisk, ctlproto.ObjectPeer}
}

// publish sends ev about resource name to the matching subscribers and
// drops those that overflow. Each subscriber gets the fields its protocol
// version may receive; a change event that its version leaves with
// nothing but the object's identity (the resource went down or came up,
// for a client older than 1.6) is not sent to it. (A change of an identity
// field alone, a new peer node id, is sent to all.) b.mu is held.
func (b *bus) publish(name string, ev ctlproto.Event) {
	if len(b.subs) == 0 {
		return
	}
	ev.Time = b.now()
	bodies := map[ctlproto.FieldSet][]byte{} // by the fields sent; one or two
	for s := range b.subs {
		if s.filter != "" && s.filter != name {
			continue
		}
		fields := ev.Fields & s.fields
		if fields != ev.Fields && ev.Kind == ctlproto.EventChange && fields&^ctlproto.ObjectIdentity(ev.Object) == 0 {
			continue
		}
		body, ok := bodies[fields]
		if !ok {
			e := ev
			e.Fields = fields
			body = e.Body().Append(nil)
			bodies[fields] = body
		}
		if !s.st.Send(body) {
			delete(b.subs, s)
			b.log.Warn("dropped an event subscriber that fell behind", zap.Int("queue", b.queue))
		}
	}
}

// create reports a new resource and its objects; get returns its status
// and runs under the bus's lock.
func (b *bus) create(name string, get func() resource.Status) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := get()
	b.objs[name] = st
	for _, o := range objects() {
		b.publish(name, ctlproto.Event{Kind: ctlproto.EventCreate, Object: o, Status: st, Fields: ctlproto.ObjectFields(o)})
	}
}

// update reports a resource's current status, which get returns under the
// bus's lock (so that concurrent updates cannot publish an older state after
// a newer one): a change event for each object with fields that differ from
// the last status. Unknown resources (not created yet, or destroyed) are
// ignored, and get is not called.
func (b *bus) update(name string, get func() resource.Status) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, ok := b.objs[name]
	if !ok {
		return
	}
	st := get()
	b.objs[name] = st
	diff := ctlproto.StatusDiff(old, st)
	for _, o := range objects() {
		if f := diff & ctlproto.ObjectFields(o); f != 0 {
			b.publish(name, ctlproto.Event{Kind: ctlproto.EventChange, Object: o, Status: st, Fields: f | ctlproto.ObjectIdentity(o)})
		}
	}
}

// destroy reports a resource's objects going away, innermost first.
func (b *bus) destroy(name string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.objs[name]
	if !ok {
		return
	}
	delete(b.objs, name)
	objs := objects()
	for i := len(objs) - 1; i >= 0; i-- {
		o := objs[i]
		b.publish(name, ctlproto.Event{Kind: ctlproto.EventDestroy, Object: o, Status: st, Fields: ctlproto.ObjectIdentity(o)})
	}
}

// hook reports a handler call or response.
func (b *bus) hook(name string, ev ctlproto.Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ev.Object = ctlproto.ObjectHelper
	ev.Status = resource.Status{Name: name}
	ev.Fields = ctlproto.Fields(ctlproto.FieldName)
	b.publish(name, ev)
}

// subscribe returns a stream that starts with the existing objects (of the
// named resource, or all) and the "exists -" marker, then follows every
// event, for a client of protocol minor version minor (the status fields
// it gets are those of its status replies, ctlproto.StatusFieldsFor). It
// returns nil after close.
func (b *bus) subscribe(filter string, minor uint8) *ctlproto.Stream {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var initial [][]byte
	now := b.now()
	fields := ctlproto.StatusFieldsFor(minor)
	for _, name := range slices.Sorted(maps.Keys(b.objs)) {
		if filter != "" && filter != name {
			continue
		}
		st := b.objs[name]
		for _, o := range objects() {
			ev := ctlproto.Event{Kind: ctlproto.EventExists, Object: o, Time: now, Status: st, Fields: ctlproto.ObjectFields(o) & fields}
			initial = append(initial, ev.Body().Append(nil))
		}
	}
	initial = append(initial, ctlproto.Event{Kind: ctlproto.EventExists, Object: ctlproto.ObjectNone, Time: now}.Body().Append(nil))
	s := &sub{filter: filter, fields: fields}
	s.st = ctlproto.NewStream(len(initial)+b.queue, func() {
		b.mu.Lock()
		delete(b.subs, s)
		b.mu.Unlock()
	})
	for _, body := range initial {
		s.st.Send(body) // fits: the queue has room for the dump
	}
	b.subs[s] = struct{}{}
	return s.st
}

// close ends every stream; later subscribes get nil.
func (b *bus) close() {
	b.mu.Lock()
	b.closed = true
	subs := slices.Collect(maps.Keys(b.subs))
	clear(b.subs)
	b.mu.Unlock()
	for _, s := range subs {
		s.st.Close()
	}
}
