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
//     delay any of them saw, the rate they came in at, and the rate of
//     those that came in behind one another through a busy link.
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
// lagging target or a fall in delivered bytes would take it. A burst
// (a keyframe, paced at 2.5 × its rung) through a link slower than it
// times the link sooner, from the packets that reached the bottleneck
// while the one before was still there: when that rate is below 90 % of
// the rung, the viewer goes down the same way, without waiting for a
// queue to stand through a whole sample, which a token bucket or a quiet
// scene can put off by a second.
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
// causes fails it and is no reason to go down. A success climbs at once (to
// its rung, though the rung's measured need rose by up to 10 % while it
// ran) and chains the next rung's probe, so the 4 → 0.8 → 4 Mbps link
// climbs back two rungs in about 2 s (see the simulation in sim_test.go and
// scenario_test.go). A failure waits ProbeBackoffMin, doubling while
// failures repeat (a check's success does not reset it, only a full
// probe's): up to ProbeBackoffMax while the viewer is below the rung it
// left at a down-switch within 30 s, and up to 8 s, jittered, under the
// ceiling its probes found. The next attempt is only a check 15 % above
// what is proven, then 50 % steps after each check that passes, so that a
// viewer parked below a rung its link cannot carry pays a small queueing
// bump every few seconds rather than a full overshoot, yet still notices a
// link that recovered. While recovering, once a check has passed and the
// full probe it chained has failed, checks are skipped: a token bucket
// passes them (15 % over a 0.8 Mbit/s link drains a 10 kB bucket in 0.7 s),
// and they only delay noticing the recovery. While recovering, the queue
// a failed probe left, draining at the next rung's need and 1.5 times what
// the probe got, shows the link came back: the next probe starts at once,
// without the backoff (once in a row). A link measured saturated
// below a rung's need in the last 10 s also starts with such a check. A
// full probe that failed is not tried again for the same rung for about 8 s
// unless a check shows the link carries more than it did then (or checks
// are skipped, as above): a rung whose need is within a few percent of the
// link would otherwise overflow it every few seconds. That hold waits for
// the viewer's first climb: until then its rung is the start's guess, not a
// ceiling it found.
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
	// Hold is why the last Tick started no probe and climbed no rung:
	// one of the Hold constants; "" while a probe runs.
	Hold string
}

// Why no probe started (Stats.Hold), for logs: a viewer that stays below
// a rung its link carries is explained by the hold it sat in.
const (
	HoldTop     = "top"     // no allowed rung above, or pinned
	HoldSwitch  = "switch"  // it switched in this Tick
	HoldBackoff = "backoff" // waiting out the backoff after a failed probe
	HoldCalm    = "calm"    // within UpHold of a switch or congestion
	HoldLoss    = "loss"    // loss above LossProbeMax
	HoldQueue   = "queue"   // the newest link sample shows a standing queue
	HoldREMB    = "remb"    // the receiver's REMB is below the next rung's need
	HoldFailed  = "failed"  // the same full probe failed lately at this capacity
)

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
	// A link's rate from its busy packets (LinkSample.BusyWire) is read
	// over the newest samples of the last satFresh that hold busyMinSpan
	// of busy time (a dozen full-size packets at 2 Mbit/s), and sends the
	// viewer down only below busyShare of its rung's bit rate: a rung
	// whose rate the link just carries is the saturation rule's to judge.
	busyMinSpan = 50 * time.Millisecond
	busyShare   = 0.9
	// capTTL: a measured capacity bounds the next probes this long.
	capTTL = 10 * time.Second
	// failHold: a full probe that failed is not repeated for the same
	// rung within failHold, doubling with each failure in a row up to
	// failHoldMax, unless a check shows the link carries more.
	failHold    = 8 * time.Second
	failHoldMax = 24 * time.Second
	// recoverFailHold bounds that hold while the viewer recovers
	// (recovering): with the backoff, a probe every 3 s or so.
	recoverFailHold = 3 * time.Second
	// failShare: a failed probe proves at most this share of its bar.
	failShare = 0.99
	// probedSlack: a probe that succeeded climbs to its rung though the
	// rung's need rose during it, by up to this share. The source's bit
	// rate is measured every second and swings by 10 %: the capped
	// source's probe succeeded at 3.25 Mbit/s as its need became 3.26, and
	// the same probe was sent again, half a second more on 480p.
	probedSlack = 0.9
	// downSettle and settleShare: see stepDown.
	downSettle  = 2 * time.Second
	settleShare = 0.8
	// drainMinSpan and drainJump: see drainShowsMore. A sample's busy
	// packets over at least drainMinSpan (ten full-size packets at
	// 3 Mbit/s) at drainJump times what a failed probe got show a link
	// that changed; on the slow link the drain reads within 5 % of it.
	drainMinSpan = 30 * time.Millisecond
	drainJump    = 1.5
	// capFresh: a capacity measured this recently is the link's now.
	capFresh = time.Second
	nSamples = 32
	// A full-size RTP packet, and the IP, UDP and SRTP bytes around it
	// (peer.WireOverhead, which whep's tests hold this to: AES-GCM's 16-byte tag).
	fullPacket     = 1200
	packetOverhead = 44

	maxBytesPerCall   = 1 << 30
	maxPacketsPerCall = 1 << 20
	maxNACKsPerCall   = 1 << 16
)

type probe struct {
	active bool
	check  bool // a check below the next rung's need: success chains the full probe
	// afterCheck: a full probe chained by a check's success.
	afterCheck bool
	idx        int // the rung it is for
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
	// busyWire and busySpan: LinkSample.BusyWire and BusySpan.
	busyWire int64
	busySpan time.Duration
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

	probe    probe
	probeEnd time.Time // when the last probe ended
	probed   bool      // a probe just succeeded for the next rung: its climb is probe_ok
	// probedBar and probedIdx: the need that probe proved, and its rung.
	probedBar float64
	probedIdx int
	chain     bool // a probe just succeeded: the next may start without UpHold
	backoff   time.Duration
	nextProbe time.Time
	// The next probe goes no higher than stepFrom × stepMul (0: no bound):
	// after a failure, checkStep over what is proven (a failure cut short
	// early delivers little, and is no measure); after a check
	// succeeded, stairStep over the check.
	stepFrom, stepMul float64
	// fooled: a full probe chained by a check's success failed, so checks
	// prove nothing on this link (see stepUp).
	fooled bool
	// hinted: drainShowsMore moved the next probe up; earlyUsed: the
	// running or last probe started so, and the next waits its backoff.
	hinted, earlyUsed bool
	// failGot: what the last probe got, if it failed (bit/s); 0 after a
	// success, or once the next probe starts.
	failGot float64

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
		c.stats.Hold = HoldTop
		return
	}
	if c.pin >= 0 {
		c.cancelProbe()
		c.set(now, c.pin, ReasonPin)
		c.stats.Hold = HoldTop
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
