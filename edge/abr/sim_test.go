package abr

import (
	"math"
	"math/rand/v2"
	"slices"
	"time"
)

// This file is a deterministic simulation of one viewer in virtual time:
// a sender that switches rungs at keyframes and pads while probing, a fluid
// bottleneck link with a drop-tail buffer, TWCC-style feedback, receiver
// reports and NACKs, and an estimator that behaves like pion's GCC, trap
// included. No network, no sleeps: a 90 s run takes a few milliseconds.

var t0 = time.Unix(1_700_000_000, 0)

// testLadder is the ladder.
var testLadder = []Rung{
	{Name: "source", Bitrate: 6_000_000, Height: 1080},
	{Name: "720p", Bitrate: 2_500_000, Height: 720},
	{Name: "480p", Bitrate: 1_000_000, Height: 480},
	{Name: "360p", Bitrate: 600_000, Height: 360},
	{Name: "240p", Bitrate: 300_000, Height: 240},
}

const (
	simStep    = 10 * time.Millisecond
	audioRate  = 40_000 // Opus, always sent
	packetBits = 1200 * 8
	fps        = 30
	// ackDelay is how late an acknowledgement reaches the sender, unless
	// simOptions says otherwise: the return trip plus the receiver's
	// feedback pacing.
	ackDelay = 4 // steps
)

// estimator models pion's GCC (interceptor v0.1.51, pkg/gcc), fed every
// 100 ms: overuse when the standing queue (the smallest queueing delay of
// the interval, so a keyframe burst that drains does not count) is above
// 10 ms and growing; the rate controller's increase/decrease/hold states;
// multiplicative increase of 8 %/s with pion's one-step 1.5 × received rate
// cap, which lets the target grow without bound while the sender is
// app-limited; decrease to 0.85 × the rate received over 500 ms; and the
// loss-based controller, which is min'd with it. With capped set it behaves
// like libwebrtc instead: increases are bounded by 1.5 × received.
type estimator struct {
	delay, loss float64
	state       int // 0 increase, 1 decrease, 2 hold
	prevMin     float64
	n           int
	capped      bool
}

func (e *estimator) update(received, minDelay, lossFrac float64) float64 {
	const (
		over = iota
		normal
		under
	)
	use := normal
	switch {
	case minDelay > 0.010 && minDelay > e.prevMin+0.001:
		use = over
	case minDelay < e.prevMin-0.005:
		use = under
	}
	e.prevMin = minDelay
	switch {
	case use == over:
		e.state = 1
	case use == under:
		e.state = 2
	case e.state == 1: // normal after decrease
		e.state = 2
	default:
		e.state = 0
	}
	switch e.state {
	case 0:
		rate := e.delay * math.Pow(1.08, 0.1)
		r15 := 1.5 * received
		if rate > r15 && r15 > e.delay {
			rate = r15
		}
		if e.capped {
			rate = min(rate, max(e.delay, r15+10e3))
		}
		e.delay = max(rate, e.delay)
	case 1:
		e.delay = max(0.85*received, 5e3)
	}
	// pion's loss-based controller moves at most every 200 ms.
	if e.n++; e.n%2 == 0 {
		switch {
		case lossFrac > 0.1:
			e.loss *= 1 - 0.5*lossFrac
		case lossFrac < 0.02:
			e.loss *= 1.05
		}
	}
	e.loss = max(min(e.loss, e.delay), 5e3)
	return e.loss
}

type simOptions struct {
	seed     uint64
	duration time.Duration
	capacity func(t time.Duration) float64 // bit/s
	cfg      Config
	ladder   []Rung
	limits   Limits
	gccStart float64       // estimator's initial target; 0: 1 Mbps
	capped   bool          // libwebrtc-like estimator instead of pion's
	buffer   time.Duration // drop-tail buffer, in time at the link rate; 0: 250 ms
	noSent   bool          // the caller does not feed OnSent
	rtt      time.Duration // round trip (acknowledgement delay); 0: ackDelay steps
	noRTT    bool          // the caller does not feed OnRTT
	noLink   bool          // the caller does not feed OnLinkSample
	// bufferBits, if set, sizes the drop-tail buffer in bits whatever the
	// rate (a tbf limit), instead of buffer.
	bufferBits float64
	// undershoot, if set, is the share of its bit rate each rung but the
	// first (the source, measured) actually sends, as x264 does.
	undershoot float64
	// hostile, if set, is called before each Tick to inject garbage.
	hostile func(c *Controller, now time.Time, rng *rand.Rand)
}

type pendingSample struct {
	due     time.Time
	q, bits float64
}

type tickRecord struct {
	t        time.Duration
	d        Decision
	capacity float64
	sending  string // the rung on the wire (switched at keyframes)
	queue    float64
	gcc      float64
	proven   float64
	trusted  bool
}

type simResult struct {
	ticks []tickRecord
	stats Stats
}

func rateOf(ladder []Rung, name string) float64 {
	for _, r := range ladder {
		if r.Name == name {
			return float64(r.Bitrate)
		}
	}
	return 0
}

func runSim(o simOptions) simResult {
	if o.ladder == nil {
		o.ladder = testLadder
	}
	if o.cfg == (Config{}) {
		o.cfg = DefaultConfig()
	}
	if o.gccStart == 0 {
		o.gccStart = 1e6
	}
	if o.buffer == 0 {
		o.buffer = 250 * time.Millisecond
	}
	rng := rand.New(rand.NewPCG(o.seed, 0x5eed))
	c, err := New(o.cfg, o.ladder, o.limits, t0)
	if err != nil {
		panic(err)
	}
	if o.rtt == 0 {
		o.rtt = ackDelay * simStep
	}
	if !o.noRTT {
		c.OnRTT(t0, o.rtt)
	}
	acks := make([]float64, int(o.rtt/simStep)+1)
	est := estimator{delay: o.gccStart, loss: o.gccStart, capped: o.capped}
	const dt = float64(simStep) / float64(time.Second)

	var (
		res                        simResult
		want, sending              string
		started                    bool
		scene                      = 1.0
		probe                      ProbeRequest
		padDebt                    float64
		q                          float64 // queued bits
		fbAcked, fbLost, fbArrived float64
		fbMedia                    float64
		rrLost, rrArrived          float64
		rcv                        [5]float64 // acked bits per feedback, last 500 ms
		minDelay                   = math.Inf(1)
		fbDrained                  float64
		pending                    []pendingSample
		steps                      = int(o.duration / simStep)
	)
	for i := range steps {
		t := time.Duration(i) * simStep
		now := t0.Add(t)
		capBps := o.capacity(t)
		if i%100 == 0 {
			// Every rung has an IDR on the shared 1 s clock: switches land here.
			if started {
				sending = want
			}
			scene = 0.75 + 0.35*rng.Float64()
		}
		media := audioRate * dt
		if br := rateOf(o.ladder, sending); br > 0 {
			if o.undershoot > 0 && sending != o.ladder[0].Name {
				br *= o.undershoot
			}
			unit := br * scene / (fps + 3) // a keyframe is 4 units, a delta frame 1
			for k := (3*i + 9) / 10; 10*k < 3*(i+1); k++ {
				if k%fps == 0 {
					media += 4 * unit
				} else {
					media += unit
				}
			}
		}
		// The caller's pacer pads up to the probe's rate, over what the
		// media actually sent; a keyframe's burst counts for at most 100 ms.
		pad := 0.0
		if probe.Active && now.Before(probe.Until) {
			padDebt = max(padDebt+float64(probe.Bitrate)*dt-media, -float64(probe.Bitrate)*0.1)
			pad = max(padDebt, 0)
			padDebt -= pad
		} else {
			padDebt = 0
		}
		arrived := media + pad
		if !o.noSent {
			c.OnSent(now, int(media/8))
		}
		limit := capBps * o.buffer.Seconds()
		if o.bufferBits > 0 {
			limit = o.bufferBits
		}
		lost := max(0, q+arrived-limit)
		q += arrived - lost
		drained := min(q, capBps*dt)
		q -= drained
		minDelay = min(minDelay, q/capBps)
		acks[(i+len(acks)-1)%len(acks)] += drained
		fbDrained += drained
		fbAcked += acks[i%len(acks)]
		acks[i%len(acks)] = 0
		fbLost += lost
		fbArrived += arrived
		fbMedia += media
		rrLost += lost
		rrArrived += arrived

		if i%10 == 0 && i > 0 { // transport feedback every 100 ms
			c.OnDelivered(now, int(fbAcked/8), int(fbAcked/packetBits))
			if !o.noLink {
				// The link drained what this feedback acknowledges over
				// the interval (a round trip ago), as the receiver timed it.
				c.OnReceived(now, int(fbAcked/8)+int(fbAcked/packetBits)*packetOverhead, 100*time.Millisecond)
			}
			copy(rcv[1:], rcv[:])
			rcv[0] = fbAcked
			var sum float64
			for _, v := range rcv {
				sum += v
			}
			lf := 0.0
			if fbArrived > 0 {
				lf = fbLost / fbArrived
			}
			c.OnEstimate(now, est.update(sum/0.5, minDelay, lf))
			if !o.noLink {
				// The receiver's timing of the packets it got over the
				// last interval reaches the sender a return trip later.
				pending = append(pending, pendingSample{due: now.Add(o.rtt), q: minDelay, bits: fbDrained})
				for len(pending) > 0 && !pending[0].due.After(now) {
					ps := pending[0]
					pending = pending[1:]
					c.OnLinkSample(now, LinkSample{MinQueue: time.Duration(ps.q * float64(time.Second)), Bytes: int(ps.bits / 8),
						WireBytes: int(ps.bits / 8 * (fullPacket + packetOverhead) / fullPacket), Span: 100 * time.Millisecond})
				}
			}
			fbDrained = 0
			if fbArrived > 0 {
				// Padding is not NACKed: only media losses are.
				if n := int(fbLost * fbMedia / fbArrived / packetBits); n > 0 {
					c.OnNACK(now, n)
				}
			}
			fbAcked, fbLost, fbArrived, fbMedia = 0, 0, 0, 0
			minDelay = math.Inf(1)
		}
		if i%100 == 30 && rrArrived > 0 { // receiver report every second
			c.OnLoss(now, math.Floor(256*rrLost/rrArrived)/256)
			rrLost, rrArrived = 0, 0
		}
		if i%10 == 5 { // the caller's tick
			if o.hostile != nil {
				o.hostile(c, now, rng)
			}
			d := c.Tick(now)
			want, probe = d.Target, d.Probe
			if !started {
				// A new viewer starts on a cached keyframe at once.
				sending, started = want, true
			}
			res.ticks = append(res.ticks, tickRecord{t: t, d: d, capacity: capBps, sending: sending, queue: q / capBps, gcc: c.gcc, proven: c.proven, trusted: c.gccTrusted})
		}
	}
	res.stats = c.Stats()
	return res
}

// bestFit is the best rung whose video and audio fit in capacity and the
// limits, as an oracle knowing the link would choose.
func bestFit(ladder []Rung, lim Limits, capacity float64) string {
	best, rate := "", 0
	for _, r := range ladder {
		if float64(r.Bitrate+audioRate) > capacity || r.Bitrate <= rate {
			continue
		}
		if (lim.MaxHeight > 0 && r.Height > lim.MaxHeight) || (lim.MaxBitrate > 0 && r.Bitrate > lim.MaxBitrate) {
			continue
		}
		best, rate = r.Name, r.Bitrate
	}
	return best
}

// stepLink is the link: 4 Mbps, 0.8 Mbps from drop, 4 Mbps again
// from recover.
func stepLink(drop, recover time.Duration) func(time.Duration) float64 {
	return func(t time.Duration) float64 {
		if t >= drop && t < recover {
			return 800_000
		}
		return 4_000_000
	}
}

// figures are one run's numbers on the step link.
type figures struct {
	start, down, downWire, up, upWire time.Duration // -1: never
	onBest                            float64       // share of ticks on the best fitting rung
	switches                          int
	probesOK, probesFailed            int
	queueP99                          time.Duration // queueing delay, steady phases
}

// measure reads figures off a run whose capacity stepped at drop and
// recover.
func measure(r simResult, ladder []Rung, drop, recover time.Duration) figures {
	f := figures{start: -1, down: -1, downWire: -1, up: -1, upWire: -1}
	var on int
	var q []float64
	prev := ""
	for i, k := range r.ticks {
		best := bestFit(ladder, Limits{}, k.capacity)
		if k.d.Target == best {
			on++
		}
		if i > 0 && k.d.Target != prev {
			f.switches++
		}
		prev = k.d.Target
		fits := rateOf(ladder, k.d.Target)+audioRate <= k.capacity
		wireFits := rateOf(ladder, k.sending)+audioRate <= k.capacity
		switch {
		case k.t < drop:
			if f.start < 0 && k.d.Target == best {
				f.start = k.t
			}
		case k.t < recover:
			if f.down < 0 && fits {
				f.down = k.t - drop
			}
			if f.downWire < 0 && wireFits {
				f.downWire = k.t - drop
			}
		default:
			if f.up < 0 && k.d.Target == best {
				f.up = k.t - recover
			}
			if f.upWire < 0 && k.sending == best {
				f.upWire = k.t - recover
			}
		}
		// Steady: 10 s after each change of capacity.
		if (k.t > 10*time.Second && k.t < drop) || (k.t > drop+10*time.Second && k.t < recover) || k.t > recover+10*time.Second {
			q = append(q, k.queue)
		}
	}
	f.onBest = float64(on) / float64(len(r.ticks))
	f.probesOK, f.probesFailed = r.stats.ProbesOK, r.stats.ProbesFailed
	if len(q) > 0 {
		slices.Sort(q)
		f.queueP99 = time.Duration(q[len(q)*99/100] * float64(time.Second))
	}
	return f
}

func medianDur(v []time.Duration) time.Duration {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

func medianFloat(v []float64) float64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}
