package abr

import (
	"encoding/binary"
	"math"
	"slices"
	"testing"
	"time"
)

// An op is one call on a Controller, so that a behaviour can be written as
// a short script, and the scripts seed FuzzController.
type op struct {
	kind byte
	v    float64 // bit/s or a fraction
	n    int     // bytes, a count, milliseconds, a bit mask
}

const (
	opAdvance   byte = iota // the clock moves by n ms (back, if negative)
	opTick                  // Tick
	opEstimate              // OnEstimate(v)
	opREMB                  // OnREMB(v)
	opLoss                  // OnLoss(v)
	opNACK                  // OnNACK(n)
	opDelivered             // OnDelivered(n, n/1200)
	opSent                  // OnSent(n)
	opRTT                   // OnRTT(n ms)
	opPin                   // Pin(pinNames[n])
	opLimits                // SetLimits: MaxHeight n, MaxBitrate v
	opLadder                // SetLadder(ladderOf(n))
	opLink                  // OnLinkSample: queue n&0x7ff ms, n>>11 bytes over 100 ms
	opReceived              // OnReceived: n>>8 wire bytes over n&0xff ms
	opBusy                  // OnLinkSample, no queue: busy n>>8 wire bytes over n&0xff ms
	nOps
)

var pinNames = []string{"auto", "", "source", "720p", "480p", "360p", "240p", "nonexistent"}

// ladderOf picks rungs of testLadder by the low bits of mask; bit 5 adds
// rungs that must be ignored, bits 8–15 scale the bit rates.
func ladderOf(mask int) []Rung {
	var l []Rung
	for i, r := range testLadder {
		if mask&(1<<i) != 0 {
			l = append(l, r)
		}
	}
	if mask&(1<<5) != 0 {
		l = append(l, Rung{Name: "", Bitrate: 1}, Rung{Name: "zero", Bitrate: 0}, Rung{Name: "neg", Bitrate: -5, Height: -1})
		if len(l) > 3 {
			l = append(l, Rung{Name: l[0].Name, Bitrate: 1}) // a repeated name
		}
	}
	if f := (mask >> 8) & 0xff; f != 0 {
		for i := range l {
			l[i].Bitrate = l[i].Bitrate / 128 * f
		}
	}
	return l
}

// apply runs o on c at *now and returns the Decision if o was a Tick.
func apply(c *Controller, now *time.Time, o op) (Decision, bool) {
	switch o.kind {
	case opAdvance:
		*now = now.Add(time.Duration(o.n) * time.Millisecond)
	case opTick:
		return c.Tick(*now), true
	case opEstimate:
		c.OnEstimate(*now, o.v)
	case opREMB:
		c.OnREMB(*now, o.v)
	case opLoss:
		c.OnLoss(*now, o.v)
	case opNACK:
		c.OnNACK(*now, o.n)
	case opDelivered:
		c.OnDelivered(*now, o.n, o.n/1200)
	case opSent:
		c.OnSent(*now, o.n)
	case opRTT:
		c.OnRTT(*now, time.Duration(o.n)*time.Millisecond)
	case opPin:
		c.Pin(pinNames[uint(o.n)%uint(len(pinNames))])
	case opLimits:
		c.SetLimits(Limits{MaxHeight: o.n, MaxBitrate: int(o.v)})
	case opLadder:
		c.SetLadder(ladderOf(o.n))
	case opLink:
		b := o.n >> 11
		c.OnLinkSample(*now, LinkSample{MinQueue: time.Duration(o.n&0x7ff) * time.Millisecond, Bytes: b,
			WireBytes: b + b/fullPacket*packetOverhead, Span: 100 * time.Millisecond})
	case opBusy:
		c.OnLinkSample(*now, LinkSample{Bytes: 10000, WireBytes: 10300, Span: 100 * time.Millisecond,
			BusyWire: o.n >> 8, BusySpan: time.Duration(o.n&0xff) * time.Millisecond})
	case opReceived:
		c.OnReceived(*now, o.n>>8, time.Duration(o.n&0xff)*time.Millisecond)
	}
	return Decision{}, false
}

// encode and decode map ops to fuzz input: 9 bytes each, a kind and an
// argument. With the kind's high bit set, rates are raw float64 bits (NaN,
// Inf, negative zero...) and counts are raw int64s.
func encode(ops []op) []byte {
	var b []byte
	for _, o := range ops {
		var arg uint64
		switch o.kind {
		case opEstimate, opREMB:
			if o.v >= 0 && o.v < 100_000_000 && o.v == math.Trunc(o.v) {
				arg = uint64(o.v)
			} else {
				o.kind |= 0x80
				arg = math.Float64bits(o.v)
			}
		case opLoss:
			arg = uint64(o.v * 1000)
		case opLimits:
			arg = uint64(uint16(o.n)) | uint64(o.v)<<16
		default:
			arg = uint64(int64(o.n)) & 0xffff_ffff
		}
		b = append(b, o.kind)
		b = binary.LittleEndian.AppendUint64(b, arg)
	}
	return b
}

func decode(b []byte) []op {
	var ops []op
	for ; len(b) >= 9 && len(ops) < 2000; b = b[9:] {
		raw := b[0]&0x80 != 0
		o := op{kind: (b[0] & 0x7f) % nOps}
		arg := binary.LittleEndian.Uint64(b[1:9])
		rate := float64(arg % 100_000_000)
		if raw {
			rate = math.Float64frombits(arg)
		}
		count := int(int32(uint32(arg)))
		if raw {
			count = int(int64(arg))
		}
		switch o.kind {
		case opAdvance:
			o.n = int(int16(uint16(arg))) // up to ±33 s
		case opEstimate, opREMB:
			o.v = rate
		case opLoss:
			o.v = float64(arg%2000) / 1000
			if raw {
				o.v = rate
			}
		case opLimits:
			o.n, o.v = int(int16(uint16(arg))), float64(int32(uint32(arg>>16)))
		default:
			o.n = count
		}
		ops = append(ops, o)
	}
	return ops
}

// Shorthands for scripts.
func at(ms int) op               { return op{kind: opAdvance, n: ms} }
func tick() op                   { return op{kind: opTick} }
func estimate(bps float64) op    { return op{kind: opEstimate, v: bps} }
func remb(bps float64) op        { return op{kind: opREMB, v: bps} }
func lossOf(f float64) op        { return op{kind: opLoss, v: f} }
func nacks(n int) op             { return op{kind: opNACK, n: n} }
func delivered(bytes int) op     { return op{kind: opDelivered, n: bytes} }
func pin(name string) op         { return op{kind: opPin, n: slices.Index(pinNames, name)} }
func limits(h int, b float64) op { return op{kind: opLimits, n: h, v: b} }
func ladder(mask int) op         { return op{kind: opLadder, n: mask} }
func sent(bytes int) op          { return op{kind: opSent, n: bytes} }
func link(queueMS, bytes int) op { return op{kind: opLink, n: queueMS&0x7ff | bytes<<11} }

// congested sends at sendBPS into a link that carries linkBPS with a
// standing queue of queueMS, for d: what the sender counts, what the
// feedback acknowledges, and what the receiver's clock says.
func congested(sendBPS, linkBPS float64, queueMS int, d time.Duration) []op {
	var ops []op
	for range int(d / (100 * time.Millisecond)) {
		ops = append(ops, at(100), sent(int(sendBPS/80)), delivered(int(linkBPS/80)), link(queueMS, int(linkBPS/80)), tick())
	}
	return ops
}

// feed delivers bps for d, in 100 ms reports, without ticking.
func feed(bps float64, d time.Duration) []op {
	var ops []op
	for range int(d / (100 * time.Millisecond)) {
		ops = append(ops, at(100), delivered(int(bps/80)))
	}
	return ops
}

func script(parts ...any) []op {
	var ops []op
	for _, p := range parts {
		switch p := p.(type) {
		case op:
			ops = append(ops, p)
		case []op:
			ops = append(ops, p...)
		}
	}
	return ops
}

// cases are scripted behaviours (without OnSent, so every GCC decrease is
// taken for overload): what the last Tick must say. They also seed
// FuzzController.
var cases = []struct {
	name   string
	ops    []op
	target string
	reason string
}{
	{"starts on the rung nearest 600 kbps", []op{tick()}, "360p", ReasonStart},
	{"a cap below the start rung moves below it", []op{limits(0, 400e3), tick()}, "240p", ReasonCap},
	{"a pin starts on it", []op{pin("720p"), tick()}, "720p", ReasonPin},
	{"an unknown pin is auto", []op{pin("nonexistent"), tick()}, "360p", ReasonStart},
	{"estimate at the rung's rate stays",
		[]op{estimate(2e6), at(100), estimate(600e3), tick()}, "360p", ReasonStart},
	{"estimate just below the rung goes down at once",
		[]op{estimate(2e6), at(100), estimate(590e3), tick()}, "240p", ReasonEstimateDrop},
	{"a deep drop goes to the rung that fits, not one step",
		[]op{pin("720p"), tick(), pin("auto"), estimate(4e6), at(100), estimate(700e3), tick()}, "360p", ReasonEstimateDrop},
	{"below the lowest rung: the lowest first",
		[]op{estimate(2e6), at(100), estimate(100e3), tick()}, "240p", ReasonEstimateDrop},
	{"below the lowest rung for audio_only_hold: audio only",
		[]op{estimate(2e6), at(100), estimate(100e3), tick(), at(500), tick()}, "", ReasonAudioOnly},
	{"below the lowest rung, briefly: video stays",
		[]op{estimate(2e6), at(100), estimate(100e3), tick(), at(200), estimate(400e3), at(400), tick()}, "240p", ReasonEstimateDrop},
	{"GCC's first value is not a measurement",
		[]op{estimate(10e3), tick()}, "360p", ReasonStart},
	{"an estimate far above is no proof: no climb without a probe",
		script(estimate(1e6), at(100), estimate(50e6), feed(640e3, 5*time.Second), tick()), "360p", ReasonStart},
	{"a probe that delivers the need climbs",
		script(estimate(20e6), feed(640e3, 1100*time.Millisecond), tick(), feed(1.4e6, time.Second), tick()), "480p", ReasonProbeOK},
	{"a probe that delivers less does not",
		script(estimate(20e6), feed(640e3, 1100*time.Millisecond), tick(), feed(1.1e6, time.Second), tick()), "360p", ReasonStart},
	{"loss above loss_down steps down one rung",
		[]op{pin("720p"), tick(), pin("auto"), at(3000), lossOf(0.15), tick()}, "480p", ReasonLoss},
	{"loss at loss_down stays",
		[]op{pin("720p"), tick(), pin("auto"), at(3000), lossOf(0.10), tick()}, "720p", ReasonPin},
	{"loss never pauses video",
		[]op{pin("240p"), tick(), pin("auto"), at(3000), lossOf(1), tick()}, "240p", ReasonPin},
	{"loss right after a down-switch is the old rung's",
		[]op{pin("720p"), tick(), pin("auto"), estimate(4e6), at(100), estimate(1.5e6), tick(), at(500), lossOf(0.5), tick()}, "480p", ReasonEstimateDrop},
	{"NACKs count as loss",
		script(pin("720p"), tick(), pin("auto"), at(2000), feed(2.5e6, time.Second), nacks(100), tick()), "480p", ReasonLoss},
	{"a REMB below the rung caps it", []op{remb(400e3), tick()}, "240p", ReasonEstimateDrop},
	{"a REMB of zero is garbage", []op{remb(0), tick()}, "360p", ReasonStart},
	{"a REMB of 2^64 caps nothing", []op{remb(math.Ldexp(1, 64)), tick()}, "360p", ReasonStart},
	{"once a REMB lapses, no climb without a probe", []op{remb(400e3), tick(), at(6000), tick()}, "240p", ReasonEstimateDrop},
	{"a cap below the rung moves down",
		[]op{pin("720p"), tick(), pin("auto"), limits(480, 0), tick()}, "480p", ReasonCap},
	{"a cap excluding every rung keeps the lowest", []op{limits(100, 0), tick()}, "240p", ReasonCap},
	{"a pin moves and holds", []op{pin("source"), tick(), estimate(1e6), at(100), estimate(100e3), tick()}, "source", ReasonPin},
	{"unpinning keeps the rung", []op{pin("720p"), tick(), pin("auto"), tick()}, "720p", ReasonPin},
	{"a ladder without the rung moves to the best below", []op{pin("480p"), tick(), pin("auto"), ladder(0b11011), tick()}, "360p", ReasonLadder},
	{"an empty ladder is audio only", []op{ladder(0), tick()}, "", ReasonStart},
	{"a ladder arriving starts the viewer", []op{ladder(0), tick(), ladder(0b11111), tick()}, "360p", ReasonLadder},
	{"a standing queue while sending more than it carries: down to the rung it carries",
		script(pin("480p"), tick(), pin("auto"), estimate(2e6), congested(950e3, 1e6, 5, 2*time.Second),
			congested(950e3, 755e3, 120, 500*time.Millisecond)), "360p", ReasonEstimateDrop},
	{"a standing queue at a rate the rung fits: it stays",
		script(pin("360p"), tick(), pin("auto"), estimate(2e6), congested(700e3, 755e3, 5, 2*time.Second),
			congested(700e3, 755e3, 150, time.Second)), "360p", ReasonStart},
	{"a queue without sending more than the link carries: it stays",
		script(pin("480p"), tick(), pin("auto"), estimate(2e6), congested(900e3, 1.1e6, 5, 2*time.Second),
			congested(900e3, 1.1e6, 150, time.Second)), "480p", ReasonPin},
	{"a standing queue on a rung the link does not carry, in a quiet scene: down",
		script(pin("480p"), tick(), pin("auto"), estimate(2e6), congested(800e3, 800e3, 5, 2*time.Second),
			congested(800e3, 760e3, 150, time.Second)), "360p", ReasonEstimateDrop},
	{"time going backwards changes nothing", []op{tick(), at(-5000), tick(), at(-1 << 15), estimate(100e3), tick()}, "360p", ReasonStart},
}

func TestCases(t *testing.T) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(DefaultConfig(), testLadder, Limits{}, t0)
			if err != nil {
				t.Fatal(err)
			}
			now := t0
			var d Decision
			for _, o := range tc.ops {
				if got, ok := apply(c, &now, o); ok {
					d = got
				}
			}
			if d.Target != tc.target || d.Reason != tc.reason {
				t.Errorf("got %q (%s), want %q (%s)", d.Target, d.Reason, tc.target, tc.reason)
			}
			// The script survives its own encoding, so the seeds are the cases.
			if got := decode(encode(tc.ops)); !slices.Equal(got, tc.ops) {
				t.Errorf("encode/decode: %v != %v", got, tc.ops)
			}
		})
	}
}
