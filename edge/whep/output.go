package whep

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/edge/abr"
	"github.com/cascade-cdn/cascade/media"
)

// A viewer's writer sends at most burstPackets back to back, then waits
// burstGap: about 100 Mbps, far above any stream, yet slow enough that a
// joining viewer's GOP burst (hundreds of packets) does not overflow its
// receive buffer or a slow link's queue.
const (
	burstPackets = 32
	burstGap     = 3 * time.Millisecond
)

// Video is paced instead (output.pace): a keyframe sent at 100 Mbps into
// a 4 Mbps link with a 32 kB buffer (64 ms) loses what the buffer does not
// hold, and a lost keyframe packet is a freeze. The pacer lets paceBurst
// bytes go back to back after a pause, then sleeps until paceChunk more
// may go: fewer, longer sleeps than one per packet. No batch is paced
// over more than paceSpan (a cached GOP at join, a backlog): it goes
// faster rather than hold the writer, and the audio behind it, longer.
// Until the controller sets a rate, video is paced at defaultPace: the
// GOP that primes a joining viewer arrives before the first tick.
const (
	paceBurst   = 12_000
	paceChunk   = 5_000
	paceSpan    = 250 * time.Millisecond
	defaultPace = 4_000_000 / 8
	// maxPaceSleep bounds one sleep of the pacer.
	maxPaceSleep = 50 * time.Millisecond
)

// pause sleeps at least d, until the next multiple of paceGrid of the
// wall clock. Every viewer's pacer wakes on the same grid, so that the
// pauses of all the viewers a keyframe reaches end together, on one
// timer: a wake-up of the process each paceGrid at most, where pauses of
// their own ended at scattered instants (measured at 100 viewers, 900
// pauses a second, most of them waking an idle thread). The refill counts
// the time that passed, so a longer pause only makes the next burst
// longer, up to paceBurst.
func pause(d time.Duration) {
	now := time.Now()
	time.Sleep(pauseEnd(now, d).Sub(now))
}

// pauseEnd is when a pause of d from now ends: the first multiple of
// paceGrid after now+d.
func pauseEnd(now time.Time, d time.Duration) time.Time {
	return now.Add(d).Truncate(paceGrid).Add(paceGrid)
}

const paceGrid = 5 * time.Millisecond

// sentRing remembers which hub packet each recent viewer sequence number
// carried, so a NACK is answered from the right rung's shared buffer even
// across a switch. It is as long as the hubs' retransmission buffers need:
// older packets are gone from them anyway. A probe's padding takes up to
// 2 000 numbers a second, so 1 024 cover about half a second while
// probing (512 covered 250 ms, shorter than a receiver's NACK window),
// at 12 bytes a slot.
const sentRing = 1024

// audioRing is the sent ring of an audio track: at 50 packets a second,
// 128 cover 2.5 s, longer than any receiver asks back. Both ring sizes
// divide 2^16, so sequence numbers map to slots across their wrap.
const audioRing = 128

// sentSlot is one slot of the sent ring: the viewer sequence number vseq
// carried hub packet hseq of the output's hub generation gen (see gens).
// A pointer per slot would double its size.
type sentSlot struct {
	// rtxAt is when it was last retransmitted (clockMS), 0 if never.
	rtxAt uint32
	hseq  uint16
	vseq  uint16
	gen   uint8
	flags uint8
}

const (
	slotValid = 1 << iota
	slotPad   // a padding-only packet: no hub packet
	// slotNacked is set by the first NACK for it: later ones are repeats.
	slotNacked
)

// hubGen is a hub the output has sent from, with the timestamp offset it
// was sent with. A switch of rung starts a new generation.
type hubGen struct {
	hub   *media.Hub
	tsOff uint32
	gen   uint8
}

// genRing is how many generations slots can name: a slot whose generation
// has been overwritten (eight switches later) is not answered.
const genRing = 8

// sent is a slot as a NACK sees it.
type sent struct {
	hub   *media.Hub // nil for padding, or a generation gone
	tsOff uint32     // for padding (pad set): a timestamp to send it with
	rtxAt uint32
	hseq  uint16
	vseq  uint16
	valid bool
	pad   bool
	// nacked: a NACK asked for it before.
	nacked bool
	// left: media of a rung the viewer has since left (an older
	// generation than the one being sent).
	left bool
}

// epoch is what clockMS counts from.
var epoch = time.Now()

// clockMS is the time in milliseconds since epoch, never 0 (it wraps after
// 49 days, which comparisons of recent times survive).
func clockMS(now time.Time) uint32 { return uint32(now.Sub(epoch)/time.Millisecond) | 1 }

// output is one track of one viewer. The viewer's numbering follows the
// hub's, shifted by an offset that changes only where Cascade made a gap on
// purpose (the hub resynced this viewer at a keyframe, or the viewer moved
// to another rung), so those never show as losses, while an upstream loss
// stays visible and the viewer can NACK it or ask for a keyframe.
type output struct {
	kind  string
	track *track

	// wake is the session's channel its subscriptions signal.
	wake chan struct{}

	// Owned by the writer goroutine.
	sub     *media.Subscriber
	name    string // the rendition being sent ("" for audio)
	next    *media.Subscriber
	nextHub *media.Hub
	nextFor string // the rendition next leads to
	seq     uint16 // the viewer sequence number after the last written
	off     uint16 // viewer sequence number = hub's + off
	rebase  bool   // the next packet starts a new run: recompute off
	tsOff   uint32 // viewer timestamp = hub timestamp + tsOff
	lastTS  uint32 // last viewer timestamp written
	begun   bool
	dropped uint64
	// uncounted and uncountedBytes are the media packets and payload
	// bytes sent since the last count.
	uncounted, uncountedBytes int
	// hdr is the writer's scratch header for media and padding; its
	// extension list is reused from packet to packet.
	hdr rtp.Header
	// pace is the video's pacing rate in bytes a second, set by the
	// writer's ABR tick (0: defaultPace); tokens is the pacer's budget in
	// bytes as of tokenAt. Audio goes in bursts (burstPackets).
	pace    int
	tokens  int
	tokenAt time.Time
	// skipOld is set while a down-switch for congestion waits for its
	// keyframe: from the end of the frame being sent, the old rung's
	// packets are dropped rather than queued behind a link that cannot
	// carry them (the frames already in its queue still show, and the
	// new keyframe follows them sooner). lastMarker is whether the last
	// packet sent ended a frame.
	skipOld bool
	// holdUntil: no video goes before it (viewerABR.apply's drain hold).
	holdUntil  time.Time
	lastMarker bool
	// srTS is the viewer timestamp of the latest frame sent, and srAt
	// when its first packet reached the hub.
	srTS uint32
	srAt time.Time

	mu   sync.Mutex // guards ring, hub and gens, for the RTCP reader
	hub  *media.Hub // the hub being sent
	ring []sentSlot // sentRing or audioRing slots
	gens [genRing]hubGen
	gen  uint8 // the generation being sent
	// padTS is the timestamp of the latest padding, for repairs.
	padTS atomic.Uint32
	// resent counts the bytes of media the RTCP reader retransmitted,
	// until the writer hands them to the controller as sent.
	resent atomic.Int64
	// rtxHold is how long a packet just retransmitted is not sent again,
	// in ns: about a round trip, queueing included (the writer sets it).
	rtxHold atomic.Int64
	// nacked counts the sequence numbers NACKed for the first time, until
	// the writer hands them to the controller.
	nacked atomic.Int64

	packets, bytes, drops prometheus.Counter
}

// current returns the hub being sent, for keyframe requests.
func (o *output) current() *media.Hub {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.hub
}

// newOutput returns the output of one track of kind "video" or "audio",
// sending hub; its subscriptions signal wake.
func newOutput(kind string, hub *media.Hub, track *track, wake chan struct{}) *output {
	n := sentRing
	if kind != "video" {
		n = audioRing
	}
	o := &output{kind: kind, hub: hub, track: track, ring: make([]sentSlot, n), wake: wake}
	o.gens[0] = hubGen{hub: hub}
	return o
}

// slot is where viewer sequence number seq is remembered in the ring.
func (o *output) slot(seq uint16) int { return int(seq) & (len(o.ring) - 1) }

// where maps a viewer sequence number back to the hub and hub sequence
// number of the packet it carried.
// The first NACK for a number is counted in nacked.
func (o *output) where(vseq uint16) (sent, bool) {
	o.mu.Lock()
	r := &o.ring[o.slot(vseq)]
	mine := r.flags&slotValid != 0 && r.vseq == vseq
	e := sent{rtxAt: r.rtxAt, hseq: r.hseq, vseq: r.vseq, valid: mine, pad: r.flags&slotPad != 0, nacked: r.flags&slotNacked != 0}
	if mine {
		r.flags |= slotNacked
		if g := o.gens[r.gen%genRing]; !e.pad && g.gen == r.gen {
			e.hub, e.tsOff = g.hub, g.tsOff
			e.left = r.gen != o.gen
		}
	}
	o.mu.Unlock()
	if e.pad {
		e.tsOff = o.padTS.Load()
	}
	if mine && !e.nacked {
		o.nacked.Add(1)
	}
	return e, mine && e.hub != nil
}

// lookup returns the hub packet a viewer sequence number carried and the
// timestamp offset it was sent with, if its hub still has it. A padding
// packet has none: lookup fills its number itself, with the smallest
// padding-only packet (one byte of padding), and returns nil. A receiver
// cannot tell a lost padding packet from lost media, so unanswered it
// would stall the receiver's frame assembly until a keyframe, and its
// repeated NACKs would read as loss to the viewer's controller; resent
// whole, the padding of a probe that overflowed the link would overflow
// it again. The receiver's SRTP replay check lets the repair through,
// since the original never arrived. filled says whether, and why, it
// filled the number.
func (o *output) lookup(vseq uint16, h *rtp.Header) (p *media.Packet, tsOff uint32, filled fillReason) {
	e, ok := o.where(vseq)
	if !e.valid || !e.pad && !ok {
		return nil, 0, fillNone
	}
	// A receiver that asks again before a round trip has passed (pion
	// asks on a timer; any receiver does while a full queue delays the
	// answer) would get a copy per request, and on a congested link the
	// copies keep the queue full: as libwebrtc's sender does, answer a
	// number at most once a round trip. That holds for fills too: after
	// the capped source's drop on the lab's 0.8 Mbit/s link, a 250 ms
	// queue made pion's viewer ask for each of ~50 numbers of the rung it
	// had left five times before the first fill came back, and the copies
	// (dropped by the receiver's replay check, so never acknowledged)
	// took the link's time from the new rung while its delivered rate
	// read low.
	now := clockMS(time.Now())
	if e.rtxAt != 0 && time.Duration(now-e.rtxAt)*time.Millisecond < time.Duration(o.rtxHold.Load()) {
		return nil, 0, fillNone
	}
	switch {
	case e.pad:
		o.fill(h, vseq, e.tsOff)
		filled = fillPadding
	case e.left:
		// Media of a rung the viewer has left: the new rung's keyframe
		// went out before this NACK could come back, and a repair would
		// queue behind (or among) its packets, useless, since a decoder
		// starts afresh at that keyframe. Right after a down-switch for
		// congestion, tens of such repairs at 1.2 kB each took the slow
		// link's time from the keyframe. So the number is filled with
		// the smallest padding packet, as for lost padding: the
		// receiver stops asking, and the frame it belonged to, never
		// whole, is dropped (libwebrtc assembles no frame across a
		// padding packet).
		old := e.hub.Retransmit(e.hseq)
		if old == nil {
			return nil, 0, fillNone
		}
		o.fill(h, vseq, old.Timestamp+e.tsOff)
		filled = fillLeft
	default:
		if p = e.hub.Retransmit(e.hseq); p == nil {
			return nil, 0, fillNone
		}
		o.resent.Add(int64(len(p.Payload) + 12))
		tsOff = e.tsOff
	}
	o.mu.Lock()
	if r := &o.ring[o.slot(vseq)]; r.flags&slotValid != 0 && r.vseq == vseq {
		r.rtxAt = now
	}
	o.mu.Unlock()
	return p, tsOff, filled
}

// fillReason is why lookup answered a NACKed number with padding.
type fillReason uint8

const (
	fillNone    fillReason = iota
	fillPadding            // lost padding: a padding packet in its place
	fillLeft               // media of a rung the viewer has left: padding in its place
	fillKinds
)

// fill answers a NACK for vseq with the smallest padding-only packet at
// timestamp ts (h is the caller's scratch header).
func (o *output) fill(h *rtp.Header, vseq uint16, ts uint32) {
	*h = rtp.Header{Version: 2, Padding: true, SequenceNumber: vseq, Timestamp: ts, Extensions: h.Extensions[:0]}
	o.track.write(h, padRepair)
}

// count adds what was sent since the last call to the stream's series:
// once a round, not once a packet, since every viewer of the stream shares
// them (an atomic add on a shared cache line per packet per viewer).
func (o *output) count() {
	if o.uncounted > 0 && o.packets != nil {
		o.packets.Add(float64(o.uncounted))
		o.bytes.Add(float64(o.uncountedBytes))
		o.uncounted, o.uncountedBytes = 0, 0
	}
}

// countDrops adds what the current subscription dropped since last asked
// to the metric, and reports it.
func (o *output) countDrops() uint64 {
	if o.sub == nil {
		return 0
	}
	d := o.sub.Dropped()
	if d <= o.dropped {
		return 0
	}
	n := d - o.dropped
	o.drops.Add(float64(n))
	o.dropped = d
	return n
}

// retire closes the current subscription, counting its last drops.
func (o *output) retire() {
	if o.sub != nil {
		o.countDrops()
		o.sub.Close()
		o.sub, o.dropped = nil, 0
	}
}

// send writes one queued hub packet.
func (o *output) send(e media.Entry) error {
	p := e.Packet
	if !o.begun {
		o.off = 0 // the first run keeps the hub's numbering
	} else if e.Resync || o.rebase {
		o.off = o.seq - p.SequenceNumber
	}
	o.rebase = false
	seq := p.SequenceNumber + o.off
	o.seq = seq + 1
	ts := p.Timestamp + o.tsOff
	// The extension list is kept: pion's TWCC interceptor sets one on
	// every packet, and a fresh list would be an allocation per packet.
	o.hdr = rtp.Header{Version: 2, Marker: p.Marker, SequenceNumber: seq, Timestamp: ts, Extensions: o.hdr.Extensions[:0]}
	if !o.begun || ts != o.lastTS || o.srAt.IsZero() {
		// The first packet of each frame maps its timestamp to when the
		// hub took it in, for sender reports (see senderReport).
		o.srTS, o.srAt = ts, p.Arrival
		if o.srAt.IsZero() {
			o.srAt = time.Now()
		}
	}
	o.lastTS, o.begun, o.lastMarker = ts, true, p.Marker
	o.mu.Lock()
	o.ring[o.slot(seq)] = sentSlot{hseq: p.SequenceNumber, vseq: seq, gen: o.gen, flags: slotValid}
	o.mu.Unlock()
	o.uncounted++
	o.uncountedBytes += len(p.Payload)
	return o.track.write(&o.hdr, p.Payload)
}

// padMax is the most padding one RTP packet can carry (its count is a byte).
const padMax = 255

// padPayload is a padding-only packet's payload: all padding, its last
// byte the count; padRepair the smallest one. Shared and never written.
var (
	padPayload = func() []byte {
		b := make([]byte, padMax)
		b[padMax-1] = padMax
		return b
	}()
	padRepair = []byte{1}
)

// padding sends padding-only packets (RFC 3550 5.1, as libwebrtc probes
// without RTX) costing the link about n bytes (padCost each), at most
// maxPad packets. They take sequence numbers of their own, so the offset
// moves past them; a receiver drops them after counting them for
// transport-wide feedback (a duplicate of a media packet would not do:
// SRTP's replay check drops it first). It reports what they cost.
func (o *output) padding(n int) int {
	if !o.begun {
		return 0
	}
	done := 0
	o.padTS.Store(o.lastTS)
	for i := 0; done < n && i < maxPad; i++ {
		seq := o.seq
		o.seq++
		o.off++
		o.mu.Lock()
		o.ring[o.slot(seq)] = sentSlot{vseq: seq, flags: slotValid | slotPad}
		o.mu.Unlock()
		o.hdr = rtp.Header{Version: 2, Padding: true, SequenceNumber: seq, Timestamp: o.lastTS, Extensions: o.hdr.Extensions[:0]}
		if o.track.write(&o.hdr, padPayload) != nil {
			break
		}
		done += padCost
	}
	return done
}

// padCost is what a padding packet counts for against the probe's rate:
// its RTP header, transport-cc extension and padding, with its share of IP,
// UDP and SRTP bytes, which for so short a packet is larger than the
// probe's unit (a full-size packet's) allows.
var padCost = abr.ProbeBytes(12 + 8 + padMax)

// maxPad bounds the padding packets of one top-up (padEvery): 40 × 275
// bytes each 20 ms is 4.4 Mbps of RTP (5 Mbps on the wire) of probe on top
// of the media.
const maxPad = 40

// drain sends everything queued on the current subscription, spreading
// bursts. It reports the bytes sent.
func (o *output) drain(buf []media.Entry) ([]media.Entry, int, error) {
	if o.sub == nil {
		return buf, 0, nil
	}
	buf = o.sub.Pop(buf[:0])
	n := 0
	var err error
	rate := o.batchRate(buf)
	for i, e := range buf {
		if o.skipping() {
			continue
		}
		o.wait(i, len(e.Packet.Payload)+12, rate)
		if err = o.send(e); err != nil {
			break // the transport is closed; onState ends the session
		}
		n += len(e.Packet.Payload) + 12
	}
	clear(buf)
	return buf, n, err
}

// prepare starts a switch to hub (rendition name): it is subscribed from
// its next keyframe, and the current rung keeps flowing until then.
func (o *output) prepare(hub *media.Hub, name string, early bool) {
	if o.next != nil {
		if o.nextHub == hub {
			return
		}
		o.next.Close()
	}
	o.next, o.nextHub, o.nextFor = nil, nil, ""
	sub := hub.SubscribeWith(o.wake, true)
	if sub == nil {
		return // the hub closed meanwhile
	}
	o.next, o.nextHub, o.nextFor = sub, hub, name
	if early {
		// Aligned rungs share one keyframe clock; asking moves every
		// rung's next IDR earlier (coalesced per stream by the hub).
		hub.RequestKeyframe()
	}
}

// cancel drops a pending switch.
func (o *output) cancel() {
	o.skipOld = false
	if o.next != nil {
		o.next.Close()
		o.next, o.nextHub, o.nextFor = nil, nil, ""
	}
}

// skipping reports whether the current rung's next packet is dropped (see
// skipOld).
func (o *output) skipping() bool { return o.skipOld && o.next != nil && o.lastMarker }

// pause stops the video: what is queued is dropped.
func (o *output) pause() {
	o.cancel()
	o.retire()
	o.name = ""
}

// trySwitch completes a pending switch once the target rung's keyframe is
// queued: the old rung's frames before that instant are sent, the rest of
// it dropped, and the viewer continues on the new rung with continuous
// sequence numbers and timestamps. It reports whether it switched, and
// the bytes sent.
func (o *output) trySwitch(buf []media.Entry) ([]media.Entry, bool, int, error) {
	if o.next == nil {
		return buf, false, 0, nil
	}
	buf = o.next.Pop(buf[:0])
	if len(buf) == 0 {
		return buf, false, 0, nil
	}
	at := buf[0].Packet.Timestamp // a keyframe: SubscribeLive starts on one
	n := 0
	if o.sub != nil {
		// Rungs carry the source's timestamps, so "before the keyframe"
		// means the same instant on every rung.
		old := o.sub.Pop(nil)
		rate := o.batchRate(old)
		for i, e := range old {
			if int32(e.Packet.Timestamp-at) < 0 && !o.skipping() {
				o.wait(i, len(e.Packet.Payload)+12, rate)
				if err := o.send(e); err != nil {
					return buf, false, n, err
				}
				n += len(e.Packet.Payload) + 12
			}
		}
		o.retire()
	}
	if o.begun {
		// Keep the viewer's clock continuous if the new rung's numbering
		// differs (a rung rebuilt after a resolution change, or a source
		// rung that is not aligned): continue one frame after the last.
		if d := int32(at + o.tsOff - o.lastTS); d <= 0 || d > 90000 {
			o.tsOff = o.lastTS + 3000 - at
		}
	}
	o.mu.Lock()
	o.hub = o.nextHub
	o.gen++
	o.gens[o.gen%genRing] = hubGen{hub: o.hub, tsOff: o.tsOff, gen: o.gen}
	o.mu.Unlock()
	o.sub, o.name = o.next, o.nextFor
	o.next, o.nextHub, o.nextFor = nil, nil, ""
	o.skipOld = false
	o.rebase = true // the new rung's numbering continues the viewer's
	var err error
	rate := o.batchRate(buf)
	for i, e := range buf {
		o.wait(i, len(e.Packet.Payload)+12, rate)
		if err = o.send(e); err != nil {
			break
		}
		n += len(e.Packet.Payload) + 12
	}
	clear(buf)
	return buf, true, n, err
}

// batchRate is the pacing rate for buf, bytes a second: the pace, or
// faster if buf would take longer than paceSpan; 0 for audio.
func (o *output) batchRate(buf []media.Entry) int {
	if o.kind != "video" {
		return 0
	}
	rate := o.pace
	if rate <= 0 {
		rate = defaultPace
	}
	n := 0
	for _, e := range buf {
		n += len(e.Packet.Payload) + 12
	}
	return max(rate, int(int64(n)*int64(time.Second)/int64(paceSpan)))
}

// wait holds the i-th packet of a batch, of size bytes, until the pacer
// lets it go at rate bytes a second; at rate 0, every burstPackets.
func (o *output) wait(i, size, rate int) {
	if rate <= 0 {
		if i > 0 && i%burstPackets == 0 {
			o.track.flush() // what is queued goes before the pause
			pause(burstGap)
		}
		return
	}
	if o.tokens < size {
		o.refill(time.Now(), rate)
		if o.tokens < size {
			o.track.flush()
			// Bounded, whatever the rate: the writer serves audio too.
			pause(min(time.Duration(int64(size-o.tokens+paceChunk)*int64(time.Second)/int64(rate)), maxPaceSleep))
			o.refill(time.Now(), rate)
		}
	}
	o.tokens -= size
}

// refill adds what rate earned since the last refill, up to paceBurst.
func (o *output) refill(now time.Time, rate int) {
	if o.tokenAt.IsZero() {
		o.tokens = paceBurst
	} else {
		// A pause longer than a second earns no more than a second does
		// (and cannot overflow the product).
		el := min(max(now.Sub(o.tokenAt), 0), time.Second)
		o.tokens = min(o.tokens+int(int64(el)*int64(rate)/int64(time.Second)), paceBurst)
	}
	o.tokenAt = now
}

// close ends both subscriptions.
func (o *output) close() {
	o.cancel()
	o.retire()
	o.count()
}

// senderReport is the track's RTCP sender report at now, or nil before any
// media was sent. Its RTP time is the latest frame's timestamp advanced
// to now, and the frame's time is when the hub took it in, not when this
// viewer's writer sent it: a viewer's pacing or backlog then does not move
// its video against its audio, which the player aligns by these reports.
// Owned by the writer goroutine.
func (o *output) senderReport(now time.Time) *rtcp.SenderReport {
	if !o.begun || o.srAt.IsZero() {
		return nil
	}
	clock := float64(o.track.tr.ClockRate)
	packets, octets := o.track.tr.Sent()
	return &rtcp.SenderReport{
		SSRC:        o.track.ssrc(),
		NTPTime:     ntpTime(now),
		RTPTime:     o.srTS + uint32(int64(now.Sub(o.srAt).Seconds()*clock)),
		PacketCount: packets,
		OctetCount:  octets,
	}
}

// rttFromReport is the round trip a receiver report block tells (RFC 3550,
// section 6.4.1): its arrival less the middle 32 bits of the NTP time of
// the sender report it answers (lsr) and the time the receiver held that
// report (dlsr), both in 1/65536 s. No report answered (lsr 0), a result
// below zero (a report from before a clock step, or forged) or above
// maxReportRTT tells nothing.
func rttFromReport(now time.Time, lsr, dlsr uint32) (time.Duration, bool) {
	if lsr == 0 {
		return 0, false
	}
	d := int32(uint32(ntpTime(now)>>16) - lsr - dlsr)
	rtt := time.Duration(int64(d) * int64(time.Second) >> 16)
	if d < 0 || rtt > maxReportRTT {
		return 0, false
	}
	return rtt, true
}

// maxReportRTT bounds a plausible round trip from a receiver report.
const maxReportRTT = 10 * time.Second

// ntpTime is t as a 64-bit NTP timestamp (RFC 3550, section 4).
func ntpTime(t time.Time) uint64 {
	const unixToNTP = 2_208_988_800 // seconds from 1900 to 1970
	ns := t.UnixNano()
	sec, frac := uint64(ns/1e9)+unixToNTP, uint64(ns%1e9)
	return sec<<32 | frac<<32/1e9
}
