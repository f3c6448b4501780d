// Package abr decides, for one WebRTC viewer, which rung of a stream's
// ladder of aligned renditions to send, and when to probe for a higher one.
// It is pure logic: no packets, no network, no goroutines, no clock of its
// own. The viewer's session feeds it what RTCP says and what was sent and
// acknowledged, polls Tick every 100–250 ms, and carries out the Decision:
// switch at the target rung's next keyframe, pad up to Probe.Bitrate while
// a probe is active, pause video (keeping audio) while the target is "".
//
//	c, err := abr.New(abr.DefaultConfig(), ladder, abr.Limits{MaxHeight: 720}, time.Now())
//	// RTCP goroutine: c.OnEstimate, c.OnDelivered, c.OnLoss, c.OnNACK, c.OnREMB, c.OnRTT
//	// writer:         c.Started when media first flows, c.OnSent for each media
//	//                 packet written, c.OnLinkSample each tick
//	d := c.Tick(time.Now()) // every 100–250 ms
//
// # Inputs
//
//   - OnEstimate: the send-side estimator's target (pion's GCC,
//     SendSideBWE.GetTargetBitrate), on each change or each tick.
//   - OnDelivered: bytes and packets the viewer acknowledged, counted from
//     TWCC feedback as it arrives: media, RTX and padding alike.
//   - OnSent: media bytes written (video, audio, retransmissions; not
//     padding), as they are written.
//   - OnLoss: each receiver report's fraction lost, for the video SSRC.
//   - OnNACK: how many sequence numbers NACKs asked for (best counted
//     once each: a receiver asks again while the repair is on its way).
//   - OnLinkSample: the receiver's own timing of the packets acknowledged
//     since the last sample (TWCC receive times): the least queueing
//     delay any of them saw, and the rate they came in at.
//   - OnREMB: the receiver's REMB, if it sends one: a cap.
//   - OnRTT: the round-trip time, when known.
//
// # The estimate
//
// pion's GCC raises its target by 8 % a second whenever it sees no
// queueing, including while the sender is app-limited, so on an idle link
// it climbs without bound (12–23 Mbps for a 2.6 Mbps stream: pion
// interceptor #299, #100, #156). After a decrease it sets 0.85 × the
// received rate and climbs back just as slowly, even while the sender
// sends far more. It also backs off on a keyframe's burst through a busy
// link, to 0.85 × a quiet scene's rate, below a rung the link carries. So
// its number bounds the link only after the link has been seen to fall
// behind (less than 75 % of the media sent over a second acknowledged);
// everything else is proof by delivery:
//
//	proven = what the link was last shown to carry: the need of a probe
//	         that succeeded, at least what a failed one delivered, reset to
//	         what was delivered over 500 ms whenever the link falls behind
//	raw    = min(REMB, max(GCC, proven) once GCC is borne out, else +Inf)
//	basis  = max(delivered over 1 s, proven)
//	usable = min(raw, basis × (1+Headroom))   the Estimate the player is shown
//
// raw is what a drop is judged against, min(raw, basis) what a climb is.
// Neither goes by delivery alone the wrong way: a quiet scene delivers less
// than its rung without the link having shrunk, and an estimate above the
// rung is not headroom until something has been sent that uses it.
//
// The 75 % rule misses a mild overload (480p at 0.9 Mbps into 0.8 Mbps
// queues 300 ms before anything is lost), and delivery timed by feedback
// arrival reads fast or slow as RTCP bunches. Link samples see it: when
// every packet of a sample waited in a queue (at least 10 ms), the link
// was busy throughout, and the bytes over the receive span are its rate,
// timed by the receiver. If what is sent exceeds that rate (by 10 %, or at
// all while the rung's own rate exceeds it), the viewer goes at once to
// the best rung the measured rate carries, within a few hundred
// milliseconds of the queue starting to stand; not lower, as GCC's
// lagging target or a fall in delivered bytes would take it.
//
// # Choosing
//
// A viewer starts on the rung nearest Config.StartBitrate (600 kbps: its
// first keyframe arrives fast on almost any link). It goes down as soon as
// raw falls below its rung's bit rate, straight to the best rung raw still
// carries; below the lowest rung it tries the lowest, and pauses video after
// AudioOnlyHold. Loss above LossDown (receiver reports, or NACKs per
// packet) steps down one rung but never pauses video: audio suffers the
// same loss, and congestion bad enough for that brings raw down too.
//
// It goes up only when min(raw, basis) ≥ next × (1+UpMargin), which only a
// probe can show, since a rung's own delivery stays below the next one's;
// neither such a climb nor a probe starts while the newest link sample
// shows every packet queued, and a running probe pads no higher than
// what was delivered while it does. After UpHold of calm (no switch, no
// change of GCC's target), the caller pads up to 1.05 × that need, ramped
// over the probe's first quarter, counting each padding packet at its cost
// to the link (ProbeBytes). It succeeds as soon as the acknowledgements
// over half its length reach the need (in wire bytes less a full-size
// packet's overhead: padding packets carry at most 255 bytes, and their
// overhead must not fail a rung whose media the link carries), fails at
// once on a change of GCC's target or on loss, and fails if ProbeDuration
// and a feedback delay or two pass without success. It also fails as
// soon as a link sample shows the link saturated at a rate below what it
// must deliver: before the queue overflows, not after. The loss a probe
// causes fails it and is no reason to go down. A success climbs at once
// and chains the next rung's probe, so the 4 → 0.8 → 4 Mbps link climbs
// back two rungs in about 2 s (see the simulation in sim_test.go and
// scenario_test.go). A failure waits
// ProbeBackoffMin, doubling while failures repeat (a check's success does
// not reset it, only a full probe's): up to ProbeBackoffMax while the
// viewer is below the rung it left at a down-switch within 30 s, and up
// to 8 s, jittered, under the ceiling its probes found. The next attempt
// is only a check 15 % above what is proven,
// then 50 % steps after each check that passes, so that a viewer parked
// below a rung its link cannot carry pays a small queueing bump every few
// seconds rather than a full overshoot, yet still notices a link that
// recovered. A link measured saturated below a rung's need in the last
// 10 s also starts with such a check. A full probe that failed is not
// tried again for the same rung for about 8 s unless a check shows the link
// carries more than it did then: a rung whose need is within a few
// percent of the link would otherwise overflow it every few seconds. That
// hold waits for the viewer's first climb: until then its rung is the
// start's guess, not a ceiling it found.
// Loss within 2 s of joining (the first media, Started), of any switch or
// of a probe's end is the keyframe burst's or the probe's, and is not held
// against the rung. A climb undone by congestion within 3 s counts as a
// failure.
//
// A pin (Limits.Pin) fixes the rung and stops probing. MaxHeight and
// MaxBitrate take rungs out of the choice (if they take all, the lowest
// stays); a pin wins over them, being the more specific request.
//
// # Robustness
//
// Rates that are NaN, zero or negative are ignored; +Inf and absurd values
// (a REMB of 2^64) are clamped to 100 Gbit/s, a REMB under 10 kbps is
// ignored, counts are clamped per call, and time going backwards is read as
// no time passing. Work per call is bounded by the ladder (at most 32
// rungs) and fixed histories (2 s of counts, 128 feedback reports), and
// Tick allocates nothing.
//
// A Controller is safe for concurrent use: each call holds its mutex
// briefly and never blocks otherwise.
package abr

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// Rung is one rendition of the ladder, as the controller sees it.
type Rung struct {
	Name string
	// Bitrate is the rung's video bit rate, bit/s. A rung without one
	// cannot be weighed against an estimate and is ignored: give the source
	// its measured rate.
	Bitrate int
	// Height is in pixels, for MaxHeight; 0 means unknown and passes any
	// MaxHeight.
	Height int
}

// Limits are the viewer's own bounds, from the WHEP POST's query.
type Limits struct {
	MaxHeight  int    // ?max_height=; 0: none
	MaxBitrate int    // ?max_bitrate=, bit/s; 0: none
	Pin        string // ?rendition=; "" or "auto": chosen automatically
}

// Reasons a Decision gives for its target.
const (
	ReasonStart        = "start"         // the first rung
	ReasonProbeOK      = "probe_ok"      // a probe showed the next rung fits
	ReasonEstimateUp   = "estimate_up"   // delivery alone showed the next rung fits
	ReasonEstimateDrop = "estimate_drop" // the estimate fell below the rung
	ReasonLoss         = "loss"          // loss above Config.LossDown
	ReasonPin          = "pin"           // the viewer pinned a rung
	ReasonCap          = "cap"           // the viewer's limits exclude the rung
	ReasonAudioOnly    = "audio_only"    // below the lowest rung: video paused
	ReasonResume       = "resume"        // video resumed after audio only
	ReasonLadder       = "ladder"        // the ladder changed under the viewer
)

// ProbeRequest asks the caller to raise the total sending rate (media plus
// padding or RTX, paced evenly) to Bitrate until Until, or until a Tick
// says the probe is no longer Active. Bitrate ramps up over the probe's
// first quarter, so the caller should take it from each Tick.
type ProbeRequest struct {
	Active  bool
	Bitrate int
	Until   time.Time
}

// Decision is what Tick tells the caller.
type Decision struct {
	// Target is the rung to send, switched at its next keyframe; "" means
	// audio only.
	Target string
	// Reason is why Target is what it is: one of the Reason constants, kept
	// until the next change.
	Reason string
	// Changed is set when Target differs from the previous Tick's (and on
	// the first Tick).
	Changed bool
	Probe   ProbeRequest
	// Estimate is the usable estimate, bit/s: finite and not negative.
	Estimate float64
	// Capacity is the link's rate (RTP and padding, bit/s) as the
	// receiver timed it the last time the link was seen saturated, in
	// the last 10 s; 0 if it was not. Pace bursts to a little above it.
	Capacity float64
	// Saturated is set while the link has been seen saturated within the
	// last second: a down-switch now is for congestion, and what the old
	// rung still sends until the switch only deepens the queue.
	Saturated bool
}

// Stats counts a viewer's switches and probes, for metrics and the player.
type Stats struct {
	Ups, Downs int
	AudioOnly  int // times video was paused
	// Probes counts probes started; a success chains the next within the
	// same Tick, so a caller that only watches Decision.Probe.Active
	// would see two probes as one.
	Probes       int
	ProbesOK     int
	ProbesFailed int // with climbs undone by congestion within 3 s
	// LastProbe is how the last probe ended: ProbeOK or one of the
	// Probe* failures, for logs.
	LastProbe string
	// LastProbeBar is the last probe's bar and LastProbeGot what it
	// got: the rate the link carried over its second half, or the rate
	// the receiver timed while the probe filled the link. Bit/s of
	// full-size packets, for logs.
	LastProbeBar, LastProbeGot float64
}

// How a probe ended (Stats.LastProbe).
const (
	ProbeOK        = "ok"
	ProbeGCCFall   = "gcc-fall" // GCC's target fell
	ProbeGCCLeap   = "gcc-leap" // GCC's target leapt (see gccLeap)
	ProbeLoss      = "loss"
	ProbeSaturated = "saturated" // the receiver timed the link below the bar
	ProbeShort     = "short"     // acknowledged below the bar by its end
	ProbeCancelled = "cancelled" // unjudged: a down-switch, a pin, a new ladder
)

const (
	maxRungs = 32
	// maxRate clamps +Inf and absurd REMBs: 100 Gbit/s caps nothing.
	maxRate = 100e9
	// GCC only lowers its target on overuse or loss, and otherwise raises
	// it by at most 8 % a second (its loss-based part, 5 % per 200 ms).
	// pion's decrease sets 0.85 × the received rate, which can be far above
	// a target left lagging. So a fall, or a leap of more than 12 %, is
	// GCC reacting to the link.
	gccFall = 0.98
	gccLeap = 1.12
	// deliveredWindow spans a GOP, so a keyframe burst does not read as
	// headroom; congestionWindow is short, so that a drop is seen within
	// a second.
	deliveredWindow  = time.Second
	congestionWindow = 500 * time.Millisecond
	// overloadShare: acknowledgements below this share of what was sent
	// over overloadWindow mean the link is behind. Over a shorter window a
	// keyframe weighs too much: over 1 s, a keyframe on the wrong side of
	// the window costs 12 %, a misjudged feedback delay about 10 % more.
	overloadShare  = 0.75
	overloadWindow = time.Second
	// An acknowledgement arrives a round trip plus up to one feedback
	// interval (TWCC: 50–100 ms) after its packet was sent; until OnRTT
	// says otherwise, the round trip is taken to be defaultRTT.
	feedbackDelay = 50 * time.Millisecond
	defaultRTT    = 100 * time.Millisecond
	maxRTT        = 2 * time.Second
	// A probe for a rung asks for probeOver × its need and succeeds if
	// its second half delivers the need: acknowledgements come in bursts,
	// so asking for exactly the need would fail on noise. A check must
	// deliver checkOK of what it asks. probeOver was 1.1, with padding
	// counted in RTP bytes: with padding's overhead, a probe for the
	// capped source (need 3.5 Mbit/s) then sent 4.5 Mbit/s at a 4 Mbit/s
	// link, which carries the need, and was judged saturated.
	probeOver = 1.05
	checkOK   = 0.95
	// After a failed probe, the next goes no higher than checkStep × what
	// is proven (at least what the failure delivered): cheap to fail, and
	// it still shows a recovered link. Once such a check succeeds, the
	// next goes up to stairStep × it, and so on up to the rung's need.
	checkStep = 1.15
	stairStep = 1.5
	// recoverWindow is how long after a down-switch, while below the rung
	// it left, failed probes back off no further than ProbeBackoffMax;
	// otherwise up to ceilingBackoff.
	recoverWindow  = 30 * time.Second
	ceilingBackoff = 8 * time.Second
	// minREMB: no receiver estimates less; below it a REMB is garbage.
	minREMB = 10_000
	// climbWatch: a climb undone by congestion this soon failed.
	climbWatch = 3 * time.Second
	// lossGrace: loss reported this soon after a down-switch was caused by
	// the rung left behind (an RR covers about a second, and the switch
	// waits for a keyframe).
	lossGrace = 2 * time.Second
	lossTTL   = 2500 * time.Millisecond
	// NACK share of packets is only read over enough packets to mean
	// something.
	nackWindow     = time.Second
	nackMinPackets = 50
	// rembTTL: a REMB cap lapses when the receiver stops sending it.
	rembTTL = 5 * time.Second

	// A link sample (OnLinkSample) whose every packet queued at least
	// satQueue shows the bottleneck busy throughout: its bytes over its
	// span are the link's rate. A keyframe burst that drains within a
	// sample does not count, since the sample's least delay is taken; a
	// standing queue of 10 ms is 5 kB at 4 Mbps, 1 kB at 800 kbps. What
	// is done with the rate is guarded by rates (sent against it), not
	// by the depth of the queue. Samples are trusted together over at
	// least satMinSpan, and only while the newest is at most satFresh old.
	satQueue = 10 * time.Millisecond
	// A probe is judged on the same standing queue: at 4 Mbps, 25 ms
	// would be half of a 32 kB buffer, filling at the probe's excess.
	satProbeQueue = satQueue
	// A receiver that stalls (a busy CPU: twenty viewers in one process
	// taking a keyframe each at once) reads the packets it held back as
	// queued, and as a slow link: a down-switch wants three samples in a
	// row, a probe's failure (cheap) one.
	satMinSpan   = 250 * time.Millisecond
	satProbeSpan = 80 * time.Millisecond
	satMaxSpan   = 400 * time.Millisecond
	// satSampleMax is the longest span one sample may cover and count.
	satSampleMax = 300 * time.Millisecond
	satFresh     = 400 * time.Millisecond
	// capTTL: a measured capacity bounds the next probes this long.
	capTTL = 10 * time.Second
	// failHold: a full probe that failed is not repeated for the same
	// rung within failHold, doubling with each failure in a row up to
	// failHoldMax, unless a check shows the link carries more.
	failHold    = 8 * time.Second
	failHoldMax = 24 * time.Second
	// downSettle and settleShare: see stepDown.
	downSettle  = 2 * time.Second
	settleShare = 0.8
	// capFresh: a capacity measured this recently is the link's now.
	capFresh = time.Second
	nSamples = 32
	// A full-size RTP packet, and the IP, UDP and SRTP bytes around it.
	fullPacket     = 1200
	packetOverhead = 38

	maxBytesPerCall   = 1 << 30
	maxPacketsPerCall = 1 << 20
	maxNACKsPerCall   = 1 << 16
)

type probe struct {
	active bool
	check  bool // a check below the next rung's need: success chains the full probe
	idx    int  // the rung it is for
	// congested is set by a change of GCC's target during the probe:
	// ProbeGCCFall or ProbeGCCLeap.
	congested  string
	from, to   float64 // the rate asked for ramps from one to the other
	bar        float64 // what the second half must deliver
	start, end time.Time
}

// linkSample is one OnLinkSample.
type linkSample struct {
	at    time.Time
	queue time.Duration
	wire  int64 // bytes on the wire (LinkSample.WireBytes)
	span  time.Duration
}

// Controller chooses one viewer's rung. Create it with New.
type Controller struct {
	mu  sync.Mutex
	cfg Config

	ladder  []Rung // valid rungs, by ascending bit rate
	lim     Limits
	pin     int    // ladder index of the pinned rung, or -1
	allowed uint32 // bit i: rung i passes the limits

	cur      int // ladder index; -1: audio only (or no ladder)
	reason   string
	lastName string // Target of the last Tick
	ticked   bool

	last time.Time // the controller's clock: never goes backwards

	gcc    float64
	gccSet bool
	// gccTrusted is set when GCC's target last moved because the link was
	// overloaded (see gccEvent), or when the link was seen overloaded.
	// Before that GCC's target is only its configured start (pion's
	// default is 10 kbps) growing by 8 % a second, and after a blip it is
	// low for no reason the link gives; then raw is not bounded by it,
	// nor by proven, which is only a floor under it.
	gccTrusted bool
	remb       float64
	rembAt     time.Time
	rrLoss     float64
	rrAt       time.Time

	delivered reports
	// deliveredWire is what the link carried for the delivered packets:
	// their bytes plus each one's IP, UDP and SRTP overhead (see
	// carried).
	deliveredWire reports
	// received is deliveredWire as the receiver timed it (OnReceived);
	// probes are judged on it when it is known.
	received             received
	sent, packets, nacks meter
	sentSeen             bool // OnSent has been called
	rtt                  time.Duration
	rttSet               bool

	// samples are the last OnLinkSamples, newest at sHead.
	samples   [nSamples]linkSample
	sHead, sN int
	linkCap   float64 // the link's rate, when last seen saturated
	linkCapAt time.Time
	failIdx   int           // the rung a full probe last failed for; -1: none
	failCap   float64       // the capacity it failed at
	failHeld  time.Duration // the hold after the last failure
	failUntil time.Time     // its end: the failure's time + failHeld, jittered
	settleAt  time.Time     // the last down-switch to a measured capacity

	proven      float64
	congestedAt time.Time
	switchedAt  time.Time
	begun       bool // Started was called, or the viewer switched
	downAt      time.Time
	downFrom    int // the rung the viewer left at the first down-switch of a recovery
	climbedAt   time.Time
	// climbed: the viewer has climbed once (not resumed). Until then its
	// rung is the start's guess, and no ceiling has been found.
	climbed bool
	below   time.Time // when raw fell below the lowest rung; zero: it is not

	probe     probe
	probeEnd  time.Time // when the last probe ended
	probed    bool      // a probe just succeeded for the next rung: its climb is probe_ok
	chain     bool      // a probe just succeeded: the next may start without UpHold
	backoff   time.Duration
	nextProbe time.Time
	// The next probe goes no higher than stepFrom × stepMul (0: no bound):
	// after a failure, checkStep over what is proven (a failure cut short
	// early delivers little, and is no measure); after a check
	// succeeded, stairStep over the check.
	stepFrom, stepMul float64

	stats Stats
}

// New returns a controller for one viewer joining at now. ladder may be in
// any order and is copied; invalid rungs (no name, no bit rate, a repeated
// name) are dropped.
func New(cfg Config, ladder []Rung, lim Limits, now time.Time) (*Controller, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{cfg: cfg, cur: -1, last: now, switchedAt: now, pin: -1, failIdx: -1}
	c.delivered.init(now)
	c.deliveredWire.init(now)
	c.received.init(now)
	c.sent.base, c.packets.base, c.nacks.base = now, now, now
	c.ladder = normalize(make([]Rung, 0, min(len(ladder), maxRungs)), ladder)
	c.lim = sanitizeLimits(lim)
	c.resolve()
	c.start()
	return c, nil
}

// Started tells the controller that the viewer's first media left at now:
// ICE, DTLS and the first RTCP can take a second after New, and the join's
// keyframe burst, which the loss grace and the calm before a probe count
// from, starts here. It has no effect once the viewer has switched.
func (c *Controller) Started(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	if !c.begun && now.After(c.switchedAt) {
		c.switchedAt = now
	}
	c.begun = true
}

// start puts the viewer on its first rung.
func (c *Controller) start() {
	c.reason = ReasonStart
	c.cur = -1
	if c.pin >= 0 {
		c.cur, c.reason = c.pin, ReasonPin
		return
	}
	best := math.Inf(1)
	for i, r := range c.ladder {
		if !c.ok(i) {
			continue
		}
		if d := math.Abs(float64(r.Bitrate - c.cfg.StartBitrate)); d < best {
			c.cur, best = i, d
		}
	}
}

// OnEstimate takes the send-side estimator's target, bit/s.
func (c *Controller) OnEstimate(now time.Time, bps float64) {
	v, ok := sanitizeRate(bps)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	if c.gccSet && (v < c.gcc*gccFall || v > c.gcc*gccLeap) {
		why := ProbeGCCFall
		if v > c.gcc {
			why = ProbeGCCLeap
		}
		c.gccEvent(now, why)
	}
	c.gcc, c.gccSet = v, true
}

// OnREMB takes a receiver's REMB, bit/s. It caps the estimate for five
// seconds. A REMB under 10 kbps (zero included) is ignored, as garbage
// rather than a request to stop: stopping is the player's to ask for.
func (c *Controller) OnREMB(now time.Time, bps float64) {
	v, ok := sanitizeRate(bps)
	if !ok || v < minREMB {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.remb, c.rembAt = v, c.clock(now)
}

// OnLoss takes a receiver report's fraction lost (0–1; the RR's 8-bit
// field divided by 256) for the video SSRC.
func (c *Controller) OnLoss(now time.Time, fraction float64) {
	if !(fraction >= 0) { // also NaN
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rrLoss, c.rrAt = min(fraction, 1), c.clock(now)
}

// OnNACK takes the number of sequence numbers one NACK asked for.
func (c *Controller) OnNACK(now time.Time, n int) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nacks.add(c.clock(now), int64(min(n, maxNACKsPerCall)))
}

// OnDelivered takes bytes and packets the viewer acknowledged (TWCC
// feedback), counting media, RTX and padding alike. Feeding sent rather
// than acknowledged bytes would make every probe look successful.
func (c *Controller) OnDelivered(now time.Time, bytes, packets int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	bytes, packets = min(max(bytes, 0), maxBytesPerCall), min(max(packets, 0), maxPacketsPerCall)
	if bytes > 0 {
		c.delivered.add(now, int64(bytes))
	}
	if packets > 0 {
		c.packets.add(now, int64(packets))
	}
	if bytes > 0 || packets > 0 {
		c.deliveredWire.add(now, int64(bytes)+int64(packets)*packetOverhead)
	}
}

// OnReceived takes the receiver's timing of what one read of feedback
// acknowledged (peer.Delivery): wire bytes (RTP plus IP, UDP and SRTP
// overhead) that came in over span of the receiver's clock. A probe is
// judged on it rather than on the arrival of the feedback, which bunches:
// by its arrival the feedback of a 4 Mbit/s link read 3.9 and passed the
// source's bar at 3.84.
func (c *Controller) OnReceived(now time.Time, wire int, span time.Duration) {
	if wire < 0 || span < 0 || (wire == 0 && span == 0) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.received.add(c.clock(now), int64(min(wire, maxBytesPerCall)), min(span, time.Second))
}

// ProbeBytes is what one packet of size RTP bytes counts for against a
// probe's Bitrate, which is in bytes of full-size RTP packets as the probe
// is judged (carried): a short packet's IP, UDP and SRTP bytes are a larger
// share of what it costs the link. A pacer that counted a padding packet's
// RTP bytes would send 13 % more than the probe asked.
func ProbeBytes(size int) int {
	return (max(size, 0) + packetOverhead) * fullPacket / (fullPacket + packetOverhead)
}

// carried is what the link carried over the w before now, bit/s, in bytes
// of full-size RTP packets: the wire bytes acknowledged, less a full-size
// packet's share of overhead. A probe is judged by it. In RTP bytes, a
// probe made mostly of padding (at most 255 bytes a packet, so 16 %
// overhead against 3 % for media) would fail on a link that carries the
// rung's media with room to spare. It is timed by the receiver's clock
// when the receiver timed enough of w, else by the feedback's arrival.
func (c *Controller) carried(now time.Time, w time.Duration) float64 {
	bps, ok := c.received.rate(now, w)
	if !ok {
		bps = c.deliveredWire.rate(now, w)
	}
	return bps * fullPacket / (fullPacket + packetOverhead)
}

// OnSent takes media bytes written to the viewer (video, audio and
// retransmissions, not padding), as they are written. Comparing it with
// OnDelivered tells an overloaded link from a blip of the estimator, even
// during a probe, since padding is acknowledged but not counted as sent;
// without it, every GCC decrease is taken for overload.
func (c *Controller) OnSent(now time.Time, bytes int) {
	if bytes <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sentSeen = true
	c.sent.add(c.clock(now), int64(min(bytes, maxBytesPerCall)))
}

// LinkSample is what the receiver's clock (TWCC receive times) says about
// the packets acknowledged since the previous sample (peer.BWE's
// TakeLinkSample gives it).
type LinkSample struct {
	// MinQueue is the least queueing delay any of them saw: one-way delay
	// above the least seen lately.
	MinQueue time.Duration
	// Bytes (RTP: header, payload, padding) came in over Span of receive
	// time. WireBytes adds each packet's IP, UDP and SRTP overhead: a link
	// busy with small packets (audio, one-byte padding repairs) carries
	// far fewer RTP bytes than its rate.
	Bytes, WireBytes int
	Span             time.Duration
}

// OnLinkSample takes a LinkSample. Call it every 50–250 ms while feedback
// flows.
//
// A sample in which every packet queued shows the link busy throughout,
// so its rate is the link's, measured by the receiver: not fooled by
// feedback that arrives late or bunched, and available within a tenth of
// a second of the queue building, where the acknowledged share takes a
// second and only sees overloads of a third or more.
func (c *Controller) OnLinkSample(now time.Time, l LinkSample) {
	if l.MinQueue < 0 || l.Span < 0 || l.Bytes < 0 || l.WireBytes < l.Bytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	c.sHead = (c.sHead + 1) % nSamples
	c.sN = min(c.sN+1, nSamples)
	c.samples[c.sHead] = linkSample{at: now, queue: min(l.MinQueue, maxRTT),
		wire: int64(min(l.WireBytes, maxBytesPerCall)), span: min(l.Span, maxRTT)}
}

// saturation returns the link's rate over the newest run of samples that
// all queued, if the run is fresh and long enough: in bytes of full-size
// RTP packets (wire bytes less a full-size packet's overhead), so that a
// moment of small packets does not read as a slower link.
func (c *Controller) saturation(now, since time.Time) (float64, bool) {
	return c.saturated(now, since, satQueue, satMinSpan)
}

// saturated is saturation with queue as the least delay that counts,
// over samples taken after since.
func (c *Controller) saturated(now, since time.Time, queue, minSpan time.Duration) (float64, bool) {
	if c.sN == 0 || now.Sub(c.samples[c.sHead].at) > satFresh {
		return 0, false
	}
	var bytes int64
	var span time.Duration
	k := c.sHead
	for range c.sN {
		s := &c.samples[k]
		// A sample spanning much more than the calls' interval covers a
		// gap in the feedback or in reception: it shows nothing.
		if s.queue < queue || !s.at.After(since) || span >= satMaxSpan || s.span <= 0 || s.span > satSampleMax {
			break
		}
		bytes += s.wire
		span += s.span
		k = (k + nSamples - 1) % nSamples
	}
	if span < minSpan {
		return 0, false
	}
	return float64(bytes) * 8 / span.Seconds() * fullPacket / (fullPacket + packetOverhead), true
}

// queueing reports whether the newest link sample shows every packet
// queued: the link is full already, and padding on top would overflow it
// before the feedback that stops a probe comes back through that queue.
func (c *Controller) queueing(now time.Time) bool {
	return c.sN > 0 && now.Sub(c.samples[c.sHead].at) <= satFresh && c.samples[c.sHead].queue >= satQueue
}

// OnRTT takes the viewer's round-trip time (from receiver reports or
// TWCC). It tells how long to wait for a probe's acknowledgements.
func (c *Controller) OnRTT(now time.Time, rtt time.Duration) {
	if rtt < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock(now)
	c.rtt, c.rttSet = min(rtt, maxRTT), true
}

// SetLadder replaces the ladder, for instance when the source's measured
// bit rate changes. The viewer keeps its rung if the name is still there,
// and otherwise takes the best rung not above the old one's bit rate. It
// does not allocate once the ladder's size has been seen.
func (c *Controller) SetLadder(ladder []Rung) {
	c.mu.Lock()
	defer c.mu.Unlock()
	name, rate, had := "", 0, c.cur >= 0
	if had {
		name, rate = c.ladder[c.cur].Name, c.ladder[c.cur].Bitrate
	}
	probing := ""
	if c.probe.active {
		probing = c.ladder[c.probe.idx].Name
	}
	empty := len(c.ladder) == 0
	c.ladder = normalize(c.ladder[:0], ladder)
	c.resolve()
	// A source whose measured rate is updated every second must not cancel
	// every probe: one for a rung still there goes on.
	if probing != "" {
		kept := false
		for i, r := range c.ladder {
			if r.Name == probing && c.ok(i) && c.pin < 0 {
				c.probe.idx, kept = i, true
			}
		}
		if !kept {
			c.cancelProbe()
		}
	}
	switch {
	case empty:
		// A stream whose ladder was empty is starting now.
		c.start()
		if c.cur >= 0 {
			c.reason = ReasonLadder
		}
	case had:
		c.cur = -1
		for i, r := range c.ladder {
			if r.Name == name {
				c.cur = i
			}
		}
		if c.cur < 0 && len(c.ladder) > 0 {
			c.cur = max(c.fit(float64(rate)), c.lowest())
			c.reason = ReasonLadder
		}
	}
}

// SetLimits replaces the viewer's limits and pin.
func (c *Controller) SetLimits(lim Limits) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.setLimits(lim)
}

func (c *Controller) setLimits(lim Limits) {
	c.lim = sanitizeLimits(lim)
	c.resolve()
	if c.probe.active && (c.pin >= 0 || !c.ok(c.probe.idx)) {
		c.cancelProbe()
	}
}

// Pin pins the viewer to the rung named name; "auto" or "" unpins, leaving
// the viewer where it is. A name not in the ladder counts as "auto" until
// the ladder has it.
func (c *Controller) Pin(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	lim := c.lim
	lim.Pin = name
	c.setLimits(lim)
}

// Stats returns the viewer's counts so far.
func (c *Controller) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Tick runs the decision at now and returns it. It does not allocate.
func (c *Controller) Tick(now time.Time) Decision {
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	c.step(now)
	d := Decision{Target: c.name(), Reason: c.reason, Estimate: c.usable(now)}
	if !c.linkCapAt.IsZero() && now.Sub(c.linkCapAt) < capTTL {
		d.Capacity = min(c.linkCap, maxRate)
		d.Saturated = now.Sub(c.linkCapAt) <= capFresh
	}
	d.Changed = !c.ticked || d.Target != c.lastName
	c.ticked, c.lastName = true, d.Target
	if c.probe.active {
		d.Probe = ProbeRequest{Active: true, Bitrate: int(min(c.probeRate(now), maxRate)), Until: c.probe.end}
	}
	return d
}

func (c *Controller) step(now time.Time) {
	if len(c.ladder) == 0 {
		c.cancelProbe()
		c.cur = -1
		return
	}
	if c.pin >= 0 {
		c.cancelProbe()
		c.set(now, c.pin, ReasonPin)
		return
	}
	if c.cur >= 0 && !c.ok(c.cur) {
		c.cancelProbe()
		c.set(now, max(c.fit(float64(c.ladder[c.cur].Bitrate)), c.lowest()), ReasonCap)
	}
	if capacity, ok := c.saturation(now, time.Time{}); ok {
		c.linkCap, c.linkCapAt = capacity, now
	}
	loss := c.loss(now)
	if c.probe.active {
		c.judgeProbe(now, loss)
		// Loss seen while probing is the probe's own: it failed the
		// probe, and is no reason to go down (loss ignores it for
		// lossGrace after the probe's end).
		c.stepDown(now, 0)
	} else {
		c.stepDown(now, loss)
	}
	if !c.probe.active {
		c.stepUp(now, loss)
	}
}

// judgeProbe ends a probe that failed or is over.
func (c *Controller) judgeProbe(now time.Time, loss float64) {
	p := &c.probe
	if p.congested != "" || loss > c.cfg.LossProbeMax {
		why := p.congested
		if why == "" {
			why = ProbeLoss
		}
		c.probeFailed(now, why)
		return
	}
	// The probe filled the link, and the receiver timed what the link
	// carried below the bar: the answer is in, before the queue overflows.
	// In bytes of full-size packets, as the bar is judged (carried).
	if capacity, ok := c.saturated(now, p.start, satProbeQueue, satProbeSpan); ok && capacity < p.bar {
		c.linkCap, c.linkCapAt = capacity, now
		c.probeFailed(now, ProbeSaturated)
		return
	}
	// It succeeds as soon as the acknowledgements over half its length
	// reach its bar: they cannot exceed what the link carried, and if they
	// still hold some of the ramp they only read low. Waiting for them
	// rather than for a fixed time keeps a viewer whose round trip is
	// longer than OnRTT said (or than defaultRTT) from failing every probe.
	w := c.cfg.ProbeDuration / 2
	if now.Sub(p.start) < c.cfg.ProbeDuration/4+w || c.carried(now, w) < p.bar {
		if !now.Before(p.end) {
			c.probeFailed(now, ProbeShort)
		}
		return
	}
	c.probeEnd = now
	p.active = false
	c.stats.ProbesOK++
	c.stats.LastProbe = ProbeOK
	c.stats.LastProbeBar, c.stats.LastProbeGot = p.bar, c.carried(now, w)
	c.proven = max(c.proven, p.bar)
	if !p.check {
		// A check's success only chains the full probe; the backoff
		// goes when that succeeds, or a check that passes under a
		// ceiling would restart the climb of the backoff each time.
		c.backoff = 0
	}
	c.chain, c.nextProbe = true, now
	c.probed = !p.check
	c.stepFrom, c.stepMul = 0, 0
	if p.check {
		c.stepFrom, c.stepMul = p.bar, stairStep
	}
	if p.bar > c.failCap {
		c.failIdx, c.failCap, c.failHeld = -1, 0, 0 // the link carries more than when it failed
	}
}

// cancelProbe ends a probe unjudged: the ladder, a pin or the link changed
// under it.
func (c *Controller) cancelProbe() {
	if c.probe.active {
		c.stats.LastProbe = ProbeCancelled
	}
	c.probe = probe{}
}

func (c *Controller) probeFailed(now time.Time, why string) {
	c.probe.active = false
	c.probeEnd = now
	c.stats.ProbesFailed++
	c.stats.LastProbe = why
	// Whatever the link acknowledged during the probe, it carried; failing
	// to carry more says nothing against what was proven before (overload
	// does, and is seen apart). It also sizes the next attempt.
	got := c.carried(now, c.cfg.ProbeDuration/2)
	if capacity, ok := c.saturated(now, c.probe.start, satProbeQueue, satProbeSpan); ok {
		// Measured by the receiver while the probe filled the link.
		got = capacity
	}
	c.stats.LastProbeBar, c.stats.LastProbeGot = c.probe.bar, got
	c.proven = max(c.proven, got)
	c.stepFrom, c.stepMul = c.proven, checkStep
	if !c.probe.check {
		// Delivery timed by feedback arrival may read above the bar
		// while the link fell behind: the failure is what counts.
		held := failHold
		if c.failIdx == c.probe.idx && c.failHeld > 0 {
			held = min(2*c.failHeld, failHoldMax)
		}
		c.failHeld = held
		c.failIdx, c.failCap, c.failUntil = c.probe.idx, min(got, 0.99*c.probe.bar), now.Add(jitter(now, held))
	}
	c.chain = false
	c.backOff(now)
}

func (c *Controller) backOff(now time.Time) {
	// ProbeBackoffMax keeps the wait short while the link may come back.
	// A viewer back on the rung it had (or that went down long ago) sits
	// under the ceiling its probes found, and probing it every two
	// seconds kept its link near full a fifth of the time, so that a link
	// falling then met a probe.
	ceiling := !c.recovering(now)
	most := c.cfg.ProbeBackoffMax
	if ceiling {
		most = max(most, ceilingBackoff)
	}
	if c.backoff == 0 {
		c.backoff = c.cfg.ProbeBackoffMin
	} else {
		c.backoff = min(2*c.backoff, most)
	}
	wait := c.backoff
	if ceiling {
		wait = jitter(now, wait)
	}
	c.nextProbe = now.Add(wait)
}

// jitter spreads d over ±25 %, by the microseconds of now: viewers that
// joined together (a stream's start, a node's restart) would otherwise
// repeat their probes in step, filling a shared uplink at once. The real
// clock's microseconds are as good as a random draw here; a simulated
// clock's stay put, which keeps simulations repeatable.
func jitter(now time.Time, d time.Duration) time.Duration {
	f := float64(now.UnixNano()/1e3%1024) / 1024
	return time.Duration(float64(d) * (0.75 + 0.5*f))
}

// recovering reports whether the viewer is below the rung it left at a
// down-switch less than recoverWindow ago: the link may come back, and
// noticing it soon is worth frequent probes.
func (c *Controller) recovering(now time.Time) bool {
	return !c.downAt.IsZero() && now.Sub(c.downAt) <= recoverWindow && c.cur < c.downFrom
}

func (c *Controller) stepDown(now time.Time, loss float64) {
	if c.cur < 0 {
		c.below = time.Time{}
		return
	}
	rung := float64(c.ladder[c.cur].Bitrate)
	// For a while after a down-switch to the rung a measured capacity
	// carries, the old rung's queue, its losses and their repairs still
	// fill the link, and every measure reads it slower than it is: only
	// a fall well below the new rung takes the viewer further down.
	limit := rung
	if !c.settleAt.IsZero() && now.Sub(c.settleAt) < downSettle {
		limit *= settleShare
	}
	if capacity, ok := c.saturation(now, time.Time{}); ok && c.sentSeen && capacity < limit && c.sentRate(now) > capacity {
		// The queue stands, on a rung the link, busy throughout, does
		// not carry, and what is sent exceeds what it carries (in a
		// quiet scene it may only match it: the next busy one overflows
		// it). Go to the best rung the link carries, measured, not GCC's
		// lagging target nor a delivery rate timed by feedback arrival.
		c.gccTrusted = true
		c.congestedAt = now
		c.proven = capacity
		if j := max(c.fit(capacity), c.lowest()); j < c.cur {
			c.below = time.Time{}
			c.down(now, j, ReasonEstimateDrop)
			c.settleAt = now
			return
		}
	}
	if over, known := c.overloaded(now); over && known {
		// The link is behind, whether or not GCC said so: its target
		// may sit at its floor, with no change left to report, or a
		// decrease first taken for a blip is borne out.
		c.gccTrusted = true
		c.congest(now)
	}
	raw := c.raw(now)
	if raw < limit {
		if j := c.fit(raw); j >= 0 && j < c.cur {
			c.below = time.Time{}
			c.down(now, j, ReasonEstimateDrop)
			return
		}
		// Nothing fits. Try the lowest rung before pausing video: a
		// momentary dip should cost resolution, not the picture.
		if lo := c.lowest(); c.cur > lo {
			c.below = now
			c.down(now, lo, ReasonEstimateDrop)
			return
		}
		if c.below.IsZero() {
			c.below = now
		}
		if now.Sub(c.below) >= c.cfg.AudioOnlyHold {
			c.below = time.Time{}
			c.stats.AudioOnly++
			c.down(now, -1, ReasonAudioOnly)
		}
		return
	}
	c.below = time.Time{}
	// Loss steps down one rung at a time and never pauses video: audio
	// suffers the same loss, and congestion bad enough to need pausing
	// also brings the estimate down.
	if loss > c.cfg.LossDown && !c.probe.active {
		if j := c.below1(c.cur); j >= 0 {
			c.congest(now)
			c.down(now, j, ReasonLoss)
		}
	}
}

func (c *Controller) down(now time.Time, j int, reason string) {
	c.cancelProbe()
	c.chain, c.probed = false, false
	if !c.climbedAt.IsZero() && now.Sub(c.climbedAt) < climbWatch {
		c.stats.ProbesFailed++
		c.backOff(now)
	}
	c.climbedAt = time.Time{}
	// The link has just changed: what an old probe measured is stale.
	c.stepFrom = 0
	if !c.recovering(now) || c.cur > c.downFrom {
		c.downFrom = c.cur
	}
	c.downAt = now
	c.set(now, j, reason)
}

func (c *Controller) stepUp(now time.Time, loss float64) {
	j := c.above(c.cur)
	if j < 0 || c.switchedAt.Equal(now) {
		return
	}
	need := c.need(j)
	calm := now.Sub(c.switchedAt) >= c.cfg.UpHold &&
		(c.congestedAt.IsZero() || now.Sub(c.congestedAt) >= c.cfg.UpHold)
	// A climb on the estimate alone waits while the link queues: the
	// estimate is about the link before the queue built, which may have
	// just fallen. A probe's success is about the link now.
	if min(c.raw(now), c.basis(now)) >= need && (c.probed || calm && !c.queueing(now)) {
		reason := ReasonEstimateUp
		if c.probed {
			reason = ReasonProbeOK
		}
		if c.cur < 0 {
			reason = ReasonResume
		}
		c.probed = false
		c.climbedAt = now
		c.set(now, j, reason)
		return
	}
	c.probed = false
	if now.Before(c.nextProbe) || !(c.chain || calm) || loss > c.cfg.LossProbeMax || c.queueing(now) {
		return
	}
	if !c.rembAt.IsZero() && now.Sub(c.rembAt) <= rembTTL && c.remb < need {
		return
	}
	if c.stepFrom == 0 && !c.linkCapAt.IsZero() && now.Sub(c.linkCapAt) < capTTL && c.linkCap < need {
		// The link was measured below the need lately: check a little
		// above what it carried first, rather than overflow it.
		c.stepFrom, c.stepMul = c.linkCap, checkStep
	}
	from := min(c.delivered.rate(now, congestionWindow), need)
	// The probe may pad on past ProbeDuration, waiting for the
	// acknowledgements of packets sent at its full rate: a feedback delay
	// and one more feedback interval, or two delays if the round trip is
	// only assumed.
	grace := c.lag() + feedbackDelay
	if !c.rttSet {
		grace = 2 * c.lag()
	}
	p := probe{active: true, idx: j, from: from, to: need * probeOver, bar: need, start: now, end: now.Add(c.cfg.ProbeDuration + grace)}
	if t := c.stepFrom * c.stepMul; t > from && t < need {
		p.to, p.bar, p.check = t, checkOK*t, true
	} else if j == c.failIdx && c.cur >= 0 && c.climbed && need > c.failCap && now.Before(c.failUntil) {
		// The same full probe failed at this capacity, and nothing since
		// showed more: it would fail again, and fill the link again. (Not
		// to resume video: that probe is small, and waited for. Nor before
		// the first climb: the start rung is low by design, and the first
		// probes of a join fail on a busy receiver's noise, which held the
		// viewer on 360p for 10 s of a 4 Mbit/s link in 3 of 40 runs on
		// the lab; the backoff still spaces them.)
		return
	}
	c.probe = p
	c.chain = false
	c.stats.Probes++
}

// gccEvent reads a fall (or leap) of GCC's target. Any such event fails a
// running probe: its extra rate is the likeliest cause. But GCC
// also backs off on a keyframe's burst through a busy link, landing at 0.85
// × a quiet scene's rate, below the rung the link carries; taken as
// overload, that sends a viewer down and back up every few seconds. So the
// target is trusted for going down only when the link is seen to fall
// behind: less than overloadShare of what was sent in the last second was
// acknowledged.
func (c *Controller) gccEvent(now time.Time, why string) {
	c.congestedAt = now
	if c.probe.active {
		c.probe.congested = why
	}
	over, _ := c.overloaded(now)
	// Without OnSent there is no telling, and every decrease counts. With
	// it, a decrease the link does not bear out (yet) waits for step to
	// see the link fall behind.
	c.gccTrusted = over || !c.sentSeen
	if c.gccTrusted {
		c.congest(now)
	}
}

// lag is how long after sending a packet its acknowledgement arrives.
func (c *Controller) lag() time.Duration {
	rtt := defaultRTT
	if c.rttSet {
		rtt = c.rtt
	}
	return rtt + feedbackDelay
}

// overloaded reports whether acknowledgements fell behind the media sent,
// and whether it can tell: not without OnSent, nor in the first second.
// The sent side is read a lag earlier, the typical delay of a TWCC
// acknowledgement, so that a keyframe just sent does not count against the
// link. Padding is acknowledged but not counted as sent, so a probe the
// link carries never looks like overload, and one it does not carry only
// once it eats into the media.
func (c *Controller) overloaded(now time.Time) (over, known bool) {
	end := c.delivered.last().Add(-c.lag())
	if !c.sentSeen || end.Sub(c.sent.base) < overloadWindow {
		return false, false
	}
	s := c.sent.rate(now, end, overloadWindow, 8)
	return c.delivered.rate(now, overloadWindow) < overloadShare*s, true
}

// sentRate is the media sent over overloadWindow, a lag ago: what the
// acknowledgements arriving now are about.
func (c *Controller) sentRate(now time.Time) float64 {
	end := c.delivered.last().Add(-c.lag())
	if end.Sub(c.sent.base) < overloadWindow {
		return 0
	}
	return c.sent.rate(now, end, overloadWindow, 8)
}

// congest records a measurement of congestion: the link carries what it
// delivered just now, and no more.
func (c *Controller) congest(now time.Time) {
	c.congestedAt = now
	c.proven = c.delivered.rate(now, congestionWindow)
	if !c.linkCapAt.IsZero() && now.Sub(c.linkCapAt) <= capFresh {
		// The receiver timed the link busy just now: a better measure
		// than acknowledgements timed by their arrival, which a burst of
		// repairs and small packets reads low.
		c.proven = max(c.proven, c.linkCap)
	}
}

func (c *Controller) set(now time.Time, j int, reason string) {
	if j == c.cur {
		return
	}
	if j > c.cur {
		c.stats.Ups++
		c.climbed = c.climbed || c.cur >= 0 && (reason == ReasonProbeOK || reason == ReasonEstimateUp)
	} else {
		c.stats.Downs++
	}
	c.cur, c.reason, c.switchedAt = j, reason, now
	c.begun = true // the join is over
}

// raw is the congestion-driven estimate (see the package doc); +Inf when
// nothing bounds it yet.
func (c *Controller) raw(now time.Time) float64 {
	r := math.Inf(1)
	if c.gccTrusted {
		r = max(c.gcc, c.proven) // c.gcc is 0 if GCC is silent
	}
	if !c.rembAt.IsZero() && now.Sub(c.rembAt) <= rembTTL {
		r = min(r, c.remb)
	}
	return r
}

// basis is what the link has shown it carries.
func (c *Controller) basis(now time.Time) float64 {
	return max(c.delivered.rate(now, deliveredWindow), c.proven)
}

// usable is raw capped by what was proven, plus Headroom (see the package
// doc). It is only shown: a climb needs the basis itself to reach the
// next rung's need.
func (c *Controller) usable(now time.Time) float64 {
	return min(c.raw(now), c.basis(now)*(1+c.cfg.Headroom))
}

// loss is the worse of the last receiver report and the NACKed share of
// packets over the last second. Reports from within lossGrace of the
// join, of a switch or of a probe's end are about the keyframe burst that
// starts a rung, the rung left behind or the probe, and are not held
// against the rung now sent. NACKs repeat when a
// retransmission is lost too, so they overstate loss a little: the safe
// side.
func (c *Controller) loss(now time.Time) float64 {
	quiet := c.switchedAt // any switch, and the join: a keyframe's burst
	if c.downAt.After(quiet) {
		quiet = c.downAt
	}
	if c.probeEnd.After(quiet) {
		quiet = c.probeEnd
	}
	quiet = quiet.Add(lossGrace)
	var l float64
	if !c.rrAt.IsZero() && !c.rrAt.Before(quiet) && now.Sub(c.rrAt) <= lossTTL {
		l = c.rrLoss
	}
	if now.Before(quiet) {
		return l
	}
	n, _ := c.nacks.sum(now, now, nackWindow)
	p, _ := c.packets.sum(now, now, nackWindow)
	if p >= nackMinPackets {
		l = max(l, float64(n)/(float64(p)+float64(n)))
	}
	return l
}

// probeRate is the rate a probe pads up to now: ramped from what was
// delivered over its first quarter, and held down to that while the
// receiver sees every packet queue. A probe the link carries does not
// queue; one that queues would overflow the link (or a link that just
// fell) long before its judgment, a round trip and a queue later, comes
// back, and lost padding stalls the viewer's frames until it is repaired.
func (c *Controller) probeRate(now time.Time) float64 {
	p := &c.probe
	if c.queueing(now) {
		return p.from
	}
	ramp := c.cfg.ProbeDuration / 4
	f := max(min(float64(now.Sub(p.start))/float64(ramp), 1), 0)
	return p.from + (p.to-p.from)*f
}

// need is what the link must be shown to carry to climb to rung j.
func (c *Controller) need(j int) float64 {
	return float64(c.ladder[j].Bitrate) * (1 + c.cfg.UpMargin)
}

func (c *Controller) name() string {
	if c.cur < 0 {
		return ""
	}
	return c.ladder[c.cur].Name
}

// clock returns now, or the latest time seen if now is earlier.
func (c *Controller) clock(now time.Time) time.Time {
	if now.After(c.last) {
		c.last = now
	}
	return c.last
}

func (c *Controller) ok(i int) bool { return i >= 0 && i < len(c.ladder) && c.allowed&(1<<i) != 0 }

// fit is the best allowed rung whose bit rate is at most bps, or -1.
func (c *Controller) fit(bps float64) int {
	for i := len(c.ladder) - 1; i >= 0; i-- {
		if c.ok(i) && float64(c.ladder[i].Bitrate) <= bps {
			return i
		}
	}
	return -1
}

func (c *Controller) lowest() int { return c.above(-1) }

// above is the next allowed rung above i, or -1.
func (c *Controller) above(i int) int {
	for j := i + 1; j < len(c.ladder); j++ {
		if c.ok(j) {
			return j
		}
	}
	return -1
}

// below1 is the next allowed rung below i, or -1.
func (c *Controller) below1(i int) int {
	for j := i - 1; j >= 0; j-- {
		if c.ok(j) {
			return j
		}
	}
	return -1
}

// resolve recomputes the pin and the allowed rungs after the ladder or the
// limits changed.
func (c *Controller) resolve() {
	c.pin = -1
	if p := c.lim.Pin; p != "" && !strings.EqualFold(p, "auto") {
		for i, r := range c.ladder {
			if r.Name == p {
				c.pin = i
			}
		}
	}
	c.allowed = 0
	for i, r := range c.ladder {
		if (c.lim.MaxHeight == 0 || r.Height == 0 || r.Height <= c.lim.MaxHeight) &&
			(c.lim.MaxBitrate == 0 || r.Bitrate <= c.lim.MaxBitrate) {
			c.allowed |= 1 << i
		}
	}
	if c.allowed == 0 && len(c.ladder) > 0 {
		// Limits below the whole ladder: the lowest rung is closest to
		// what the viewer asked for, and better than no picture.
		c.allowed = 1
	}
}

func normalize(dst, src []Rung) []Rung {
	for _, r := range src {
		if len(dst) == maxRungs {
			break
		}
		if r.Name == "" || r.Bitrate <= 0 || slices.ContainsFunc(dst, func(d Rung) bool { return d.Name == r.Name }) {
			continue
		}
		dst = append(dst, Rung{Name: r.Name, Bitrate: min(r.Bitrate, maxRate), Height: max(r.Height, 0)})
	}
	slices.SortStableFunc(dst, func(a, b Rung) int {
		return cmp.Or(cmp.Compare(a.Bitrate, b.Bitrate), cmp.Compare(a.Height, b.Height))
	})
	return dst
}

func sanitizeLimits(l Limits) Limits {
	l.MaxHeight, l.MaxBitrate = max(l.MaxHeight, 0), max(l.MaxBitrate, 0)
	return l
}

// sanitizeRate rejects rates that carry no information and clamps the
// absurd.
func sanitizeRate(bps float64) (float64, bool) {
	if !(bps > 0) { // also NaN
		return 0, false
	}
	return min(bps, maxRate), true
}
