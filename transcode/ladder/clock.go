package ladder

import "sync/atomic"

// KeyClock decides, once per source frame, whether the transcoded rungs put
// an IDR on it. Every rung's encoder obeys the same decision, so keyframes
// are aligned across the ladder by construction: an edge can move a viewer
// from one rung to another at any keyframe without a gap.
//
// The clock runs on the source's own (unwrapped) timestamps, so keyframes
// sit on a regular grid of the source timeline: the first frame at or past
// each multiple of the interval. A frame that jumps past several grid
// points (a stall, a timestamp jump) gets one keyframe, and the grid
// resumes from it.
type KeyClock struct {
	interval int64 // in source clock ticks
	next     int64
	started  bool
	forced   atomic.Bool // set from any goroutine
}

// NewKeyClock returns a clock with the given interval in clock ticks
// (90 000 per second for video).
func NewKeyClock(intervalTicks int64) *KeyClock {
	if intervalTicks <= 0 {
		intervalTicks = 90000
	}
	return &KeyClock{interval: intervalTicks}
}

// Force makes the next frame a keyframe (an early aligned IDR that an edge
// asked for, or a decoder recovery). The grid restarts from that frame.
// Unlike Keyframe, it is safe to call from any goroutine.
func (k *KeyClock) Force() { k.forced.Store(true) }

// Keyframe reports whether the frame at pts (unwrapped, non-decreasing for
// well-behaved sources) must be an IDR on every rung.
func (k *KeyClock) Keyframe(pts int64) bool {
	forced := k.forced.Swap(false)
	switch {
	case !k.started || forced || pts < k.next-k.interval:
		// First frame, a forced one, or a timestamp that went backwards
		// past the last grid point: start a grid here.
		k.started = true
		k.next = pts + k.interval
		return true
	case pts >= k.next:
		k.next += k.interval
		if pts >= k.next { // jumped over grid points: resume from here
			k.next = pts + k.interval
		}
		return true
	}
	return false
}

// Unwrapper extends 32-bit RTP timestamps to 64 bits across wraps. A jump
// of more than half the range is taken as a wrap in that direction.
type Unwrapper struct {
	last    uint32
	ext     int64
	started bool
}

// Unwrap returns ts extended to 64 bits.
func (u *Unwrapper) Unwrap(ts uint32) int64 {
	if !u.started {
		u.started, u.last, u.ext = true, ts, int64(ts)
		return u.ext
	}
	u.ext += int64(int32(ts - u.last))
	u.last = ts
	return u.ext
}
