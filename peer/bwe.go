package peer

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
)

// The estimator's bounds for a viewer. It starts at 1 Mbps, about the
// middle of the ladder; the floor is below the lowest rung (300 kbps), so a
// link too slow for any video can show as such; the ceiling caps GCC's
// climb on an idle link (it rises 8 % a second while nothing queues).
const (
	bweStartBitrate = 1_000_000
	bweMinBitrate   = 50_000
	bweMaxBitrate   = 30_000_000
)

// ringSize is how many packets, by transport-wide sequence number, are
// remembered for acknowledgement: 2 s at 10 Mbps, several times the
// round trip plus feedback interval (50–250 ms in browsers) at any rate
// Cascade sends. A probe's padding goes at up to 2 000 packets a second,
// and behind a full 300 ms queue its feedback comes 400 ms later: 1 024
// would just cover it. Feedback about a packet 2048 others have followed
// is not counted: the tail of a joining viewer's burst of a large cached
// GOP (up to 4 MiB, ~3 500 packets) may go uncounted.
// 8 bytes each: 16 KiB per viewer.
const (
	ringSize = 2048
	ringMask = ringSize - 1
)

// maxFeedbackStatuses bounds the packet statuses taken from one RTCP read
// (a compound packet, as the viewer's transport hands it over). A browser's feedback covers the 50–250 ms since its previous one,
// a few hundred packets. The walk itself is bounded by the packet's size
// (runs not received are skipped in one step, and a received packet has a
// delta byte); the budget bounds what one report can claim.
const maxFeedbackStatuses = 8192

// A ring slot packs a sent packet into one word, so the writer records it
// with one atomic store and feedback acknowledges it with one CAS:
//
//	bits  0–15  transport-wide sequence number
//	bits 16–31  size in bytes (RTP header, payload and padding), capped at 65535
//	bits 32–33  state: slotSent, then slotAcked once
//	bits 34–63  send time, µs since the BWE started, modulo 2^30 (~18 minutes)
const (
	slotSent  = 1
	slotAcked = 2
	timeBits  = 30
	timeMask  = 1<<timeBits - 1
)

// BWE is one viewer's send-side bandwidth estimation: Google Congestion
// Control (gcc.go) fed by the viewer's transport-wide congestion control
// feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01), and the
// count of what that feedback acknowledged.
//
// GCC only estimates here: media is not paced to its target (the viewer's
// writer and the ABR decide what is sent). A viewer that did not negotiate
// the transport-cc extension gets no feedback: TargetBitrate stays 0 and
// OnDelivered is never called.
//
// The BWE belongs to one viewer's transport, which calls Record for each
// packet sent and ReadRTCP for each RTCP packet received. It runs no
// goroutine of its own (GCC runs in ReadRTCP), so there is nothing to
// close. Its methods are safe for concurrent use.
type BWE struct {
	start time.Time
	ring  [ringSize]atomic.Uint64

	delivered atomic.Pointer[func(now time.Time, d Delivery)]
	target    atomic.Int64 // GCC's target, bit/s; 0 until it has one

	sentPackets, sentBytes           atomic.Uint64
	deliveredPackets, deliveredBytes atomic.Uint64
	feedbacks, rejected              atomic.Uint64
	ackDelay                         atomic.Int64 // ns

	// link accumulates what the receiver's clock says about the packets
	// acknowledged since the last TakeLinkSample.
	linkMu sync.Mutex
	link   linkAcc

	// fbMu serializes feedback, and guards gcc: RTCP may come on the UDP
	// socket's reader or an ICE-TCP connection's, and Stats reads gcc.
	fbMu sync.Mutex
	gcc  *gcc
	refs refClock
}

// BWEStats is a BWE's state, for debugging.
type BWEStats struct {
	// TargetBitrate is GCC's target, bit/s; 0 until the first feedback.
	TargetBitrate int
	// SentPackets and SentBytes count the RTP packets written with a
	// transport-wide sequence number (media, retransmissions and padding),
	// header included.
	SentPackets, SentBytes uint64
	// DeliveredPackets and DeliveredBytes count those the viewer's feedback
	// reported received.
	DeliveredPackets, DeliveredBytes uint64
	// Feedbacks counts TWCC feedback packets taken; Rejected those refused
	// as malformed or over the per-read budget.
	Feedbacks, Rejected uint64
	// AckDelay is, at the last feedback, how long ago the newest packet it
	// acknowledged was sent: about a round trip plus the feedback interval.
	AckDelay time.Duration
	// GCC is the estimator's state.
	GCC GCCStats
}

// LinkSample is what the viewer's own clock, as its transport-wide
// feedback carries it, says about the packets acknowledged since the
// previous TakeLinkSample. Timing by the receiver's clock rather than by
// when feedback arrives keeps a late or bunched RTCP from reading as a
// faster or slower link.
type LinkSample struct {
	// Packets counts the packets acknowledged.
	Packets int
	// Bytes is their size, received over Span: from the arrival of the
	// packet acknowledged before the first of them to that of the last.
	// While every packet waits in a queue (MinQueue well above a packet's
	// time on the wire), Bytes/Span is the bottleneck's rate.
	Bytes int
	Span  time.Duration
	// WireBytes is Bytes with each packet's IP (v4), UDP and SRTP
	// overhead: what the link itself carried.
	WireBytes int
	// MinQueue is the smallest queueing delay any of them saw: its one-way
	// delay (receive time less send time, on two clocks) above the smallest
	// seen over the last 10 s or so.
	MinQueue time.Duration
	// LastQueue is the queueing delay of the packet received last: the
	// queue as it stood most lately, where it still grows.
	LastQueue time.Duration
	// BusyWire and BusySpan count the packets that reached the bottleneck
	// while the one sent before them was still there (its queueing delay
	// exceeded the time between their sends): the link served the two
	// back to back, so the gap between their arrivals is the later one's
	// time on the link, and BusyWire/BusySpan is the link's rate. A burst
	// sent faster than the link (a keyframe, paced at 2.5 × its rung)
	// measures it within a few packets, where MinQueue needs every packet
	// of the sample to wait. A receiver that stalls and then reads what it
	// held in one go makes the gaps shorter, the rate higher, never lower.
	BusyWire int
	BusySpan time.Duration
}

// linkAcc accumulates a LinkSample; guarded by BWE.linkMu.
type linkAcc struct {
	packets, bytes, wire int
	spanUs               int64
	minQueueUs           int64
	// lastQueueUs is the queueing delay of the packet received last, and
	// lastQueueRecv its receive time.
	lastQueueUs, lastQueueRecv int64
	// lastRecvUs is the newest receive time seen (µs on the receiver's
	// clock, from its reference time); haveRecv says whether there is one.
	lastRecvUs int64
	haveRecv   bool
	// The packet acknowledged before, in sending order: its queueing
	// delay, send and receive times (µs), for the busy count.
	prevQ, prevDep, prevRecv int64
	busyWire                 int
	busySpanUs               int64
	// nextSeq follows the feedback: a report that starts past it means
	// one was lost, and the packets it covered, received in the gap,
	// would make the span look idle.
	nextSeq uint16
	haveSeq bool
	// The base one-way delay is the minimum over two windows of
	// baseWindow: the current one, from baseAt, and the one before.
	baseCur, basePrev int64
	baseAt            int64 // µs since the BWE started
	haveBase          bool
}

// WireOverhead is what IPv4, UDP and SRTP's authentication tag add to an
// RTP packet on the wire. The tag is AES-GCM's 16 bytes, the profile both
// ends prefer (browsers, pion and this server offer it first); a session
// on AES-CM with HMAC-SHA1-80 carries 10, and its rates read 0.5 % high.
const WireOverhead = 20 + 8 + 16

// baseWindow is half the span over which the smallest one-way delay is
// the base: long enough that a link kept busy for a few seconds does not
// become the base, short enough to follow a path that changed.
const baseWindow = 5 * time.Second

// TakeLinkSample returns the sample accumulated since the last call and
// starts a new one.
func (b *BWE) TakeLinkSample() LinkSample {
	b.linkMu.Lock()
	defer b.linkMu.Unlock()
	a := &b.link
	s := LinkSample{Packets: a.packets, Bytes: a.bytes, WireBytes: a.wire, Span: time.Duration(a.spanUs) * time.Microsecond,
		BusyWire: a.busyWire, BusySpan: time.Duration(a.busySpanUs) * time.Microsecond}
	if a.packets > 0 {
		s.MinQueue = time.Duration(a.minQueueUs) * time.Microsecond
		s.LastQueue = time.Duration(a.lastQueueUs) * time.Microsecond
	}
	a.packets, a.bytes, a.wire, a.spanUs, a.busyWire, a.busySpanUs = 0, 0, 0, 0, 0, 0
	return s
}

// NewBWE returns a BWE with no feedback yet.
func NewBWE() *BWE {
	b := &BWE{start: time.Now()}
	b.gcc = newGCC(0)
	return b
}

// TargetBitrate is GCC's current target in bit/s, or 0 while no transport
// feedback has set one (none yet, or the viewer did not negotiate it).
func (b *BWE) TargetBitrate() int { return int(b.target.Load()) }

// Delivery is what one read of TWCC feedback newly reported received.
// Each packet is counted once, however often feedback repeats it.
type Delivery struct {
	// Bytes (RTP header, payload and padding) and Packets.
	Bytes, Packets int
	// RecvWire bytes (with IP, UDP and SRTP overhead) came in over
	// RecvSpan of the receiver's clock: those of the packets whose
	// predecessor's arrival is known, as in a LinkSample. Their rate is
	// what the path delivered, whenever the feedback itself arrived.
	RecvWire int
	RecvSpan time.Duration
}

// OnDelivered sets fn to be told, at each read of TWCC feedback, what it
// newly reported received. Set it before media flows; a later call
// replaces fn.
//
// fn is called on an RTCP reading goroutine of the PeerConnection; the
// goroutines of a viewer's tracks may call it at the same time. It must not
// block: the viewer's NACKs and PLIs wait behind it.
func (b *BWE) OnDelivered(fn func(now time.Time, d Delivery)) {
	b.delivered.Store(&fn)
}

// Rejected counts the feedback packets refused as malformed or over the
// per-read budget.
func (b *BWE) Rejected() uint64 { return b.rejected.Load() }

// Stats returns the BWE's counters and GCC's state.
func (b *BWE) Stats() BWEStats {
	b.fbMu.Lock()
	g := b.gcc.stats()
	b.fbMu.Unlock()
	return BWEStats{
		TargetBitrate:    b.TargetBitrate(),
		SentPackets:      b.sentPackets.Load(),
		SentBytes:        b.sentBytes.Load(),
		DeliveredPackets: b.deliveredPackets.Load(),
		DeliveredBytes:   b.deliveredBytes.Load(),
		Feedbacks:        b.feedbacks.Load(),
		Rejected:         b.rejected.Load(),
		AckDelay:         time.Duration(b.ackDelay.Load()),
		GCC:              g,
	}
}

// micros is a time as the ring keeps it. A packet's is taken with
// time.Since, which reads only the monotonic clock: time.Now reads two
// clocks, and a clock read is ~70 ns on a KVM guest (kvm-clock).
func micros(d time.Duration) uint64 { return uint64(d/time.Microsecond) & timeMask }

// AckDelay is, at the last feedback, how long ago the newest packet it
// acknowledged was sent (BWEStats.AckDelay), without the rest of Stats.
func (b *BWE) AckDelay() time.Duration { return time.Duration(b.ackDelay.Load()) }

// Record remembers a packet leaving with transport-wide sequence number seq.
func (b *BWE) Record(seq uint16, size int) {
	b.ring[seq&ringMask].Store(uint64(seq) | uint64(min(size, 0xffff))<<16 | slotSent<<32 | micros(time.Since(b.start))<<34)
	b.sentPackets.Add(1)
	b.sentBytes.Add(uint64(size))
}

// ack marks seq acknowledged, once, if it is the packet last sent with that
// number; it returns the packet's size and send time.
func (b *BWE) ack(seq uint16) (size int, sent uint64, ok bool) {
	slot := &b.ring[seq&ringMask]
	for {
		v := slot.Load()
		if uint16(v) != seq || v>>32&3 != slotSent {
			return 0, 0, false // never sent, overwritten, or counted already
		}
		if slot.CompareAndSwap(v, v&^(3<<32)|slotAcked<<32) {
			return int(v >> 16 & 0xffff), v >> 34, true
		}
	}
}

// acked reports whether seq is the packet last sent with that number and
// was acknowledged already.
func (b *BWE) acked(seq uint16) bool {
	v := b.ring[seq&ringMask].Load()
	return uint16(v) == seq && v>>32&3 == slotAcked
}

// ReadRTCP takes the TWCC feedback in one RTCP read (a packet or a
// compound). It never fails: whatever it cannot use is left to the
// session's own RTCP handling. It allocates nothing.
func (b *BWE) ReadRTCP(now time.Time, buf []byte) {
	budget := maxFeedbackStatuses
	var st feedbackTotals
	locked := false
	for len(buf) > 0 {
		p, rest, ok := NextRTCP(buf)
		if !ok {
			break
		}
		buf = rest
		if p[1] != byte(rtcp.TypeTransportSpecificFeedback) || p[0]&0x1f != rtcp.FormatTCC {
			continue
		}
		fb, ok := parseTWCC(p)
		if !ok || int(fb.count) > budget {
			b.rejected.Add(1)
			continue
		}
		budget -= int(fb.count)
		if !locked {
			b.fbMu.Lock()
			b.linkMu.Lock()
			locked = true
		}
		b.feedback(now, &fb, &st)
	}
	if !locked {
		return
	}
	b.linkMu.Unlock()
	b.target.Store(int64(b.gcc.target))
	b.fbMu.Unlock()
	if st.packets == 0 {
		return
	}
	b.deliveredPackets.Add(uint64(st.packets))
	b.deliveredBytes.Add(uint64(st.bytes))
	b.ackDelay.Store(int64((micros(now.Sub(b.start))-st.newest)&timeMask) * int64(time.Microsecond))
	if fn := b.delivered.Load(); fn != nil {
		(*fn)(now, Delivery{Bytes: st.bytes, Packets: st.packets,
			RecvWire: st.recvWire, RecvSpan: time.Duration(st.recvSpanUs) * time.Microsecond})
	}
}

// feedbackTotals are what one read's feedback newly acknowledged.
type feedbackTotals struct {
	bytes, packets int
	// recvWire and recvSpanUs are the link sample's growth (Delivery).
	recvWire   int
	recvSpanUs int64
	newest     uint64 // the send time (ring form) of the newest packet
	acked      bool
}

// feedback counts what fb acknowledges, feeds the link sample and GCC,
// and adds to st. It costs one step per chunk and per packet received,
// bounded by the feedback's size. b.fbMu and b.linkMu are
// held.
func (b *BWE) feedback(now time.Time, fb *twccFeedback, st *feedbackTotals) {
	full := int64(now.Sub(b.start) / time.Microsecond)
	nowUs := micros(now.Sub(b.start))
	g, la := b.gcc, &b.link
	wire0, span0 := la.wire, la.spanUs
	la.rollBase(full)
	b.feedbacks.Add(1)
	if la.haveSeq && int16(fb.base-la.nextSeq) > 0 {
		la.haveRecv = false
	}
	if end := fb.base + fb.count; !la.haveSeq || int16(end-la.nextSeq) > 0 {
		la.nextSeq, la.haveSeq = end, true
	}
	// Round trips: now - sent - (newest receive - receive), the least over
	// the packets; rttBase holds the least of now - sent + receive.
	rttBase, lastRecv, received := int64(math.MaxInt64), int64(math.MinInt64), 0
	fb.received(b.refs.unwrap(fb.ref), func(seq uint16, recv int64) {
		received++
		size, sent, ok := b.ack(seq)
		if !ok {
			if !b.acked(seq) {
				// Received, but its size is lost (the ring moved on): the
				// span up to it is not all accounted for.
				la.haveRecv = false
			}
			return
		}
		st.bytes += size
		st.packets++
		age := (nowUs - sent) & timeMask
		if !st.acked || age < (nowUs-st.newest)&timeMask {
			st.newest, st.acked = sent, true
		}
		dep := full - int64(age)
		la.add(recv, dep, size)
		g.received(full, dep, recv, size)
		rttBase, lastRecv = min(rttBase, full-dep+recv), max(lastRecv, recv)
	})
	rtt := int64(-1)
	if rttBase != math.MaxInt64 {
		rtt = max(rttBase-lastRecv, 0)
	}
	g.feedback(full, int(fb.count), int(fb.count)-received, rtt)
	st.recvWire += la.wire - wire0
	st.recvSpanUs += la.spanUs - span0
}

// rollBase moves the base one-way delay's windows on to now (µs).
func (a *linkAcc) rollBase(now int64) {
	if now-a.baseAt >= int64(baseWindow/time.Microsecond) {
		a.basePrev, a.baseCur, a.baseAt = a.baseCur, math.MaxInt64, now
		if !a.haveBase {
			a.basePrev = math.MaxInt64
		}
	}
}

// add counts one acknowledged packet sent at dep (µs, our clock) and
// received at recv (µs, receiver's clock): its one-way delay, on two
// clocks, means anything only by its changes.
func (a *linkAcc) add(recv, dep int64, size int) {
	owd := recv - dep
	if !a.haveBase {
		a.baseCur, a.basePrev, a.haveBase = owd, math.MaxInt64, true
	}
	a.baseCur = min(a.baseCur, owd)
	q := max(owd-min(a.baseCur, a.basePrev), 0)
	if a.packets == 0 || recv >= a.lastQueueRecv {
		a.lastQueueUs, a.lastQueueRecv = q, recv
	}
	if a.packets == 0 || q < a.minQueueUs {
		a.minQueueUs = q
	}
	a.packets++
	// The gap since the packet received before: the span over which this
	// one's bytes came in. A jump (a new reference time base, a silence)
	// is not a span of anything.
	if d := recv - a.lastRecvUs; a.haveRecv && d >= 0 && d < 1_000_000 {
		a.spanUs += d
		a.bytes += size
		a.wire += size + WireOverhead
	}
	// Busy: the packet before it was still at the bottleneck when it
	// arrived there (see LinkSample.BusyWire). Its own queueing delay
	// counts its time on the link beyond the base's, which at a low rate
	// is most of a full packet's delay; the predecessor's is what tells.
	if a.haveRecv && a.prevQ-(dep-a.prevDep) >= busySlack {
		// A gap of 0 is a packet read in the same batch as the one
		// before (or within a feedback tick of it): its bytes count,
		// and its time is in the next gap.
		if d := recv - a.prevRecv; d >= 0 && d < 1_000_000 {
			a.busyWire += size + WireOverhead
			a.busySpanUs += d
		}
	}
	a.prevQ, a.prevDep, a.prevRecv = q, dep, recv
	if !a.haveRecv || recv > a.lastRecvUs || a.lastRecvUs-recv > 1_000_000 {
		a.lastRecvUs, a.haveRecv = recv, true
	}
}

// busySlack is how much longer than the time between two sends the first
// must have queued for the second to count as busy: four of the feedback's
// 250 µs ticks.
const busySlack = 1000
