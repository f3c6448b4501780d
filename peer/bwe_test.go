package peer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/ice/v4"
	"github.com/pion/interceptor"
	"github.com/pion/interceptor/pkg/twcc"
	"github.com/pion/rtcp"
	"github.com/pion/rtp"
	"github.com/pion/sdp/v3"
	"github.com/pion/webrtc/v4"
)

func testEngine(t testing.TB) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.TCP = false
	e, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// clientAPI is a viewer as a browser is one: it sends TWCC feedback (pion's
// twcc.SenderInterceptor, via ConfigureTWCCSender) for the packets that
// carry the extension.
func clientAPI(t testing.TB) *webrtc.API {
	t.Helper()
	m := &webrtc.MediaEngine{}
	if err := m.RegisterCodec(viewerH264(), webrtc.RTPCodecTypeVideo); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterCodec(opus(), webrtc.RTPCodecTypeAudio); err != nil {
		t.Fatal(err)
	}
	ir := &interceptor.Registry{}
	if err := webrtc.ConfigureTWCCSender(m, ir); err != nil {
		t.Fatal(err)
	}
	var se webrtc.SettingEngine
	se.SetNetworkTypes([]webrtc.NetworkType{webrtc.NetworkTypeUDP4})
	se.SetICEMulticastDNSMode(ice.MulticastDNSModeDisabled)
	se.SetIncludeLoopbackCandidate(true)
	se.SetIPFilter(func(ip net.IP) bool { return ip.IsLoopback() })
	se.LoggerFactory = LoggerFactory(slog.New(slog.DiscardHandler))
	return webrtc.NewAPI(webrtc.WithMediaEngine(m), webrtc.WithInterceptorRegistry(ir), webrtc.WithSettingEngine(se))
}

// eventually polls cond every 20 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool) bool {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			return false
		}
	}
	return true
}

// TestBWELoopback sends ~1 Mbps of video and some audio from a NewViewer
// peer to a pion client that sends TWCC feedback: what the feedback
// acknowledges must converge to what the client received, and GCC must
// produce a target that moves.
func TestBWELoopback(t *testing.T) {
	e := testEngine(t)
	server, bwe, err := e.NewViewer()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	var cbBytes, cbPackets, cbCalls atomic.Int64
	bwe.OnDelivered(func(_ time.Time, bytes, packets int) {
		cbBytes.Add(int64(bytes))
		cbPackets.Add(int64(packets))
		cbCalls.Add(1)
	})
	video, err := webrtc.NewTrackLocalStaticRTP(ViewerH264(), "video", "cascade")
	if err != nil {
		t.Fatal(err)
	}
	audio, err := webrtc.NewTrackLocalStaticRTP(ViewerOpus(), "audio", "cascade")
	if err != nil {
		t.Fatal(err)
	}
	var rtcpDone sync.WaitGroup
	for _, tr := range []webrtc.TrackLocal{video, audio} {
		sender, err := server.AddTrack(tr)
		if err != nil {
			t.Fatal(err)
		}
		rtcpDone.Add(1)
		go func() { // as whep's readRTCP: the BWE sees feedback only as it is read
			defer rtcpDone.Done()
			for {
				if _, _, err := sender.ReadRTCP(); err != nil {
					return
				}
			}
		}()
	}

	client, err := clientAPI(t).NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var received atomic.Int64
	var reading sync.WaitGroup
	firstVideo := make(chan struct{})
	var firstOnce sync.Once
	client.OnTrack(func(tr *webrtc.TrackRemote, _ *webrtc.RTPReceiver) {
		reading.Add(1)
		defer reading.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := tr.Read(buf)
			if err != nil {
				return
			}
			received.Add(int64(n))
			if tr.Kind() == webrtc.RTPCodecTypeVideo {
				firstOnce.Do(func() { close(firstVideo) })
			}
		}
	})
	for _, k := range []webrtc.RTPCodecType{webrtc.RTPCodecTypeVideo, webrtc.RTPCodecTypeAudio} {
		if _, err := client.AddTransceiverFromKind(k, webrtc.RTPTransceiverInit{Direction: webrtc.RTPTransceiverDirectionRecvonly}); err != nil {
			t.Fatal(err)
		}
	}
	offer, err := client.CreateOffer(nil)
	if err != nil {
		t.Fatal(err)
	}
	gathered := webrtc.GatheringCompletePromise(client)
	if err := client.SetLocalDescription(offer); err != nil {
		t.Fatal(err)
	}
	<-gathered
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	answer, err := Answer(ctx, server, client.LocalDescription().SDP)
	if err != nil {
		t.Fatal(err)
	}
	if err := client.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeAnswer, SDP: answer}); err != nil {
		t.Fatal(err)
	}

	// ~1 Mbps: a 1200-byte video packet every 10 ms, Opus every 20 ms.
	payload := make([]byte, 1200)
	opusPayload := make([]byte, 120)
	var vseq, aseq uint16
	send := func(i int) {
		vseq++
		if err := video.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: vseq, Timestamp: uint32(i) * 900, Marker: true}, Payload: payload}); err != nil && !errors.Is(err, io.ErrClosedPipe) {
			t.Error(err)
		}
		if i%2 == 0 {
			aseq++
			if err := audio.WriteRTP(&rtp.Packet{Header: rtp.Header{Version: 2, SequenceNumber: aseq, Timestamp: uint32(i) * 480}, Payload: opusPayload}); err != nil && !errors.Is(err, io.ErrClosedPipe) {
				t.Error(err)
			}
		}
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	i := 0
	for started := false; !started; i++ { // until the client hears us
		select {
		case <-firstVideo:
			started = true
		case <-tick.C:
			send(i)
		case <-ctx.Done():
			t.Fatal("no video reached the client")
		}
	}
	seen := map[int]bool{}
	for end := i + 400; i < end; i++ { // 4 s
		<-tick.C
		send(i)
		if r := bwe.TargetBitrate(); r > 0 {
			seen[r] = true
		}
	}
	if !eventually(t, 5*time.Second, func() bool {
		st := bwe.Stats()
		r := uint64(received.Load())
		return st.DeliveredBytes <= r && float64(st.DeliveredBytes) >= 0.97*float64(r)
	}) {
		t.Errorf("delivered %d bytes, the client received %d", bwe.Stats().DeliveredBytes, received.Load())
	}
	st := bwe.Stats()
	t.Logf("sent %d packets / %d bytes; client received %d bytes; delivered %d packets / %d bytes in %d callbacks; %d feedbacks; target %d bps (values seen: %d); ack delay %v; GCC %v",
		st.SentPackets, st.SentBytes, received.Load(), st.DeliveredPackets, st.DeliveredBytes, cbCalls.Load(), st.Feedbacks, st.TargetBitrate, len(seen), st.AckDelay, st.GCC)
	if st.DeliveredBytes > st.SentBytes || st.DeliveredPackets > st.SentPackets {
		t.Errorf("more delivered than sent")
	}
	if float64(st.DeliveredBytes) < 0.95*float64(st.SentBytes) {
		t.Errorf("delivered %d of %d bytes sent on a lossless loopback", st.DeliveredBytes, st.SentBytes)
	}
	// Feedback for the last packets may still be arriving: the callbacks'
	// totals and the stats must agree once it has (read apart, one
	// callback can fall between them).
	if !eventually(t, 2*time.Second, func() bool {
		st := bwe.Stats()
		return cbBytes.Load() == int64(st.DeliveredBytes) && cbPackets.Load() == int64(st.DeliveredPackets)
	}) {
		st := bwe.Stats()
		t.Errorf("OnDelivered totals %d bytes / %d packets, stats %d / %d", cbBytes.Load(), cbPackets.Load(), st.DeliveredBytes, st.DeliveredPackets)
	}
	if st.Rejected != 0 {
		t.Errorf("%d feedbacks rejected", st.Rejected)
	}
	if len(seen) < 2 {
		t.Errorf("GCC's target never changed: %v", seen)
	}

	client.Close()
	server.Close()
	rtcpDone.Wait()
	reading.Wait()
}

// TestNewViewerConcurrent: viewers made at once each get their own BWE,
// and closing each PeerConnection closes its own (goleak in TestMain
// finds any GCC goroutine left behind).
func TestNewViewerConcurrent(t *testing.T) {
	e := testEngine(t)
	const n = 16
	pcs := make([]*webrtc.PeerConnection, n)
	bwes := make([]*BWE, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc, b, err := e.NewViewer()
			if err != nil {
				t.Error(err)
				return
			}
			pcs[i], bwes[i] = pc, b
		}()
	}
	wg.Wait()
	seen := map[*BWE]bool{}
	for i, b := range bwes {
		if b == nil || seen[b] {
			t.Fatalf("viewer %d: BWE %p missing or shared", i, b)
		}
		seen[b] = true
	}
	for _, pc := range pcs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pc.Close()
		}()
	}
	wg.Wait()
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestViewerAnswersTransportCC: a browser sends TWCC feedback only if the
// answer has the extension and the feedback type; NACK and PLI stay.
func TestViewerAnswersTransportCC(t *testing.T) {
	e := testEngine(t)
	offer := readFile(t, "testdata/chrome-whep.sdp")
	newViewer := map[string]func() (*webrtc.PeerConnection, error){
		"NewViewer": func() (*webrtc.PeerConnection, error) { pc, _, err := e.NewViewer(); return pc, err },
		"Viewer":    func() (*webrtc.PeerConnection, error) { return e.Viewer().NewPeerConnection(webrtc.Configuration{}) },
	}
	for name, newPC := range newViewer {
		t.Run(name, func(t *testing.T) {
			pc, err := newPC()
			if err != nil {
				t.Fatal(err)
			}
			defer pc.Close()
			for _, c := range []webrtc.RTPCodecCapability{ViewerH264(), ViewerOpus()} {
				tr, err := webrtc.NewTrackLocalStaticRTP(c, c.MimeType, "cascade")
				if err != nil {
					t.Fatal(err)
				}
				if _, err := pc.AddTrack(tr); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			answer, err := Answer(ctx, pc, offer)
			if err != nil {
				t.Fatal(err)
			}
			var d sdp.SessionDescription
			if err := d.UnmarshalString(answer); err != nil {
				t.Fatal(err)
			}
			if len(d.MediaDescriptions) != 2 {
				t.Fatalf("%d m-sections", len(d.MediaDescriptions))
			}
			for _, m := range d.MediaDescriptions {
				kind := m.MediaName.Media
				if ext := attrs(m, "extmap"); !strings.Contains(ext, "|3 "+sdp.TransportCCURI+"|") {
					t.Errorf("%s: no transport-cc extmap with the offer's ID 3: %s", kind, ext)
				}
				if len(m.MediaName.Formats) == 0 {
					t.Fatalf("%s: no codec answered", kind)
				}
				fb := attrs(m, "rtcp-fb")
				for _, pt := range m.MediaName.Formats {
					want := []string{pt + " transport-cc"}
					if kind == "video" {
						want = append(want, pt+" nack", pt+" nack pli")
					}
					for _, w := range want {
						if !strings.Contains(fb, "|"+w+"|") {
							t.Errorf("%s: no a=rtcp-fb:%s in %q", kind, w, fb)
						}
					}
				}
			}
		})
	}
}

// attrs joins the values of an m-section's attributes called key as
// "|v1|v2|".
func attrs(m *sdp.MediaDescription, key string) string {
	s := "|"
	for _, a := range m.Attributes {
		if a.Key == key {
			s += a.Value + "|"
		}
	}
	return s
}

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
	b.OnDelivered(func(_ time.Time, _, packets int) { calls.Add(1); got.Add(int64(packets)) })
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

// TestBWEWithoutExtension: a stream whose viewer did not negotiate the
// transport-cc extension (Firefox's WHEP offer in wish/testdata has none)
// bypasses the BWE and GCC, and the BWE says it knows nothing.
func TestBWEWithoutExtension(t *testing.T) {
	b := NewBWE()
	w := (&bweInterceptor{b: b}).BindLocalStream(&interceptor.StreamInfo{SSRC: 1}, discard)
	h := rtp.Header{Version: 2, SSRC: 1}
	if _, err := w.Write(&h, make([]byte, 100), nil); err != nil {
		t.Fatal(err)
	}
	if st := b.Stats(); st.SentPackets != 0 || st.TargetBitrate != 0 {
		t.Fatalf("%+v", st)
	}
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

// streamInfo is a stream with the transport-cc extension as ID 3.
func streamInfo(ssrc uint32) *interceptor.StreamInfo {
	return &interceptor.StreamInfo{SSRC: ssrc, RTPHeaderExtensions: []interceptor.RTPHeaderExtension{{URI: sdp.TransportCCURI, ID: 3}}}
}

var discard = interceptor.RTPWriterFunc(func(_ *rtp.Header, p []byte, _ interceptor.Attributes) (int, error) { return len(p), nil })

// BenchmarkBWERecord is what the BWE interceptor itself adds per packet
// written: find the sequence number, store the ring slot, count.
func BenchmarkBWERecord(b *testing.B) {
	bwe := NewBWE()
	var h rtp.Header
	h.SetExtension(3, []byte{0, 0})
	payload := make([]byte, 1200)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		ext := h.GetExtension(3)
		ext[0], ext[1] = byte(i>>8), byte(i)
		bwe.Record(uint16(ext[0])<<8|uint16(ext[1]), h.MarshalSize()+len(payload)+int(h.PaddingSize))
	}
}

// BenchmarkViewerChain is the whole per-packet cost NewViewer adds, as
// whep writes: a fresh header per packet through pion's TWCC stamping, the
// BWE and GCC's send history. The ns and allocs here are mostly pion's.
// "reuse" keeps the header's Extensions array from packet to packet, which
// saves the allocation of SetExtension's append.
func BenchmarkViewerChain(b *testing.B) {
	for _, reuse := range []bool{false, true} {
		name := "fresh"
		if reuse {
			name = "reuse"
		}
		b.Run(name, func(b *testing.B) {
			bwe := NewBWE()
			stamp, _ := twcc.NewHeaderExtensionInterceptor()
			ir := &interceptor.Registry{}
			ir.Add(&bweFactory{b: bwe})
			ir.Add(stamp)
			chain, err := ir.Build("")
			if err != nil {
				b.Fatal(err)
			}
			defer chain.Close()
			w := chain.BindLocalStream(streamInfo(1), discard)
			payload := make([]byte, 1200)
			b.ReportAllocs()
			var h rtp.Header
			for i := 0; b.Loop(); i++ {
				var ext []rtp.Extension
				if reuse {
					ext = h.Extensions[:0]
				}
				h = rtp.Header{Version: 2, SSRC: 1, SequenceNumber: uint16(i), Timestamp: uint32(i), Extensions: ext}
				if _, err := w.Write(&h, payload, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
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

// BenchmarkNewViewerFootprint reports what a BWE holds in steady state
// (500 packets sent and acknowledged, so GCC's send history is full) and
// the goroutines it adds. Run with -benchtime=1x.
func BenchmarkNewViewerFootprint(b *testing.B) {
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
	payload := make([]byte, 1200)
	for i := range bwes {
		bwe := NewBWE()
		bwes[i] = bwe
		w := (&bweInterceptor{b: bwe}).BindLocalStream(streamInfo(1), discard)
		var h rtp.Header
		for s := 0; s < packets; s++ {
			h = rtp.Header{Version: 2, SSRC: 1, SequenceNumber: uint16(s)}
			h.SetExtension(3, []byte{byte(s >> 8), byte(s)})
			w.Write(&h, payload, nil)
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
	if s.Packets != 10 || s.MinQueue > time.Millisecond || s.Bytes != 9*size || s.Span < 8*time.Millisecond || s.Span > 10*time.Millisecond {
		t.Errorf("no queue: %+v", s)
	}
	b.ReadRTCP(time.Now(), feedback(10, 20, func(i int) int64 { return 1_100_000 + int64(i-10)*10_000 }))
	s = b.TakeLinkSample()
	// The last of the first ten arrived at 1.009 s, the first of these at
	// 1.1 s (waiting about 91 ms more than the base), the last at 1.19 s.
	if s.Packets != 10 || s.MinQueue < 85*time.Millisecond || s.MinQueue > 100*time.Millisecond ||
		s.Bytes != 10*size || s.Span < 175*time.Millisecond || s.Span > 185*time.Millisecond {
		t.Errorf("queued: %+v", s)
	}
	// Feedback repeating acknowledged packets adds nothing.
	b.ReadRTCP(time.Now(), feedback(10, 20, func(i int) int64 { return 1_100_000 + int64(i-10)*10_000 }))
	if s := b.TakeLinkSample(); s.Packets != 0 {
		t.Errorf("repeated feedback: %+v", s)
	}
}
