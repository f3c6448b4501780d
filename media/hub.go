package media

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascade-cdn/cascade/media/h264"
)

// HubConfig sizes a Hub.
type HubConfig struct {
	Kind      Kind
	ClockRate uint32
	// Codec is the RTP encoding name ("H264", "opus"); for H264 the hub
	// finds keyframes itself.
	Codec string
	// QueueLen is each subscriber's ring size in packets.
	QueueLen int
	// GOPBytes bounds the cached group of pictures that primes new
	// subscribers; a longer GOP is not cached (new viewers then wait for
	// the next keyframe, which the hub requests).
	GOPBytes int
	// KeyframeInterval is the least time between two keyframe requests sent
	// upstream; more requests in between are coalesced.
	KeyframeInterval time.Duration
}

// DefaultHubConfig returns the sizes used for a track of the given kind.
func DefaultHubConfig(kind Kind, codec string, clockRate uint32) HubConfig {
	c := HubConfig{Kind: kind, Codec: codec, ClockRate: clockRate, KeyframeInterval: time.Second}
	if kind == Video {
		// 2048 packets is about 2.5 s of a 6 Mbps stream: enough to take a
		// cached GOP burst and a keyframe without dropping.
		c.QueueLen = 2048
		c.GOPBytes = 4 << 20
	} else {
		// 64 Opus packets are 1.3 s: a writer never falls that far
		// behind without being cut off as too slow anyway.
		c.QueueLen = 64
	}
	return c
}

// minQueue is the smallest subscriber ring.
const minQueue = 512

// HubStats are running totals of a hub.
type HubStats struct {
	Packets, Bytes uint64
	// KeyframeRequests were sent upstream; Coalesced were folded into one.
	KeyframeRequests, Coalesced uint64
}

// Hub fans one track out to many subscribers. Write never blocks: each
// subscriber has a bounded ring, and a subscriber whose ring is full loses
// its queue and resynchronises at the next keyframe, so a slow viewer never
// slows the publisher or another viewer.
type Hub struct {
	cfg HubConfig
	rtx retransmitBuffer

	keyframeFn  atomic.Pointer[func()]
	lastKeyReq  atomic.Int64 // unix nanos of the last request sent upstream
	keyReqs     atomic.Uint64
	keyCoalesce atomic.Uint64
	packets     atomic.Uint64
	bytes       atomic.Uint64

	mu        sync.Mutex // guards what follows; never held across I/O
	subs      []*Subscriber
	gop       []*Packet
	gopBytes  int
	gopValid  bool
	gopTS     uint32
	gen       uint64 // the current Source's generation
	rebase    bool   // next packet starts a new source epoch
	started   bool   // a packet has been written
	seqOff    uint16
	tsOff     uint32
	lastSeq   uint16
	lastTS    uint32
	lastWrite time.Time
	closed    bool
	// The newest keyframe's timestamp, and the gap in timestamps from
	// the one before it (0 until two have been seen since the source
	// began, keys counting to 2): when the next is due (NextKeyframe).
	keyTS  uint32
	keyGap uint32
	keys   int
}

// NewHub returns an empty hub.
func NewHub(cfg HubConfig) *Hub {
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 256
	}
	if cfg.ClockRate == 0 {
		cfg.ClockRate = 90000
	}
	return &Hub{cfg: cfg}
}

// Config returns the hub's configuration.
func (h *Hub) Config() HubConfig { return h.cfg }

// Source is one publisher's right to write to a hub. A newer Source (a
// publisher takeover) revokes the older ones, so a replaced publisher's
// last packets cannot interleave with its successor's.
type Source struct {
	h   *Hub
	gen uint64
}

// NewSource returns a writer for a new source. Its first packet continues
// the hub's numbering, and video subscribers resume at its first keyframe.
func (h *Hub) NewSource() *Source {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gen++
	h.rebase = true
	return &Source{h: h, gen: h.gen}
}

// Write publishes p to every subscriber and takes ownership of it. The
// source's sequence number and timestamp are rewritten into the hub's
// continuous numbering. It must be called from one goroutine at a time (the
// track's reader) and never blocks. Writes from a revoked source are dropped.
func (s *Source) Write(p *Packet) {
	h := s.h
	if p.Arrival.IsZero() {
		p.Arrival = time.Now()
	}
	if h.cfg.Kind == Video {
		p.Keyframe = p.Keyframe || (h.cfg.Codec == "H264" && h264.IsKeyframe(p.Payload))
	} else {
		p.Keyframe = true
	}

	h.mu.Lock()
	if h.closed || s.gen != h.gen {
		h.mu.Unlock()
		return
	}
	h.renumber(p)
	h.noteKeyframe(p)
	h.cacheGOP(p)
	h.rtx.put(p)
	for _, sub := range h.subs {
		sub.push(p)
	}
	h.mu.Unlock()

	h.packets.Add(1)
	h.bytes.Add(uint64(len(p.Payload)))
}

// renumber maps the source's numbering onto the hub's. After a new Source the
// first packet continues one sequence number and the elapsed wall time after
// the last one, so viewers see one stream across a publisher takeover.
func (h *Hub) renumber(p *Packet) {
	if h.rebase && h.started {
		elapsed := p.Arrival.Sub(h.lastWrite)
		if elapsed < 0 {
			elapsed = 0
		}
		ticks := uint32(elapsed.Seconds()*float64(h.cfg.ClockRate)) + 1
		h.seqOff = h.lastSeq + 1 - p.SequenceNumber
		h.tsOff = h.lastTS + ticks - p.Timestamp
		// The old GOP belongs to the old source: do not prime with it, and
		// let every video subscriber resume at the new source's first
		// keyframe rather than feed its decoder a mid-GOP splice.
		clear(h.gop)
		h.gop, h.gopBytes, h.gopValid = h.gop[:0], 0, false
		h.keys, h.keyGap = 0, 0 // a new source keeps its own keyframe clock
		if h.cfg.Kind == Video {
			for _, s := range h.subs {
				s.restartAtKeyframe()
			}
		}
	}
	h.rebase = false
	p.SequenceNumber += h.seqOff
	p.Timestamp += h.tsOff
	h.started = true
	h.lastSeq, h.lastTS, h.lastWrite = p.SequenceNumber, p.Timestamp, p.Arrival
}

// noteKeyframe keeps the keyframe clock NextKeyframe reads.
func (h *Hub) noteKeyframe(p *Packet) {
	if !p.Keyframe || h.cfg.Kind != Video || h.keys > 0 && p.Timestamp == h.keyTS {
		return
	}
	if gap := int32(p.Timestamp - h.keyTS); h.keys > 0 {
		h.keyGap = 0 // unknown: timestamps went back, or jumped
		if gap > 0 && int64(gap) <= maxKeyGap*int64(h.cfg.ClockRate) {
			h.keyGap = uint32(gap)
		}
	}
	h.keyTS, h.keys = p.Timestamp, min(h.keys+1, 2)
}

func (h *Hub) cacheGOP(p *Packet) {
	if h.cfg.GOPBytes <= 0 {
		return
	}
	if p.Keyframe && (!h.gopValid || p.Timestamp != h.gopTS) {
		clear(h.gop) // let the old GOP's packets go
		h.gop, h.gopBytes, h.gopValid, h.gopTS = h.gop[:0], 0, true, p.Timestamp
	}
	if !h.gopValid {
		return
	}
	if h.gopBytes+len(p.Payload) > h.cfg.GOPBytes || len(h.gop) >= h.cfg.QueueLen/2 {
		clear(h.gop)
		h.gop, h.gopBytes, h.gopValid = h.gop[:0], 0, false
		return
	}
	h.gop = append(h.gop, p)
	h.gopBytes += len(p.Payload)
}

// Subscribe adds a subscriber. For video it is primed with the cached GOP
// so its first packet is a keyframe; without a cached GOP it waits for the
// next keyframe, and one is requested. It returns nil if the hub is closed.
func (h *Hub) Subscribe() *Subscriber { return h.subscribe(make(chan struct{}, 1), true) }

// SubscribeLive adds a subscriber that starts at the hub's next keyframe,
// without the cached GOP: a viewer moving from another rendition must not
// go back in time. No keyframe is requested; the caller may.
func (h *Hub) SubscribeLive() *Subscriber { return h.subscribe(make(chan struct{}, 1), false) }

// SubscribeWith is Subscribe, or SubscribeLive when live is set, with a
// wake channel the caller shares among its subscriptions (capacity 1), so
// that one select case serves them all. The subscriber signals it, never
// blocking, when packets arrive and when it closes (see Closed).
func (h *Hub) SubscribeWith(wake chan struct{}, live bool) *Subscriber {
	return h.subscribe(wake, !live)
}

func (h *Hub) subscribe(wake chan struct{}, prime bool) *Subscriber {
	s := &Subscriber{
		hub:  h,
		wake: wake,
		done: make(chan struct{}),
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	// The ring holds the cached GOP plus headroom, up to QueueLen: most
	// GOPs are a few hundred packets, and a ring per viewer is the hub's
	// main memory cost.
	size := min(h.cfg.QueueLen, max(minQueue, 2*len(h.gop)))
	s.ring = make([]*Packet, size)
	s.resync = make([]uint64, (size+63)/64)
	s.waitKey = h.cfg.Kind == Video
	primed := false
	if prime && h.gopValid && len(h.gop) > 0 {
		for _, p := range h.gop {
			s.push(p)
		}
		primed = true
	}
	subs := make([]*Subscriber, len(h.subs), len(h.subs)+1)
	copy(subs, h.subs)
	h.subs = append(subs, s)
	h.mu.Unlock()
	if h.cfg.Kind == Video && prime && !primed {
		h.RequestKeyframe()
	}
	return s
}

func (h *Hub) remove(s *Subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i, x := range h.subs {
		if x == s {
			subs := make([]*Subscriber, 0, len(h.subs)-1)
			subs = append(subs, h.subs[:i]...)
			h.subs = append(subs, h.subs[i+1:]...)
			return
		}
	}
}

// Subscribers returns the number of current subscribers.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// SetKeyframeRequester sets how the hub asks the current source for a
// keyframe (a PLI to a WHIP publisher, a request to the transcoder). fn
// must not block. nil removes it.
func (h *Hub) SetKeyframeRequester(fn func()) {
	if fn == nil {
		h.keyframeFn.Store(nil)
		return
	}
	h.keyframeFn.Store(&fn)
}

// RequestKeyframe asks the source for a keyframe, at most once per
// KeyframeInterval however many viewers ask: viewer PLIs are coalesced here,
// never forwarded one per viewer. Safe for concurrent use.
func (h *Hub) RequestKeyframe() {
	now := time.Now().UnixNano()
	last := h.lastKeyReq.Load()
	if now-last < int64(h.cfg.KeyframeInterval) || !h.lastKeyReq.CompareAndSwap(last, now) {
		h.keyCoalesce.Add(1)
		return
	}
	h.keyReqs.Add(1)
	if fn := h.keyframeFn.Load(); fn != nil {
		(*fn)()
	}
}

// maxKeyGap bounds, in seconds, a gap between keyframes that NextKeyframe
// believes.
const maxKeyGap = 10

// NextKeyframe estimates how long until the hub's next keyframe: the gap
// between its last two keyframes less the media time since the newest
// (timestamps, not arrival, so a burst of late packets does not move it).
// It reports false until two keyframes of the current source have passed,
// and 0 once the next is overdue.
func (h *Hub) NextKeyframe() (time.Duration, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.keys < 2 || h.keyGap == 0 {
		return 0, false
	}
	left := int64(h.keyGap) - int64(int32(h.lastTS-h.keyTS))
	return time.Duration(max(left, 0)) * time.Second / time.Duration(h.cfg.ClockRate), true
}

// Retransmit returns the packet with the hub sequence number seq if it is
// still buffered, or nil. Safe for concurrent use.
func (h *Hub) Retransmit(seq uint16) *Packet { return h.rtx.get(seq) }

// Stats returns the hub's running totals.
func (h *Hub) Stats() HubStats {
	return HubStats{
		Packets:          h.packets.Load(),
		Bytes:            h.bytes.Load(),
		KeyframeRequests: h.keyReqs.Load(),
		Coalesced:        h.keyCoalesce.Load(),
	}
}

// Close ends the hub: every subscriber's Done channel closes, and later
// writes are ignored. Idempotent.
func (h *Hub) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	subs := h.subs
	h.subs = nil
	clear(h.gop)
	h.gop = nil
	h.mu.Unlock()
	for _, s := range subs {
		s.close()
	}
}

// retransmitBuffer keeps the last packets of a track by sequence number,
// shared by every viewer's NACK handling instead of one copy per viewer.
type retransmitBuffer struct {
	slots [retransmitSlots]atomic.Pointer[Packet]
}

// retransmitSlots covers about 1.5 s of a 6 Mbps stream; older losses are
// better repaired by a keyframe.
const retransmitSlots = 1024

func (b *retransmitBuffer) put(p *Packet) {
	b.slots[p.SequenceNumber%retransmitSlots].Store(p)
}

func (b *retransmitBuffer) get(seq uint16) *Packet {
	p := b.slots[seq%retransmitSlots].Load()
	if p == nil || p.SequenceNumber != seq {
		return nil
	}
	return p
}
