package media

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Payloads as an H.264 RTP packetizer makes them.
var (
	keyPayload   = []byte{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce} // STAP-A: SPS, PPS
	deltaPayload = []byte{0x41, 0x9a, 0x01, 0x02}                               // non-IDR slice
)

func videoHub() *Hub { return NewHub(DefaultHubConfig(Video, "H264", 90000)) }

// feed writes n packets from src, a keyframe every gop packets, with the
// source's own numbering starting at seq/ts.
func feed(src *Source, n, gop int, seq uint16, ts uint32) {
	for i := 0; i < n; i++ {
		pl := deltaPayload
		if i%gop == 0 {
			pl = keyPayload
		}
		src.Write(&Packet{SequenceNumber: seq + uint16(i), Timestamp: ts + uint32(i)*3000, Payload: pl})
	}
}

func TestSubscriberStartsOnCachedKeyframe(t *testing.T) {
	h := videoHub()
	defer h.Close()
	feed(h.NewSource(), 25, 10, 100, 0) // keyframes at 0, 10, 20
	s := h.Subscribe()
	got := s.Pop(nil)
	if len(got) != 5 {
		t.Fatalf("primed with %d packets, want the 5 of the current GOP", len(got))
	}
	if !got[0].Packet.Keyframe || got[0].Packet.SequenceNumber != 120 {
		t.Fatalf("first packet seq %d keyframe %v, want 120 keyframe", got[0].Packet.SequenceNumber, got[0].Packet.Keyframe)
	}
}

// TestSubscribeLiveSkipsCachedGOP: a viewer switching rungs starts at the
// next keyframe, never at the cached one (that would go back in time).
func TestSubscribeLiveSkipsCachedGOP(t *testing.T) {
	h := videoHub()
	defer h.Close()
	var asked atomic.Int32
	h.SetKeyframeRequester(func() { asked.Add(1) })
	src := h.NewSource()
	feed(src, 25, 10, 100, 0) // keyframes at 0, 10, 20; a GOP is cached
	s := h.SubscribeLive()
	if got := s.Pop(nil); len(got) != 0 || asked.Load() != 0 {
		t.Fatalf("live subscriber got %d cached packets, %d keyframe requests", len(got), asked.Load())
	}
	for i := range 10 { // five deltas, then a keyframe and four deltas
		pl := deltaPayload
		if i == 5 {
			pl = keyPayload
		}
		src.Write(&Packet{SequenceNumber: 125 + uint16(i), Timestamp: uint32(25+i) * 3000, Payload: pl})
	}
	got := s.Pop(nil)
	if len(got) != 5 || !got[0].Packet.Keyframe || got[0].Packet.SequenceNumber != 130 {
		t.Fatalf("got %d packets from seq %d, want 5 from the keyframe at 130", len(got), got[0].Packet.SequenceNumber)
	}
}

func TestSubscriberWithoutCacheWaitsForKeyframe(t *testing.T) {
	cfg := DefaultHubConfig(Video, "H264", 90000)
	cfg.GOPBytes = 0
	h := NewHub(cfg)
	defer h.Close()
	var asked atomic.Int32
	h.SetKeyframeRequester(func() { asked.Add(1) })
	src := h.NewSource()
	feed(src, 5, 10, 0, 0)
	s := h.Subscribe()
	if asked.Load() != 1 {
		t.Fatalf("subscribing without a cached GOP asked for %d keyframes, want 1", asked.Load())
	}
	feed(src, 3, 100, 5, 15000) // first of these is a keyframe
	got := s.Pop(nil)
	if len(got) != 3 || !got[0].Packet.Keyframe {
		t.Fatalf("got %d packets, first keyframe=%v", len(got), len(got) > 0 && got[0].Packet.Keyframe)
	}
}

func TestSlowSubscriberDropsAloneAndResyncs(t *testing.T) {
	cfg := DefaultHubConfig(Video, "H264", 90000)
	cfg.QueueLen = 64
	h := NewHub(cfg)
	defer h.Close()
	src := h.NewSource()
	feed(src, 1, 1, 0, 0)
	slow, fast := h.Subscribe(), h.Subscribe()
	var fastGot []Entry
	fastGot = fast.Pop(fastGot)
	// 200 packets: the fast subscriber drains as it goes, the slow never.
	for i := 1; i <= 200; i++ {
		pl := deltaPayload
		if i%50 == 0 {
			pl = keyPayload
		}
		src.Write(&Packet{SequenceNumber: uint16(i), Timestamp: uint32(i) * 3000, Payload: pl})
		fastGot = fast.Pop(fastGot)
	}
	if len(fastGot) != 201 || fast.Dropped() != 0 {
		t.Fatalf("fast subscriber got %d of 201, dropped %d", len(fastGot), fast.Dropped())
	}
	for i, e := range fastGot {
		if e.Packet.SequenceNumber != uint16(i) {
			t.Fatalf("fast subscriber packet %d has seq %d", i, e.Packet.SequenceNumber)
		}
	}
	if slow.Dropped() == 0 {
		t.Fatal("slow subscriber dropped nothing")
	}
	got := slow.Pop(nil)
	if len(got) == 0 || !got[0].Packet.Keyframe || !got[0].Resync {
		t.Fatalf("slow subscriber did not restart on a keyframe with Resync: %+v", got[:min(1, len(got))])
	}
	if len(got) > cfg.QueueLen {
		t.Fatalf("slow subscriber queue holds %d > %d", len(got), cfg.QueueLen)
	}
}

func TestNewSourceContinuesNumbering(t *testing.T) {
	h := videoHub()
	defer h.Close()
	a := h.NewSource()
	s := h.Subscribe()
	feed(a, 10, 5, 40000, 1_000_000)
	last := s.Pop(nil)
	lastSeq, lastTS := last[len(last)-1].Packet.SequenceNumber, last[len(last)-1].Packet.Timestamp

	b := h.NewSource()                // takeover: a very different numbering
	feed(a, 3, 100, 40010, 1_030_000) // the old publisher's last gasp
	feed(b, 3, 100, 7, 5)             // starts with a keyframe
	got := s.Pop(nil)
	if len(got) != 3 {
		t.Fatalf("after takeover got %d packets, want the new source's 3 (old source revoked)", len(got))
	}
	first := got[0]
	if !first.Resync || !first.Packet.Keyframe {
		t.Errorf("first packet of new source: resync=%v keyframe=%v", first.Resync, first.Packet.Keyframe)
	}
	if first.Packet.SequenceNumber != lastSeq+1 {
		t.Errorf("seq %d after %d: numbering not continued", first.Packet.SequenceNumber, lastSeq)
	}
	if d := first.Packet.Timestamp - lastTS; d == 0 || d > 90000 {
		t.Errorf("timestamp moved %d ticks across the takeover, want (0, 1 s]", d)
	}
	for i := 1; i < len(got); i++ {
		if got[i].Packet.SequenceNumber != got[i-1].Packet.SequenceNumber+1 {
			t.Errorf("gap inside new source: %d after %d", got[i].Packet.SequenceNumber, got[i-1].Packet.SequenceNumber)
		}
	}
}

func TestVideoSubscribersSkipToNewSourceKeyframe(t *testing.T) {
	h := videoHub()
	defer h.Close()
	a := h.NewSource()
	s := h.Subscribe()
	feed(a, 5, 5, 0, 0)
	s.Pop(nil)
	b := h.NewSource()
	b.Write(&Packet{SequenceNumber: 1, Timestamp: 1, Payload: deltaPayload}) // mid-GOP join of the new source
	if got := s.Pop(nil); len(got) != 0 {
		t.Fatalf("delivered %d non-keyframe packets of the new source", len(got))
	}
	b.Write(&Packet{SequenceNumber: 2, Timestamp: 3001, Payload: keyPayload})
	if got := s.Pop(nil); len(got) != 1 || !got[0].Packet.Keyframe {
		t.Fatal("new source's keyframe not delivered")
	}
}

func TestKeyframeRequestsCoalesced(t *testing.T) {
	h := videoHub()
	defer h.Close()
	var asked atomic.Int32
	h.SetKeyframeRequester(func() { asked.Add(1) })
	for i := 0; i < 1000; i++ {
		h.RequestKeyframe() // a PLI storm from many viewers
	}
	st := h.Stats()
	if asked.Load() != 1 || st.KeyframeRequests != 1 || st.Coalesced != 999 {
		t.Fatalf("1000 requests became %d upstream (stats %+v), want 1", asked.Load(), st)
	}
}

// TestNextKeyframe: the hub tells how far off its next keyframe is from
// the gap between the last two, in media time; it does not guess before
// two keyframes of the current source, nor from a gap timestamps do not
// bear out.
func TestNextKeyframe(t *testing.T) {
	h := videoHub()
	defer h.Close()
	src := h.NewSource()
	// frames writes frames [from, to) of a 30 fps source, a keyframe on
	// each multiple of gop.
	frames := func(src *Source, from, to, gop int) {
		for i := from; i < to; i++ {
			pl := deltaPayload
			if i%gop == 0 {
				pl = keyPayload
			}
			src.Write(&Packet{SequenceNumber: uint16(i), Timestamp: uint32(i) * 3000, Payload: pl})
		}
	}
	frames(src, 0, 25, 30) // one keyframe
	if d, ok := h.NextKeyframe(); ok {
		t.Fatalf("after one keyframe: %v, want unknown", d)
	}
	frames(src, 25, 31, 30) // the second, 1 s later, is the newest frame
	if d, ok := h.NextKeyframe(); !ok || d != time.Second {
		t.Fatalf("on a keyframe of a 1 s GOP: %v %v, want 1s", d, ok)
	}
	frames(src, 31, 36, 30) // 5 frames after it
	if d, ok := h.NextKeyframe(); !ok || d != 25*time.Second/30 {
		t.Fatalf("5 frames after a keyframe of a 1 s GOP: %v %v, want 833ms", d, ok)
	}
	frames(src, 36, 80, 1000) // no keyframe where one was due
	if d, ok := h.NextKeyframe(); !ok || d != 0 {
		t.Fatalf("overdue: %v %v, want 0", d, ok)
	}
	// A new source starts its own clock.
	frames(h.NewSource(), 0, 10, 30)
	if d, ok := h.NextKeyframe(); ok {
		t.Fatalf("after a takeover with one keyframe: %v, want unknown", d)
	}
	// Timestamps that go back do not make a gap of hours.
	a := videoHub()
	defer a.Close()
	as := a.NewSource()
	as.Write(&Packet{SequenceNumber: 1, Timestamp: 1 << 31, Payload: keyPayload})
	as.Write(&Packet{SequenceNumber: 2, Timestamp: 1<<31 + 3000, Payload: deltaPayload})
	as.Write(&Packet{SequenceNumber: 3, Timestamp: 5, Payload: keyPayload})
	if d, ok := a.NextKeyframe(); ok {
		t.Fatalf("after timestamps went back: %v, want unknown", d)
	}
}

func TestRetransmitBuffer(t *testing.T) {
	h := videoHub()
	defer h.Close()
	feed(h.NewSource(), 2000, 30, 65000, 0) // wraps
	start := uint16(65000)
	last := start + 1999
	if p := h.Retransmit(last); p == nil || p.SequenceNumber != last {
		t.Fatal("latest packet not retransmittable")
	}
	if p := h.Retransmit(last - retransmitSlots + 1); p == nil {
		t.Fatal("oldest buffered packet not retransmittable")
	}
	if p := h.Retransmit(last - retransmitSlots); p != nil {
		t.Fatal("packet older than the buffer returned")
	}
}

func TestCloseEndsSubscribers(t *testing.T) {
	h := videoHub()
	s := h.Subscribe()
	h.Close()
	select {
	case <-s.Done():
	case <-time.After(time.Second):
		t.Fatal("subscriber not told the hub closed")
	}
	if h.Subscribe() != nil {
		t.Fatal("subscribed to a closed hub")
	}
	h.NewSource().Write(&Packet{Payload: keyPayload}) // ignored, no panic
}

func TestAudioNeverWaits(t *testing.T) {
	h := NewHub(DefaultHubConfig(Audio, "opus", 48000))
	defer h.Close()
	src := h.NewSource()
	s := h.Subscribe()
	src.Write(&Packet{SequenceNumber: 1, Payload: []byte{0xfc, 1}})
	if got := s.Pop(nil); len(got) != 1 {
		t.Fatalf("audio subscriber got %d packets, want 1", len(got))
	}
}

// BenchmarkHubWrite measures one packet fanned out to N subscribers, each
// drained by its own goroutine as a viewer's writer would be. allocs/op is
// per packet (all subscribers together): the packet itself is made by the
// caller, so the hub's share must be 0.
func BenchmarkHubWrite(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			h := NewHub(DefaultHubConfig(Video, "H264", 90000))
			src := h.NewSource()
			done := make(chan struct{})
			finished := make(chan struct{}, n)
			for i := 0; i < n; i++ {
				s := h.Subscribe()
				go func() {
					buf := make([]Entry, 0, 256)
					for {
						select {
						case <-s.Wake():
							buf = s.Pop(buf[:0])
							clear(buf)
						case <-done:
							finished <- struct{}{}
							return
						}
					}
				}()
			}
			pkts := make([]Packet, 4096)
			for i := range pkts {
				pkts[i].Payload = deltaPayload
				pkts[i].Arrival = time.Now()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p := &pkts[i%len(pkts)]
				p.SequenceNumber, p.Timestamp = uint16(i), uint32(i/10)*3000
				src.Write(p)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/viewer")
			close(done)
			for i := 0; i < n; i++ {
				<-finished
			}
			h.Close()
		})
	}
}

// TestResyncFlagsOnlyTheGap: Resync marks the first packet after a gap and
// no other, also once the ring has wrapped over the slot that carried it.
func TestResyncFlagsOnlyTheGap(t *testing.T) {
	h := NewHub(DefaultHubConfig(Audio, "opus", 48000))
	defer h.Close()
	s := h.Subscribe()
	src := h.NewSource()
	seq := uint16(0)
	write := func(n int) {
		for range n {
			src.Write(&Packet{SequenceNumber: seq, Timestamp: uint32(seq) * 960, Payload: []byte{1}})
			seq++
		}
	}
	flagged := func(es []Entry) (n int) {
		for _, e := range es {
			if e.Resync {
				n++
			}
		}
		return n
	}
	ring := h.Config().QueueLen
	write(ring / 2)
	if got := s.Pop(nil); len(got) != ring/2 || flagged(got) != 0 {
		t.Fatalf("%d packets, %d flagged; want %d, none", len(got), flagged(got), ring/2)
	}
	write(ring + 10) // a full ring: dropped, and the next packet follows a gap
	got := s.Pop(nil)
	if len(got) != 10 || !got[0].Resync || flagged(got) != 1 {
		t.Fatalf("after a gap: %d packets, first flagged %v, %d flagged", len(got), len(got) > 0 && got[0].Resync, flagged(got))
	}
	for range 3 { // over every slot again, the flagged one included
		write(ring - 1)
		if got := s.Pop(nil); len(got) != ring-1 || flagged(got) != 0 {
			t.Fatalf("%d packets, %d flagged after the ring wrapped; want %d, none", len(got), flagged(got), ring-1)
		}
	}
}
