package node

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// netemDumpEnv set (to anything) makes the viewer keep every video
// packet's arrival and BenchmarkABRLink log each run around the drop,
// packet by packet: how the freezes there were made.
const netemDumpEnv = "CASCADE_TEST_DUMP"

func netemDump() bool { return os.Getenv(netemDumpEnv) != "" }

// pktTrace is one video packet as the viewer received it.
type pktTrace struct {
	S  uint64 // extended sequence number
	At int64  // arrival, Unix nanoseconds
	K  byte   // 'p' padding, 'm' media, 'k' keyframe media; upper case: a repair
	L  int64  // At less the kernel's arrival, ns
}

// dumpDrop logs the run's timeline (logRun), then from 0.3 s before the
// drop to 3 s after it, and around every gap of more than a second between
// frames shown, the link's drop count, each frame and the video packets as
// runs of one kind. (Probes' padding rides the audio when the viewer
// counts it in its feedback, as pion's viewers do, so it does not show
// among the video's packets.)
func dumpDrop(t testing.TB, r *linkRun) {
	if !netemDump() {
		return
	}
	logRun(t, r)
	t.Logf("  around the drop:")
	dumpWindow(t, r, r.drop.Add(-300*time.Millisecond), r.drop.Add(3*time.Second))
	// The long freezes seen around a climb to the source (every packet
	// received, no PLI) are rare: their packets are worth the log.
	var last int64
	for _, f := range r.view.Frames {
		if f.Render == 0 {
			continue
		}
		if last != 0 && f.Render-last > int64(time.Second) {
			t.Logf("  around a gap of %v:", time.Duration(f.Render-last).Round(time.Millisecond))
			dumpWindow(t, r, time.Unix(0, last).Add(-300*time.Millisecond), time.Unix(0, f.Render).Add(200*time.Millisecond))
		}
		last = max(last, f.Render)
	}
}

// dumpWindow logs the link's drops, the frames and the video packets
// between from and to, times relative to the drop.
func dumpWindow(t testing.TB, r *linkRun, from, to time.Time) {
	in := func(ns int64) bool { return ns >= from.UnixNano() && ns <= to.UnixNano() }
	rel := func(ns int64) time.Duration { return time.Unix(0, ns).Sub(r.drop).Round(time.Millisecond) }
	for i, d := range r.drops {
		if !in(d.at.UnixNano()) {
			continue
		}
		// What tbf put on the link since the sample before, and what it
		// holds: whether a slow read of the link is the link's.
		rate := 0.0
		if i > 0 {
			rate = float64(d.sent-r.drops[i-1].sent) * 8 / d.at.Sub(r.drops[i-1].at).Seconds() / 1e6
		}
		t.Logf("    link drops %d at %v; sent %.2f Mbit/s since the last sample, %d bytes queued", d.n,
			d.at.Sub(r.drop).Round(time.Millisecond), rate, d.backlog)
	}
	for _, f := range r.view.Frames {
		if in(f.First) {
			shown := "never"
			if f.Render > 0 {
				shown = rel(f.Render).String()
			}
			t.Logf("    frame ts=%d seq %d-%d key=%v complete=%v width=%d first %v done %v shown %s",
				f.TS, f.S0, f.S1, f.Key, f.Complete, f.W, rel(f.First), rel(f.Done), shown)
		}
	}
	// What came out of the link, by kind, each 100 ms: bytes as tbf
	// counts them (with IP, UDP and Ethernet headers).
	if len(r.view.Wire) > 0 {
		const bin = 100 * time.Millisecond
		kinds := []byte{'v', 'a', 'd', 'r', 'o'}
		for b0 := from; b0.Before(to); b0 = b0.Add(bin) {
			var bytes [256]int
			var n [256]int
			for _, w := range r.view.Wire {
				if w.At >= b0.UnixNano() && w.At < b0.Add(bin).UnixNano() {
					bytes[w.K] += w.Size + 42
					n[w.K]++
				}
			}
			line := ""
			for _, k := range kinds {
				line += fmt.Sprintf(" %c %.2f (%d)", k, float64(bytes[k])*8/bin.Seconds()/1e6, n[k])
			}
			t.Logf("    link out at %v, Mbit/s (packets):%s", b0.Sub(r.drop).Round(time.Millisecond), line)
		}
	}
	var run []pktTrace
	flush := func() {
		if len(run) == 0 {
			return
		}
		lo, hi, lag := run[0].At, run[0].At, int64(0)
		for _, p := range run {
			lo, hi, lag = min(lo, p.At), max(hi, p.At), max(lag, p.L)
		}
		t.Logf("    packets %c %d-%d (%d) at %v..%v read lag ≤%v", run[0].K, run[0].S, run[len(run)-1].S, len(run), rel(lo), rel(hi),
			time.Duration(lag).Round(100*time.Microsecond))
		run = run[:0]
	}
	for _, p := range r.view.Trace {
		if !in(p.At) {
			continue
		}
		if len(run) > 0 && (p.K != run[0].K || p.S != run[len(run)-1].S+1) {
			flush()
		}
		run = append(run, p)
	}
	flush()
}
