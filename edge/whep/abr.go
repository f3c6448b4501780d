package whep

import (
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cascade-cdn/cascade/edge/abr"
	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/wish"
)

// padEvery is how often a probing viewer's padding is topped up: often
// enough that the probe is paced, not a burst every abrTick.
const padEvery = 20 * time.Millisecond

// maxEventSubs bounds a session's event streams (the handler also does).
const maxEventSubs = 4

// limits reads a viewer's bounds from the WHEP POST's query.
func limits(q url.Values) (abr.Limits, error) {
	lim := abr.Limits{Pin: q.Get("rendition")}
	for _, f := range []struct {
		key string
		dst *int
	}{{"max_height", &lim.MaxHeight}, {"max_bitrate", &lim.MaxBitrate}} {
		v := q.Get(f.key)
		if v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 1<<30 {
			return lim, wish.Errorf(400, "bad_query", "%s must be a whole number, got %.20q", f.key, v)
		}
		*f.dst = n
	}
	return lim, nil
}

func rendition(ladder []Rendition, name string) *Rendition {
	for i := range ladder {
		if ladder[i].Name == name {
			return &ladder[i]
		}
	}
	return nil
}

// rank is name's place in the ladder (0 is the best), or -1.
func rank(ladder []Rendition, name string) int {
	for i := range ladder {
		if ladder[i].Name == name {
			return i
		}
	}
	return -1
}

func names(ladder []Rendition) []string {
	out := make([]string, len(ladder))
	for i, r := range ladder {
		out[i] = r.Name
	}
	return out
}

// rungs turns renditions into the controller's ladder. A rung whose bit
// rate is not known yet (the source's is measured after its first second)
// is weighed at 1.5× the next rung, or 4 Mbps alone.
func rungs(ladder []Rendition) []abr.Rung {
	out := make([]abr.Rung, len(ladder))
	for i, r := range ladder {
		b := r.Bitrate
		if b <= 0 {
			b = 4_000_000
			if i+1 < len(ladder) && ladder[i+1].Bitrate > 0 {
				b = ladder[i+1].Bitrate * 3 / 2
			}
		}
		out[i] = abr.Rung{Name: r.Name, Bitrate: b, Height: r.Height}
	}
	return out
}

// viewerABR is one viewer's rendition choice and what it tells the player.
// The controller is safe for concurrent use; the rest is owned by the
// writer goroutine, except ladder (guarded by mu for SetLayer).
type viewerABR struct {
	ctl *abr.Controller

	mu     sync.Mutex
	ladder []Rendition
	pinned bool

	reason       string // of the switch under way
	ladderAt     time.Time
	estimateAt   time.Time
	pausedAt     time.Time // zero while video flows
	firstFrame   bool
	probeRate    int
	probeSent    int // media bytes since the last padding top-up
	padDebt      int // padding owed (negative: media sent over the probe's rate)
	lastStats    abr.Stats
	lastEstimate float64
	probeAt      time.Time // start of the probe under way, zero for none
	// hold is why no probe runs (abr.Stats.Hold) since holdAt, logged as
	// it changes: a viewer left below a rung its link carries is
	// explained by what held its probes.
	hold   string
	holdAt time.Time
	probeN int // its number (abr.Stats.Probes)
	// queue and queueAt: the queueing delay of the newest packet of the
	// last link sample, and when it came (the drain hold in apply).
	queue   time.Duration
	queueAt time.Time
}

// estimator is the viewer's send-side bandwidth estimate (GCC), when the
// engine provides one.
type estimator interface{ TargetBitrate() int }

// linkSampler gives the receiver's timing of the packets acknowledged
// since it was last asked (peer.BWE).
type linkSampler interface{ TakeLinkSample() peer.LinkSample }

// ackDelayer is the estimator's delay of its feedback (peer.BWE).
type ackDelayer interface{ AckDelay() time.Duration }

// holdRepairs sets how long a repaired number is not repaired again: the
// feedback's delay, a round trip plus the queue and the feedback
// interval, which is how long a repair takes to tell. It is taken each
// tick, since the queue grows within a tick of a drop: read once a
// second, it held the fast link's 60–100 ms for up to a second after the
// capped source's drop on the lab, with the queue at 250 ms, and fills of
// the rung left went out two or three times each (0.2–0.5 Mbit/s of the
// 0.8 Mbit/s link for 0.3 s, all of it dropped by the receiver's replay
// check). Audio's too: probe padding may ride it.
func (s *session) holdRepairs() {
	b, ok := s.bwe.(ackDelayer)
	if !ok {
		return
	}
	hold := int64(min(max(b.AckDelay(), 20*time.Millisecond), 500*time.Millisecond))
	for _, o := range []*output{s.video, s.audio} {
		if o != nil {
			o.rtxHold.Store(hold)
		}
	}
}

// startABR sets up the viewer's choice and returns the rendition it starts on.
func (s *session) startABR(ladder []Rendition, lim abr.Limits) (*Rendition, error) {
	if len(ladder) == 1 {
		lim.Pin = ladder[0].Name // nothing to choose: never pause for lack of a lower rung
	}
	now := time.Now()
	ctl, err := abr.New(abr.DefaultConfig(), rungs(ladder), lim, now)
	if err != nil {
		return nil, err
	}
	s.abr.ctl, s.abr.ladder, s.abr.ladderAt = ctl, ladder, now
	s.abr.pinned = lim.Pin != "" && lim.Pin != "auto"
	d := ctl.Tick(now)
	r := rendition(ladder, d.Target)
	if r == nil {
		r = &ladder[len(ladder)-1] // audio only from the start: join on the lowest
	}
	s.abr.reason = d.Reason
	return r, nil
}

// onNACK is told how many sequence numbers a NACK asked for. The
// controller is fed instead, each tick, the numbers NACKed for the first
// time (output.lookup counts them): a receiver asks again for a packet
// whose repair is still on its way (pion every 50 ms here, a browser each
// round trip), and counting every request would read one lost packet
// behind a full queue as several.
func (a *viewerABR) onNACK(time.Time, int) {}

func (a *viewerABR) onLoss(now time.Time, f float64) {
	if a.ctl != nil {
		a.ctl.OnLoss(now, f)
	}
}

func (a *viewerABR) onRTT(now time.Time, rtt time.Duration) {
	if a.ctl != nil {
		a.ctl.OnRTT(now, rtt)
	}
}

func (a *viewerABR) onREMB(now time.Time, bps float64) {
	if a.ctl != nil {
		a.ctl.OnREMB(now, bps)
	}
}

func (a *viewerABR) onSent(now time.Time, n int) {
	if a.ctl != nil && n > 0 {
		a.ctl.OnSent(now, n)
		a.probeSent += n
	}
}

// sent records video sent, and the viewer's time to first frame.
func (a *viewerABR) sent(now time.Time, n int, s *session) {
	if n > 0 && !a.firstFrame {
		a.firstFrame = true
		s.e.m.firstFrame.Observe(now.Sub(s.started).Seconds())
	}
	a.onSent(now, n)
}

// snapshot returns the ladder for SetLayer and the events.
func (a *viewerABR) snapshot() ([]Rendition, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ladder, a.pinned
}

// refresh takes the stream's ladder as it is now, with the source's
// measured bit rate.
func (a *viewerABR) refresh(now time.Time, s *session) {
	a.ladderAt = now
	l := s.src.ladder()
	if len(l) == 0 {
		return
	}
	old, _ := a.snapshot()
	changed := len(l) != len(old)
	for i := 0; !changed && i < len(l); i++ {
		changed = l[i].Name != old[i].Name || l[i].Hub != old[i].Hub
	}
	a.mu.Lock()
	a.ladder = l
	if len(l) == 1 {
		a.pinned = true
	}
	a.mu.Unlock()
	if len(l) == 1 {
		a.ctl.Pin(l[0].Name)
	}
	a.ctl.SetLadder(rungs(l))
	if changed {
		s.emit(s.layersEvent())
	}
}

// started tells the controller the viewer's media begins to flow.
func (a *viewerABR) started(now time.Time) {
	if a.ctl != nil {
		a.ctl.Started(now)
	}
}

// tick runs the controller and acts on its decision. It reports whether a
// probe wants padding.
func (a *viewerABR) tick(now time.Time, s *session) bool {
	s.holdRepairs()
	if a.ctl == nil {
		return false
	}
	if s.bwe != nil {
		a.ctl.OnEstimate(now, float64(s.bwe.TargetBitrate()))
	}
	// Retransmissions are media sent too: uncounted, a congested link's
	// repairs, which it acknowledges, would hide its overload.
	if n := s.video.resent.Swap(0); n > 0 {
		a.ctl.OnSent(now, int(n))
	}
	if n := s.video.nacked.Swap(0); n > 0 {
		a.ctl.OnNACK(now, int(n))
	}
	if ls, ok := s.bwe.(linkSampler); ok {
		if l := ls.TakeLinkSample(); l.Packets > 0 {
			a.queue, a.queueAt = l.LastQueue, now
			a.ctl.OnLinkSample(now, abr.LinkSample{MinQueue: l.MinQueue, Bytes: l.Bytes, WireBytes: l.WireBytes, Span: l.Span,
				BusyWire: l.BusyWire, BusySpan: l.BusySpan})
			if !a.probeAt.IsZero() || l.MinQueue >= time.Millisecond || l.BusySpan >= 10*time.Millisecond {
				s.log.Debug("link sample", "queue", l.MinQueue, "wire", l.WireBytes, "span", l.Span, "packets", l.Packets,
					"bps", int64(float64(l.WireBytes)*8/max(l.Span.Seconds(), 1e-3)),
					"busy_span", l.BusySpan, "busy_bps", int64(float64(l.BusyWire)*8/max(l.BusySpan.Seconds(), 1e-3)))
			}
		}
	}
	if now.Sub(a.ladderAt) >= time.Second {
		a.refresh(now, s)
	}
	d := a.ctl.Tick(now)
	a.lastEstimate = d.Estimate
	if h := a.ctl.Stats().Hold; h != a.hold || a.holdAt.IsZero() {
		if !a.holdAt.IsZero() {
			s.log.Debug("probe hold", "hold", h, "after", a.hold, "held", now.Sub(a.holdAt).Round(time.Millisecond))
		}
		a.hold, a.holdAt = h, now
	}
	a.apply(now, d, s)
	a.setPace(d, s.video)
	if now.Sub(a.estimateAt) >= time.Second {
		a.estimateAt = now
		s.e.m.estimate.Observe(d.Estimate)
		s.emit(wish.EstimateEvent{BPS: int64(d.Estimate), Rendition: s.video.name}.Event())
		a.countProbes(s)
	}
	a.logProbe(now, d, s)
	a.probeRate = 0
	if d.Probe.Active && now.Before(d.Probe.Until) {
		a.probeRate = d.Probe.Bitrate
	} else {
		a.padDebt = 0
	}
	return a.probeRate > 0
}

// apply starts, redirects or cancels a switch toward d.Target.
func (a *viewerABR) apply(now time.Time, d abr.Decision, s *session) {
	v := s.video
	switch {
	case d.Target == "":
		if v.sub != nil || v.next != nil {
			from := v.name
			v.pause()
			a.pausedAt = now
			s.holdRung("")
			s.e.m.audioOnly.Inc()
			s.e.m.switches.WithLabelValues("down", d.Reason).Inc()
			s.emit(wish.VideoEvent{Paused: true, Reason: d.Reason}.Event())
			s.emit(wish.SwitchEvent{From: from, To: "", Reason: d.Reason, Estimate: int64(d.Estimate)}.Event())
			s.log.Info("video paused", "from", from, "reason", d.Reason, "estimate", int64(d.Estimate))
		}
	case d.Target == v.name && v.sub != nil:
		v.cancel()
	case d.Target == v.nextFor:
		// waiting for its keyframe
	default:
		l, _ := a.snapshot()
		r := rendition(l, d.Target)
		if r == nil {
			return
		}
		down := v.name != "" && rank(l, r.Name) > rank(l, v.name)
		ask := keyframeAsk(r.Hub, v.name == "", down)
		if ask != "" {
			s.e.m.keyAsks.WithLabelValues(ask).Inc()
		}
		v.prepare(r.Hub, r.Name, ask != "")
		// Going down because the link cannot carry the rung (saturated,
		// the estimate fell, or loss): stop feeding it the old rung. Its
		// backlog, paced at the link's rate, would otherwise hold the new
		// rung's keyframe back by as long as it takes to drain.
		congested := d.Saturated || d.Reason == abr.ReasonEstimateDrop || d.Reason == abr.ReasonLoss
		v.skipOld = down && congested && v.next != nil
		if v.skipOld {
			v.holdUntil = now.Add(a.drainHold(now))
		}
		a.reason = d.Reason
		s.log.Debug("switch decided", "from", v.name, "to", r.Name, "reason", d.Reason, "estimate", int64(d.Estimate),
			"capacity", int64(d.Capacity), "saturated", d.Saturated, "keyframe_asked", ask != "")
	}
}

// drainHold is how long a down-switch for congestion holds the new rung's
// first packets while the old rung's queue drains. Sent at once, they
// join the same queue behind it and arrive no sooner; but into a queue
// still full they are what a tail-drop link drops, and a lost keyframe is
// a freeze until its repair comes back through that queue (0.5–0.8 s on
// the lab's capped source). The hold is the queue the newest acknowledged
// packet met, which still grows at the decision, so the link does not
// idle for it; none if no link sample came lately.
func (a *viewerABR) drainHold(now time.Time) time.Duration {
	if a.queueAt.IsZero() || now.Sub(a.queueAt) > 2*abrTick {
		return 0
	}
	return min(a.queue, maxDrainHold)
}

// maxDrainHold bounds drainHold: a queue longer than this is a link
// behind more than a down-switch can mend at once.
const maxDrainHold = 300 * time.Millisecond

// keyframeAsk tells whether a switch to hub asks the source for an early
// keyframe (coalesced per stream by the hub, one a second at most) rather
// than wait for its keyframe clock, and why: "down", "resume" or "up"; ""
// to wait. Going down, or resuming, never waits: the link cannot carry
// what flows, or nothing flows. A climb asks only when the hub's next
// keyframe is more than climbKeyWait away (about three quarters of the
// time, with 1 s GOPs): most of a second on the old rung, after a probe
// showed the link carries the new one, is time on a rung below the best.
// The cost, an IDR on every rung of the ladder sooner than the clock's,
// is held to one a second by the hub.
func keyframeAsk(hub *media.Hub, resume, down bool) string {
	switch {
	case resume:
		return "resume"
	case down:
		return "down"
	}
	if wait, ok := hub.NextKeyframe(); ok && wait > climbKeyWait {
		return "up"
	}
	return ""
}

// climbKeyWait: a climb waits for a keyframe due this soon.
const climbKeyWait = 250 * time.Millisecond

// Video is paced at paceFactor × the bit rate of its rung (or of the rung
// it is switching to, if higher), as libwebrtc paces at 2.5 × its target;
// but no faster than paceOverCap × the link's rate, once measured, which
// still drains a keyframe's burst; and never below minPace.
const (
	paceFactor  = 2.5
	paceOverCap = 1.25
	minPace     = 1_000_000
)

// setPace sets the video's pacing rate for the rung it sends.
func (a *viewerABR) setPace(d abr.Decision, v *output) {
	l, _ := a.snapshot()
	rate := 0
	for _, name := range [2]string{v.name, v.nextFor} {
		if r := rendition(l, name); r != nil {
			rate = max(rate, r.Bitrate)
		}
	}
	if rate <= 0 {
		v.pace = 0 // unknown: the default
		return
	}
	pace := paceFactor * float64(rate)
	if d.Capacity > 0 {
		pace = min(pace, max(paceOverCap*d.Capacity, 1.1*float64(rate)))
	}
	v.pace = int(max(pace, minPace) / 8)
}

// switched runs once the video moved to a new rung at its keyframe.
func (a *viewerABR) switched(now time.Time, s *session) {
	v := s.video
	l, _ := a.snapshot()
	from := ""
	dir := "up"
	if !a.pausedAt.IsZero() {
		s.e.m.pausedSeconds.Add(now.Sub(a.pausedAt).Seconds())
		a.pausedAt = time.Time{}
		s.emit(wish.VideoEvent{Paused: false, Reason: abr.ReasonResume}.Event())
	}
	// The previous rung is the one whose viewer gauge we hold.
	from = s.heldRung
	if rank(l, v.name) > rank(l, from) && from != "" {
		dir = "down" // the ladder is best first
	}
	s.holdRung(v.name)
	s.e.m.switches.WithLabelValues(dir, a.reason).Inc()
	s.emit(wish.SwitchEvent{From: from, To: v.name, Reason: a.reason, Estimate: int64(a.lastEstimate)}.Event())
	s.log.Debug("rendition switched", "from", from, "to", v.name, "reason", a.reason, "estimate", int64(a.lastEstimate))
}

// rungGone handles the current rung's hub closing under the viewer: if the
// stream still has renditions, the viewer moves to the controller's choice
// among them. It reports false when the stream has none left.
func (a *viewerABR) rungGone(now time.Time, s *session) bool {
	if a.ctl == nil {
		return false
	}
	a.refresh(now, s)
	l, _ := a.snapshot()
	a.apply(now, a.ctl.Tick(now), s)
	if s.video.next == nil && len(l) > 0 { // the choice was the rung that just went
		r := &l[len(l)-1]
		s.video.prepare(r.Hub, r.Name, true)
		a.reason = abr.ReasonLadder
	}
	if s.video.next == nil {
		return false // every hub is closed: the stream ended
	}
	a.pausedAt = now
	return true
}

// pad tops the sending rate up to the probe's with padding packets, paced
// every padEvery.
func (a *viewerABR) pad(now time.Time, v *output) {
	if a.probeRate <= 0 || v == nil {
		return
	}
	// Media over the probe's rate (a keyframe) is owed back by the
	// padding that follows, for up to 100 ms, so that the probe's
	// average is its rate, not its rate plus the keyframes.
	want := a.probeRate / 8 * int(padEvery/time.Millisecond) / 1000
	a.padDebt = min(max(a.padDebt+want-a.probeSent, -5*want), 2*want)
	if a.padDebt > 0 {
		a.padDebt -= v.padding(a.padDebt)
	}
	a.probeSent = 0
}

// logProbe logs a probe's start and outcome: with the switches, they are
// a viewer's climb, read in a timeline. A probe that succeeded and chained
// the next within one tick is logged as the end of one and the start of
// the other.
func (a *viewerABR) logProbe(now time.Time, d abr.Decision, s *session) {
	st := a.ctl.Stats()
	if !a.probeAt.IsZero() && (!d.Probe.Active || st.Probes != a.probeN) {
		s.e.m.probeEnds.WithLabelValues(st.LastProbe).Inc()
		s.log.Debug("probe ended", "outcome", st.LastProbe, "after", now.Sub(a.probeAt), "target", d.Target, "estimate", int64(d.Estimate),
			"bar", int64(st.LastProbeBar), "got", int64(st.LastProbeGot))
		a.probeAt = time.Time{}
		a.countProbes(s)
	}
	if d.Probe.Active && a.probeAt.IsZero() {
		a.probeAt, a.probeN = now, st.Probes
		s.log.Debug("probe started", "rendition", s.video.name, "ramp_from", d.Probe.Bitrate, "until", d.Probe.Until.Sub(now), "estimate", int64(d.Estimate))
	}
}

// countProbes moves the controller's probe and switch counts to metrics.
func (a *viewerABR) countProbes(s *session) {
	st := a.ctl.Stats()
	addSince(s.e.m.probes, "ok", uint64(st.ProbesOK), uint64(a.lastStats.ProbesOK))
	addSince(s.e.m.probes, "failed", uint64(st.ProbesFailed), uint64(a.lastStats.ProbesFailed))
	a.lastStats = st
}

// closed releases the viewer's metrics.
func (a *viewerABR) closed(s *session) {
	if a.ctl == nil {
		return
	}
	s.holdRung("")
	a.countProbes(s)
	s.evMu.Lock()
	for ch := range s.evSubs {
		close(ch)
		delete(s.evSubs, ch)
	}
	s.evMu.Unlock()
}

// holdRung moves the viewer's count in the viewers-per-rung gauge to
// name ("" for none). It keeps the gauge child it incremented, so a viewer
// that outlives its stream's series (deleted when the stream ends) does
// not bring them back.
func (s *session) holdRung(name string) {
	if s.rungGauge != nil {
		s.rungGauge.Dec()
		s.rungGauge = nil
	}
	s.heldRung = name
	if name != "" {
		s.rungGauge = s.e.m.rungViewers.WithLabelValues(s.stream, name)
		s.rungGauge.Inc()
	}
}

// layersEvent describes the ladder and the viewer's place on it.
func (s *session) layersEvent() wish.Event {
	l, pinned := s.abr.snapshot()
	ev := wish.LayersEvent{Renditions: make([]wish.Layer, 0, len(l)), Pinned: pinned}
	for _, r := range l {
		ev.Renditions = append(ev.Renditions, wish.Layer{Name: r.Name, Width: r.Width, Height: r.Height, Bitrate: int64(r.Bitrate)})
	}
	ev.Current = s.heldRungName()
	return ev.Event()
}

func (s *session) heldRungName() string {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	return s.heldName
}

// emit sends ev to every event stream without blocking: a stream that is
// full loses the event (the next "layers" or "estimate" catches it up).
func (s *session) emit(ev wish.Event) {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	if ev.Name == wish.EventSwitch {
		s.heldName = ev.Data.(wish.SwitchEvent).To
	}
	for ch := range s.evSubs {
		select {
		case ch <- ev:
		default:
			s.e.m.eventsDropped.Inc()
		}
	}
}

// Subscribe implements wish.EventSource.
func (s *session) Subscribe() (<-chan wish.Event, func()) {
	ch := make(chan wish.Event, 16)
	first := s.layersEvent()
	s.evMu.Lock()
	select {
	case <-s.done:
		s.evMu.Unlock()
		close(ch)
		return ch, func() {}
	default:
	}
	if len(s.evSubs) >= maxEventSubs {
		s.evMu.Unlock()
		close(ch)
		return ch, func() {}
	}
	ch <- first
	s.evSubs[ch] = struct{}{}
	s.evMu.Unlock()
	return ch, func() {
		s.evMu.Lock()
		delete(s.evSubs, ch)
		s.evMu.Unlock()
	}
}

// SetLayer implements wish.Layered: pin a rendition, or "auto".
func (s *session) SetLayer(name string) error {
	if s.abr.ctl == nil {
		return wish.Errorf(404, "no_video", "this session has no video")
	}
	l, _ := s.abr.snapshot()
	if name != "auto" && rendition(l, name) == nil {
		return wish.Errorf(404, "unknown_rendition", "no rendition %q; this stream has: %s", name, strings.Join(names(l), ", "))
	}
	if len(l) == 1 && name == "auto" {
		return nil // one rung: it stays pinned
	}
	s.abr.mu.Lock()
	s.abr.pinned = name != "auto"
	s.abr.mu.Unlock()
	s.abr.ctl.Pin(name)
	s.log.Info("rendition chosen by the viewer", "rendition", name)
	s.emit(s.layersEvent())
	return nil
}
