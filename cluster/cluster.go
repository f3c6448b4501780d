package cluster

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"math"
	"slices"
	"sort"
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
	regions   Regions

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
	c.regions, _ = NewRegions(cfg.Regions) // validated above
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

// RegionOf returns the region cluster.regions maps a client address to
// ("ip:port" or "ip"), or "".
func (c *Cluster) RegionOf(addr string) string { return c.regions.Lookup(addr) }

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
