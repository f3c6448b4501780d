package abr

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

var reasons = []string{ReasonStart, ReasonProbeOK, ReasonEstimateUp, ReasonEstimateDrop, ReasonLoss,
	ReasonPin, ReasonCap, ReasonAudioOnly, ReasonResume, ReasonLadder}

// FuzzController drives a controller with random sequences of calls, rates
// and counts that may be anything (NaN, Inf, 2^64, negative), and time that
// may go backwards. After every Tick the target must be a rung of the
// current ladder (the pin, if it is there; within the limits otherwise) or
// audio only, the reason a known one, and the estimate finite.
func FuzzController(f *testing.F) {
	for _, tc := range cases {
		f.Add(encode(tc.ops))
	}
	f.Add(encode(script(estimate(1e6), feed(2e6, 3*time.Second), tick(), at(-20000), tick(), ladder(0b100111), tick(),
		limits(480, 0), tick(), remb(1), tick(), pin("source"), tick(), ladder(0b11110), tick())))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := New(DefaultConfig(), testLadder, Limits{}, t0)
		if err != nil {
			t.Fatal(err)
		}
		now := t0
		lad, lim := testLadder, Limits{}
		for _, o := range decode(data) {
			switch o.kind {
			case opLadder:
				lad = ladderOf(o.n)
			case opLimits:
				lim = Limits{MaxHeight: o.n, MaxBitrate: int(o.v)} // SetLimits unpins
			case opPin:
				lim.Pin = pinNames[uint(o.n)%uint(len(pinNames))]
			}
			d, ok := apply(c, &now, o)
			if !ok {
				continue
			}
			if err := check(d, lad, lim); err != "" {
				t.Fatalf("after %v: %s: %+v", o, err, d)
			}
		}
	})
}

// check returns what is wrong with d, given the ladder and limits it was
// decided under.
func check(d Decision, lad []Rung, lim Limits) string {
	if !slices.Contains(reasons, d.Reason) {
		return "unknown reason"
	}
	if math.IsNaN(d.Estimate) || math.IsInf(d.Estimate, 0) || d.Estimate < 0 {
		return "bad estimate"
	}
	if d.Probe.Active && (d.Probe.Bitrate < 0 || d.Probe.Until.IsZero()) {
		return "bad probe"
	}
	valid := normalize(nil, lad)
	if d.Target == "" {
		if p := slices.IndexFunc(valid, func(r Rung) bool { return r.Name == lim.Pin }); p >= 0 && !strings.EqualFold(lim.Pin, "auto") {
			return "audio only while pinned"
		}
		return ""
	}
	i := slices.IndexFunc(valid, func(r Rung) bool { return r.Name == d.Target })
	if i < 0 {
		return "target not in the ladder"
	}
	if lim.Pin != "" && !strings.EqualFold(lim.Pin, "auto") && slices.ContainsFunc(valid, func(r Rung) bool { return r.Name == lim.Pin }) {
		if d.Target != lim.Pin {
			return "pin not kept"
		}
		return ""
	}
	fits := func(r Rung) bool {
		return (lim.MaxHeight <= 0 || r.Height == 0 || r.Height <= lim.MaxHeight) &&
			(lim.MaxBitrate <= 0 || r.Bitrate <= lim.MaxBitrate)
	}
	if !fits(valid[i]) && (i != 0 || slices.ContainsFunc(valid, fits)) {
		return "target outside the limits"
	}
	return ""
}
