package cluster

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Cluster is this node's membership in the cluster: it gossips its
// metadata and load, keeps the stream directory, and answers placement
// questions from what it knows of every member. All methods are safe for
// concurrent use and return quickly; none does network I/O while the
// caller waits, except Leave.
type Cluster struct {
	cfg       Config
	t         timings
	name      string
	log       *slog.Logger
	m         *metrics
	limit     *limiter
	ml        *memberlist.Memberlist
	dir       *directory
	queue     *memberlist.TransmitLimitedQueue
	encrypted bool

	mu           sync.Mutex
	self         metaWire
	members      map[string]*memberRec
	leaveGen     uint64 // bumped on every NotifyLeave: seeds may need a rejoin
	sentMeta     metaWire
	sentAt       time.Time
	lastPushPull time.Time

	retransmit   int   // memberlist RetransmitMult
	gossipBudget int64 // bytes per second a node may spend on metadata updates

	numNodes atomic.Int64 // memberlist.NumMembers, for the queue (never 0)
	kick     chan struct{}
	sendCh   chan resync // snapshot requests to answer
	pushPull chan string // a member to push/pull the whole state with

	cancel context.CancelFunc
	wg     sync.WaitGroup

	stateMu sync.Mutex // orders Leave and Close
	left    bool
	closed  bool
}

// Start joins the cluster (in the background: seeds that are not up yet are
// retried) and returns at once. self describes this node; empty fields are
// filled from cfg: Name, Role, Region, Zone, and Load.Capacity (when 0).
// log gets memberlist's lines too; reg may be nil.
func Start(cfg Config, self Meta, lg *slog.Logger, reg prometheus.Registerer) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	name, err := cfg.nodeName()
	if err != nil {
		return nil, err
	}
	if self.Name != "" && self.Name != name {
		if !ValidNodeName(self.Name) {
			return nil, fmt.Errorf("cluster: name %q is not a valid node name", self.Name)
		}
		name = self.Name
	}
	self.Name = name
	self.Role = Role(cmpOr(string(self.Role), string(cfg.Role)))
	self.Region = cmpOr(self.Region, cfg.Region)
	self.Zone = cmpOr(self.Zone, cfg.Zone)
	if self.Load.Capacity == 0 {
		self.Load.Capacity = cfg.Capacity
	}
	if err := self.Validate(); err != nil {
		return nil, err
	}
	t := profiles[cfg.profile()]()
	if cfg.tune != nil {
		cfg.tune(&t)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("cluster: metrics: %w", err)
	}
	lg = lg.With("component", "cluster", "node", name)
	c := &Cluster{
		cfg: cfg, t: t, name: name, log: lg, m: m, limit: newLimiter(10 * time.Second),
		self:     metaWire{Meta: self, epoch: uint64(time.Now().UnixNano())},
		members:  map[string]*memberRec{},
		kick:     make(chan struct{}, 1),
		sendCh:   make(chan resync, 128),
		pushPull: make(chan string, 1),
	}
	if n := len(encodeMeta(c.self)); n > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("cluster: node metadata is %d bytes, over memberlist's %d", n, memberlist.MetaMaxSize)
	}
	c.dir = newDirectory(name, c.self.epoch)
	c.numNodes.Store(1)

	mc := t.base()
	mc.Name = name
	mc.Delegate = &delegate{c}
	mc.Events = &delegate{c}
	mc.Logger = log.New(mlWriter{log: lg, m: m, limit: newLimiter(5 * time.Second)}, "", 0)
	mc.Label = "cascade"
	mc.DeadNodeReclaimTime = t.deadLinger
	if key := GossipKey(cfg.Secret); key != nil {
		kr, err := memberlist.NewKeyring(nil, key)
		if err != nil {
			return nil, fmt.Errorf("cluster: keyring: %w", err)
		}
		mc.Keyring = kr
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
		c.encrypted = true
	}
	if cfg.transport != nil {
		mc.Transport = cfg.transport
	} else {
		host, port, _ := splitBind(cfg.Bind)
		mc.BindAddr, mc.BindPort = host, port
		mc.AdvertisePort = port
		if cfg.Advertise != "" {
			ah, ap, _ := splitAdvertise(cfg.Advertise)
			mc.AdvertiseAddr = ah
			if ap != 0 {
				mc.AdvertisePort = ap
			}
		}
	}
	c.retransmit = mc.RetransmitMult
	c.gossipBudget = int64(mc.GossipNodes) * int64(mc.UDPBufferSize) * int64(time.Second) / int64(max(mc.GossipInterval, time.Millisecond)) / 2
	c.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return int(c.numNodes.Load()) },
		RetransmitMult: mc.RetransmitMult,
	}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("cluster: start gossip on %s: %w", cfg.Bind, err)
	}
	c.ml = ml
	if !c.encrypted {
		lg.Warn("cluster gossip is not encrypted: set cluster.secret")
	}
	lg.Info("cluster started", "role", self.Role, "gossip", c.Addr(), "seeds", cfg.Join, "encrypted", c.encrypted)
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(3)
	go c.run(ctx)
	go c.sendSnapshots(ctx)
	go c.joinLoop(ctx)
	return c, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Name returns this node's name.
func (c *Cluster) Name() string { return c.name }

// Encrypted reports whether gossip is encrypted (cluster.secret set).
func (c *Cluster) Encrypted() bool { return c.encrypted }

// Addr returns the gossip address others reach this node at (host:port),
// which is what another node's Join takes.
func (c *Cluster) Addr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rec := c.members[c.name]; rec != nil {
		return rec.addr
	}
	return ""
}

// SetLoad records this node's load. It is gossiped within the refresh
// interval (1 s by default) when it changed noticeably, and on the
// heartbeat (5 s) otherwise. Cheap: call it as often as you like.
func (c *Cluster) SetLoad(l Load) {
	if l.Viewers < 0 || l.EgressBps < 0 || math.IsNaN(l.CPU) || l.CPU < 0 {
		return
	}
	c.mu.Lock()
	c.self.Load = l
	c.mu.Unlock()
}

// SetDraining marks this node draining (or not): it gets no new viewers,
// publishers or relays. Gossiped at once.
func (c *Cluster) SetDraining(on bool) {
	c.mu.Lock()
	c.self.Draining = on
	c.mu.Unlock()
	c.kickMeta()
}

// Announce records that this node carries stream with these rungs (names
// of renditions, "source" included; nil if unknown) and gossips it.
// Announcing again replaces the rungs.
func (c *Cluster) Announce(stream string, rungs []string) error {
	if !ValidStream(stream) {
		return ErrBadStream
	}
	if !validRungs(rungs) {
		return ErrBadRungs
	}
	rungs = slices.Clone(rungs)
	return c.setEntry(stream, rungs, false)
}

// Withdraw records that this node no longer carries stream.
func (c *Cluster) Withdraw(stream string) error {
	if !ValidStream(stream) {
		return ErrBadStream
	}
	return c.setEntry(stream, nil, true)
}

func (c *Cluster) setEntry(stream string, rungs []string, withdrawn bool) error {
	if c.isClosed() {
		return ErrClosed
	}
	u, err := c.dir.set(stream, rungs, withdrawn, time.Now())
	if err != nil || u.owner == "" {
		return err
	}
	c.queueUpdate(u.owner, u.stream, encodeUpdate(u))
	return nil
}

// queueUpdate queues a directory broadcast, replacing any queued one for
// the same owner and stream.
func (c *Cluster) queueUpdate(owner, stream string, msg []byte) {
	c.queue.QueueBroadcast(&entryBroadcast{name: owner + "\x00" + stream, msg: msg})
}

// entryBroadcast is a directory entry in memberlist's transmit queue. It is
// named by owner and stream, so a newer entry replaces a queued older one.
type entryBroadcast struct {
	name string
	msg  []byte
}

var _ memberlist.NamedBroadcast = (*entryBroadcast)(nil)

func (b *entryBroadcast) Invalidates(o memberlist.Broadcast) bool {
	nb, ok := o.(memberlist.NamedBroadcast)
	return ok && nb.Name() == b.name
}
func (b *entryBroadcast) Message() []byte { return b.msg }
func (b *entryBroadcast) Finished()       {}
func (b *entryBroadcast) Name() string    { return b.name }

// Members returns every member as this node sees it, itself included,
// sorted by name: alive and suspect ones, and dead ones for a minute.
func (c *Cluster) Members() []Member {
	now := time.Now()
	c.mu.Lock()
	out := make([]Member, 0, len(c.members))
	names := make(map[string]bool, len(c.members))
	for _, rec := range c.members {
		m := Member{Meta: rec.meta.Meta, Addr: rec.addr, MetaError: rec.metaErr}
		m.Name = rec.name
		switch {
		case rec.name == c.name:
			m.Meta = c.self.Meta
			m.State = StateAlive
		case !rec.alive:
			m.State = StateDead
		case now.Sub(rec.lastBeat) > 3*c.heartbeat():
			m.State = StateSuspect
		default:
			m.State = StateAlive
		}
		m.Flapping = now.Before(rec.flapTill)
		out = append(out, m)
		names[rec.name] = rec.alive
	}
	c.mu.Unlock()
	carried := c.dir.carried(func(n string) bool { return names[n] })
	for i := range out {
		out[i].setStreams(carried[out[i].Name])
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// View returns the body of GET /v1/cluster.
func (c *Cluster) View() View { return View{Self: c.name, Members: c.Members()} }

// Carriers returns the usable members that carry stream, with the rungs
// they announced in Member.Rungs.
func (c *Cluster) Carriers(stream string) []Member {
	var out []Member
	for _, m := range c.Members() {
		if m.Usable() && m.Carries(stream) {
			out = append(out, m)
		}
	}
	return out
}

// PlaceViewer applies PlaceViewer to the current members for this node.
func (c *Cluster) PlaceViewer(stream, region string, redirected bool) Decision {
	return PlaceViewer(c.Members(), Request{Stream: stream, Region: region, Self: c.name, Redirected: redirected})
}

// PlacePublisher applies PlacePublisher to the current members for this
// node.
func (c *Cluster) PlacePublisher(stream string, redirected bool) Decision {
	return PlacePublisher(c.Members(), Request{Stream: stream, Self: c.name, Redirected: redirected})
}

// Parent returns the node this edge should pull stream from: the origin
// that carries it, or an edge above this one in the stream's relay tree
// (see Tree). ok is false when no usable origin carries the stream, or this
// node is not a usable edge.
func (c *Cluster) Parent(stream string) (Member, bool) {
	members := c.Members()
	var origin Member
	found := false
	for _, m := range members {
		if m.Role == RoleOrigin && m.State == StateAlive && m.MetaError == "" && m.Carries(stream) {
			origin, found = m, true
			break
		}
	}
	if !found {
		return Member{}, false
	}
	return NewTree(stream, origin, members, c.cfg.MaxChildren).Parent(c.name)
}

// NumMembers returns how many members memberlist counts alive (this node
// included).
func (c *Cluster) NumMembers() int { return int(c.numNodes.Load()) }

// Leave tells the cluster this node is going, waiting up to timeout for the
// message to go out, so the others drop it and its streams at once rather
// than after failure detection. Call Close afterwards.
func (c *Cluster) Leave(timeout time.Duration) error {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.closed || c.left {
		return nil
	}
	c.left = true
	if err := c.ml.Leave(timeout); err != nil {
		return fmt.Errorf("cluster: leave: %w", err)
	}
	return nil
}

// Close stops gossip and waits for the node's goroutines. Without Leave the
// others see a failure and drop the node within seconds. Idempotent.
func (c *Cluster) Close() error {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.cancel()
	c.wg.Wait()
	if err := c.ml.Shutdown(); err != nil {
		return fmt.Errorf("cluster: shutdown: %w", err)
	}
	return nil
}

func (c *Cluster) isClosed() bool {
	c.stateMu.Lock()
	defer c.stateMu.Unlock()
	return c.closed
}

func (c *Cluster) kickMeta() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

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

// joinLoop joins the seeds, retrying with backoff those that are not
// members, so seeds not up yet are joined when they come up and a healed
// partition is merged.
func (c *Cluster) joinLoop(ctx context.Context) {
	defer c.wg.Done()
	if len(c.cfg.Join) == 0 {
		return
	}
	backoff := c.t.joinMin
	joined := map[string]uint64{} // seed address → leaveGen when joined
	failures := 0
	for {
		missing := c.missingSeeds(ctx, joined)
		wait := c.t.joinMax
		if len(missing) > 0 {
			c.mu.Lock()
			gen := c.leaveGen
			c.mu.Unlock()
			var failed []string
			var lastErr error
			for _, a := range missing {
				// One at a time: memberlist's Join does not say which
				// of several addresses answered.
				if n, err := c.ml.Join([]string{a}); n == 1 {
					joined[a] = gen
					c.m.joins.WithLabelValues("ok").Inc()
				} else {
					failed = append(failed, a)
					lastErr = err
					c.m.joins.WithLabelValues("error").Inc()
				}
				if ctx.Err() != nil {
					return
				}
			}
			if len(failed) > 0 {
				if failures == 0 || c.limit.allow("join", time.Now()) {
					c.log.Info("cluster seeds not reached yet; retrying", "seeds", failed, "error", lastErr, "retry_in", backoff)
				}
				failures++
				wait = backoff
				backoff = min(2*backoff, c.t.joinMax)
			} else {
				failures = 0
				backoff = c.t.joinMin
			}
		}
		// Jitter so that many edges do not retry in step.
		wait = time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// missingSeeds resolves the seeds and returns the addresses that are not
// alive members, not this node, and not joined since the last failure.
func (c *Cluster) missingSeeds(ctx context.Context, joined map[string]uint64) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range c.cfg.Join {
		host, port, err := splitSeed(s)
		if err != nil {
			continue
		}
		var ips []string
		if ip := net.ParseIP(host); ip != nil {
			ips = []string{ip.String()}
		} else {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			addrs, err := net.DefaultResolver.LookupHost(rctx, host)
			cancel()
			if err != nil {
				if c.limit.allow("resolve "+host, time.Now()) {
					c.log.Info("cluster seed does not resolve yet", "seed", s, "error", err)
				}
				continue
			}
			ips = addrs
		}
		for _, ip := range ips {
			a := net.JoinHostPort(ip, strconv.Itoa(port))
			if seen[a] || len(out) >= maxSeeds {
				continue
			}
			seen[a] = true
			if c.isMemberAddr(a) {
				continue
			}
			c.mu.Lock()
			gen := c.leaveGen
			c.mu.Unlock()
			if g, ok := joined[a]; ok && g == gen {
				continue
			}
			out = append(out, a)
		}
	}
	return out
}

// isMemberAddr reports whether addr is this node's or an alive member's
// gossip address.
func (c *Cluster) isMemberAddr(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rec := range c.members {
		if rec.addr == addr && rec.alive {
			return true
		}
	}
	return false
}
