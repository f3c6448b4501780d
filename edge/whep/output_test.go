package whep

import (
	"testing"
	"time"

	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cascade-cdn/cascade/edge/abr"
	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/peer/lite"
)

// TestNACKCountedOnce: a receiver asks again for a packet whose repair is
// on its way (pion on a timer, a browser each round trip): the controller
// is told about each number once, media and padding alike.
func TestNACKCountedOnce(t *testing.T) {
	o := testOutput(discardWriter{})
	pl := []byte{0x41}
	for i := range uint16(10) {
		if err := o.send(media.Entry{Packet: &media.Packet{SequenceNumber: 100 + i, Payload: pl}}); err != nil {
			t.Fatal(err)
		}
	}
	o.padding(3 * padCost) // numbers 110–112
	var h rtp.Header
	for range 3 {
		for _, seq := range []uint16{101, 105, 111} {
			// Padding is filled, not resent (and counted as such).
			if _, _, filled := o.lookup(seq, &h); (filled == fillPadding) != (seq == 111) {
				t.Fatalf("NACK for %d: filled %d", seq, filled)
			}
		}
	}
	o.lookup(4000, &h) // never sent: not counted
	if n := o.nacked.Load(); n != 3 {
		t.Errorf("%d NACKed numbers counted, want 3", n)
	}
}

// sizeWriter adds up what each packet costs a probe, by its size as the
// transport sets its transport-wide number (twccWriter).
type sizeWriter struct {
	twccWriter
	cost, packets *int
}

func (w sizeWriter) WriteRTP(tr *lite.Track, h *rtp.Header, payload []byte) error {
	if err := w.twccWriter.WriteRTP(tr, h, payload); err != nil {
		return err
	}
	*w.cost += abr.ProbeBytes(h.MarshalSize() + len(payload))
	*w.packets++
	return nil
}

// TestPaddingCost: padding sent for a probe costs the link what the probe
// asked, counted as the controller judges it (abr.ProbeBytes of each
// packet as sent, transport-wide number included). Counted by its RTP bytes,
// it cost the link 13 % more, and a probe for a rung the link carried
// filled it.
func TestPaddingCost(t *testing.T) {
	var cost, packets int
	o := testOutput(sizeWriter{twccWriter{ext: []byte{0, 1}}, &cost, &packets})
	if err := o.send(media.Entry{Packet: &media.Packet{SequenceNumber: 1, Payload: []byte{0x41}}}); err != nil {
		t.Fatal(err)
	}
	cost, packets = 0, 0
	const want = 10_000
	done := o.padding(want)
	if packets == 0 || done != cost || cost < want || cost >= want+padCost {
		t.Errorf("padding for %d bytes: %d packets costing %d, counted as %d", want, packets, cost, done)
	}
}

// TestPacing: video leaves at the pace after a burst of paceBurst bytes,
// and a batch too large to pace within paceSpan goes faster.
func TestPacing(t *testing.T) {
	o := testOutput(discardWriter{})
	o.pace = 250_000 // 2 Mbps
	const n, size = 50, 1000
	batch := make([]media.Entry, n)
	for i := range batch {
		batch[i] = media.Entry{Packet: &media.Packet{Payload: make([]byte, size-12)}}
	}
	rate := o.batchRate(batch)
	if rate != o.pace {
		t.Fatalf("rate %d for 50 kB, want the pace %d", rate, o.pace)
	}
	start := time.Now()
	for i := range n {
		o.wait(i, size, rate)
	}
	// (50 kB − the 12 kB burst) at 250 kB/s is 152 ms.
	if d := time.Since(start); d < 120*time.Millisecond || d > 600*time.Millisecond {
		t.Errorf("50 kB paced at 2 Mbps took %v, want about 152ms", d)
	}
	big := make([]media.Entry, 500) // 500 kB: 2 s at the pace
	for i := range big {
		big[i] = batch[0]
	}
	if r := o.batchRate(big); r != 500*size*4 {
		t.Errorf("rate %d for 500 kB, want it sent within paceSpan (%d)", r, 500*size*4)
	}
	o.kind = "audio"
	if r := o.batchRate(batch); r != 0 {
		t.Errorf("audio paced at %d", r)
	}
}

// TestPauseEnd: a pacer's pause lasts at least what it asked for, at most
// a grid step more, and ends on the grid every viewer shares, so that
// pauses asked for at different instants end together.
func TestPauseEnd(t *testing.T) {
	base := time.Date(2026, 12, 7, 2, 0, 0, 0, time.UTC)
	for _, c := range []struct{ at, d time.Duration }{
		{0, 8 * time.Millisecond},
		{1234567, 8 * time.Millisecond},
		{3 * time.Millisecond, 0},
		{5 * time.Millisecond, 5 * time.Millisecond},
		{999999999, maxPaceSleep},
	} {
		now := base.Add(c.at)
		end := pauseEnd(now, c.d)
		if end.Before(now.Add(c.d)) || end.Sub(now) > c.d+paceGrid {
			t.Errorf("pause of %v at +%v ends after %v", c.d, c.at, end.Sub(now))
		}
		if end.UnixNano()%int64(paceGrid) != 0 {
			t.Errorf("pause of %v at +%v ends off the grid, at %v", c.d, c.at, end)
		}
	}
	// Two viewers: one asks for 9 ms at +0.5 ms, the other for 6 ms at +3 ms.
	if a, b := pauseEnd(base.Add(500*time.Microsecond), 9*time.Millisecond), pauseEnd(base.Add(3*time.Millisecond), 6*time.Millisecond); !a.Equal(b) {
		t.Errorf("pauses ending within one grid step end apart: %v and %v", a, b)
	}
}

// TestRTTFromReport: a receiver report answering a sender report gives the
// round trip less the receiver's hold; no answer, a negative or an absurd
// result gives none.
func TestRTTFromReport(t *testing.T) {
	sent := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	lsr := uint32(ntpTime(sent) >> 16)
	hold := uint32(50 * 65536 / 1000) // 50 ms
	rtt, ok := rttFromReport(sent.Add(130*time.Millisecond), lsr, hold)
	if !ok || rtt < 79*time.Millisecond || rtt > 81*time.Millisecond {
		t.Errorf("rtt %v %v, want 80ms", rtt, ok)
	}
	for _, c := range []struct {
		name      string
		at        time.Time
		lsr, dlsr uint32
	}{
		{"no sender report answered", sent.Add(time.Second), 0, 0},
		{"held longer than the round trip", sent.Add(10 * time.Millisecond), lsr, hold},
		{"older than a plausible round trip", sent.Add(time.Minute), lsr, 0},
	} {
		if rtt, ok := rttFromReport(c.at, c.lsr, c.dlsr); ok {
			t.Errorf("%s: rtt %v", c.name, rtt)
		}
	}
}

// TestPadTrack: a probe's padding rides the audio once it flows and the
// viewer counts audio in its transport-wide feedback; otherwise the video.
func TestPadTrack(t *testing.T) {
	video := &output{begun: true, track: &track{tr: &lite.Track{Kind: "video", TWCC: true}}}
	for _, c := range []struct {
		name        string
		audio       *output
		wantOnAudio bool
	}{
		{"audio counted", &output{begun: true, track: &track{tr: &lite.Track{Kind: "audio", TWCC: true}}}, true},
		{"audio not begun", &output{track: &track{tr: &lite.Track{Kind: "audio", TWCC: true}}}, false},
		{"audio not in the feedback", &output{begun: true, track: &track{tr: &lite.Track{Kind: "audio"}}}, false},
		{"no audio", nil, false},
	} {
		s := &session{video: video, audio: c.audio}
		if got := s.padTrack(); (got == c.audio && got != nil) != c.wantOnAudio || got == nil {
			t.Errorf("%s: padding on %v", c.name, got.track.tr.Kind)
		}
	}
}

// sentKeyframe returns an output that has sent one keyframe packet, hub
// number 7, as the viewer's first number, through w.
func sentKeyframe(t *testing.T, w rtpWriter) *output {
	t.Helper()
	o := testOutput(w)
	src := o.hub.NewSource()
	o.sub = o.hub.Subscribe()
	src.Write(&media.Packet{SequenceNumber: 7, Marker: true, Keyframe: true, Payload: []byte{0x65, 1}})
	if _, n, err := o.drain(nil); err != nil || n == 0 {
		t.Fatalf("drain: %v, %d bytes sent", err, n)
	}
	return o
}

// TestNACKFillsCounted: a viewer's NACK for lost padding is answered with
// padding and counted as a fill, by the session that reads the NACK; one
// for media is resent and counted as a retransmission.
func TestNACKFillsCounted(t *testing.T) {
	w := &seqTSWriter{}
	o := sentKeyframe(t, w)
	defer o.close()
	o.padding(2 * padCost) // the viewer's numbers 8 and 9 (its first took the media's)
	counter := func(name string) prometheus.Counter { return prometheus.NewCounter(prometheus.CounterOpts{Name: name}) }
	s := &session{e: &Endpoint{}, video: o, rc: rtcpCounters{nacks: counter("n"), retransmits: counter("r"), plis: counter("p"),
		fills: [...]prometheus.Counter{fillPadding: counter("fp"), fillLeft: counter("fl")}}}
	raw, err := (&rtcp.TransportLayerNack{MediaSSRC: 1, Nacks: []rtcp.NackPair{{PacketID: 7, LostPackets: 0b11}}}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	w.hdrs = w.hdrs[:0]
	budget := maxRetransmitsPerReport
	if !s.onRTCP(time.Now(), raw, &budget) {
		t.Fatal("NACK not understood")
	}
	for name, c := range map[string]struct {
		got  prometheus.Counter
		want float64
	}{"nacked": {s.rc.nacks, 3}, "resent": {s.rc.retransmits, 1}, "filled padding": {s.rc.fills[fillPadding], 2}, "filled rung left": {s.rc.fills[fillLeft], 0}} {
		if got := testutil.ToFloat64(c.got); got != c.want {
			t.Errorf("%s: %v, want %v", name, got, c.want)
		}
	}
	if len(w.hdrs) != 3 || w.hdrs[0].Padding || !w.hdrs[1].Padding || !w.hdrs[2].Padding {
		t.Errorf("wrote %+v, want the media then two padding packets", w.hdrs)
	}
}

// TestNACKAnsweredOncePerRoundTrip: a number asked for again before a
// round trip has passed is not answered again, whether its answer was a
// resend or a fill; a copy would only fill the queue that delays the
// first, and the receiver's replay check drops it.
func TestNACKAnsweredOncePerRoundTrip(t *testing.T) {
	w := &seqTSWriter{}
	o := sentKeyframe(t, w)
	defer o.close()
	o.padding(padCost) // the viewer's number 8
	o.rtxHold.Store(int64(10 * time.Second))
	var h rtp.Header
	ask := func(round string, wantResend, wantFill bool) {
		t.Helper()
		w.hdrs = w.hdrs[:0]
		if p, _, filled := o.lookup(7, &h); (p != nil) != wantResend || filled != fillNone {
			t.Errorf("%s: media asked for: resent %v filled %d, want resent %v", round, p != nil, filled, wantResend)
		}
		if _, _, filled := o.lookup(8, &h); (filled == fillPadding) != wantFill {
			t.Errorf("%s: padding asked for: filled %d, want filled %v", round, filled, wantFill)
		}
		if n := len(w.hdrs); wantFill != (n == 1) {
			t.Errorf("%s: %d packets written", round, n)
		}
	}
	ask("first", true, true)
	ask("again within the round trip", false, false)
	o.rtxHold.Store(0)
	ask("after the round trip", true, true)
}

// delayBWE is an estimator whose feedback takes delay to come back.
type delayBWE struct{ delay time.Duration }

func (*delayBWE) TargetBitrate() int        { return 1e6 }
func (b *delayBWE) AckDelay() time.Duration { return b.delay }

// TestRepairHoldFollowsFeedback: each tick, a repaired number is held for
// the feedback's current delay (within 20–500 ms), on video and audio
// alike: a queue that builds in a tenth of a second must not meet the
// hold of the link before it.
func TestRepairHoldFollowsFeedback(t *testing.T) {
	b := &delayBWE{delay: 60 * time.Millisecond}
	s := &session{bwe: b, video: testOutput(discardWriter{}), audio: testOutput(discardWriter{})}
	defer s.video.close()
	defer s.audio.close()
	a := &viewerABR{}
	now := time.Now()
	for i, want := range []struct{ delay, hold time.Duration }{
		{60 * time.Millisecond, 60 * time.Millisecond},
		{310 * time.Millisecond, 310 * time.Millisecond}, // the next tick: a queue built
		{time.Millisecond, 20 * time.Millisecond},
		{2 * time.Second, 500 * time.Millisecond},
	} {
		b.delay = want.delay
		a.tick(now.Add(time.Duration(i)*abrTick), s)
		for name, o := range map[string]*output{"video": s.video, "audio": s.audio} {
			if got := time.Duration(o.rtxHold.Load()); got != want.hold {
				t.Errorf("feedback delayed %v: %s repairs held %v, want %v", want.delay, name, got, want.hold)
			}
		}
	}
}

// TestVideoHeldWhileQueueDrains: no video goes before the drain hold a
// congestion down-switch set ends; audio is not held.
func TestVideoHeldWhileQueueDrains(t *testing.T) {
	vw, aw := &captureWriter{}, &captureWriter{}
	s := &session{video: testOutput(vw), audio: testOutput(aw)}
	s.abr.firstFrame = true
	for _, o := range []*output{s.video, s.audio} {
		defer o.close()
		o.sub = o.hub.Subscribe()
		o.hub.NewSource().Write(&media.Packet{SequenceNumber: 7, Marker: true, Keyframe: true, Payload: []byte{0x65, 1}})
	}
	var w writer
	s.video.holdUntil = time.Now().Add(time.Hour)
	if !s.serve(&w) || len(vw.seqs) != 0 || len(aw.seqs) != 1 {
		t.Fatalf("during the hold: %d video and %d audio packets sent, want 0 and 1", len(vw.seqs), len(aw.seqs))
	}
	s.video.holdUntil = time.Time{}
	if !s.serve(&w) || len(vw.seqs) != 1 {
		t.Fatalf("after the hold: %d video packets sent, want 1", len(vw.seqs))
	}
}

// TestDrainHold: the hold is the queue the last link sample's newest
// packet met, up to maxDrainHold, and none once that sample is stale.
func TestDrainHold(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		queue, age, want time.Duration
	}{
		{180 * time.Millisecond, 50 * time.Millisecond, 180 * time.Millisecond},
		{2 * time.Second, 0, maxDrainHold},
		{180 * time.Millisecond, time.Second, 0},
	} {
		a := &viewerABR{queue: c.queue, queueAt: now.Add(-c.age)}
		if got := a.drainHold(now); got != c.want {
			t.Errorf("queue %v, sampled %v ago: hold %v, want %v", c.queue, c.age, got, c.want)
		}
	}
	if got := (&viewerABR{}).drainHold(now); got != 0 {
		t.Errorf("no sample: hold %v", got)
	}
}

// TestOverheadsAgree: the controller counts each packet's IP, UDP and SRTP
// bytes as the BWE's link samples do (abr stays free of peer's imports,
// so each has its constant).
func TestOverheadsAgree(t *testing.T) {
	if got, want := abr.ProbeBytes(0), peer.WireOverhead*1200/(1200+peer.WireOverhead); got != want {
		t.Errorf("abr counts %d bytes of overhead per full-size packet, peer %d", got, want)
	}
}
