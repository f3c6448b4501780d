package abr

import (
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

// rig is an ideal link for unit tests: no queue, no feedback delay, a hard
// capacity. The rung switches at once, the caller pads up to the probe's
// rate, and the controller ticks every 100 ms.
type rig struct {
	c        *Controller
	now      time.Time
	capacity float64 // bit/s; 0: unlimited
	gcc      float64 // fed before each tick if > 0
	d        Decision
	log      []Decision
	step     int
}

func newRig(t testing.TB, cfg Config, lim Limits) *rig {
	c, err := New(cfg, testLadder, lim, t0)
	if err != nil {
		t.Fatal(err)
	}
	c.OnRTT(t0, 0)
	r := &rig{c: c, now: t0}
	r.d = c.Tick(t0)
	return r
}

func (r *rig) run(d time.Duration) {
	const dt = 0.01
	for end := r.now.Add(d); r.now.Before(end); {
		r.now = r.now.Add(10 * time.Millisecond)
		media := (rateOf(testLadder, r.d.Target) + audioRate) * dt
		total := media
		if r.d.Probe.Active {
			total = max(media, float64(r.d.Probe.Bitrate)*dt)
		}
		acked := total
		if r.capacity > 0 {
			acked = min(total, r.capacity*dt)
		}
		r.c.OnSent(r.now, int(media/8))
		r.c.OnDelivered(r.now, int(acked/8), int(acked/packetBits)+1)
		if r.step++; r.step%10 == 0 {
			if r.gcc > 0 {
				r.c.OnEstimate(r.now, r.gcc)
			}
			r.d = r.c.Tick(r.now)
			r.log = append(r.log, r.d)
		}
	}
}

// hysteresis is the climbing rule on an ideal link whose capacity is
// known: the next rung is taken only once a probe shows the link carries
// next × (1+UpMargin), whatever GCC claims.
var hysteresis = []struct {
	name     string
	capacity float64
	gcc      float64
	run      time.Duration
	target   string
	probing  int // 1: a probe is running at the end; 0: none; -1: either
}{
	{"no probe within up_hold of joining", 0, 20e6, 900 * time.Millisecond, "360p", 0},
	{"a probe after up_hold", 0, 20e6, 1200 * time.Millisecond, "360p", 1},
	{"climbs when the link carries 1.2 × the next rung", 1.25e6, 20e6, 3 * time.Second, "480p", -1},
	{"stays when it carries 1.15 ×, though the rung would fit", 1.15e6, 20e6, 20 * time.Second, "360p", -1},
	{"stays however high GCC's estimate, on the 360p link", 700e3, 1e9, 20 * time.Second, "360p", -1},
	{"climbs rung by rung, a probe each, on a wide link", 0, 20e6, 4 * time.Second, "source", 0},
	{"climbs with GCC silent", 0, 0, 4 * time.Second, "source", 0},
	{"stops below the rung the link cannot carry", 5e6, 20e6, 30 * time.Second, "720p", -1},
}

func TestHysteresis(t *testing.T) {
	for _, tc := range hysteresis {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, DefaultConfig(), Limits{})
			r.capacity, r.gcc = tc.capacity, tc.gcc
			r.run(tc.run)
			probing := 0
			if r.d.Probe.Active {
				probing = 1
			}
			if r.d.Target != tc.target || (tc.probing >= 0 && probing != tc.probing) {
				t.Fatalf("on %q, probing %v; want %q, probing %v", r.d.Target, probing, tc.target, tc.probing)
			}
			for _, d := range r.log {
				if d.Changed && d.Reason != ReasonProbeOK {
					t.Fatalf("switched to %q for %s: only probes may move a viewer here", d.Target, d.Reason)
				}
				if d.Probe.Active && float64(d.Probe.Bitrate) > 1.1*1.2*6e6 {
					t.Fatalf("probe of %d bit/s", d.Probe.Bitrate)
				}
			}
		})
	}
}

// TestProbeRamps: a probe asks for (1+UpMargin) × 1.05 the next rung,
// ramping up from what is delivered over its first quarter.
func TestProbeRamps(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity = 10e6
	r.run(time.Second)
	var rates []int
	for r.d.Probe.Active || len(rates) == 0 {
		if r.d.Probe.Active {
			rates = append(rates, r.d.Probe.Bitrate)
		}
		r.run(100 * time.Millisecond)
	}
	want := int(1e6 * 1.2 * 1.05)
	if rates[0] >= want || rates[len(rates)-1] != want {
		t.Fatalf("probe rates %v, want a ramp to %d", rates, want)
	}
	for i := 1; i < len(rates); i++ {
		if rates[i] < rates[i-1] {
			t.Fatalf("probe rates %v go down", rates)
		}
	}
}

// TestProbeBackoff: while probes keep failing, the wait after each doubles
// up to ProbeBackoffMax, give or take the jitter of a viewer under its
// ceiling (this one never went down).
func TestProbeBackoff(t *testing.T) {
	cfg := DefaultConfig()
	cfg.ProbeBackoffMax = 8 * time.Second
	r := newRig(t, cfg, Limits{})
	r.capacity = 640e3 // exactly 360p and its audio: every probe fails
	var starts, ends []time.Time
	active := false
	for range 600 {
		r.run(50 * time.Millisecond)
		switch {
		case r.d.Probe.Active && !active:
			starts = append(starts, r.now)
		case !r.d.Probe.Active && active:
			ends = append(ends, r.now)
		}
		active = r.d.Probe.Active
	}
	want := []time.Duration{1, 2, 4, 8, 8}
	if len(starts) < len(want)+1 {
		t.Fatalf("%d probes", len(starts))
	}
	for i, w := range want {
		lo, hi := jitter(time.Unix(0, 0), w*time.Second), jitter(time.Unix(0, 1023e3), w*time.Second)+100*time.Millisecond
		if gap := starts[i+1].Sub(ends[i]); gap < lo || gap > hi {
			t.Errorf("wait after failure %d: %v, want %v ±25 %%", i+1, gap, w*time.Second)
		}
	}
	if s := r.c.Stats(); s.ProbesOK != 0 || s.Ups != 0 || s.Downs != 0 || s.LastProbe == ProbeOK || s.LastProbe == "" {
		t.Errorf("stats %+v", s)
	}
}

// TestDownAtOnce: a link that falls below the rung is seen within a
// second by the acknowledgements alone, with GCC silent.
func TestDownAtOnce(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{Pin: "720p"})
	r.run(3 * time.Second)
	r.c.Pin("auto")
	r.capacity = 800e3
	start := r.now
	for r.d.Target != "360p" {
		r.run(100 * time.Millisecond)
		if r.now.Sub(start) > time.Second {
			t.Fatalf("still on %q a second after the drop", r.d.Target)
		}
	}
	if r.d.Reason != ReasonEstimateDrop {
		t.Fatalf("reason %q", r.d.Reason)
	}
}

// TestPauseAndResume: audio only below the lowest rung, counted, and video
// back once a probe shows the lowest rung fits.
func TestPauseAndResume(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity = 100e3
	r.run(5 * time.Second)
	if r.d.Target != "" || r.d.Reason != ReasonAudioOnly {
		t.Fatalf("on %q (%s), want audio only", r.d.Target, r.d.Reason)
	}
	r.capacity = 0
	r.run(5 * time.Second)
	s := r.c.Stats()
	if s.AudioOnly != 1 {
		t.Fatalf("stats %+v", s)
	}
	resumed := false
	for _, d := range r.log {
		resumed = resumed || d.Reason == ReasonResume && d.Target == "240p"
	}
	if !resumed {
		t.Fatal("no resume")
	}
}

// TestHostileInputs: every input with every kind of garbage, interleaved
// with ticks, never panics, never leaves the ladder and never reports a
// non-finite estimate.
func TestHostileInputs(t *testing.T) {
	floats := []float64{0, -0.0, -1, 1e-300, math.NaN(), math.Inf(1), math.Inf(-1), math.Ldexp(1, 64), math.MaxFloat64, -math.MaxFloat64, math.SmallestNonzeroFloat64}
	ints := []int{0, -1, math.MinInt, math.MaxInt, 1 << 40}
	times := []time.Time{t0, t0.Add(-time.Hour), {}, time.Unix(1<<40, 0), t0.Add(time.Second)}
	c, err := New(DefaultConfig(), testLadder, Limits{MaxHeight: -5, MaxBitrate: math.MinInt}, t0)
	if err != nil {
		t.Fatal(err)
	}
	check := func(d Decision) {
		t.Helper()
		if d.Target != "" && rateOf(testLadder, d.Target) == 0 {
			t.Fatalf("target %q", d.Target)
		}
		if math.IsNaN(d.Estimate) || math.IsInf(d.Estimate, 0) || d.Estimate < 0 {
			t.Fatalf("estimate %v", d.Estimate)
		}
		if d.Probe.Bitrate < 0 {
			t.Fatalf("probe %+v", d.Probe)
		}
	}
	for _, now := range times {
		for _, f := range floats {
			c.OnEstimate(now, f)
			c.OnREMB(now, f)
			c.OnLoss(now, f)
			check(c.Tick(now))
		}
		for _, n := range ints {
			c.OnNACK(now, n)
			c.OnDelivered(now, n, n)
			c.OnSent(now, n)
			c.OnRTT(now, time.Duration(n))
			c.SetLimits(Limits{MaxHeight: n, MaxBitrate: n, Pin: "720p"})
			check(c.Tick(now))
			c.SetLimits(Limits{MaxHeight: n, MaxBitrate: n})
			check(c.Tick(now))
		}
	}
	// A ladder of garbage is as good as none.
	c.SetLadder([]Rung{{Name: "", Bitrate: 1}, {Name: "x", Bitrate: -1}, {Name: "y", Bitrate: 0}})
	if d := c.Tick(time.Unix(1<<40, 1)); d.Target != "" {
		t.Fatalf("target %q from a garbage ladder", d.Target)
	}
	// More rungs than the controller keeps.
	big := make([]Rung, 100)
	for i := range big {
		big[i] = Rung{Name: string(rune('A' + i)), Bitrate: 1000 * (i + 1)}
	}
	c.SetLadder(big)
	c.Tick(time.Unix(1<<40, 2))
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []func(*Config){
		func(c *Config) { c.StartBitrate = -1 },
		func(c *Config) { c.UpMargin = 0 },
		func(c *Config) { c.UpMargin = math.NaN() },
		func(c *Config) { c.Headroom = -0.1 },
		func(c *Config) { c.UpHold = -time.Second },
		func(c *Config) { c.ProbeDuration = time.Millisecond },
		func(c *Config) { c.ProbeBackoffMin = 0 },
		func(c *Config) { c.ProbeBackoffMax = c.ProbeBackoffMin / 2 },
		func(c *Config) { c.LossDown = 0 },
		func(c *Config) { c.LossProbeMax = c.LossDown * 2 },
	}
	for i, f := range bad {
		cfg := DefaultConfig()
		f(&cfg)
		if cfg.Validate() == nil {
			t.Errorf("bad config %d passes", i)
		}
		if _, err := New(cfg, testLadder, Limits{}, t0); err == nil {
			t.Errorf("New takes bad config %d", i)
		}
	}
}

// TestTickAllocs: the per-viewer tick and every input are free of
// allocations, so thousands of viewers cost no garbage.
func TestTickAllocs(t *testing.T) {
	c, _ := New(DefaultConfig(), testLadder, Limits{}, t0)
	now := t0
	allocs := testing.AllocsPerRun(1000, func() {
		now = now.Add(10 * time.Millisecond)
		c.OnSent(now, 1000)
		c.OnDelivered(now, 1000, 1)
		c.OnEstimate(now, 2e6)
		c.OnLoss(now, 0)
		c.OnNACK(now, 1)
		c.Tick(now)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per tick", allocs)
	}
	c.SetLadder(testLadder) // reuses its slice
	if a := testing.AllocsPerRun(100, func() { c.SetLadder(testLadder) }); a != 0 {
		t.Fatalf("SetLadder: %v allocations", a)
	}
}

func BenchmarkControllerTick(b *testing.B) {
	c, _ := New(DefaultConfig(), testLadder, Limits{}, t0)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(10 * time.Millisecond)
		c.OnSent(now, 1000)
		c.OnDelivered(now, 1000, 1)
		c.OnEstimate(now, 2e6)
		c.Tick(now)
	}
}

// TestConcurrentUse: inputs from the RTCP goroutine and the writer while
// another ticks (run with -race).
func TestConcurrentUse(t *testing.T) {
	c, _ := New(DefaultConfig(), testLadder, Limits{}, t0)
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			now := t0
			for i := range 2000 {
				now = now.Add(time.Millisecond)
				switch g {
				case 0:
					c.OnDelivered(now, 1000, 1)
					c.OnEstimate(now, float64(1e6+i))
					c.OnNACK(now, 1)
				case 1:
					c.OnSent(now, 1000)
					if i%500 == 0 {
						c.SetLadder(testLadder)
						c.Pin("auto")
					}
				case 2:
					c.Tick(now)
					c.Stats()
				}
			}
		})
	}
	wg.Wait()
}

// TestLossGraceFromStart: the loss grace after joining counts from the
// first media (Started), not from New: a session whose handshake took a
// second is not sent down by its join's keyframe burst 2.5 s after New.
// Without Started, the same report does send it down.
func TestLossGraceFromStart(t *testing.T) {
	for _, started := range []bool{true, false} {
		c, err := New(DefaultConfig(), testLadder, Limits{}, t0)
		if err != nil {
			t.Fatal(err)
		}
		first := c.Tick(t0).Target
		if started {
			c.Started(t0.Add(time.Second))
		}
		now := t0.Add(2500 * time.Millisecond)
		c.OnLoss(now, 0.3)
		d := c.Tick(now)
		switch {
		case started && d.Target != first:
			t.Errorf("started 1 s after New: loss 1.5 s after the first media moved the viewer %s → %s (%s)", first, d.Target, d.Reason)
		case !started && d.Target == first:
			t.Errorf("without Started, loss 2.5 s after New did not move the viewer from %s", first)
		}
	}
}

// TestProbeJudgedOnTheWire: a probe made of small padding packets is
// judged by what the link carried, in bytes of full-size packets, not by
// its RTP bytes, which the padding's per-packet overhead makes read low.
// The link carries 1.3 Mbit/s on the wire: 1.26 Mbit/s of full-size media,
// enough for 480p with its margin (1.2 Mbit/s), though the probe's RTP
// bytes come to only about 1.12 Mbit/s.
func TestProbeJudgedOnTheWire(t *testing.T) {
	if got, over := probeOnWire(t, 1.3e6, 120); got != "480p" {
		t.Fatalf("still on %s after 5 s: a probe the link carries was judged by its RTP bytes (overfilled %v)", got, over)
	}
}

// TestProbeLeavesRoom: a probe for a rung asks the link for its need and a
// little more, counted at what each padding packet costs the link
// (ProbeBytes), not for the 13 % more that counting its RTP bytes sent. At
// 1.35 Mbit/s on the wire the link carries 480p's need (1.2 Mbit/s) with
// 12 % to spare, and the probe must climb without ever filling it.
func TestProbeLeavesRoom(t *testing.T) {
	if got, over := probeOnWire(t, 1.35e6, 275); got != "480p" || over > 0 {
		t.Fatalf("on %s after 5 s, the link overfilled for %v", got, over)
	}
}

// probeOnWire runs a viewer on 360p behind a link of wireCap bit/s on the
// wire, whose caller pads with packets of padPacket RTP bytes, for up to
// 5 s or until it climbs. It returns the rung it ends on and how long the
// link was asked for more than it carries.
func probeOnWire(t *testing.T, wireCap, padPacket float64) (string, time.Duration) {
	const dt = 0.01
	c, err := New(DefaultConfig(), testLadder, Limits{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	c.OnRTT(t0, 0)
	now, d := t0, c.Tick(t0)
	if d.Target != "360p" {
		t.Fatalf("starts on %s", d.Target)
	}
	var over time.Duration
	for step := 1; now.Before(t0.Add(5 * time.Second)); step++ {
		now = now.Add(10 * time.Millisecond)
		media := (rateOf(testLadder, d.Target) + audioRate) * dt // bits
		padPkts := 0.0                                           // counted as the caller counts them, by ProbeBytes
		if d.Probe.Active {
			padPkts = max(float64(d.Probe.Bitrate)*dt-media, 0) / float64(ProbeBytes(int(padPacket))*8)
		}
		pad := padPkts * padPacket * 8
		mediaWire := media * (fullPacket + packetOverhead) / fullPacket
		padWire := padPkts * (padPacket + packetOverhead) * 8
		share := min(1, wireCap*dt/(mediaWire+padWire)) // what the link lets through
		if share < 1 {
			over += 10 * time.Millisecond
		}
		c.OnSent(now, int(media/8))
		c.OnDelivered(now, int((media+pad)*share/8), int((media/(fullPacket*8)+padPkts)*share)+1)
		if step%10 == 0 {
			if d = c.Tick(now); d.Target == "480p" {
				break
			}
		}
	}
	return d.Target, over
}

// probingRig is a rig on an idle 10 Mbit/s link, with GCC at gcc (0:
// silent), run until its first probe starts.
func probingRig(t *testing.T, gcc float64) *rig {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity, r.gcc = 10e6, gcc
	r.run(time.Second)
	for i := 0; !r.d.Probe.Active; i++ {
		if i > 50 {
			t.Fatal("no probe on an idle 10 Mbit/s link")
		}
		r.run(100 * time.Millisecond)
	}
	return r
}

// TestFirstProbeNotHeld: a full probe that fails before the viewer ever
// climbed is retried after the backoff, not held for failHold: the start
// rung is a guess, and a join's first probes fail on noise. Once the
// viewer has climbed, a failed full probe is held.
func TestFirstProbeNotHeld(t *testing.T) {
	r := probingRig(t, 20e6)
	failAt := func() time.Time {
		// The link carries a little less than the probe's need, and GCC
		// falls while the probe pads past its ramp: it fails. The link
		// then recovers.
		r.capacity = 0.92 * r.c.need(r.c.probe.idx)
		r.run(200 * time.Millisecond)
		r.gcc /= 2
		for i := 0; r.d.Probe.Active; i++ {
			if i > 50 {
				t.Fatal("the probe never ended")
			}
			r.run(100 * time.Millisecond)
		}
		r.capacity = 10e6
		if got := r.c.Stats().LastProbe; got != ProbeGCCFall {
			t.Fatalf("probe ended %q, want %q", got, ProbeGCCFall)
		}
		return r.now
	}
	failed := failAt()
	for !r.d.Probe.Active {
		r.run(100 * time.Millisecond)
	}
	if wait := r.now.Sub(failed); wait > 3*time.Second {
		t.Fatalf("the first climb's probe was held %v after a failure", wait)
	}
	for r.d.Target != "480p" {
		if r.now.Sub(failed) > 5*time.Second {
			t.Fatalf("on %s 5 s after the failure", r.d.Target)
		}
		r.run(100 * time.Millisecond)
	}
	// Once it has climbed, a failed full probe is held.
	for !r.d.Probe.Active || r.c.probe.check {
		if r.now.Sub(failed) > 15*time.Second {
			t.Fatal("no full probe after the climb")
		}
		r.run(100 * time.Millisecond)
	}
	idx := r.c.probe.idx
	failed = failAt()
	for r.now.Sub(failed) < 5*time.Second {
		if r.d.Probe.Active && !r.c.probe.check && r.c.probe.idx == idx {
			t.Fatalf("the full probe for %s came back %v after failing", r.c.ladder[idx].Name, r.now.Sub(failed))
		}
		r.run(100 * time.Millisecond)
	}
}

// TestProbeCancelledByLadder: a new ladder without the rung a probe is for
// ends the probe, and says so (Stats.LastProbe); a new ladder that still
// has it lets the probe go on.
func TestProbeCancelledByLadder(t *testing.T) {
	r := probingRig(t, 0)
	r.c.SetLadder(testLadder)
	if !r.c.probe.active {
		t.Fatal("the same ladder cancelled the probe")
	}
	var without []Rung
	for _, g := range testLadder {
		if g.Name != r.c.ladder[r.c.probe.idx].Name {
			without = append(without, g)
		}
	}
	r.c.SetLadder(without)
	if r.c.probe.active || r.c.Stats().LastProbe != ProbeCancelled {
		t.Fatalf("probe %+v, last %q, want none and %q", r.c.probe, r.c.Stats().LastProbe, ProbeCancelled)
	}
}

// TestProbeHeldWhileQueueing: while the receiver sees every packet queue,
// a probe asks for no padding above what was delivered, and no new probe
// starts; once the queue drains the probe ramps on.
func TestProbeHeldWhileQueueing(t *testing.T) {
	r := probingRig(t, 0)
	from := r.c.probe.from
	r.run(100 * time.Millisecond) // past the ramp
	if !r.d.Probe.Active || float64(r.d.Probe.Bitrate) <= 1.2*from {
		t.Fatalf("probe not ramped up: %+v (from %.0f)", r.d.Probe, from)
	}
	// Shorter than the span that judges a probe on the link's rate.
	r.c.OnLinkSample(r.now, LinkSample{MinQueue: 40 * time.Millisecond, Bytes: 5000, WireBytes: 5250, Span: 50 * time.Millisecond})
	if d := r.c.Tick(r.now); d.Probe.Active && float64(d.Probe.Bitrate) > from {
		t.Fatalf("queueing link: probe asks for %d bit/s, more than the %.0f delivered", d.Probe.Bitrate, from)
	}
	r.c.OnLinkSample(r.now, LinkSample{MinQueue: 0, Bytes: 5000, WireBytes: 5250, Span: 50 * time.Millisecond})
	if d := r.c.Tick(r.now); !d.Probe.Active || float64(d.Probe.Bitrate) <= 1.2*from {
		t.Fatalf("drained link: probe still held: %+v", d.Probe)
	}

	// No probe starts into a queue.
	c, err := New(DefaultConfig(), testLadder, Limits{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	c.OnRTT(t0, 0)
	now := t0
	for range 300 {
		now = now.Add(10 * time.Millisecond)
		c.OnSent(now, 1000)
		c.OnDelivered(now, 1000, 1)
		if now.Sub(t0)%(100*time.Millisecond) == 0 {
			c.OnLinkSample(now, LinkSample{MinQueue: 15 * time.Millisecond, Bytes: 10000, WireBytes: 10500, Span: 100 * time.Millisecond})
			if d := c.Tick(now); d.Probe.Active {
				t.Fatalf("probe started at +%v into a link that queues", now.Sub(t0))
			}
		}
	}
}

// TestNoClimbIntoQueue: a climb the estimate alone allows waits while the
// receiver sees every packet queue (the link may just have fallen under
// the estimate), and is taken once the queue drains.
func TestNoClimbIntoQueue(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity = 20e6
	r.run(10 * time.Second)
	top := r.d.Target
	r.c.Pin("360p")
	r.run(time.Second)
	r.c.Pin("auto")
	queued := LinkSample{MinQueue: 15 * time.Millisecond, Bytes: 5000, WireBytes: 5250, Span: 50 * time.Millisecond}
	for range 30 {
		r.c.OnLinkSample(r.now, queued)
		r.run(100 * time.Millisecond)
		if r.d.Target != "360p" {
			t.Fatalf("climbed to %s (%s) while the link queued", r.d.Target, r.d.Reason)
		}
	}
	r.run(3 * time.Second)
	if r.d.Target == "360p" {
		t.Fatalf("no climb from 360p after the queue drained (on %s before the pin)", top)
	}
}

// TestCeilingBackoff: under a ceiling its probes found (a link that
// carries 3.6 Mbit/s, under a rung that needs more), a viewer's failed
// probes back off up to ceilingBackoff, so it probes a small share of the
// time; after a down-switch they back off no further than
// ProbeBackoffMax, so a recovered link is soon noticed.
func TestCeilingBackoff(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity = 3.6e6
	probing := func(d time.Duration) (busy time.Duration, gaps []time.Duration) {
		var start, end time.Time
		active := r.d.Probe.Active
		if active {
			start = r.now
		}
		for stop := r.now.Add(d); r.now.Before(stop); {
			r.run(100 * time.Millisecond)
			switch {
			case r.d.Probe.Active && !active:
				if !end.IsZero() {
					gaps = append(gaps, r.now.Sub(end))
				}
				start = r.now
			case !r.d.Probe.Active && active:
				busy += r.now.Sub(start)
				end = r.now
			}
			active = r.d.Probe.Active
		}
		return busy, gaps
	}
	probing(10 * time.Second)
	if r.d.Target != "720p" {
		t.Fatalf("on %s under a 3.6 Mbit/s link, want 720p", r.d.Target)
	}
	if busy, gaps := probing(60 * time.Second); busy > 6*time.Second {
		t.Errorf("under its ceiling the viewer probed %v of 60 s (waits %v)", busy, gaps)
	}

	r.capacity = 800e3
	probing(3 * time.Second)
	if r.d.Target == "720p" {
		t.Fatalf("still on 720p on a link that fell to 800 kbit/s")
	}
	_, gaps := probing(15 * time.Second)
	if len(gaps) == 0 {
		t.Fatal("no probes after the fall")
	}
	for _, g := range gaps {
		if g > DefaultConfig().ProbeBackoffMax+200*time.Millisecond {
			t.Errorf("after a down-switch a probe waited %v (all waits %v)", g, gaps)
			break
		}
	}

	// Back on the rung it left, it is under its ceiling again.
	r.capacity = 3.6e6
	probing(10 * time.Second)
	if r.d.Target != "720p" {
		t.Fatalf("on %s after the link came back, want 720p", r.d.Target)
	}
	if _, gaps := probing(20 * time.Second); len(gaps) == 0 || slices.Min(gaps) < ceilingBackoff/2 {
		t.Errorf("back under its ceiling the viewer probed again after %v", gaps)
	}
}

// TestJitter: waits spread over ±25 % with the clock's microseconds.
func TestJitter(t *testing.T) {
	const d = 8 * time.Second
	lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
	base := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	for i := range 2048 {
		j := jitter(base.Add(time.Duration(i)*time.Microsecond), d)
		lo, hi = min(lo, j), max(hi, j)
	}
	if lo < 6*time.Second || hi >= 10*time.Second || hi-lo < 3900*time.Millisecond {
		t.Fatalf("jitter of %v spans %v..%v, want about 6s..10s", d, lo, hi)
	}
}

// TestProbeJudgedByReceiver: feedback from a viewer that stalls now and
// then (three reports of six held back 40–45 ms, then sent on time)
// arrives bunched, and by its arrival reads the link faster than it is. A
// probe is judged by the receiver's clock (OnReceived), so a link 5 %
// short of the bar does not pass it; judged by the arrival alone, the
// same run does, which shows the test can tell.
func TestProbeJudgedByReceiver(t *testing.T) {
	run := func(timed bool) (climbed bool, ok, failed int) {
		c, err := New(DefaultConfig(), testLadder, Limits{}, t0)
		if err != nil {
			t.Fatal(err)
		}
		c.OnRTT(t0, 0)
		d := c.Tick(t0)
		const dt = 0.01
		link := 0.95 * 1.2 * 1e6 // bit/s of full-size packets: 5 % under 480p's bar
		type report struct {
			at         time.Time
			bits, pkts float64
		}
		var queue []report
		var bits, pkts float64
		delays := []time.Duration{45, 45, 40, 0, 0, 0} // ms, by report
		for step, n := 1, 0; step <= 3000; step++ {
			now := t0.Add(time.Duration(step) * 10 * time.Millisecond)
			send := (rateOf(testLadder, d.Target) + audioRate) * dt
			if d.Probe.Active {
				send = max(send, float64(d.Probe.Bitrate)*dt)
			}
			c.OnSent(now, int((rateOf(testLadder, d.Target)+audioRate)*dt/8))
			got := min(send, link*dt)
			bits, pkts = bits+got, pkts+got/packetBits
			if step%5 == 0 { // the receiver reports every 50 ms
				queue = append(queue, report{now.Add(delays[n%len(delays)] * time.Millisecond), bits, pkts})
				bits, pkts, n = 0, 0, n+1
			}
			for len(queue) > 0 && !queue[0].at.After(now) {
				r := queue[0]
				queue = queue[1:]
				c.OnDelivered(now, int(r.bits/8), int(r.pkts))
				if timed {
					c.OnReceived(now, int(r.bits/8+r.pkts*packetOverhead), 50*time.Millisecond)
				}
			}
			if step%10 == 0 {
				if d = c.Tick(now); d.Target == "480p" {
					climbed = true
				}
			}
		}
		st := c.Stats()
		return climbed, st.ProbesOK, st.ProbesFailed
	}
	if climbed, ok, failed := run(false); !climbed {
		t.Fatalf("by the feedback's arrival alone, no probe passed (%d ok, %d failed): the bunching no longer misleads it, and this test shows nothing", ok, failed)
	}
	if climbed, ok, failed := run(true); climbed || failed == 0 {
		t.Fatalf("timed by the receiver: climbed %v, %d probes ok, %d failed; want no climb over a link 5 %% short", climbed, ok, failed)
	}
}

// TestProbesCounted: a check's success chains the next probe within the
// same Tick (a link that recovered is climbed by a check, steps 50 % up,
// then the full probe), so Decision.Probe.Active alone shows the chain as
// one probe; Stats counts each started, and each ends ok or failed.
func TestProbesCounted(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity, r.gcc = 3.6e6, 20e6
	r.run(10 * time.Second)
	r.capacity = 800e3
	r.run(10 * time.Second)
	before := r.c.Stats()
	if r.d.Probe.Active {
		t.Fatal("a probe runs at the recovery: the count below would start mid-probe")
	}
	r.capacity = 10e6
	starts, active := 0, false
	for range 100 {
		r.run(100 * time.Millisecond)
		if r.d.Probe.Active && !active {
			starts++
		}
		active = r.d.Probe.Active
	}
	st := r.c.Stats()
	running := 0
	if r.d.Probe.Active {
		running = 1
	}
	started := st.Probes - before.Probes
	if ended := st.ProbesOK + st.ProbesFailed - before.ProbesOK - before.ProbesFailed; started != ended+running {
		t.Errorf("%d probes started after the recovery, %d ended, %d running", started, ended, running)
	}
	if starts >= started {
		t.Errorf("Probe.Active rose %d times for %d probes: no chain was counted", starts, started)
	}
}

// TestDownOnBusyBurst: with no standing queue, a burst the receiver timed
// through a busy link well below the rung (a keyframe after the link
// fell) sends the viewer down to the rung that rate carries; a burst
// timed just below the rung leaves it to the saturation rule. The newest
// busy time is what counts: a token bucket's burst, timed many times too
// fast just before, does not hide the link's own rate.
func TestDownOnBusyBurst(t *testing.T) {
	type busy struct {
		bps  float64 // bit/s of full-size packets
		span time.Duration
	}
	bursts := func(bps float64) []busy { return slices.Repeat([]busy{{bps, 20 * time.Millisecond}}, 5) }
	for _, tc := range []struct {
		name    string
		samples []busy // one per 100 ms sample
		want    string
	}{
		{"a burst timed at 0.75 of the rung", bursts(750e3), "360p"},
		{"a burst timed at 0.95 of the rung", bursts(950e3), "480p"},
		{"a bucket's burst, then the link at 0.75", []busy{{15e6, 15 * time.Millisecond}, {750e3, 60 * time.Millisecond}}, "360p"},
	} {
		r := newRig(t, DefaultConfig(), Limits{})
		r.capacity, r.gcc = 1.3e6, 20e6
		r.run(6 * time.Second)
		if r.d.Target != "480p" {
			t.Fatalf("%s: on %s on a 1.3 Mbit/s link, want 480p", tc.name, r.d.Target)
		}
		for _, b := range tc.samples {
			wire := int(b.bps / 8 * b.span.Seconds() * (fullPacket + packetOverhead) / fullPacket)
			r.c.OnLinkSample(r.now, LinkSample{Bytes: 10000, WireBytes: 10300, Span: 100 * time.Millisecond, BusyWire: wire, BusySpan: b.span})
			r.run(100 * time.Millisecond)
		}
		if r.d.Target != tc.want {
			t.Errorf("%s: on %s, want %s", tc.name, r.d.Target, tc.want)
		}
	}
}

// TestProbeFailsOnBusyRate: a token bucket's burst lets the acknowledgements
// over half a probe read above the link, but the packets that queued behind
// the one before time the link itself: below the bar, the probe fails as
// saturated and the viewer stays; above it, the same acknowledgements climb.
// A busy rate read far above the link (a burst's packets just behind the
// bucket's) proves nothing: a probe that fell short is not taken for more.
func TestProbeFailsOnBusyRate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		acked   float64 // the link, as the acknowledgements read it
		busy    float64 // bit/s of full-size packets
		climbed bool
	}{
		// The acknowledgements pass 480p's bar (1.2 Mbit/s).
		{"the link timed under 480p's bar", 1.5e6, 1.0e6, false},
		{"the link timed over 480p's bar", 1.5e6, 1.4e6, true},
		{"a short probe, busy packets timed at 17 Mbit/s", 1.0e6, 17e6, false},
	} {
		r := newRig(t, DefaultConfig(), Limits{})
		r.capacity, r.gcc = tc.acked, 20e6
		const span = 30 * time.Millisecond
		wire := int(tc.busy / 8 * span.Seconds() * (fullPacket + packetOverhead) / fullPacket)
		climbed := false
		for range 80 { // 8 s
			if r.d.Probe.Active {
				r.c.OnLinkSample(r.now, LinkSample{Bytes: 18000, WireBytes: 18700, Span: 100 * time.Millisecond, BusyWire: wire, BusySpan: span})
			}
			r.run(100 * time.Millisecond)
			climbed = climbed || r.d.Target == "480p"
		}
		st := r.c.Stats()
		if climbed != tc.climbed {
			t.Errorf("%s: climbed %v, want %v (%d probes, %d failed, last %s)", tc.name, climbed, tc.climbed, st.Probes, st.ProbesFailed, st.LastProbe)
		}
		if !tc.climbed && tc.busy < tc.acked && st.LastProbe != ProbeSaturated {
			t.Errorf("%s: last probe %q, want %q", tc.name, st.LastProbe, ProbeSaturated)
		}
	}
}

// TestProbeAboveMeasuredRate: a probe that passes above the rate a failed
// probe measured shows the link has changed: the next probe goes for its
// rung at once, not up a staircase of checks from the old rate.
func TestProbeAboveMeasuredRate(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity, r.gcc = 5e6, 20e6
	const span = 30 * time.Millisecond
	slow := int(1.1e6 / 8 * span.Seconds() * (fullPacket + packetOverhead) / fullPacket)
	for range 40 { // the first probe for 480p times the link at 1.1 Mbit/s and fails
		if r.d.Probe.Active {
			r.c.OnLinkSample(r.now, LinkSample{Bytes: 18000, WireBytes: 18700, Span: 100 * time.Millisecond, BusyWire: slow, BusySpan: span})
		}
		r.run(100 * time.Millisecond)
		if r.c.Stats().ProbesFailed > 0 {
			break
		}
	}
	if st := r.c.Stats(); st.LastProbe != ProbeSaturated {
		t.Fatalf("stats %+v, want a probe failed on the busy rate", st)
	}
	for range 100 { // the link is fast now: up to 480p
		if r.run(100 * time.Millisecond); r.d.Target == "480p" {
			break
		}
	}
	if r.d.Target != "480p" {
		t.Fatalf("on %s, want 480p", r.d.Target)
	}
	top := 0
	for range 5 { // the next probe, for 720p (bar 3 Mbit/s), within half a second
		r.run(100 * time.Millisecond)
		top = max(top, r.d.Probe.Bitrate)
	}
	if top < 3e6 {
		t.Errorf("the probe after the climb padded up to %d bit/s in 0.5 s, want 720p's need (3 Mbit/s) at once", top)
	}
}

// TestFailedProbeProvesLess: a probe that failed (here on GCC's fall) while its
// acknowledgements read above its bar, as a token bucket's burst makes
// them, does not prove its rung: no climb on the estimate alone follows.
func TestFailedProbeProvesLess(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity, r.gcc = 5e6, 20e6
	for range 1000 { // to 480p, then the probe for 720p
		if r.d.Target == "480p" && r.d.Probe.Active {
			break
		}
		r.run(10 * time.Millisecond)
	}
	if r.d.Target != "480p" || !r.d.Probe.Active {
		t.Fatalf("on %s, probe %v after 10 s; want a probe from 480p", r.d.Target, r.d.Probe.Active)
	}
	r.run(390 * time.Millisecond) // its acknowledgements reach the bar
	r.gcc = 2e6                   // as GCC falls
	r.run(10 * time.Millisecond)
	st := r.c.Stats()
	if st.LastProbe != ProbeGCCFall || st.LastProbeGot < st.LastProbeBar {
		t.Fatalf("stats %+v, want the probe failed by GCC's fall with its bar acknowledged", st)
	}
	r.gcc = 20e6
	from := len(r.log)
	r.run(5 * time.Second)
	for _, d := range r.log[from:] {
		if d.Changed && d.Reason == ReasonEstimateUp {
			t.Errorf("climbed to %s on the estimate after a failed probe", d.Target)
		}
	}
}

// TestNoEstimateClimbToFailedRung: after a full probe for 720p failed,
// feedback that reads delivery above 720p's need (bunched, or padding
// still in the window) does not climb the viewer there on the estimate
// while the failure holds.
func TestNoEstimateClimbToFailedRung(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity, r.gcc = 5e6, 20e6
	const span = 30 * time.Millisecond
	slow := int(2.5e6 / 8 * span.Seconds() * (fullPacket + packetOverhead) / fullPacket)
	for range 200 { // up to 480p, then the probe for 720p times the link at 2.5 Mbit/s
		if r.d.Target == "480p" && r.d.Probe.Active {
			r.c.OnLinkSample(r.now, LinkSample{Bytes: 50000, WireBytes: 51800, Span: 100 * time.Millisecond, BusyWire: slow, BusySpan: span})
		}
		r.run(100 * time.Millisecond)
		if r.c.Stats().ProbesFailed > 0 {
			break
		}
	}
	if st := r.c.Stats(); r.d.Target != "480p" || st.LastProbe != ProbeSaturated {
		t.Fatalf("on %s, stats %+v; want a probe from 480p failed on the busy rate", r.d.Target, st)
	}
	for range 30 { // 3 s of feedback reading 4 Mbit/s delivered
		r.c.OnDelivered(r.now, 50000, 42)
		r.run(100 * time.Millisecond)
		if r.d.Target == "720p" {
			t.Fatalf("climbed to 720p by %s while its failed probe holds", r.d.Reason)
		}
	}
}

// droppedRig is a viewer on 480p at 1.5 Mbit/s whose link then fell to
// 0.7 Mbit/s, and GCC with it: it is on 360p, recovering, and GCC is back
// high (it caps nothing below: probes decide).
func droppedRig(t *testing.T) *rig {
	t.Helper()
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity, r.gcc = 1.5e6, 20e6
	r.run(10 * time.Second)
	if r.d.Target != "480p" {
		t.Fatalf("on %s after 10 s at 1.5 Mbit/s; want 480p", r.d.Target)
	}
	r.capacity, r.gcc = 0.7e6, 0.7e6
	for i := 0; i < 300 && r.d.Target != "360p"; i++ {
		r.run(10 * time.Millisecond)
	}
	if r.d.Target != "360p" {
		t.Fatalf("on %s 3 s after the link fell; want 360p", r.d.Target)
	}
	r.gcc = 20e6
	return r
}

// TestRecoveringProbeNotHeld: while the viewer recovers from a drop,
// neither the long backoff its probes met at the old rung's ceiling nor a
// failed full probe's hold (failHold) keeps it from noticing that the link
// came back: it probes within the recovery's backoff, and again within
// recoverFailHold of a failure.
func TestRecoveringProbeNotHeld(t *testing.T) {
	r := droppedRig(t) // its probes for 720p met 480p's ceiling first
	dropped := r.now
	// The link comes back to just under 480p's need: the full probe for
	// it fails (a check would pad above the need, so there is none).
	r.capacity = 1.12e6
	for !r.d.Probe.Active {
		if r.now.Sub(dropped) > 3*time.Second {
			t.Fatalf("no probe %v after the drop (hold %q)", r.now.Sub(dropped), r.c.Stats().Hold)
		}
		r.run(10 * time.Millisecond)
	}
	if r.c.probe.check {
		t.Fatal("the first probe is a check; want the full probe")
	}
	for r.d.Probe.Active {
		r.run(10 * time.Millisecond)
	}
	if r.d.Target != "360p" || r.c.Stats().LastProbe == ProbeOK {
		t.Fatalf("on %s, the probe %s; want it failed, on 360p", r.d.Target, r.c.Stats().LastProbe)
	}
	failed := r.now
	r.capacity = 4e6 // and now all of it
	for r.d.Target == "360p" {
		if r.now.Sub(failed) > 4500*time.Millisecond {
			t.Fatalf("still on 360p %v after the failed probe, the link back (hold %q)", r.now.Sub(failed), r.c.Stats().Hold)
		}
		r.run(10 * time.Millisecond)
	}
	if r.d.Target != "480p" {
		t.Errorf("climbed to %s; want 480p", r.d.Target)
	}
}

// TestFooledCheckSkipped: behind a token bucket a check passes on the
// bucket's burst, and the full probe it chains fails. While the viewer
// recovers, the next attempts are the full probe alone, on the recovery's
// backoff, so that a link that came back is noticed half a second sooner;
// a down-switch makes checks worth trying again.
func TestFooledCheckSkipped(t *testing.T) {
	r := droppedRig(t)
	// A bucket's burst: whatever is sent below 480p's need passes; more is
	// held to 0.7 Mbit/s.
	need := 1.2e6
	var kinds []string // each probe's kind, in order: full if it padded to the need
	probes := r.c.Stats().Probes
	for range 2000 { // 20 s
		r.capacity = 0.7e6
		if r.d.Probe.Active && float64(r.d.Probe.Bitrate) < need {
			r.capacity = 0
		}
		r.run(10 * time.Millisecond)
		if n := r.c.Stats().Probes; n > probes {
			probes = n
			kinds = append(kinds, "check")
		}
		if r.d.Probe.Active && float64(r.d.Probe.Bitrate) >= need {
			kinds[len(kinds)-1] = "full"
		}
	}
	if r.d.Target != "360p" {
		t.Fatalf("on %s on the 0.7 Mbit/s link", r.d.Target)
	}
	chained := -1 // a check, and the full probe its success chained
	for i := 0; i+1 < len(kinds) && chained < 0; i++ {
		if kinds[i] == "check" && kinds[i+1] == "full" {
			chained = i
		}
	}
	if chained < 0 {
		t.Fatalf("probes %v; want a check that passes and chains the full probe", kinds)
	}
	if rest := kinds[chained+2:]; len(rest) < 3 || slices.Contains(rest, "check") {
		t.Errorf("probes %v; after a check passed and its full probe failed, want full probes only, at least three", kinds)
	}
	r.capacity = 4e6 // the link recovers
	for i := 0; i < 300 && r.d.Target == "360p"; i++ {
		r.run(10 * time.Millisecond)
	}
	if r.d.Target != "480p" {
		t.Errorf("on %s 3 s after the link recovered; want 480p", r.d.Target)
	}
}

// TestProbeProvesItsBar: the capped source's bit rate, measured each
// second, rose during its probe; the probe's success still climbs to it,
// rather than sending the same probe again.
func TestProbeProvesItsBar(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{Pin: "360p"})
	r.gcc = 20e6
	r.run(3 * time.Second)
	r.c.Pin("auto")
	for i := 0; i < 300 && !r.d.Probe.Active; i++ {
		r.run(10 * time.Millisecond)
	}
	if !r.d.Probe.Active || r.d.Target != "360p" {
		t.Fatalf("on %s, probe %v; want a probe from 360p", r.d.Target, r.d.Probe.Active)
	}
	probes := r.c.Stats().Probes
	r.run(100 * time.Millisecond)
	risen := slices.Clone(testLadder)
	for i := range risen {
		if risen[i].Name == "480p" {
			risen[i].Bitrate = risen[i].Bitrate * 107 / 100
		}
	}
	r.c.SetLadder(risen)
	for i := 0; i < 300 && r.d.Target == "360p"; i++ {
		r.run(10 * time.Millisecond)
	}
	if r.d.Target != "480p" || r.d.Reason != ReasonProbeOK {
		t.Fatalf("on %s (%s); want 480p by its probe", r.d.Target, r.d.Reason)
	}
	if n := r.c.Stats().Probes - probes; n != 0 {
		t.Errorf("%d more probes before the climb; want the first one's success to climb", n)
	}
}

// TestHoldReasons: Stats.Hold names why no probe runs, for the logs that
// explain a viewer left below a rung its link carries.
func TestHoldReasons(t *testing.T) {
	r := newRig(t, DefaultConfig(), Limits{})
	r.capacity = 640e3 // 360p and its audio: every probe fails
	r.run(500 * time.Millisecond)
	if h := r.c.Stats().Hold; h != HoldCalm {
		t.Errorf("just joined: hold %q, want %q", h, HoldCalm)
	}
	for range 100 {
		if r.run(50 * time.Millisecond); r.c.Stats().ProbesFailed > 0 {
			break
		}
	}
	r.run(100 * time.Millisecond)
	if st := r.c.Stats(); st.ProbesFailed == 0 || st.Hold != HoldBackoff {
		t.Errorf("after a failed probe: %d failed, hold %q, want %q", st.ProbesFailed, st.Hold, HoldBackoff)
	}
	r.c.Pin("240p")
	r.run(100 * time.Millisecond)
	if h := r.c.Stats().Hold; h != HoldTop {
		t.Errorf("pinned: hold %q, want %q", h, HoldTop)
	}

	c, err := New(DefaultConfig(), testLadder, Limits{}, t0)
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	for range 30 {
		now = now.Add(100 * time.Millisecond)
		c.OnSent(now, 10000)
		c.OnDelivered(now, 10000, 10)
		c.OnLinkSample(now, LinkSample{MinQueue: 15 * time.Millisecond, Bytes: 10000, WireBytes: 10500, Span: 100 * time.Millisecond})
		c.Tick(now)
	}
	if h := c.Stats().Hold; h != HoldQueue {
		t.Errorf("a link that queues: hold %q, want %q", h, HoldQueue)
	}
}

// TestDrainShowsRecovery: a probe fails as saturated while the viewer
// recovers, and the queue it left drains at several times the rate it
// measured: the link came back, and the next probe starts without waiting
// out the backoff. A drain at the old rate changes nothing.
func TestDrainShowsRecovery(t *testing.T) {
	for _, tc := range []struct {
		name  string
		drain float64 // the drain's busy rate, bit/s
		early bool
	}{
		{"drain at the new link's rate", 3.6e6, true},
		{"drain at the old link's rate", 0.77e6, false},
	} {
		r := droppedRig(t)
		// The probes for 720p that failed at 1.5 Mbit/s left a backoff of
		// up to 8 s.
		for i := 0; i < 1500 && !r.d.Probe.Active; i++ {
			r.run(10 * time.Millisecond)
		}
		if r.d.Target != "360p" || !r.d.Probe.Active {
			t.Fatalf("%s: on %s, probing %v (hold %s); want a probe from 360p", tc.name, r.d.Target, r.d.Probe.Active, r.c.Stats().Hold)
		}
		// The link saturates under the probe, and the queue it left
		// drains at tc.drain.
		saturate := func() {
			failed := r.c.Stats().ProbesFailed
			for i := 0; i < 20 && r.c.Stats().ProbesFailed == failed; i++ {
				const wire = 0.7e6 * 0.1 / 8
				r.c.OnLinkSample(r.now, LinkSample{MinQueue: 30 * time.Millisecond, Bytes: wire, WireBytes: wire, Span: 100 * time.Millisecond,
					BusyWire: wire, BusySpan: 100 * time.Millisecond})
				r.run(100 * time.Millisecond)
			}
			if st := r.c.Stats(); st.LastProbe != ProbeSaturated {
				t.Fatalf("%s: the probe ended %q; want %q", tc.name, st.LastProbe, ProbeSaturated)
			}
			r.run(100 * time.Millisecond)
		}
		drain := func() (early bool) {
			probes := r.c.Stats().Probes
			wire := int(tc.drain * 0.04 / 8)
			r.c.OnLinkSample(r.now, LinkSample{Bytes: wire, WireBytes: wire, Span: 40 * time.Millisecond,
				BusyWire: wire, BusySpan: 40 * time.Millisecond})
			r.run(300 * time.Millisecond)
			return r.c.Stats().Probes > probes
		}
		saturate()
		if early := drain(); early != tc.early {
			t.Errorf("%s: a probe within 300 ms of the drain: %v; want %v", tc.name, early, tc.early)
		}
		if !tc.early {
			continue
		}
		// The probe it started fails too: the next drain, however fast,
		// starts none (a receiver's batch can read fast).
		saturate()
		if drain() {
			t.Errorf("%s: a second probe in a row started on a drain", tc.name)
		}
	}
}
