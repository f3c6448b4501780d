package cluster

import (
	"errors"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate is memberlist's window into the cluster: metadata, directory
// broadcasts, push/pull state and membership events.
//
// Concurrency: memberlist calls these from its own goroutines, the event
// methods while holding its node lock. So each method copies what it keeps,
// takes only the cluster's own locks, never calls back into memberlist,
// and returns at once; work that needs memberlist (a resync request, a
// metadata refresh) is handed to the run loop over bounded channels.
type delegate struct{ c *Cluster }

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
)

// NodeMeta returns this node's encoded metadata. It never exceeds limit:
// Start refuses metadata that could, and a last guard drops the addresses.
func (d *delegate) NodeMeta(limit int) []byte {
	c := d.c
	c.mu.Lock()
	mw := c.self
	c.mu.Unlock()
	b := encodeMeta(mw)
	if len(b) > limit {
		c.log.Error("node metadata over the gossip limit; sending it without addresses", "bytes", len(b), "limit", limit)
		mw.HTTP, mw.WebRTC, mw.RTSP, mw.Region, mw.Zone = "", "", "", "", ""
		b = encodeMeta(mw)
	}
	c.m.gossip.WithLabelValues("out", kindNameMeta).Inc()
	return b
}

// NotifyMsg handles a user message: a directory entry, a snapshot or a
// request for one.
func (d *delegate) NotifyMsg(b []byte) { d.c.handleMessage(b) }

// GetBroadcasts hands memberlist the directory broadcasts to piggyback.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	out := d.c.queue.GetBroadcasts(overhead, limit)
	if len(out) > 0 {
		d.c.m.gossip.WithLabelValues("out", kindNameEntry).Add(float64(len(out)))
	}
	return out
}

// LocalState returns the whole directory for a push/pull.
func (d *delegate) LocalState(join bool) []byte {
	d.c.m.gossip.WithLabelValues("out", kindNameState).Inc()
	return d.c.dir.state()
}

// MergeRemoteState merges a peer's directory.
func (d *delegate) MergeRemoteState(buf []byte, join bool) { d.c.mergeState(buf) }

// NotifyJoin is called when a node joins or comes back (this one too).
func (d *delegate) NotifyJoin(n *memberlist.Node) { d.c.memberEvent(n, true) }

// NotifyUpdate is called when a node's metadata changes.
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.c.memberEvent(n, false) }

// NotifyLeave is called when a node is declared dead or leaves.
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.c.memberLeft(n.Name) }

// memberRec is one member as the events left it.
type memberRec struct {
	name     string
	addr     string // host:port
	ip       net.IP
	port     uint16
	meta     metaWire
	metaErr  string
	badMeta  string // the refused metadata last logged, to log it once
	alive    bool
	lastBeat time.Time // last metadata received (the load heartbeat)
	goneAt   time.Time
	joins    []time.Time // rejoins within the flap window
	flapTill time.Time
	behindAt time.Time // since when its metadata says we missed changes
	askedAt  time.Time // last snapshot asked of it
	sentAt   time.Time // last snapshot sent to it
}

// memberEvent records a join or a metadata update.
func (c *Cluster) memberEvent(n *memberlist.Node, join bool) {
	now := time.Now()
	name := n.Name
	raw := string(n.Meta)
	ip := append(net.IP(nil), n.Addr...)
	port := n.Port
	mw, err := decodeMeta(name, n.Meta)
	c.m.gossip.WithLabelValues("in", kindNameMeta).Inc()

	c.mu.Lock()
	rec := c.members[name]
	if rec == nil {
		if len(c.members) >= maxOwners && name != c.name {
			c.mu.Unlock()
			c.m.bad.WithLabelValues(reasonLimit).Inc()
			return
		}
		rec = &memberRec{name: name}
		c.members[name] = rec
	}
	rejoin := join && !rec.goneAt.IsZero() && name != c.name
	rec.ip, rec.port = ip, port
	rec.addr = net.JoinHostPort(ip.String(), strconv.Itoa(int(port)))
	rec.alive = true
	rec.goneAt = time.Time{}
	rec.lastBeat = now
	logBad := false
	if err != nil {
		rec.meta = metaWire{Meta: Meta{Name: name}}
		rec.metaErr = err.Error()
		if rec.badMeta != raw {
			rec.badMeta = raw
			logBad = true
		}
	} else {
		rec.meta, rec.metaErr, rec.badMeta = mw, "", ""
	}
	startedFlap := false
	if rejoin {
		rec.joins = append(pruneTimes(rec.joins, now.Add(-c.t.flapWindow)), now)
		if len(rec.joins) >= c.t.flapJoins {
			if !now.Before(rec.flapTill) {
				startedFlap = true
			}
			rec.flapTill = now.Add(c.t.flapWindow)
		}
	}
	c.mu.Unlock()

	if err != nil {
		c.m.bad.WithLabelValues(reasonMeta).Inc()
		if logBad {
			c.log.Warn("member metadata refused; the member is ignored for placement", "member", name, "error", err)
		}
	} else {
		// Drops entries of an older run at once; whether we are behind
		// its changes is checked by the sweep (see askBehind).
		c.dir.memberEpoch(name, mw.epoch, now)
	}
	if startedFlap {
		c.m.flaps.Inc()
		c.log.Warn("member is flapping; held out of placement", "member", name, "rejoins", c.t.flapJoins, "window", c.t.flapWindow)
	}
}

// memberLeft records a failure or departure.
func (c *Cluster) memberLeft(name string) {
	now := time.Now()
	c.mu.Lock()
	rec := c.members[name]
	var epoch uint64
	if rec != nil {
		rec.alive = false
		rec.goneAt = now
		epoch = rec.meta.epoch
	}
	c.leaveGen++
	c.mu.Unlock()
	c.dir.memberGone(name, epoch, now)
}

func pruneTimes(ts []time.Time, after time.Time) []time.Time {
	out := ts[:0]
	for _, t := range ts {
		if t.After(after) {
			out = append(out, t)
		}
	}
	return out
}

// queueSnapshot hands the sender a request for this node's snapshot, at
// most once per resync interval per requester.
func (c *Cluster) queueSnapshot(q resync) {
	now := time.Now()
	c.mu.Lock()
	rec := c.members[q.requester]
	ok := rec != nil && rec.alive && q.requester != c.name && now.Sub(rec.sentAt) >= c.t.resync
	if ok {
		rec.sentAt = now
	}
	c.mu.Unlock()
	if !ok {
		return
	}
	select {
	case c.sendCh <- q:
	default:
	}
}

// handleMessage handles one user message. It is called by memberlist's
// packet handler: it must not block, and b is only valid during the call.
func (c *Cluster) handleMessage(b []byte) {
	k, err := messageKind(b)
	if err != nil {
		c.badMessage(err, "message")
		return
	}
	switch k {
	case kindResync:
		c.m.gossip.WithLabelValues("in", kindNameResync).Inc()
		q, err := decodeResync(b)
		if err != nil {
			c.badMessage(err, "resync")
			return
		}
		c.queueSnapshot(q)
		return
	case kindSnapshot:
		c.m.gossip.WithLabelValues("in", kindNameSnapshot).Inc()
		sn, err := decodeSnapshot(b)
		if err != nil {
			c.badMessage(err, "snapshot")
			return
		}
		if o := c.dir.applySnapshot(sn, time.Now()); o != applied && o != duplicate {
			c.countOutcome(o, update{owner: sn.owner})
		}
		return
	case kindState:
		c.badMessage(errKind, "message")
		return
	}
	u, err := decodeUpdate(b)
	if err != nil {
		c.badMessage(err, "entry")
		return
	}
	c.m.gossip.WithLabelValues("in", kindNameEntry).Inc()
	o, fix, newEpoch := c.dir.apply(u, time.Now())
	switch o {
	case applied:
		// Epidemic spread: memberlist only transmits what a node queued
		// itself, so what is new to us is passed on.
		c.queueUpdate(u.owner, u.stream, append([]byte(nil), b...))
	case selfFixed:
		c.fixed(u, fix, newEpoch)
	default:
		c.countOutcome(o, u)
	}
}

// mergeState merges a push/pull state.
func (c *Cluster) mergeState(buf []byte) {
	c.m.gossip.WithLabelValues("in", kindNameState).Inc()
	us, err := decodeState(buf)
	if err != nil {
		c.badMessage(err, "state")
		return
	}
	now := time.Now()
	for _, u := range us {
		o, fix, newEpoch := c.dir.apply(u, now)
		switch o {
		case applied, duplicate:
		case selfFixed:
			c.fixed(u, fix, newEpoch)
		default:
			c.countOutcome(o, u)
		}
	}
}

func (c *Cluster) countOutcome(o outcome, u update) {
	switch o {
	case stale:
		c.m.bad.WithLabelValues(reasonStale).Inc()
	case refused:
		c.m.bad.WithLabelValues(reasonGone).Inc()
	case overLimit:
		c.m.bad.WithLabelValues(reasonLimit).Inc()
		if c.limit.allow("limit", time.Now()) {
			c.log.Warn("directory entry over a bound, dropped", "owner", u.owner, "stream", u.stream)
		}
	}
}

// fixed broadcasts the corrections of a claim about this node.
func (c *Cluster) fixed(u update, fix []update, newEpoch bool) {
	c.m.bad.WithLabelValues(reasonConflict).Inc()
	if c.limit.allow("conflict", time.Now()) {
		c.log.Warn("a claim about this node's streams that it did not make; re-announcing",
			"stream", u.stream, "seq", u.seq, "epoch", u.epoch, "new_epoch", newEpoch)
	}
	for _, f := range fix {
		c.queueUpdate(f.owner, f.stream, encodeUpdate(f))
	}
	if newEpoch {
		c.kickMeta()
	}
}

func (c *Cluster) badMessage(err error, what string) {
	reason := reasonDecode
	switch {
	case errors.Is(err, errVersion):
		reason = reasonVersion
	case errors.Is(err, errOversize), errors.Is(err, errTooMany):
		reason = reasonLimit
	}
	c.m.bad.WithLabelValues(reason).Inc()
	if c.limit.allow("bad "+reason, time.Now()) {
		c.log.Warn("bad cluster message dropped", "what", what, "reason", reason, "error", err)
	}
}
