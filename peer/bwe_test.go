package peer

import (
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/interceptor/pkg/twcc"
	"github.com/pion/rtcp"
	"github.com/pion/srtp/v3"
)

// sentRing is what the hostile-feedback tests and the fuzz target send:
// 200 packets, sequence numbers 65500 to 163 across the wrap.
const (
	ringFirst = 65500
	ringCount = 200
)

func sentBWE(t testing.TB) *BWE {
	t.Helper()
	b := NewBWE()
	for i := 0; i < ringCount; i++ {
		b.Record(uint16(ringFirst+i), 100+i%50)
	}
	return b
}

func run(symbol uint16, n uint16) *rtcp.RunLengthChunk {
	return &rtcp.RunLengthChunk{PacketStatusSymbol: symbol, RunLength: n}
}

func deltas(n int) []*rtcp.RecvDelta {
	d := make([]*rtcp.RecvDelta, n)
	for i := range d {
		d[i] = &rtcp.RecvDelta{Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 250}
	}
	return d
}

// hostile are feedbacks a viewer could send; seed of the fuzz target too.
var hostile = []struct {
	name string
	fb   rtcp.TransportLayerCC
	// want is the packets newly acknowledged; -1 where the wire form
	// reads differently from the struct (pion's Marshal writes what the
	// struct holds, and the statuses then run into the deltas).
	want int
}{
	{"good", rtcp.TransportLayerCC{BaseSequenceNumber: ringFirst, PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 10)}, RecvDeltas: deltas(10)}, 10},
	{"repeated", rtcp.TransportLayerCC{BaseSequenceNumber: ringFirst, PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 10)}, RecvDeltas: deltas(10)}, 0},
	{"overlapping, across the wrap", rtcp.TransportLayerCC{BaseSequenceNumber: ringFirst + 5, PacketStatusCount: 60, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 60)}, RecvDeltas: deltas(60)}, 55},
	{"never sent", rtcp.TransportLayerCC{BaseSequenceNumber: 5000, PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 10)}, RecvDeltas: deltas(10)}, 0},
	{"lost ones", rtcp.TransportLayerCC{BaseSequenceNumber: 30, PacketStatusCount: 20, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketNotReceived, 20)}}, 0},
	{"vector", rtcp.TransportLayerCC{BaseSequenceNumber: 100, PacketStatusCount: 7, PacketChunks: []rtcp.PacketStatusChunk{&rtcp.StatusVectorChunk{SymbolSize: rtcp.TypeTCCSymbolSizeTwoBit, SymbolList: []uint16{1, 0, 2, 0, 1, 3, 1}}}, RecvDeltas: deltas(4)}, 4},
	{"huge count, no deltas", rtcp.TransportLayerCC{BaseSequenceNumber: 0, PacketStatusCount: 65535, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 65535)}}, 0},
	{"huge run, short count", rtcp.TransportLayerCC{BaseSequenceNumber: 110, PacketStatusCount: 5, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 8191)}, RecvDeltas: deltas(5)}, 5},
	{"count beyond chunks", rtcp.TransportLayerCC{BaseSequenceNumber: 120, PacketStatusCount: 50, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 10)}, RecvDeltas: deltas(10)}, -1},
	{"nil chunk", rtcp.TransportLayerCC{BaseSequenceNumber: 120, PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{nil}, RecvDeltas: deltas(10)}, 0},
	{"nil run chunk", rtcp.TransportLayerCC{BaseSequenceNumber: 120, PacketStatusCount: 10, PacketChunks: []rtcp.PacketStatusChunk{(*rtcp.RunLengthChunk)(nil)}}, 0},
	{"nil delta", rtcp.TransportLayerCC{BaseSequenceNumber: 120, PacketStatusCount: 1, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketReceivedSmallDelta, 1)}, RecvDeltas: []*rtcp.RecvDelta{nil}}, 0},
	{"odd symbol", rtcp.TransportLayerCC{BaseSequenceNumber: 120, PacketStatusCount: 3, PacketChunks: []rtcp.PacketStatusChunk{run(7, 3)}}, 0},
	{"empty", rtcp.TransportLayerCC{BaseSequenceNumber: 120}, 0},
}

func TestBWEHostileFeedback(t *testing.T) {
	b := sentBWE(t)
	var calls, got atomic.Int64
	b.OnDelivered(func(_ time.Time, d Delivery) { calls.Add(1); got.Add(int64(d.Packets)) })
	total := 0
	for _, c := range hostile {
		raw, ok := marshalTLCC(c.fb)
		if !ok {
			continue // a struct pion cannot put on the wire
		}
		before := b.Stats().DeliveredPackets
		b.ReadRTCP(time.Now(), raw)
		n := int(b.Stats().DeliveredPackets - before)
		switch {
		case c.want >= 0 && n != c.want:
			t.Errorf("%s: %d packets acknowledged, want %d", c.name, n, c.want)
		case c.want < 0 && n > int(c.fb.PacketStatusCount):
			t.Errorf("%s: %d packets acknowledged of %d declared", c.name, n, c.fb.PacketStatusCount)
		}
		total += n
	}
	st := b.Stats()
	if int(got.Load()) != total || int(st.DeliveredPackets) != total || st.DeliveredPackets > ringCount {
		t.Errorf("callback saw %d packets, stats %d, tests %d", got.Load(), st.DeliveredPackets, total)
	}
	t.Logf("%+v", st)

	// The budget: one read takes at most maxFeedbackStatuses statuses, so a
	// datagram stuffed with feedback costs bounded work.
	big := rtcp.TransportLayerCC{BaseSequenceNumber: 140, PacketStatusCount: 6000, PacketChunks: []rtcp.PacketStatusChunk{run(rtcp.TypeTCCPacketNotReceived, 6000)}}
	raw, ok := marshalTLCC(big)
	if !ok {
		t.Fatal("cannot marshal")
	}
	before := st.Rejected
	b.ReadRTCP(time.Now(), append(raw, raw...))
	if r := b.Stats().Rejected - before; r != 1 {
		t.Errorf("%d feedbacks over budget rejected, want 1", r)
	}
}

// marshalTLCC marshals fb with its header, if pion can (it panics on nil
// chunks and deltas, which only a struct can have).
func marshalTLCC(fb rtcp.TransportLayerCC) (raw []byte, ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	fb.Header = rtcp.Header{Count: rtcp.FormatTCC, Type: rtcp.TypeTransportSpecificFeedback, Length: uint16(fb.MarshalSize()/4 - 1)}
	raw, err := fb.Marshal()
	return raw, err == nil
}

// recorderFeedback is real feedback, as pion's receive side builds it, for
// packets seqs (arrivals 1 ms apart).
func recorderFeedback(seqs ...uint16) []byte {
	r := twcc.NewRecorder(1)
	for i, s := range seqs {
		r.Record(2, s, int64(1_000_000+i*1000))
	}
	var out []byte
	for _, p := range r.BuildFeedbackPacket() {
		raw, err := p.Marshal()
		if err != nil {
			panic(err)
		}
		out = append(out, raw...)
	}
	return out
}

func TestBWERealFeedback(t *testing.T) {
	b := sentBWE(t)
	var seqs []uint16
	for i := 0; i < ringCount; i += 2 { // every other one lost
		seqs = append(seqs, uint16(ringFirst+i))
	}
	raw := recorderFeedback(seqs...)
	b.ReadRTCP(time.Now(), raw)
	st := b.Stats()
	if st.DeliveredPackets != ringCount/2 || st.Feedbacks == 0 || st.Rejected != 0 {
		t.Fatalf("%+v", st)
	}
	b.ReadRTCP(time.Now(), raw) // a duplicate
	if st2 := b.Stats(); st2.DeliveredPackets != st.DeliveredPackets {
		t.Fatalf("a repeated feedback counted again: %d then %d", st.DeliveredPackets, st2.DeliveredPackets)
	}
	if b.TargetBitrate() <= 0 {
		t.Errorf("no target after feedback")
	}
}

// FuzzTWCCFeedback: whatever RTCP a viewer sends, the BWE does not panic,
// never counts more than was sent, and never counts a packet twice.
func FuzzTWCCFeedback(f *testing.F) {
	f.Add(recorderFeedback(ringFirst, ringFirst+1, ringFirst+3, 0, 1, 2, 100))
	f.Add(recorderFeedback(5000, 5001))
	for _, c := range hostile {
		if raw, ok := marshalTLCC(c.fb); ok {
			f.Add(raw)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		b := sentBWE(t)
		var sentBytes uint64
		for i := 0; i < ringCount; i++ {
			sentBytes += uint64(100 + i%50)
		}
		b.ReadRTCP(time.Now(), data)
		st := b.Stats()
		if st.DeliveredPackets > ringCount || st.DeliveredBytes > sentBytes {
			t.Fatalf("delivered %d packets / %d bytes of %d / %d sent", st.DeliveredPackets, st.DeliveredBytes, ringCount, sentBytes)
		}
		b.ReadRTCP(time.Now(), data)
		if again := b.Stats(); again.DeliveredPackets != st.DeliveredPackets {
			t.Fatalf("the same feedback counted twice: %d then %d", st.DeliveredPackets, again.DeliveredPackets)
		}
		_ = b.Stats() // GCC's GetStats on whatever state the input left
	})
}

// BenchmarkBWEFeedback is the cost of one feedback covering 20 packets
// (a 100 ms report at ~2 Mbps): finding it in the RTCP, parsing it,
// acknowledging, and GCC (most of it).
func BenchmarkBWEFeedback(b *testing.B) {
	bwe := NewBWE()
	const per, n = 20, 256
	fbs := make([][]byte, n)
	for i := range fbs {
		seqs := make([]uint16, per)
		for j := range seqs {
			seqs[j] = uint16(i*per + j)
		}
		fbs[i] = recorderFeedback(seqs...)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		k := i % n
		for j := 0; j < per; j++ {
			bwe.Record(uint16(k*per+j), 1200)
		}
		bwe.ReadRTCP(time.Now(), fbs[k])
	}
}

// BenchmarkBWERecord is what recording one packet sent costs the
// transport: one ring slot stored, two counters.
func BenchmarkBWERecord(b *testing.B) {
	bwe := NewBWE()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		bwe.Record(uint16(i), 1220)
	}
}

// BenchmarkBWEFootprint reports what a BWE holds in steady state (500
// packets sent and acknowledged) and the goroutines it adds (none). Run
// with -benchtime=1x.
func BenchmarkBWEFootprint(b *testing.B) {
	const n, packets, per = 100, 500, 25
	fbs := make([][]byte, packets/per)
	for i := range fbs {
		seqs := make([]uint16, per)
		for j := range seqs {
			seqs[j] = uint16(i*per + j)
		}
		fbs[i] = recorderFeedback(seqs...)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	bwes := make([]*BWE, n)
	for i := range bwes {
		bwe := NewBWE()
		bwes[i] = bwe
		for s := 0; s < packets; s++ {
			bwe.Record(uint16(s), 1220)
			if s%per == per-1 {
				bwe.ReadRTCP(time.Now(), fbs[s/per])
			}
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/viewer")
	b.ReportMetric(float64(after.StackInuse-before.StackInuse)/n, "stack-B/viewer")
	b.ReportMetric(float64(runtime.NumGoroutine()-g0)/n, "goroutines/viewer")
	runtime.KeepAlive(bwes)
}

// TestBWELinkSample: the receiver's timing of what feedback acknowledges.
// Packets sent together and received 1 ms apart show no queue and a rate
// of one packet a millisecond; packets received later and 10 ms apart show
// the queue they waited in (their one-way delay above the least seen) and
// the slower rate they came in at, whatever the feedback's arrival.
func TestBWELinkSample(t *testing.T) {
	b := NewBWE()
	if s := b.TakeLinkSample(); s != (LinkSample{}) {
		t.Fatalf("before any feedback: %+v", s)
	}
	const size = 1000
	for seq := range uint16(20) {
		b.Record(seq, size)
	}
	feedback := func(from, to uint16, at func(i int) int64) []byte {
		r := twcc.NewRecorder(1)
		for s := from; s < to; s++ {
			r.Record(2, s, at(int(s)))
		}
		var out []byte
		for _, p := range r.BuildFeedbackPacket() {
			raw, err := p.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, raw...)
		}
		return out
	}
	b.ReadRTCP(time.Now(), feedback(0, 10, func(i int) int64 { return 1_000_000 + int64(i)*1000 }))
	s := b.TakeLinkSample()
	if s.Packets != 10 || s.MinQueue > time.Millisecond || s.LastQueue > 10*time.Millisecond || s.Bytes != 9*size ||
		s.Span < 8*time.Millisecond || s.Span > 10*time.Millisecond {
		t.Errorf("no queue: %+v", s)
	}
	// Sent together, received 1 ms apart: from the third on, each came
	// behind one that had waited a millisecond or more (the third only
	// if the sends were less than a microsecond apart, not under -race),
	// and counts its millisecond.
	if n := s.BusyWire / (size + WireOverhead); s.BusyWire%(size+WireOverhead) != 0 || n < 7 || n > 8 ||
		s.BusySpan != time.Duration(n)*time.Millisecond {
		t.Errorf("a burst through an 8 Mbit/s link: busy %d bytes over %v, want 7 or 8 packets, a millisecond each", s.BusyWire, s.BusySpan)
	}
	b.ReadRTCP(time.Now(), feedback(10, 20, func(i int) int64 { return 1_100_000 + int64(i-10)*10_000 }))
	s = b.TakeLinkSample()
	// The last of the first ten arrived at 1.009 s, the first of these at
	// 1.1 s (waiting about 91 ms more than the base), the last at 1.19 s.
	if s.Packets != 10 || s.MinQueue < 85*time.Millisecond || s.MinQueue > 100*time.Millisecond ||
		s.Bytes != 10*size || s.Span < 175*time.Millisecond || s.Span > 185*time.Millisecond {
		t.Errorf("queued: %+v", s)
	}
	// The queue grew through the sample: the newest packet waited 90 ms
	// more than the first.
	if s.LastQueue < 175*time.Millisecond || s.LastQueue > 190*time.Millisecond {
		t.Errorf("the newest packet's queue: %v, want about 181ms", s.LastQueue)
	}
	// All twenty went out together, so each of these reached the link
	// while the one before it (the ninth had waited 9 ms) was still
	// there: busy, at the gaps the link made, 91 ms then 10 ms each.
	if s.BusyWire != 10*(size+WireOverhead) || s.BusySpan != 181*time.Millisecond {
		t.Errorf("busy: %d bytes over %v, want %d over 181ms", s.BusyWire, s.BusySpan, 10*(size+WireOverhead))
	}
	// Feedback repeating acknowledged packets adds nothing.
	b.ReadRTCP(time.Now(), feedback(10, 20, func(i int) int64 { return 1_100_000 + int64(i-10)*10_000 }))
	if s := b.TakeLinkSample(); s.Packets != 0 {
		t.Errorf("repeated feedback: %+v", s)
	}
}

// TestLinkBusy: only a packet that reached the link while the one sent
// before it was still there counts its arrival gap as the link's time.
func TestLinkBusy(t *testing.T) {
	const ms = 1000 // µs
	cases := []struct {
		name     string
		dep, owd []int64 // per packet, ms
		busy     int     // packets counted busy
		span     int64   // their arrival gaps, ms
	}{
		{"paced below the link, no wait", []int64{0, 10, 20, 30}, []int64{5, 5, 5, 5}, 0, 0},
		{"a slow link's own transmission, 20 ms apart", []int64{0, 20, 40, 60, 80}, []int64{5, 15, 15, 15, 15}, 0, 0},
		{"a burst into a link of a packet a millisecond", []int64{0, 0, 0, 0, 0}, []int64{5, 6, 7, 8, 9}, 3, 3},
		{"paced faster than the link", []int64{0, 2, 4, 6, 8}, []int64{5, 8, 11, 14, 17}, 3, 15},
		// A batch's first packet brings the batch's time, the others only
		// bytes: the train's edges read high, never low.
		{"read in batches of two", []int64{0, 0, 0, 0, 0, 0}, []int64{5, 5, 7, 7, 9, 9}, 3, 2},
	}
	for _, c := range cases {
		var a linkAcc
		for i := range c.dep {
			a.add((c.dep[i]+c.owd[i])*ms, c.dep[i]*ms, 1000)
		}
		if want := c.busy * (1000 + WireOverhead); a.busyWire != want || a.busySpanUs != c.span*ms {
			t.Errorf("%s: busy %d bytes over %d µs, want %d over %d", c.name, a.busyWire, a.busySpanUs, want, c.span*ms)
		}
	}
}

// TestWireOverheadIsGCM: the BWE's wire bytes count the tag of the SRTP
// profile sessions use, AES-GCM's, first in peer/lite's offer.
func TestWireOverheadIsGCM(t *testing.T) {
	tag, err := srtp.ProtectionProfileAeadAes128Gcm.AEADAuthTagLen()
	if err != nil {
		t.Fatal(err)
	}
	if want := 20 + 8 + tag; WireOverhead != want {
		t.Errorf("WireOverhead %d, want IPv4 + UDP + a %d-byte tag = %d", WireOverhead, tag, want)
	}
}
