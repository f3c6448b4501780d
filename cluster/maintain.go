package cluster

import (
	"context"
	"math"
	"math/rand/v2"
	"time"

	"github.com/hashicorp/memberlist"
)

// run is the node's maintenance loop: load refresh and heartbeat, snapshot
// requests, directory expiry and gauges.
func (c *Cluster) run(ctx context.Context) {
	defer c.wg.Done()
	tick := time.NewTicker(c.t.refresh)
	defer tick.Stop()
	sweepEvery := max(1, int(time.Second/c.t.refresh))
	n := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
			c.refreshMeta(true)
		case <-tick.C:
			c.numNodes.Store(int64(max(1, c.ml.NumMembers())))
			c.refreshMeta(false)
			if n++; n%sweepEvery == 0 {
				c.sweep()
			}
		}
	}
}

// refreshMeta gossips this node's metadata if it changed noticeably, if the
// heartbeat is due, or if forced.
func (c *Cluster) refreshMeta(force bool) {
	now := time.Now()
	epoch, dseq, dsum := c.dir.version()
	c.mu.Lock()
	c.self.epoch, c.self.dseq, c.self.dsum = epoch, dseq, dsum
	since := now.Sub(c.sentAt)
	due := force || since >= c.heartbeat() ||
		(since >= c.t.minUpdate && metaMoved(c.sentMeta, c.self)) ||
		(since >= c.minUpdate() && metaChanged(c.sentMeta, c.self))
	if due {
		c.self.beat++
		c.sentMeta, c.sentAt = c.self, now
	}
	c.mu.Unlock()
	if !due {
		return
	}
	// UpdateNode waits until the broadcast has been sent as often as it
	// will be; the short timeout only stops the wait, not the broadcast.
	_ = c.ml.UpdateNode(time.Millisecond)
}

// metaBytes is about what one metadata update costs on the wire: the
// encoded metadata (about 120 bytes) in memberlist's alive message.
const metaBytes = 200

// minUpdate is the least time between two metadata updates of this node.
// Every update is an alive message that each node passes on up to
// RetransmitMult·⌈log10(N+1)⌉ times, so N nodes updating every g seconds
// cost each node N/g × that × metaBytes per second. g is chosen so that
// this stays within half of a node's gossip budget (GossipNodes packets of
// UDPBufferSize bytes per GossipInterval), leaving the rest to the
// directory and to memberlist: 5 s up to about 100 nodes, 23 s at 200,
// 68 s at 600 (lan profile). See docs/cluster.md.
func (c *Cluster) minUpdate() time.Duration {
	n := c.numNodes.Load()
	limit := int64(c.retransmit) * int64(math.Ceil(math.Log10(float64(n+1))))
	g := time.Duration(n * limit * metaBytes * int64(time.Second) / max(1, c.gossipBudget))
	return max(c.t.minUpdate, g)
}

// heartbeat is how often the metadata goes out even unchanged: the
// profile's, or three update gaps in a large cluster.
func (c *Cluster) heartbeat() time.Duration { return max(c.t.heartbeat, 3*c.minUpdate()) }

// metaMoved reports whether anything but the load changed: the directory
// counter or digest, draining, an address. Those go out after the
// profile's gap, however large the cluster: they are rare, and a stale
// digest delays repair.
func metaMoved(a, b metaWire) bool {
	a.Load, b.Load = Load{}, Load{}
	a.beat, b.beat = 0, 0
	return a != b
}

// metaChanged reports whether b differs enough from a to gossip now: any
// field but the load; viewers by 2 % of capacity (at least 1), capacity,
// egress by 10 %, CPU by 0.05. Every update is an alive message that every
// node passes on, so the load is gossiped coarsely (see docs/cluster.md).
func metaChanged(a, b metaWire) bool {
	la, lb := a.Load, b.Load
	a.Load, b.Load = Load{}, Load{}
	a.beat, b.beat = 0, 0
	if a != b || la.Capacity != lb.Capacity {
		return true
	}
	if d := la.Viewers - lb.Viewers; max(d, -d) >= max(1, lb.Capacity/50) {
		return true
	}
	if math.Abs(la.CPU-lb.CPU) >= 0.05 {
		return true
	}
	d := math.Abs(float64(la.EgressBps - lb.EgressBps))
	return d > 0.1*float64(max(la.EgressBps, lb.EgressBps))
}

// askBehind asks members whose metadata says we missed some of their
// changes for a snapshot, once we have been behind for two resync
// intervals (broadcasts in flight usually close the gap sooner), at most
// once per interval each and one a sweep.
func (c *Cluster) askBehind(now time.Time) {
	type cand struct {
		name            string
		epoch, seq, sum uint64
	}
	var cands []cand
	c.mu.Lock()
	for name, rec := range c.members {
		if rec.alive && name != c.name && rec.metaErr == "" {
			cands = append(cands, cand{name, rec.meta.epoch, rec.meta.dseq, rec.meta.dsum})
		}
	}
	c.mu.Unlock()
	var asks []cand
	for _, k := range cands {
		behind := c.dir.behind(k.name, k.epoch, k.seq, k.sum)
		c.mu.Lock()
		if rec := c.members[k.name]; rec != nil {
			switch {
			case !behind:
				rec.behindAt = time.Time{}
			case rec.behindAt.IsZero():
				rec.behindAt = now
			case now.Sub(rec.behindAt) >= 2*c.t.resync && now.Sub(rec.askedAt) >= c.t.resync:
				rec.askedAt = now
				asks = append(asks, k)
			}
		}
		c.mu.Unlock()
	}
	if len(asks) >= bulkBehind {
		// Behind on many (a healed partition, a mass join): one push/pull
		// of the whole state with one of them is cheaper than many
		// snapshots, and repeated it converges like any anti-entropy.
		c.mu.Lock()
		due := now.Sub(c.lastPushPull) >= 2*c.t.resync
		if due {
			c.lastPushPull = now
		}
		c.mu.Unlock()
		if due {
			select {
			case c.pushPull <- asks[rand.IntN(len(asks))].name:
			default:
			}
		}
	}
	for i, k := range asks {
		if i >= maxAsksPerSweep {
			// Not asked after all: next sweep.
			c.mu.Lock()
			if rec := c.members[k.name]; rec != nil {
				rec.askedAt = time.Time{}
			}
			c.mu.Unlock()
			continue
		}
		c.askSnapshot(k.name, k.seq)
	}
}

// maxAsksPerSweep bounds the snapshot requests a node sends per second:
// snapshots are the fallback for lost broadcasts and healed partitions,
// not the way news travels.
const maxAsksPerSweep = 1

// bulkBehind is how many members a node must be behind on before it also
// repairs with a push/pull, at most once per two resync intervals.
const bulkBehind = 8

// snapshotRate bounds the bytes of snapshots a node sends per second, so
// that many nodes asking at once cost it a bounded rate; requests that do
// not fit the queue are dropped and asked again later.
const snapshotRate = 2 << 20

// askSnapshot asks member name for its snapshot (UDP, best effort: the
// next heartbeat asks again).
func (c *Cluster) askSnapshot(name string, dseq uint64) {
	if node := c.node(name); node != nil {
		epoch, since := c.dir.since(name, dseq)
		if err := c.ml.SendBestEffort(node, encodeResync(resync{requester: c.name, epoch: epoch, since: since})); err == nil {
			c.m.gossip.WithLabelValues("out", kindNameResync).Inc()
		}
	}
}

// sendSnapshots sends this node's snapshot to the members that asked, over
// TCP (it may be large), one at a time, and does the push/pulls askBehind
// wants; a slow peer delays only this goroutine.
func (c *Cluster) sendSnapshots(ctx context.Context) {
	defer c.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return

		case name := <-c.pushPull:
			if node := c.node(name); node != nil {
				// A join with a member is a push/pull of the whole state.
				if _, err := c.ml.Join([]string{node.Address()}); err == nil {
					c.m.gossip.WithLabelValues("out", kindNameState).Inc()
				}
			}
		case q := <-c.sendCh:
			node := c.node(q.requester)
			if node == nil {
				continue
			}
			msg := encodeSnapshot(c.dir.snapshot(q.epoch, q.since))
			if err := c.ml.SendReliable(node, msg); err != nil {
				c.log.Debug("snapshot not sent", "member", q.requester, "error", err)
				continue
			}
			c.m.gossip.WithLabelValues("out", kindNameSnapshot).Inc()
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Duration(len(msg)) * time.Second / snapshotRate):
			}
		}
	}
}

// node returns a memberlist node to send to, from the copy the events left
// (memberlist's own Node values change under its lock).
func (c *Cluster) node(name string) *memberlist.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	rec := c.members[name]
	if rec == nil || !rec.alive || name == c.name {
		return nil
	}
	return &memberlist.Node{Name: rec.name, Addr: rec.ip, Port: rec.port}
}

// sweep expires old state and updates the gauges.
func (c *Cluster) sweep() {
	now := time.Now()
	alive := map[string]bool{}
	counts := map[State]int{}
	c.mu.Lock()
	for name, rec := range c.members {
		if !rec.alive && now.Sub(rec.goneAt) > c.t.deadLinger {
			delete(c.members, name)
			continue
		}
		alive[name] = rec.alive
		switch {
		case !rec.alive:
			counts[StateDead]++
		case name != c.name && now.Sub(rec.lastBeat) > 3*c.heartbeat():
			counts[StateSuspect]++
		default:
			counts[StateAlive]++
		}
	}
	c.mu.Unlock()
	for _, s := range []State{StateAlive, StateSuspect, StateDead} {
		c.m.members.WithLabelValues(string(s)).Set(float64(counts[s]))
	}
	c.dir.sweep(now, c.t, func(n string) bool { return alive[n] })
	c.askBehind(now)
	entries, streams := c.dir.counts(func(n string) bool { return alive[n] })
	c.m.entries.Set(float64(entries))
	c.m.streams.Set(float64(streams))
	if c.queue.NumQueued() > maxQueued { // Prune needs a queue that was used
		c.queue.Prune(maxQueued)
	}
}

// maxQueued bounds the broadcast queue; the oldest go first (push/pull
// repairs what they would have carried).
const maxQueued = 2 * MaxStreamsPerNode
