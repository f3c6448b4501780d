package rtsp

import (
	"math"
	"time"
)

// maxJump is how far a source's timestamps may stray from its wall-clock
// progress before the timeline treats it as a clock reset. It is far above
// B-frame reordering (a few frames) and bursty TCP delivery (a second or
// two), and far below a camera whose clock restarted at a random value.
const maxJump = 5 * time.Second

// timeline maps one source connection's RTP timestamps onto a clock that
// does not jump: timestamps pass through with their 32-bit wrap, but a jump
// of more than maxJump from what the wall clock predicts (a camera that
// reset its clock mid-session) is rebased to continue where the stream
// was. A new connection starts a new timeline; the hub then makes it
// continue the old one (media.Hub.NewSource), so viewers see no jump.
type timeline struct {
	started bool
	off     uint32
	lastIn  uint32
	lastOut uint32
	lastAt  time.Time
	rebases int
}

// next maps the source timestamp in, which arrived at now on a clock of
// rate ticks per second.
func (t *timeline) next(in uint32, now time.Time, rate uint32) uint32 {
	if !t.started {
		t.started = true
		t.lastIn, t.lastOut, t.lastAt = in, in, now
		return in
	}
	delta := float64(int32(in - t.lastIn)) // signed, across the wrap
	elapsed := max(now.Sub(t.lastAt), 0)
	expected := elapsed.Seconds() * float64(rate)
	if math.Abs(delta-expected) > maxJump.Seconds()*float64(rate) {
		t.off = t.lastOut + uint32(expected) + 1 - in
		t.rebases++
	}
	out := in + t.off
	t.lastIn, t.lastOut, t.lastAt = in, out, now
	return out
}
