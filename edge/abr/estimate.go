// What the link is shown to carry, from the inputs: the package doc's "The
// estimate" in code.

package abr

import (
	"math"
	"time"
)

// carried is what the link carried over the w before now, bit/s, in bytes
// of full-size RTP packets: the wire bytes acknowledged, less a full-size
// packet's share of overhead. A probe is judged by it. In RTP bytes, a
// probe made mostly of padding (at most 255 bytes a packet, so 16 %
// overhead against 3 % for media) would fail on a link that carries the
// rung's media with room to spare. It is timed by the receiver's clock
// when the receiver timed enough of w, else by the feedback's arrival.
func (c *Controller) carried(now time.Time, w time.Duration) float64 {
	bps, ok := c.received.rate(now, w)
	if !ok {
		bps = c.deliveredWire.rate(now, w)
	}
	return bps * fullPacket / (fullPacket + packetOverhead)
}

// saturation returns the link's rate over the newest run of samples that
// all queued, if the run is fresh and long enough: in bytes of full-size
// RTP packets (wire bytes less a full-size packet's overhead), so that a
// moment of small packets does not read as a slower link.
func (c *Controller) saturation(now, since time.Time) (float64, bool) {
	return c.saturated(now, since, satQueue, satMinSpan)
}

// saturated is saturation with queue as the least delay that counts,
// over samples taken after since.
func (c *Controller) saturated(now, since time.Time, queue, minSpan time.Duration) (float64, bool) {
	if c.sN == 0 || now.Sub(c.sample(0).at) > satFresh {
		return 0, false
	}
	var bytes int64
	var span time.Duration
	for i := range c.sN {
		s := c.sample(i)
		// A sample spanning much more than the calls' interval covers a
		// gap in the feedback or in reception: it shows nothing.
		if s.queue < queue || !s.at.After(since) || span >= satMaxSpan || s.span <= 0 || s.span > satSampleMax {
			break
		}
		bytes += s.wire
		span += s.span
	}
	if span < minSpan {
		return 0, false
	}
	return fullRate(bytes, span), true
}

// sample is the i-th newest link sample (0: the newest), i < c.sN.
func (c *Controller) sample(i int) *linkSample {
	return &c.samples[(c.sHead+nSamples-i)%nSamples]
}

// fullRate is wire bytes over span in bit/s of full-size RTP packets:
// less a full-size packet's share of overhead.
func fullRate(wire int64, span time.Duration) float64 {
	return float64(wire) * 8 / span.Seconds() * fullPacket / (fullPacket + packetOverhead)
}

// busyRate returns the link's rate from the busy packets of the newest
// samples that hold busyMinSpan of busy time, taken over the last
// satFresh and after since, in bytes of full-size RTP packets. Newest
// first, and no further than needed: a token bucket passes its burst at
// line rate, and the few packets that queue behind it read as a link
// many times faster (17 Mbit/s on a 4 Mbit/s link); summed with the next
// sample, where the bucket is empty and the link's own rate shows, they
// hid an overload for a sample or two more.
func (c *Controller) busyRate(now, since time.Time) (float64, bool) {
	var bytes int64
	var span time.Duration
	for i := 0; i < c.sN && span < busyMinSpan; i++ {
		s := c.sample(i)
		if now.Sub(s.at) > satFresh || !s.at.After(since) {
			break // the rest are older
		}
		bytes += s.busyWire
		span += s.busySpan
	}
	if span < busyMinSpan {
		return 0, false
	}
	return fullRate(bytes, span), true
}

// queueing reports whether the newest link sample shows every packet
// queued: the link is full already, and padding on top would overflow it
// before the feedback that stops a probe comes back through that queue.
func (c *Controller) queueing(now time.Time) bool {
	return c.sN > 0 && now.Sub(c.sample(0).at) <= satFresh && c.sample(0).queue >= satQueue
}

// gccEvent reads a fall (or leap) of GCC's target. Any such event fails a
// running probe: its extra rate is the likeliest cause. But GCC
// also backs off on a keyframe's burst through a busy link, landing at 0.85
// × a quiet scene's rate, below the rung the link carries; taken as
// overload, that sends a viewer down and back up every few seconds. So the
// target is trusted for going down only when the link is seen to fall
// behind: less than overloadShare of what was sent in the last second was
// acknowledged.
func (c *Controller) gccEvent(now time.Time, why string) {
	c.congestedAt = now
	if c.probe.active {
		c.probe.congested = why
	}
	over, _ := c.overloaded(now)
	// Without OnSent there is no telling, and every decrease counts. With
	// it, a decrease the link does not bear out (yet) waits for step to
	// see the link fall behind.
	c.gccTrusted = over || !c.sentSeen
	if c.gccTrusted {
		c.congest(now)
	}
}

// lag is how long after sending a packet its acknowledgement arrives.
func (c *Controller) lag() time.Duration {
	rtt := defaultRTT
	if c.rttSet {
		rtt = c.rtt
	}
	return rtt + feedbackDelay
}

// overloaded reports whether acknowledgements fell behind the media sent,
// and whether it can tell: not without OnSent, nor in the first second.
// The sent side is read a lag earlier, the typical delay of a TWCC
// acknowledgement, so that a keyframe just sent does not count against the
// link. Padding is acknowledged but not counted as sent, so a probe the
// link carries never looks like overload, and one it does not carry only
// once it eats into the media.
func (c *Controller) overloaded(now time.Time) (over, known bool) {
	end := c.delivered.last().Add(-c.lag())
	if !c.sentSeen || end.Sub(c.sent.base) < overloadWindow {
		return false, false
	}
	s := c.sent.rate(now, end, overloadWindow, 8)
	return c.delivered.rate(now, overloadWindow) < overloadShare*s, true
}

// sentRate is the media sent over overloadWindow, a lag ago: what the
// acknowledgements arriving now are about.
func (c *Controller) sentRate(now time.Time) float64 {
	end := c.delivered.last().Add(-c.lag())
	if end.Sub(c.sent.base) < overloadWindow {
		return 0
	}
	return c.sent.rate(now, end, overloadWindow, 8)
}

// congest records a measurement of congestion: the link carries what it
// delivered just now, and no more.
func (c *Controller) congest(now time.Time) {
	c.congestedAt = now
	c.proven = c.delivered.rate(now, congestionWindow)
	if !c.linkCapAt.IsZero() && now.Sub(c.linkCapAt) <= capFresh {
		// The receiver timed the link busy just now: a better measure
		// than acknowledgements timed by their arrival, which a burst of
		// repairs and small packets reads low.
		c.proven = max(c.proven, c.linkCap)
	}
}

// raw is the congestion-driven estimate (see the package doc); +Inf when
// nothing bounds it yet.
func (c *Controller) raw(now time.Time) float64 {
	r := math.Inf(1)
	if c.gccTrusted {
		r = max(c.gcc, c.proven) // c.gcc is 0 if GCC is silent
	}
	if !c.rembAt.IsZero() && now.Sub(c.rembAt) <= rembTTL {
		r = min(r, c.remb)
	}
	return r
}

// basis is what the link has shown it carries.
func (c *Controller) basis(now time.Time) float64 {
	return max(c.delivered.rate(now, deliveredWindow), c.proven)
}

// usable is raw capped by what was proven, plus Headroom (see the package
// doc). It is only shown: a climb needs the basis itself to reach the
// next rung's need.
func (c *Controller) usable(now time.Time) float64 {
	return min(c.raw(now), c.basis(now)*(1+c.cfg.Headroom))
}

// loss is the worse of the last receiver report and the NACKed share of
// packets over the last second. Reports from within lossGrace of the
// join, of a switch or of a probe's end are about the keyframe burst that
// starts a rung, the rung left behind or the probe, and are not held
// against the rung now sent. NACKs repeat when a
// retransmission is lost too, so they overstate loss a little: the safe
// side.
func (c *Controller) loss(now time.Time) float64 {
	quiet := c.switchedAt // any switch, and the join: a keyframe's burst
	if c.downAt.After(quiet) {
		quiet = c.downAt
	}
	if c.probeEnd.After(quiet) {
		quiet = c.probeEnd
	}
	quiet = quiet.Add(lossGrace)
	var l float64
	if !c.rrAt.IsZero() && !c.rrAt.Before(quiet) && now.Sub(c.rrAt) <= lossTTL {
		l = c.rrLoss
	}
	if now.Before(quiet) {
		return l
	}
	n, _ := c.nacks.sum(now, now, nackWindow)
	p, _ := c.packets.sum(now, now, nackWindow)
	if p >= nackMinPackets {
		l = max(l, float64(n)/(float64(p)+float64(n)))
	}
	return l
}
