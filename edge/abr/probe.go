// Probes before a climb: how one is judged while it runs, how it ends, and
// the waits after a failure.

package abr

import "time"

// judgeProbe ends a probe that failed or is over.
func (c *Controller) judgeProbe(now time.Time, loss float64) {
	p := &c.probe
	if p.congested != "" || loss > c.cfg.LossProbeMax {
		why := p.congested
		if why == "" {
			why = ProbeLoss
		}
		c.probeFailed(now, why)
		return
	}
	// The probe filled the link, and the receiver timed what the link
	// carried below the bar: the answer is in, before the queue overflows.
	// In bytes of full-size packets, as the bar is judged (carried).
	if capacity, _, ok := c.probeCapacity(now); ok && capacity < p.bar {
		c.linkCap, c.linkCapAt = capacity, now
		c.probeFailed(now, ProbeSaturated)
		return
	}
	// It succeeds as soon as the acknowledgements over half its length
	// reach its bar: they cannot exceed what the link carried, and if they
	// still hold some of the ramp they only read low. Waiting for them
	// rather than for a fixed time keeps a viewer whose round trip is
	// longer than OnRTT said (or than defaultRTT) from failing every probe.
	w := c.cfg.ProbeDuration / 2
	if now.Sub(p.start) < c.cfg.ProbeDuration/4+w || c.carried(now, w) < p.bar {
		if !now.Before(p.end) {
			c.probeFailed(now, ProbeShort)
		}
		return
	}
	c.probeEnd = now
	p.active = false
	c.failGot = 0
	c.stats.ProbesOK++
	c.stats.LastProbe = ProbeOK
	c.stats.LastProbeBar, c.stats.LastProbeGot = p.bar, c.carried(now, w)
	c.proven = max(c.proven, p.bar)
	if !p.check {
		// A check's success only chains the full probe; the backoff
		// goes when that succeeds, or a check that passes under a
		// ceiling would restart the climb of the backoff each time.
		c.backoff = 0
	}
	c.chain, c.nextProbe = true, now
	c.probed = !p.check
	c.probedBar, c.probedIdx = p.bar, p.idx
	if !p.check {
		c.fooled = false
	}
	c.stepFrom, c.stepMul = 0, 0
	if p.check {
		c.stepFrom, c.stepMul = p.bar, stairStep
	}
	if p.bar > c.failCap {
		c.failIdx, c.failCap, c.failHeld = -1, 0, 0 // the link carries more than when it failed
	}
	if p.bar > c.linkCap {
		// The link carries more than when it was last measured, and
		// neither the pace nor the next probe is held to that rate: after
		// a recovery, a rate measured by a failed probe in the slow phase
		// turned the probe for the source into a staircase of four checks.
		c.linkCapAt = time.Time{}
	}
}

// cancelProbe ends a probe unjudged: the ladder, a pin or the link changed
// under it.
func (c *Controller) cancelProbe() {
	if c.probe.active {
		c.stats.LastProbe = ProbeCancelled
	}
	c.probe = probe{}
}

func (c *Controller) probeFailed(now time.Time, why string) {
	c.probe.active = false
	c.probeEnd = now
	c.stats.ProbesFailed++
	c.stats.LastProbe = why
	// Whatever the link acknowledged during the probe, it carried; failing
	// to carry more says nothing against what was proven before (overload
	// does, and is seen apart). It also sizes the next attempt.
	got := c.carried(now, c.cfg.ProbeDuration/2)
	// Measured by the receiver while the probe filled the link. Busy
	// packets only ever lower it: behind a token bucket's burst they read
	// several times the link (17 Mbit/s on 4), and taken as proven that
	// climbed viewers to the source on the estimate.
	if capacity, standing, ok := c.probeCapacity(now); ok && (standing || capacity < got) {
		got = capacity
	}
	c.stats.LastProbeBar, c.stats.LastProbeGot = c.probe.bar, got
	c.failGot = got
	// It did not prove its own bar, whatever the acknowledgements read: a
	// token bucket's burst lifts them above the link, and a GCC fall or
	// loss may fail the probe just as they reach the bar. Taken as proven,
	// that climbed viewers on the estimate alone to the rung the probe
	// had just failed (the clip's source on a 4 Mbit/s link).
	c.proven = max(c.proven, min(got, failShare*c.probe.bar))
	c.stepFrom, c.stepMul = c.proven, checkStep
	// A check that fails shows checks work here; a full probe that fails
	// after one passed, that they do not (until a down-switch or a full
	// probe's success).
	if c.probe.check {
		c.fooled = false
	} else if c.probe.afterCheck {
		c.fooled = true
	}
	if !c.probe.check {
		// Delivery timed by feedback arrival may read above the bar
		// while the link fell behind: the failure is what counts.
		held := failHold
		if c.failIdx == c.probe.idx && c.failHeld > 0 {
			held = min(2*c.failHeld, failHoldMax)
		}
		c.failHeld = held
		wait := jitter(now, held)
		if c.recovering(now) {
			// The link may come back at any moment, and this hold, not
			// the backoff, would decide when the viewer notices: on the
			// lab's capped source, stepped down twice after the drop,
			// two failures of the probe for 360p held the viewer on
			// 240p for the rest of its run, 8 s of it on a link back at
			// 4 Mbit/s. The doubling goes on for after the recovery.
			wait = min(wait, recoverFailHold)
		}
		c.failIdx, c.failCap, c.failUntil = c.probe.idx, min(got, failShare*c.probe.bar), now.Add(wait)
	}
	c.chain = false
	c.backOff(now)
}

// probeCapacity is the link's rate as the receiver timed it while the
// running probe filled the link: over a standing queue, or else from the
// packets that queued behind the one before (busyRate). The busy rate
// matters where a token bucket shapes the link: its burst passes at line
// rate, so the acknowledgements over half a probe (200 ms) read up to
// 0.4 Mbit/s above a 4 Mbit/s link with a 10 kB bucket. That passed a
// probe for the clip's source (3.9 Mbit/s with the margin) on a link that
// carries 3.8, three runs of five once padding's wire bytes were counted
// with AES-GCM's tag, and the viewer met the drop on the source.
// standing says the rate was timed over a standing queue.
func (c *Controller) probeCapacity(now time.Time) (rate float64, standing, ok bool) {
	if rate, ok := c.saturated(now, c.probe.start, satProbeQueue, satProbeSpan); ok {
		return rate, true, true
	}
	rate, ok = c.busyRate(now, c.probe.start)
	return rate, false, ok
}

func (c *Controller) backOff(now time.Time) {
	// ProbeBackoffMax keeps the wait short while the link may come back.
	// A viewer back on the rung it had (or that went down long ago) sits
	// under the ceiling its probes found, and probing it every two
	// seconds kept its link near full a fifth of the time, so that a link
	// falling then met a probe.
	ceiling := !c.recovering(now)
	most := c.cfg.ProbeBackoffMax
	if ceiling {
		most = max(most, ceilingBackoff)
	}
	if c.backoff == 0 {
		c.backoff = c.cfg.ProbeBackoffMin
	} else {
		c.backoff = min(2*c.backoff, most)
	}
	wait := c.backoff
	if ceiling {
		wait = jitter(now, wait)
	}
	c.nextProbe = now.Add(wait)
}

// jitter spreads d over ±25 %, by the microseconds of now: viewers that
// joined together (a stream's start, a node's restart) would otherwise
// repeat their probes in step, filling a shared uplink at once. The real
// clock's microseconds are as good as a random draw here; a simulated
// clock's stay put, which keeps simulations repeatable.
func jitter(now time.Time, d time.Duration) time.Duration {
	f := float64(now.UnixNano()/1e3%1024) / 1024
	return time.Duration(float64(d) * (0.75 + 0.5*f))
}

// recovering reports whether the viewer is below the rung it left at a
// down-switch less than recoverWindow ago: the link may come back, and
// noticing it soon is worth frequent probes.
func (c *Controller) recovering(now time.Time) bool {
	return !c.downAt.IsZero() && now.Sub(c.downAt) <= recoverWindow && c.cur < c.downFrom
}

// probeRate is the rate a probe pads up to now: ramped from what was
// delivered over its first quarter, and held down to that while the
// receiver sees every packet queue. A probe the link carries does not
// queue; one that queues would overflow the link (or a link that just
// fell) long before its judgment, a round trip and a queue later, comes
// back, and lost padding stalls the viewer's frames until it is repaired.
func (c *Controller) probeRate(now time.Time) float64 {
	p := &c.probe
	if c.queueing(now) {
		return p.from
	}
	ramp := c.cfg.ProbeDuration / 4
	f := max(min(float64(now.Sub(p.start))/float64(ramp), 1), 0)
	return p.from + (p.to-p.from)*f
}

// need is what the link must be shown to carry to climb to rung j.
func (c *Controller) need(j int) float64 {
	return float64(c.ladder[j].Bitrate) * (1 + c.cfg.UpMargin)
}
