// What the viewer's session feeds the controller: the estimator's target,
// receiver reports, NACKs, REMB, what was sent and acknowledged, and the
// receiver's own timing of the link (see the package doc's Inputs).

package abr

import "time"

// OnEstimate takes the send-side estimator's target, bit/s.
func (c *Controller) OnEstimate(now time.Time, bps float64) {
	v, ok := sanitizeRate(bps)
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	if c.gccSet && (v < c.gcc*gccFall || v > c.gcc*gccLeap) {
		why := ProbeGCCFall
		if v > c.gcc {
			why = ProbeGCCLeap
		}
		c.gccEvent(now, why)
	}
	c.gcc, c.gccSet = v, true
}

// OnREMB takes a receiver's REMB, bit/s. It caps the estimate for five
// seconds. A REMB under 10 kbps (zero included) is ignored, as garbage
// rather than a request to stop: stopping is the player's to ask for.
func (c *Controller) OnREMB(now time.Time, bps float64) {
	v, ok := sanitizeRate(bps)
	if !ok || v < minREMB {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.remb, c.rembAt = v, c.clock(now)
}

// OnLoss takes a receiver report's fraction lost (0–1; the RR's 8-bit
// field divided by 256) for the video SSRC.
func (c *Controller) OnLoss(now time.Time, fraction float64) {
	if !(fraction >= 0) { // also NaN
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rrLoss, c.rrAt = min(fraction, 1), c.clock(now)
}

// OnNACK takes the number of sequence numbers one NACK asked for.
func (c *Controller) OnNACK(now time.Time, n int) {
	if n <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nacks.add(c.clock(now), int64(min(n, maxNACKsPerCall)))
}

// OnDelivered takes bytes and packets the viewer acknowledged (TWCC
// feedback), counting media, RTX and padding alike. Feeding sent rather
// than acknowledged bytes would make every probe look successful.
func (c *Controller) OnDelivered(now time.Time, bytes, packets int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	bytes, packets = min(max(bytes, 0), maxBytesPerCall), min(max(packets, 0), maxPacketsPerCall)
	if bytes > 0 {
		c.delivered.add(now, int64(bytes))
	}
	if packets > 0 {
		c.packets.add(now, int64(packets))
	}
	if bytes > 0 || packets > 0 {
		c.deliveredWire.add(now, int64(bytes)+int64(packets)*packetOverhead)
	}
}

// OnReceived takes the receiver's timing of what one read of feedback
// acknowledged (peer.Delivery): wire bytes (RTP plus IP, UDP and SRTP
// overhead) that came in over span of the receiver's clock. A probe is
// judged on it rather than on the arrival of the feedback, which bunches:
// by its arrival the feedback of a 4 Mbit/s link read 3.9 and passed the
// source's bar at 3.84.
func (c *Controller) OnReceived(now time.Time, wire int, span time.Duration) {
	if wire < 0 || span < 0 || (wire == 0 && span == 0) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.received.add(c.clock(now), int64(min(wire, maxBytesPerCall)), min(span, time.Second))
}

// ProbeBytes is what one packet of size RTP bytes counts for against a
// probe's Bitrate, which is in bytes of full-size RTP packets as the probe
// is judged (carried): a short packet's IP, UDP and SRTP bytes are a larger
// share of what it costs the link. A pacer that counted a padding packet's
// RTP bytes would send 13 % more than the probe asked.
func ProbeBytes(size int) int {
	return (max(size, 0) + packetOverhead) * fullPacket / (fullPacket + packetOverhead)
}

// OnSent takes media bytes written to the viewer (video, audio and
// retransmissions, not padding), as they are written. Comparing it with
// OnDelivered tells an overloaded link from a blip of the estimator, even
// during a probe, since padding is acknowledged but not counted as sent;
// without it, every GCC decrease is taken for overload.
func (c *Controller) OnSent(now time.Time, bytes int) {
	if bytes <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sentSeen = true
	c.sent.add(c.clock(now), int64(min(bytes, maxBytesPerCall)))
}

// LinkSample is what the receiver's clock (TWCC receive times) says about
// the packets acknowledged since the previous sample (peer.BWE's
// TakeLinkSample gives it).
type LinkSample struct {
	// MinQueue is the least queueing delay any of them saw: one-way delay
	// above the least seen lately.
	MinQueue time.Duration
	// Bytes (RTP: header, payload, padding) came in over Span of receive
	// time. WireBytes adds each packet's IP, UDP and SRTP overhead: a link
	// busy with small packets (audio, one-byte padding repairs) carries
	// far fewer RTP bytes than its rate.
	Bytes, WireBytes int
	Span             time.Duration
	// BusyWire wire bytes came in over BusySpan from packets that reached
	// the bottleneck while the one sent before them was still there: the
	// link's rate, measured by the receiver, from a burst (a keyframe)
	// long before a queue stands through a whole sample.
	BusyWire int
	BusySpan time.Duration
}

// OnLinkSample takes a LinkSample. Call it every 50–250 ms while feedback
// flows.
//
// A sample in which every packet queued shows the link busy throughout,
// so its rate is the link's, measured by the receiver: not fooled by
// feedback that arrives late or bunched, and available within a tenth of
// a second of the queue building, where the acknowledged share takes a
// second and only sees overloads of a third or more.
func (c *Controller) OnLinkSample(now time.Time, l LinkSample) {
	if l.MinQueue < 0 || l.Span < 0 || l.Bytes < 0 || l.WireBytes < l.Bytes || l.BusyWire < 0 || l.BusySpan < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.clock(now)
	c.sHead = (c.sHead + 1) % nSamples
	c.sN = min(c.sN+1, nSamples)
	c.samples[c.sHead] = linkSample{at: now, queue: min(l.MinQueue, maxRTT),
		wire: int64(min(l.WireBytes, maxBytesPerCall)), span: min(l.Span, maxRTT),
		busyWire: int64(min(l.BusyWire, maxBytesPerCall)), busySpan: min(l.BusySpan, maxRTT)}
}

// OnRTT takes the viewer's round-trip time (from receiver reports or
// TWCC). It tells how long to wait for a probe's acknowledgements.
func (c *Controller) OnRTT(now time.Time, rtt time.Duration) {
	if rtt < 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clock(now)
	c.rtt, c.rttSet = min(rtt, maxRTT), true
}
