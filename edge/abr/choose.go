// Choosing a rung each Tick: down at once when the link cannot carry the
// rung, up only after a probe (the package doc's Choosing).

package abr

import "time"

// stepDown moves the viewer down when the link, the estimate or loss says
// its rung does not fit, or pauses video below the lowest rung.
func (c *Controller) stepDown(now time.Time, loss float64) {
	if c.cur < 0 {
		c.below = time.Time{}
		return
	}
	rung := float64(c.ladder[c.cur].Bitrate)
	// For a while after a down-switch to the rung a measured capacity
	// carries, the old rung's queue, its losses and their repairs still
	// fill the link, and every measure reads it slower than it is: only
	// a fall well below the new rung takes the viewer further down.
	limit := rung
	if !c.settleAt.IsZero() && now.Sub(c.settleAt) < downSettle {
		limit *= settleShare
	}
	capacity, ok := c.saturation(now, time.Time{})
	if b, busy := c.busyRate(now, time.Time{}); !ok && busy && b < busyShare*limit {
		// Not a standing queue yet, but a burst (a keyframe) timed the
		// link well below the rung: a mild overload that a quiet scene
		// or a token bucket would hide for a second or more.
		capacity, ok = b, true
	}
	if ok && c.sentSeen && capacity < limit && c.sentRate(now) > capacity {
		// The queue stands, or a burst was timed, on a rung the link
		// does not carry, and what is sent exceeds what it carries (in a
		// quiet scene it may only match it: the next busy one overflows
		// it). Go to the best rung the link carries, measured, not GCC's
		// lagging target nor a delivery rate timed by feedback arrival.
		c.gccTrusted = true
		c.congestedAt = now
		c.proven = capacity
		// The measured rate paces what follows (Decision.Capacity): the
		// lower rung's keyframe goes into a queue the old rung filled.
		c.linkCap, c.linkCapAt = capacity, now
		if j := max(c.fit(capacity), c.lowest()); j < c.cur {
			c.below = time.Time{}
			c.down(now, j, ReasonEstimateDrop)
			c.settleAt = now
			return
		}
	}
	if over, known := c.overloaded(now); over && known {
		// The link is behind, whether or not GCC said so: its target
		// may sit at its floor, with no change left to report, or a
		// decrease first taken for a blip is borne out.
		c.gccTrusted = true
		c.congest(now)
	}
	raw := c.raw(now)
	if raw < limit {
		if j := c.fit(raw); j >= 0 && j < c.cur {
			c.below = time.Time{}
			c.down(now, j, ReasonEstimateDrop)
			return
		}
		// Nothing fits. Try the lowest rung before pausing video: a
		// momentary dip should cost resolution, not the picture.
		if lo := c.lowest(); c.cur > lo {
			c.below = now
			c.down(now, lo, ReasonEstimateDrop)
			return
		}
		if c.below.IsZero() {
			c.below = now
		}
		if now.Sub(c.below) >= c.cfg.AudioOnlyHold {
			c.below = time.Time{}
			c.stats.AudioOnly++
			c.down(now, -1, ReasonAudioOnly)
		}
		return
	}
	c.below = time.Time{}
	// Loss steps down one rung at a time and never pauses video: audio
	// suffers the same loss, and congestion bad enough to need pausing
	// also brings the estimate down.
	if loss > c.cfg.LossDown && !c.probe.active {
		if j := c.below1(c.cur); j >= 0 {
			c.congest(now)
			c.down(now, j, ReasonLoss)
		}
	}
}

func (c *Controller) down(now time.Time, j int, reason string) {
	c.cancelProbe()
	c.chain, c.probed = false, false
	if !c.climbedAt.IsZero() && now.Sub(c.climbedAt) < climbWatch {
		c.stats.ProbesFailed++
		c.backOff(now)
	}
	c.climbedAt = time.Time{}
	// The link has just changed: what an old probe measured is stale.
	c.stepFrom = 0
	c.fooled = false
	if !c.recovering(now) || c.cur > c.downFrom {
		c.downFrom = c.cur
	}
	c.downAt = now
	c.set(now, j, reason)
	if c.recovering(now) {
		// A backoff left by probes that met the old rung's ceiling (up
		// to ceilingBackoff) is not the recovery's: from the rung below,
		// the link may come back at any moment.
		if most := now.Add(c.cfg.ProbeBackoffMax); c.nextProbe.After(most) {
			c.nextProbe = most
		}
	}
}

func (c *Controller) stepUp(now time.Time, loss float64) {
	j := c.above(c.cur)
	if j < 0 {
		c.stats.Hold = HoldTop
		return
	}
	if c.switchedAt.Equal(now) {
		c.stats.Hold = HoldSwitch
		return
	}
	need := c.need(j)
	calm := now.Sub(c.switchedAt) >= c.cfg.UpHold &&
		(c.congestedAt.IsZero() || now.Sub(c.congestedAt) >= c.cfg.UpHold)
	// A climb on the estimate alone waits while the link queues: the
	// estimate is about the link before the queue built, which may have
	// just fallen. A probe's success is about the link now. Nor does it
	// take a rung whose full probe failed lately: what was delivered
	// while that probe padded, timed by the feedback's arrival, can read
	// above the rung's need (a 4 Mbit/s viewer of the 20-viewer test
	// climbed to the clip's source, 3.9 Mbit/s with the margin, so).
	failed := j == c.failIdx && now.Before(c.failUntil)
	climbNeed := need
	if c.probed && c.probedIdx == j && c.probedBar >= probedSlack*need {
		climbNeed = min(need, c.probedBar)
	}
	if min(c.raw(now), c.basis(now)) >= climbNeed && (c.probed || calm && !c.queueing(now) && !failed) {
		reason := ReasonEstimateUp
		if c.probed {
			reason = ReasonProbeOK
		}
		if c.cur < 0 {
			reason = ReasonResume
		}
		c.probed = false
		c.climbedAt = now
		c.stats.Hold = HoldSwitch
		c.set(now, j, reason)
		return
	}
	c.probed = false
	if now.Before(c.nextProbe) && c.drainShowsMore(now, need) {
		// Nor does it wait for calm: the congestion that a GCC fall
		// during the failed probe stood for is over.
		c.nextProbe, c.hinted, c.chain = now, true, true
	}
	if hold := c.probeHold(now, calm, loss, need); hold != "" {
		c.stats.Hold = hold
		return
	}
	if c.stepFrom == 0 && !c.linkCapAt.IsZero() && now.Sub(c.linkCapAt) < capTTL && c.linkCap < need {
		// The link was measured below the need lately: check a little
		// above what it carried first, rather than overflow it.
		c.stepFrom, c.stepMul = c.linkCap, checkStep
	}
	from := min(c.delivered.rate(now, congestionWindow), need)
	// The probe may pad on past ProbeDuration, waiting for the
	// acknowledgements of packets sent at its full rate: a feedback delay
	// and one more feedback interval, or two delays if the round trip is
	// only assumed.
	grace := c.lag() + feedbackDelay
	if !c.rttSet {
		grace = 2 * c.lag()
	}
	// A check's success leaves the stair step to build on (probe.go);
	// afterCheck only matters to a full probe.
	p := probe{active: true, idx: j, from: from, to: need * probeOver, bar: need, start: now, end: now.Add(c.cfg.ProbeDuration + grace),
		afterCheck: c.stepFrom > 0 && c.stepMul == stairStep}
	// A check that passed and chained a full probe that failed proved
	// nothing: behind a token bucket (the lab's 0.8 Mbit/s link, 10 kB) a
	// check 15 % over the link passes on the bucket, every time. While the
	// viewer recovers, such checks only delay noticing the link came back
	// (by the check's half second), at no saving, since the full probe
	// they chain overflows the link as often as one sent alone. So the
	// next attempt is the full probe, on the recovery's backoff.
	full := c.fooled && c.recovering(now)
	if t := c.stepFrom * c.stepMul; t > from && t < need && !full {
		p.to, p.bar, p.check = t, checkOK*t, true
	} else if !full && j == c.failIdx && c.cur >= 0 && c.climbed && need > c.failCap && now.Before(c.failUntil) {
		// The same full probe failed at this capacity, and nothing since
		// showed more: it would fail again, and fill the link again. (Not
		// to resume video: that probe is small, and waited for. Nor before
		// the first climb: the start rung is low by design, and the first
		// probes of a join fail on a busy receiver's noise, which held the
		// viewer on 360p for 10 s of a 4 Mbit/s link in 3 of 40 runs on
		// the lab; the backoff still spaces them.)
		c.stats.Hold = HoldFailed
		return
	}
	c.probe = p
	c.chain = false
	c.earlyUsed, c.hinted, c.failGot = c.hinted, false, 0
	c.stats.Probes++
	c.stats.Hold = ""
}

// drainShowsMore reports whether the link came back under a viewer that
// is waiting out the backoff of a probe that failed while it recovers.
// That probe left a queue, which drains at the link's rate: its packets
// come in back to back (busy), and if the link now carries the rung's
// need and well over what the probe got, so does the drain. On the lab's
// 0.8 → 4 Mbit/s link, in 4 runs of 10 with the capped source, a probe
// failed just before the recovery having got 0.75 Mbit/s; the drain
// just after it read 1.4–3.7 (a sample that straddles the recovery mixes
// the two rates), and the next probe waited out the 2 s backoff, or the
// calm after the GCC fall that failed it. The probe this starts still has
// to succeed; at most one probe in a row starts on it, since a receiver
// that reads its packets in a batch can time a short busy run too fast.
func (c *Controller) drainShowsMore(now time.Time, need float64) bool {
	if c.earlyUsed || c.failGot <= 0 || c.sN == 0 || !c.recovering(now) {
		return false
	}
	s := c.sample(0)
	if now.Sub(s.at) > satFresh || !s.at.After(c.probeEnd) || s.busySpan < drainMinSpan {
		return false
	}
	rate := fullRate(s.busyWire, s.busySpan)
	return rate >= need && rate >= drainJump*c.failGot
}

// probeHold says why no probe may start now, or "" if one may.
func (c *Controller) probeHold(now time.Time, calm bool, loss, need float64) string {
	switch {
	case now.Before(c.nextProbe):
		return HoldBackoff
	case !(c.chain || calm):
		return HoldCalm
	case loss > c.cfg.LossProbeMax:
		return HoldLoss
	case c.queueing(now):
		return HoldQueue
	case !c.rembAt.IsZero() && now.Sub(c.rembAt) <= rembTTL && c.remb < need:
		return HoldREMB
	}
	return ""
}
