package peer

import (
	"testing"
)

// link is a synthetic path for the estimator: packets sent at a steady
// rate through a bottleneck of a given rate, with a fixed propagation
// delay, and feedback every 50 ms covering what arrived. Times are µs.
type link struct {
	g        *gcc
	now      int64 // sender's clock
	lastArr  int64 // when the bottleneck last finished a packet
	pending  []gccPacket
	statuses int
	lost     int
	// lossEvery drops every n-th packet (0: none).
	lossEvery int
	// shift moves the receiver's clock against the sender's.
	shift int64
	sent  int
}

type gccPacket struct{ dep, arr int64 }

const (
	propagation = 20_000 // µs one way
	packetBytes = 1200
)

// run sends at sendBps through a bottleneck of linkBps for d µs.
func (l *link) run(d int64, sendBps, linkBps float64) {
	gap := int64(packetBytes * 8 * 1e6 / sendBps)
	serve := int64(packetBytes * 8 * 1e6 / linkBps)
	for end := l.now + d; l.now < end; l.now += gap {
		l.sent++
		l.statuses++
		if l.lossEvery > 0 && l.sent%l.lossEvery == 0 {
			l.lost++
		} else {
			arr := max(l.now+propagation+l.shift, l.lastArr) + serve
			l.lastArr = arr
			l.pending = append(l.pending, gccPacket{l.now, arr})
		}
		// Feedback every 50 ms: it reaches the sender a propagation
		// delay after the receiver sent it.
		if l.now%50_000 < gap {
			l.feedback()
		}
	}
}

func (l *link) feedback() {
	if l.statuses == 0 {
		return
	}
	base, rtt, n := int64(0), int64(-1), 0
	for _, p := range l.pending {
		if p.arr-l.shift+propagation > l.now {
			break // not yet reported
		}
		l.g.received(l.now, p.dep, p.arr, packetBytes)
		base = p.arr
		rtt = l.now - p.dep
		n++
	}
	l.pending = l.pending[n:]
	if n == 0 {
		return
	}
	l.g.feedback(l.now, l.statuses, l.lost, rtt-(l.now-propagation-(base-l.shift)))
	l.statuses, l.lost = 0, 0
}

// TestGCCIdleLinkClimbs: a 1 Mbps stream on a 10 Mbps link never queues,
// so the target climbs (8 % a second, multiplicatively) and never falls.
func TestGCCIdleLinkClimbs(t *testing.T) {
	l := &link{g: newGCC(0)}
	prev := l.g.target
	for i := 0; i < 10; i++ {
		l.run(1_000_000, 1e6, 10e6)
		if l.g.target < prev {
			t.Fatalf("second %d: the target fell from %d to %d on an idle link", i, prev, l.g.target)
		}
		prev = l.g.target
	}
	if l.g.target < 1_500_000 {
		t.Errorf("target %d after 10 s on an idle link, want ≥ 1.5 Mbps (%+v)", l.g.target, l.g.stats())
	}
	t.Logf("after 10 s: %+v", l.g.stats())
	if l.g.state == gccDecrease {
		t.Errorf("state %v on an idle link", l.g.state)
	}
}

// TestGCCOveruseDecreases: 2 Mbps into a 0.8 Mbps bottleneck builds a
// queue; the delay controller sees the trend within a second and sets
// 0.85 × the received rate (about 0.68 Mbps).
func TestGCCOveruseDecreases(t *testing.T) {
	l := &link{g: newGCC(0)}
	l.run(2_000_000, 1e6, 10e6) // settle
	start := l.now
	for l.g.target > 900_000 && l.now-start < 3_000_000 {
		l.run(50_000, 2e6, 0.8e6)
	}
	took := l.now - start
	t.Logf("decreased in %d ms: %+v", took/1000, l.g.stats())
	if l.g.target > 900_000 {
		t.Fatalf("target %d after 3 s of a 2 Mbps stream into 0.8 Mbps (%+v)", l.g.target, l.g.stats())
	}
	if took > 1_000_000 {
		t.Errorf("the decrease took %d ms, want ≤ 1 s", took/1000)
	}
	if l.g.target < 500_000 {
		t.Errorf("target %d: below 0.85 × the 0.8 Mbps received, by far", l.g.target)
	}
}

// TestGCCLossDecreases: 20 % loss on a link that does not queue lowers the
// loss-based target, and with it the target.
func TestGCCLossDecreases(t *testing.T) {
	l := &link{g: newGCC(0)}
	l.run(2_000_000, 1e6, 10e6)
	before := l.g.target
	l.lossEvery = 5
	l.run(2_000_000, 1e6, 10e6)
	if l.g.target >= before || l.g.lossTarget >= before {
		t.Errorf("target %d (loss-based %d) after 2 s of 20 %% loss, was %d", l.g.target, l.g.lossTarget, before)
	}
	t.Logf("with loss: %+v", l.g.stats())
	if l.g.avgLoss < 0.1 {
		t.Errorf("average loss %.3f, want about 0.2", l.g.avgLoss)
	}
}

// TestGCCHostileTimes: times out of order, negative, far apart or the
// same, in any order from a fresh estimator, do not panic, and the target
// stays within its bounds.
func TestGCCHostileTimes(t *testing.T) {
	times := []int64{0, -1, -25_001, -1 << 40, 1 << 40, 5, 5, 5, 1 << 62, -1 << 62, 3, 0}
	for first := range times {
		g := newGCC(0)
		for i := range times {
			dep := times[(first+i)%len(times)]
			for j := range times {
				arr := times[(first+j)%len(times)]
				g.received(int64(i*j), dep, arr, i*100)
			}
			g.feedback(int64(i), 1<<16, i, int64(i)-5)
			_ = g.receivedRate()
		}
		if g.target < bweMinBitrate || g.target > bweMaxBitrate {
			t.Errorf("target %d out of [%d, %d]", g.target, bweMinBitrate, bweMaxBitrate)
		}
	}
}

// TestGCCClockJump: when the receiver's clock goes back (its reference
// time wrapped without being unwrapped, or a new time base), the
// estimator starts measuring again rather than ignoring every later
// arrival as out of order: a bottleneck after the jump still brings the
// target down.
func TestGCCClockJump(t *testing.T) {
	l := &link{g: newGCC(0)}
	l.run(3_000_000, 1e6, 10e6)
	before := l.g.target
	// Every arrival from now on is 100 s earlier on the receiver's clock
	// (what was in flight is forgotten: the harness reports in order).
	l.lastArr -= 100_000_000
	l.shift = -100_000_000
	l.pending, l.statuses = nil, 0
	l.run(3_000_000, 2e6, 0.8e6)
	if l.g.target >= min(before, 900_000) {
		t.Errorf("target %d after 3 s of 2 Mbps into 0.8 Mbps following a clock jump (before %d): %+v", l.g.target, before, l.g.stats())
	}
}
