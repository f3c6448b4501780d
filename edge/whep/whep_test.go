package whep

import (
	"testing"
	"unsafe"

	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/peer/lite"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// captureWriter records what a bound track writes.
type captureWriter struct{ seqs []uint16 }

func (c *captureWriter) WriteRTP(_ *lite.Track, h *rtp.Header, _ []byte) error {
	c.seqs = append(c.seqs, h.SequenceNumber)
	return nil
}
func (c *captureWriter) Flush() {}

type discardWriter struct{}

func (discardWriter) WriteRTP(*lite.Track, *rtp.Header, []byte) error { return nil }
func (discardWriter) Flush()                                          {}

// twccWriter does to each header what the transport does (it sets the
// transport-wide sequence number, with a payload of its own), then
// discards the packet.
type twccWriter struct{ ext []byte }

func (w twccWriter) WriteRTP(_ *lite.Track, h *rtp.Header, _ []byte) error {
	return h.SetExtension(3, w.ext)
}
func (twccWriter) Flush() {}

func testOutput(w rtpWriter) *output {
	o := newOutput("video", media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000)),
		&track{w: w, tr: &lite.Track{Kind: "video", ClockRate: 90000, SSRC: 1, PT: 102}}, make(chan struct{}, 1))
	o.packets = prometheus.NewCounter(prometheus.CounterOpts{Name: "p"})
	o.bytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "b"})
	return o
}

func TestSendClosesGapsAndMapsNACKsBack(t *testing.T) {
	w := &captureWriter{}
	o := testOutput(w)
	pl := []byte{0x41}
	for _, e := range []media.Entry{
		{Packet: &media.Packet{SequenceNumber: 100, Payload: pl}},
		{Packet: &media.Packet{SequenceNumber: 101, Payload: pl}},
		{Packet: &media.Packet{SequenceNumber: 102, Payload: pl}},
		// the hub skipped 103..499 for this viewer, then resynced at a keyframe
		{Packet: &media.Packet{SequenceNumber: 500, Payload: pl, Keyframe: true}, Resync: true},
		{Packet: &media.Packet{SequenceNumber: 501, Payload: pl}},
		// an upstream loss (no Resync) stays visible so the viewer NACKs it
		{Packet: &media.Packet{SequenceNumber: 503, Payload: pl}},
	} {
		if err := o.send(e); err != nil {
			t.Fatal(err)
		}
	}
	want := []uint16{100, 101, 102, 103, 104, 106}
	for i := range want {
		if w.seqs[i] != want[i] {
			t.Fatalf("viewer seqs %v, want %v", w.seqs, want)
		}
	}
	// NACKs name viewer numbers; retransmission needs the hub's.
	for viewer, hub := range map[uint16]uint16{101: 101, 102: 102, 103: 500, 106: 503} {
		if e, ok := o.where(viewer); !ok || e.hseq != hub || e.hub != o.hub {
			t.Errorf("viewer %d maps to hub seq %d (found %v), want %d", viewer, e.hseq, ok, hub)
		}
	}
	if _, ok := o.where(105); ok {
		t.Error("an upstream loss maps to a packet")
	}
}

func TestCheckOffer(t *testing.T) {
	// A viewer that accepts only a High-profile H.264 cannot be served:
	// egress is always 42e01f.
	high := "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n" +
		"a=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=640032;packetization-mode=1\r\n"
	if _, _, err := checkOffer(high); err == nil {
		t.Error("High-only viewer accepted")
	}
	audioOnly := "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
	if v, a, err := checkOffer(audioOnly); err != nil || v || !a {
		t.Errorf("audio-only viewer: video=%v audio=%v err=%v", v, a, err)
	}
}

// TestViewerSendNoAlloc holds the writer's per-packet path to no
// allocation, with a TWCC extension set on each packet as in pion.
func TestViewerSendNoAlloc(t *testing.T) {
	o := testOutput(twccWriter{ext: []byte{0, 1}})
	p := &media.Packet{SequenceNumber: 1, Payload: make([]byte, 1200)}
	e := media.Entry{Packet: p}
	o.send(e) // the first packet sizes the extension list
	if n := testing.AllocsPerRun(1000, func() {
		p.SequenceNumber++
		o.send(e)
	}); n != 0 {
		t.Errorf("%v allocations per packet, want 0", n)
	}
	o.padding(100) // probe padding takes the same path
	if n := testing.AllocsPerRun(1000, func() { o.padding(100) }); n != 0 {
		t.Errorf("%v allocations per padding packet, want 0", n)
	}
}

// An audio track's ring is shorter than video's; NACKs on either map back
// across the 16-bit wrap of sequence numbers.
func TestSentRingSizes(t *testing.T) {
	hub := media.NewHub(media.DefaultHubConfig(media.Audio, "opus", 48000))
	defer hub.Close()
	a := newOutput("audio", hub, &track{w: discardWriter{}, tr: &lite.Track{Kind: "audio", ClockRate: 48000, SSRC: 2, PT: 111}}, make(chan struct{}, 1))
	v := testOutput(discardWriter{})
	if len(a.ring) != audioRing || len(v.ring) != sentRing {
		t.Fatalf("rings of %d and %d slots, want %d and %d", len(a.ring), len(v.ring), audioRing, sentRing)
	}
	if n := unsafe.Sizeof(sentSlot{}); n != 12 {
		t.Errorf("a slot is %d bytes, want 12", n)
	}
	for _, o := range []*output{a, v} {
		for _, seq := range []uint16{65535, 0, 1} {
			o.ring[o.slot(seq)] = sentSlot{vseq: seq, gen: o.gen, flags: slotValid}
		}
		for _, seq := range []uint16{65535, 0, 1} {
			if e, ok := o.where(seq); !ok || e.vseq != seq {
				t.Errorf("%s: %d maps to %+v", o.kind, seq, e)
			}
		}
	}
}

// BenchmarkViewerSend is the per-viewer, per-packet work of the writer:
// renumbering into the viewer's sequence space and handing the packet to
// pion (here a writer that sets the TWCC header extension, as pion's
// interceptor does, and discards it). It must not allocate: the header's
// extension list is reused from packet to packet.
func BenchmarkViewerSend(b *testing.B) {
	o := testOutput(twccWriter{ext: []byte{0, 1}})
	p := &media.Packet{SequenceNumber: 1, Payload: make([]byte, 1200)}
	e := media.Entry{Packet: p}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p.SequenceNumber = uint16(i)
		o.send(e)
	}
}

var _ rtpWriter = (*captureWriter)(nil)

// seqTSWriter records the header of every packet written.
type seqTSWriter struct{ hdrs []rtp.Header }

func (c *seqTSWriter) WriteRTP(_ *lite.Track, h *rtp.Header, _ []byte) error {
	c.hdrs = append(c.hdrs, *h)
	return nil
}
func (c *seqTSWriter) Flush() {}

// TestSwitchAtKeyframe moves a viewer between two aligned rungs: the old
// rung flows until the new one's keyframe, nothing of the old rung at or
// after that instant is sent, and the viewer's sequence numbers and
// timestamps stay continuous.
func TestSwitchAtKeyframe(t *testing.T) {
	w := &seqTSWriter{}
	o := testOutput(w)
	hi, lo := o.hub, media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000))
	defer hi.Close()
	defer lo.Close()
	o.name = "720p"
	o.sub = hi.Subscribe()
	key := []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce}
	delta := []byte{0x41, 0x9a}
	hsrc, lsrc := hi.NewSource(), lo.NewSource()
	// Two rungs of one source: same timestamps, their own numbering, a
	// keyframe every 4 frames.
	frame := func(i int) {
		pl := delta
		if i%4 == 0 {
			pl = key
		}
		hsrc.Write(&media.Packet{SequenceNumber: uint16(1000 + i), Timestamp: uint32(i * 3000), Marker: true, Payload: pl})
		lsrc.Write(&media.Packet{SequenceNumber: uint16(50 + i), Timestamp: uint32(i * 3000), Marker: true, Payload: pl})
	}
	var buf []media.Entry
	for i := range 6 {
		frame(i)
	}
	buf, _, _ = o.drain(buf)
	o.prepare(lo, "360p", false)
	frame(6)
	frame(7)
	if _, switched, _, _ := o.trySwitch(buf); switched {
		t.Fatal("switched before the low rung's keyframe")
	}
	buf, _, _ = o.drain(buf) // the high rung keeps flowing meanwhile
	frame(8)                 // keyframe on both
	buf, switched, _, err := o.trySwitch(buf)
	if err != nil || !switched || o.name != "360p" || o.current() != lo {
		t.Fatalf("switched=%v err=%v now on %s", switched, err, o.name)
	}
	frame(9)
	o.drain(buf)
	if len(w.hdrs) != 10 {
		t.Fatalf("%d packets sent, want 10 (frames 0..9 once each)", len(w.hdrs))
	}
	for i, h := range w.hdrs {
		if h.SequenceNumber != uint16(1000+i) || h.Timestamp != uint32(i*3000) {
			t.Fatalf("packet %d: seq %d ts %d, want %d and %d", i, h.SequenceNumber, h.Timestamp, 1000+i, i*3000)
		}
	}
	// A NACK for the first low-rung packet finds it in the low rung.
	if e, ok := o.where(1008); !ok || e.hub != lo || e.hseq != 58 {
		t.Fatalf("viewer 1008 maps to %+v", e)
	}
	var h rtp.Header
	if p, _, _ := o.lookup(1008, &h); p == nil || p.SequenceNumber != 58 {
		t.Fatalf("a NACK for 1008 is answered with %+v, want the low rung's 58", p)
	}
	// One for a packet of the rung left is filled with padding at its
	// number and timestamp: the new rung's keyframe went first, and the
	// old frame is of no use to a decoder that starts there.
	w.hdrs = w.hdrs[:0]
	if p, _, filled := o.lookup(1005, &h); p != nil || filled != fillLeft {
		t.Fatalf("a NACK for the rung left is answered with %+v, filled %d (want nil, fillLeft)", p, filled)
	}
	if len(w.hdrs) != 1 || !w.hdrs[0].Padding || w.hdrs[0].SequenceNumber != 1005 || w.hdrs[0].Timestamp != 5*3000 {
		t.Fatalf("a NACK for the rung left wrote %+v, want one padding packet, seq 1005, ts 15000", w.hdrs)
	}
	o.close()
}

// TestSentGenerations: a slot names its hub by generation; once eight
// switches have reused its generation's place, a NACK for it finds nothing
// rather than another rung's packet.
func TestSentGenerations(t *testing.T) {
	o := testOutput(discardWriter{})
	if err := o.send(media.Entry{Packet: &media.Packet{SequenceNumber: 7, Payload: []byte{0x41}}}); err != nil {
		t.Fatal(err)
	}
	if e, ok := o.where(7); !ok || e.hub != o.hub || e.hseq != 7 {
		t.Fatalf("before any switch: %+v %v", e, ok)
	}
	other := media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000))
	defer other.Close()
	for range genRing {
		o.mu.Lock()
		o.gen++
		o.gens[o.gen%genRing] = hubGen{hub: other, gen: o.gen}
		o.mu.Unlock()
	}
	if e, ok := o.where(7); ok || e.hub != nil {
		t.Fatalf("after %d switches the slot still maps to %p", genRing, e.hub)
	}
}

// TestKeyframeAsk: a switch down or a resume asks the source for an early
// keyframe; a climb asks only when the target rung's next keyframe, by
// its clock, is more than climbKeyWait away.
func TestKeyframeAsk(t *testing.T) {
	h := media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000))
	defer h.Close()
	src := h.NewSource()
	key := []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce}
	delta := []byte{0x41, 0x9a}
	frame := func(i int) { // 30 fps, a keyframe each second
		pl := delta
		if i%30 == 0 {
			pl = key
		}
		src.Write(&media.Packet{SequenceNumber: uint16(i), Timestamp: uint32(i * 3000), Marker: true, Payload: pl})
	}
	frame(0)
	if got := keyframeAsk(h, false, false); got != "" {
		t.Fatalf("a climb asked (%q) with the keyframe clock unknown", got)
	}
	if keyframeAsk(h, false, true) != "down" || keyframeAsk(h, true, false) != "resume" {
		t.Fatal("a down-switch or a resume did not ask")
	}
	for i := 1; i <= 33; i++ {
		frame(i) // the second keyframe at 30, then 3 frames: 900 ms to go
	}
	if keyframeAsk(h, false, false) != "up" {
		t.Fatal("a climb 900 ms before the next keyframe did not ask")
	}
	for i := 34; i <= 53; i++ {
		frame(i) // 7 frames (233 ms) to go
	}
	if keyframeAsk(h, false, false) != "" {
		t.Fatal("a climb 233 ms before the next keyframe asked")
	}
}
