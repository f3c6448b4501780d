package cluster

import (
	"slices"
	"sort"
	"sync"
	"time"
)

// The stream directory says which node carries which stream, and which
// rungs of it. Each node is the only writer of its own entries (it is their
// owner) and numbers its changes with (epoch, seq):
//
//   - epoch is the node's run: its start time in nanoseconds, carried in its
//     metadata too. A node that restarts comes back with a larger epoch, and
//     everyone drops all entries of the older one on first sight of the new
//     epoch (in its metadata or in any entry), so a restarted origin never
//     leaves stale streams behind, even before it announces anything.
//   - seq is a counter the owner bumps on every Announce and Withdraw.
//     For one (owner, stream) only a larger seq replaces the entry, so
//     stale broadcasts still in flight, and replays, are ignored.
//
// A withdrawn stream stays as a tombstone for a while, so an older announce
// cannot bring it back. Entries of a node that memberlist declares dead or
// left are dropped at once, and its epoch is remembered for a while so its
// last broadcasts still in flight are refused.
//
// Nobody but the owner can be trusted to know its state, so a node that
// hears a claim about itself that is not what it holds (a newer seq or a
// newer epoch: a forgery, or a leftover of its previous run whose clock was
// ahead) answers by re-announcing the truth with a seq or epoch above the
// claim. That, with push/pull anti-entropy of the whole directory, is what
// makes every node converge.

// entry is one (owner, stream) as this node knows it.
type entry struct {
	seq       uint64
	withdrawn bool
	rungs     []string
	at        time.Time // local time of the last change, for tombstone expiry
}

// owned is one owner's entries.
type owned struct {
	epoch      uint64
	maxSeq     uint64 // the largest seq applied in this epoch
	streams    map[string]*entry
	lastMember time.Time // last sweep that found the owner a member
}

// goneMark remembers the epoch of a node that died or left.
type goneMark struct {
	epoch uint64
	at    time.Time
}

// outcome is what applying an update did.
type outcome int

const (
	applied   outcome = iota
	duplicate         // already known
	stale             // older than what is known
	refused           // from a node that died or left in that epoch
	overLimit         // too many owners or streams
	selfFixed         // a claim about this node that it corrected
)

// directory is safe for concurrent use; no method blocks on anything but
// its mutex, and none calls out while holding it.
type directory struct {
	mu     sync.Mutex
	self   string
	seq    uint64 // this node's last seq
	owners map[string]*owned
	gone   map[string]goneMark
	// floor is the largest seq of this node's expired tombstones: a
	// delta after a counter below it would miss a withdrawal.
	floor uint64
}

func newDirectory(self string, epoch uint64) *directory {
	return &directory{
		self:   self,
		owners: map[string]*owned{self: {epoch: epoch, streams: map[string]*entry{}}},
		gone:   map[string]goneMark{},
	}
}

// epoch returns this node's epoch.
func (d *directory) epoch() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.owners[d.self].epoch
}

// set records a change of this node's own entry and returns the update to
// broadcast.
func (d *directory) set(stream string, rungs []string, withdrawn bool, now time.Time) (update, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	own := d.owners[d.self]
	e := own.streams[stream]
	if e == nil {
		if withdrawn {
			return update{}, nil // nothing to withdraw
		}
		if live(own) >= MaxStreamsPerNode {
			return update{}, ErrTooManyStreams
		}
		e = &entry{}
		own.streams[stream] = e
	} else if e.withdrawn == withdrawn && slices.Equal(e.rungs, rungs) {
		return d.selfUpdate(stream, e, own.epoch), nil // unchanged: re-broadcast the same
	}
	d.seq++
	*e = entry{seq: d.seq, withdrawn: withdrawn, rungs: rungs, at: now}
	return d.selfUpdate(stream, e, own.epoch), nil
}

func (d *directory) selfUpdate(stream string, e *entry, epoch uint64) update {
	return update{owner: d.self, epoch: epoch, seq: e.seq, stream: stream, withdrawn: e.withdrawn, rungs: e.rungs}
}

func live(o *owned) int {
	n := 0
	for _, e := range o.streams {
		if !e.withdrawn {
			n++
		}
	}
	return n
}

// own returns this node's entries, tombstones included, as updates.
func (d *directory) own() []update {
	d.mu.Lock()
	defer d.mu.Unlock()
	own := d.owners[d.self]
	out := make([]update, 0, len(own.streams))
	for s, e := range own.streams {
		out = append(out, d.selfUpdate(s, e, own.epoch))
	}
	return out
}

// apply merges an update from the network. fix is set for selfFixed: the
// corrections to broadcast. newEpoch is set when this node had to move to a
// new epoch (its metadata must be gossiped again, and all its entries).
func (d *directory) apply(u update, now time.Time) (o outcome, fix []update, newEpoch bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if u.owner == d.self {
		return d.applySelf(u, now)
	}
	if g, ok := d.gone[u.owner]; ok && u.epoch <= g.epoch {
		return refused, nil, false
	}
	own := d.owners[u.owner]
	switch {
	case own == nil:
		if len(d.owners) >= maxOwners {
			return overLimit, nil, false
		}
		own = &owned{epoch: u.epoch, streams: map[string]*entry{}, lastMember: now}
		d.owners[u.owner] = own
	case u.epoch < own.epoch:
		return stale, nil, false
	case u.epoch > own.epoch:
		own.epoch, own.maxSeq = u.epoch, 0
		clear(own.streams)
	}
	e := own.streams[u.stream]
	if e != nil && u.seq <= e.seq {
		if u.seq == e.seq {
			return duplicate, nil, false
		}
		return stale, nil, false
	}
	if e == nil {
		if len(own.streams) >= MaxStreamsPerNode {
			return overLimit, nil, false
		}
		e = &entry{}
		own.streams[u.stream] = e
	}
	*e = entry{seq: u.seq, withdrawn: u.withdrawn, rungs: u.rungs, at: now}
	own.maxSeq = max(own.maxSeq, u.seq)
	return applied, nil, false
}

// applySnapshot replaces an owner's part with its own complete account of
// it: newer entries are applied, and entries it no longer lists that are
// not newer than its counter were withdrawn (their tombstones expired).
func (d *directory) applySnapshot(s snapshot, now time.Time) outcome {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.owner == d.self {
		return duplicate
	}
	if g, ok := d.gone[s.owner]; ok && s.epoch <= g.epoch {
		return refused
	}
	own := d.owners[s.owner]
	switch {
	case own == nil:
		if len(d.owners) >= maxOwners {
			return overLimit
		}
		own = &owned{epoch: s.epoch, streams: map[string]*entry{}, lastMember: now}
		d.owners[s.owner] = own
	case s.epoch < own.epoch:
		return stale
	case s.epoch > own.epoch:
		own.epoch, own.maxSeq = s.epoch, 0
		clear(own.streams)
	}
	listed := make(map[string]bool, len(s.entries))
	for _, u := range s.entries {
		listed[u.stream] = true
		e := own.streams[u.stream]
		if e != nil && u.seq <= e.seq {
			continue
		}
		if e == nil {
			if len(own.streams) >= MaxStreamsPerNode {
				continue
			}
			e = &entry{}
			own.streams[u.stream] = e
		}
		*e = entry{seq: u.seq, withdrawn: u.withdrawn, rungs: u.rungs, at: now}
	}
	if !s.delta {
		for st, e := range own.streams {
			if !listed[st] && e.seq <= s.dseq {
				delete(own.streams, st)
			}
		}
	}
	own.maxSeq = max(own.maxSeq, s.dseq)
	return applied
}

// snapshot returns this node's part for a requester that holds our run
// epoch up to counter since: the changes after since when that is enough,
// else the whole part.
func (d *directory) snapshot(epoch, since uint64) snapshot {
	d.mu.Lock()
	defer d.mu.Unlock()
	own := d.owners[d.self]
	s := snapshot{owner: d.self, epoch: own.epoch, dseq: d.seq}
	s.delta = epoch == own.epoch && since > 0 && since >= d.floor
	for st, e := range own.streams {
		if !s.delta || e.seq > since {
			s.entries = append(s.entries, update{stream: st, seq: e.seq, withdrawn: e.withdrawn, rungs: e.rungs})
		}
	}
	return s
}

// since returns what a snapshot request to owner, whose counter is dseq,
// should name: the counter we hold when we only miss later changes (a
// delta), or 0 (the whole part) when our counter is level with its and the
// digests still differ, which means a gap (or a delta left one).
func (d *directory) since(owner string, dseq uint64) (epoch, since uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	own := d.owners[owner]
	if own == nil {
		return 0, 0
	}
	if own.maxSeq < dseq {
		return own.epoch, own.maxSeq
	}
	return own.epoch, 0
}

// version returns this node's epoch, last seq and digest, for its
// metadata.
func (d *directory) version() (epoch, seq, sum uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	own := d.owners[d.self]
	return own.epoch, d.seq, partSum(own.streams)
}

// partSum digests an owner's live entries (stream and seq), independent of
// order. Tombstones are left out: they expire at different times on
// different nodes.
func partSum(streams map[string]*entry) uint64 {
	var sum uint64
	for st, e := range streams {
		if !e.withdrawn {
			sum ^= entryHash(st, e.seq)
		}
	}
	return sum
}

// applySelf handles a claim about this node.
func (d *directory) applySelf(u update, now time.Time) (outcome, []update, bool) {
	own := d.owners[d.self]
	switch {
	case u.epoch < own.epoch:
		return stale, nil, false
	case u.epoch > own.epoch:
		// A run of ours we do not know of: leave it behind. (The
		// metadata carries the new epoch at the next refresh.)
		own.epoch = u.epoch + 1
		d.seq = max(d.seq, u.seq)
		out := make([]update, 0, len(own.streams))
		for s, e := range own.streams {
			out = append(out, d.selfUpdate(s, e, own.epoch))
		}
		return selfFixed, out, true
	}
	e := own.streams[u.stream]
	switch {
	case e != nil && u.seq == e.seq && u.withdrawn == e.withdrawn:
		return duplicate, nil, false
	case e != nil && u.seq < e.seq:
		return stale, nil, false
	case e == nil && u.withdrawn:
		return duplicate, nil, false // a tombstone that expired here
	}
	// A newer claim than our truth: say the truth again, newer still.
	d.seq = max(d.seq, u.seq) + 1
	if e == nil {
		e = &entry{withdrawn: true}
		own.streams[u.stream] = e
	}
	e.seq, e.at = d.seq, now
	return selfFixed, []update{d.selfUpdate(u.stream, e, own.epoch)}, false
}

// memberEpoch records the epoch a member's metadata carries: entries of
// an older run are dropped, and a node that comes back in the same run (a
// healed partition) is accepted again.
func (d *directory) memberEpoch(name string, epoch uint64, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if name == d.self {
		return
	}
	if g, ok := d.gone[name]; ok {
		if epoch < g.epoch {
			return // an older run's metadata: ignore
		}
		delete(d.gone, name)
	}
	own := d.owners[name]
	switch {
	case own == nil:
		if len(d.owners) < maxOwners {
			d.owners[name] = &owned{epoch: epoch, streams: map[string]*entry{}, lastMember: now}
		}
	case epoch > own.epoch:
		own.epoch, own.maxSeq = epoch, 0
		clear(own.streams)
	}
}

// behind reports whether this node lacks changes of member name, whose
// metadata says (epoch, dseq, dsum): its counter is ahead of what we saw,
// or equal with a different digest. When we saw a later change than the
// metadata says, the metadata is the one behind.
func (d *directory) behind(name string, epoch, dseq, dsum uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	own := d.owners[name]
	if own == nil || name == d.self || epoch != own.epoch {
		return false
	}
	return own.maxSeq < dseq || (own.maxSeq == dseq && partSum(own.streams) != dsum)
}

// memberGone drops a dead or left member's entries and remembers its epoch.
func (d *directory) memberGone(name string, epoch uint64, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if name == d.self {
		return
	}
	if own := d.owners[name]; own != nil {
		epoch = max(epoch, own.epoch)
		delete(d.owners, name)
	}
	if len(d.gone) < 4*maxOwners {
		d.gone[name] = goneMark{epoch: epoch, at: now}
	}
}

// sweep expires tombstones, gone marks, and owners that have not been
// members for orphanTTL. isMember reports current membership.
func (d *directory) sweep(now time.Time, t timings, isMember func(string) bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, own := range d.owners {
		if name != d.self {
			if isMember(name) {
				own.lastMember = now
			} else if now.Sub(own.lastMember) > t.orphanTTL {
				delete(d.owners, name)
				continue
			}
		}
		for s, e := range own.streams {
			if e.withdrawn && now.Sub(e.at) > t.tombstoneTTL {
				if name == d.self {
					d.floor = max(d.floor, e.seq)
				}
				delete(own.streams, s)
			}
		}
	}
	for name, g := range d.gone {
		if now.Sub(g.at) > t.goneTTL {
			delete(d.gone, name)
		}
	}
}

// state returns every entry for push/pull, this node's first, within
// maxStateBytes.
func (d *directory) state() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.owners))
	for n := range d.owners {
		if n != d.self {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	names = append([]string{d.self}, names...)
	out := make([]ownerState, 0, len(names))
	size := 0
	for _, n := range names {
		own := d.owners[n]
		os := ownerState{owner: n, epoch: own.epoch, entries: make([]update, 0, len(own.streams))}
		sz := len(n) + 12
		for s, e := range own.streams {
			os.entries = append(os.entries, update{stream: s, seq: e.seq, withdrawn: e.withdrawn, rungs: e.rungs})
			sz += len(s) + 12 + 8*len(e.rungs)
			for _, r := range e.rungs {
				sz += len(r)
			}
		}
		if size+sz > maxStateBytes-64 {
			break
		}
		size += sz
		out = append(out, os)
	}
	return encodeState(out)
}

// carried returns owner → stream → rungs of live entries, for the owners
// keep accepts.
func (d *directory) carried(keep func(string) bool) map[string]map[string][]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]map[string][]string, len(d.owners))
	for name, own := range d.owners {
		if !keep(name) {
			continue
		}
		m := make(map[string][]string, len(own.streams))
		for s, e := range own.streams {
			if !e.withdrawn {
				m[s] = e.rungs
			}
		}
		out[name] = m
	}
	return out
}

// counts returns the live entries and distinct live streams among owners
// keep accepts.
func (d *directory) counts(keep func(string) bool) (entries, streams int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	seen := map[string]struct{}{}
	for name, own := range d.owners {
		if !keep(name) {
			continue
		}
		for s, e := range own.streams {
			if !e.withdrawn {
				entries++
				seen[s] = struct{}{}
			}
		}
	}
	return entries, len(seen)
}

// entryHash hashes a stream name and seq (FNV-1a, splitmix64 finish)
// without allocating.
func entryHash(stream string, seq uint64) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(stream); i++ {
		h ^= uint64(stream[i])
		h *= 1099511628211
	}
	return mix64(h ^ seq*0x9e3779b97f4a7c15)
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// digest sums the live entries of the owners keep accepts, for comparing
// two directories (tests and the simulation).
func (d *directory) digest(keep func(string) bool) (n int, sum uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for name, own := range d.owners {
		if !keep(name) {
			continue
		}
		for st, e := range own.streams {
			if !e.withdrawn {
				n++
				sum += mix64(entryHash(name, 0) ^ entryHash(st, 1))
			}
		}
	}
	return n, sum
}
