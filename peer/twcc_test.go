package peer

import (
	"testing"

	"github.com/pion/rtcp"
)

type recvd struct {
	seq  uint16
	recv int64
}

// pionReceived lists what pion's parse of a feedback says was received,
// with receive times as the BWE computes them.
func pionReceived(fb *rtcp.TransportLayerCC) []recvd {
	var out []recvd
	seq, left, k, recv := fb.BaseSequenceNumber, int(fb.PacketStatusCount), 0, int64(fb.ReferenceTime)*64000
	take := func(sym uint16) {
		if sym == rtcp.TypeTCCPacketReceivedSmallDelta || sym == rtcp.TypeTCCPacketReceivedLargeDelta {
			recv += fb.RecvDeltas[k].Delta
			k++
			out = append(out, recvd{seq, recv})
		}
		seq++
	}
	for _, c := range fb.PacketChunks {
		switch c := c.(type) {
		case *rtcp.RunLengthChunk:
			n := min(int(c.RunLength), left)
			for i := 0; i < n; i++ {
				take(c.PacketStatusSymbol)
			}
			left -= n
		case *rtcp.StatusVectorChunk:
			n := min(len(c.SymbolList), left)
			for _, s := range c.SymbolList[:n] {
				take(s)
			}
			left -= n
		}
	}
	return out
}

// FuzzTWCCParse holds parseTWCC to pion's TransportLayerCC.Unmarshal: the
// same packets accepted, the same packets received at the same times.
func FuzzTWCCParse(f *testing.F) {
	f.Add(recorderFeedback(ringFirst, ringFirst+1, ringFirst+3, 0, 1, 2, 100))
	f.Add(recorderFeedback(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 40, 41, 200, 202, 204))
	for _, c := range hostile {
		if raw, ok := marshalTLCC(c.fb); ok {
			f.Add(raw)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fb, ok := parseTWCC(data)
		var want rtcp.TransportLayerCC
		wantOK := want.Unmarshal(data) == nil
		if ok != wantOK {
			t.Fatalf("parseTWCC ok=%v, pion ok=%v", ok, wantOK)
		}
		if !ok {
			return
		}
		if fb.base != want.BaseSequenceNumber || fb.count != want.PacketStatusCount || fb.ref != want.ReferenceTime {
			t.Fatalf("header %d/%d/%d, pion %d/%d/%d", fb.base, fb.count, fb.ref, want.BaseSequenceNumber, want.PacketStatusCount, want.ReferenceTime)
		}
		var got []recvd
		fb.received(int64(fb.ref)*64000, func(seq uint16, recv int64) { got = append(got, recvd{seq, recv}) })
		exp := pionReceived(&want)
		if len(got) != len(exp) {
			t.Fatalf("%d received, pion %d", len(got), len(exp))
		}
		for i := range got {
			if got[i] != exp[i] {
				t.Fatalf("packet %d: %+v, pion %+v", i, got[i], exp[i])
			}
		}
	})
}

// TestTWCCParseVectors: both kinds of status vector and a large (negative)
// delta, built by pion's own Marshal.
func TestTWCCParseVectors(t *testing.T) {
	fb := rtcp.TransportLayerCC{
		BaseSequenceNumber: 65530, PacketStatusCount: 24, ReferenceTime: 3,
		PacketChunks: []rtcp.PacketStatusChunk{
			&rtcp.StatusVectorChunk{SymbolSize: rtcp.TypeTCCSymbolSizeOneBit, SymbolList: []uint16{1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}},
			&rtcp.StatusVectorChunk{SymbolSize: rtcp.TypeTCCSymbolSizeTwoBit, SymbolList: []uint16{2, 0, 1, 3, 0, 0, 2}},
			run(rtcp.TypeTCCPacketReceivedSmallDelta, 3),
		},
		RecvDeltas: []*rtcp.RecvDelta{
			{Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 250}, {Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 500},
			{Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 0}, {Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 63750},
			{Type: rtcp.TypeTCCPacketReceivedLargeDelta, Delta: -8000}, {Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 250},
			{Type: rtcp.TypeTCCPacketReceivedLargeDelta, Delta: 100000},
			{Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 250}, {Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 250}, {Type: rtcp.TypeTCCPacketReceivedSmallDelta, Delta: 250},
		},
	}
	raw, ok := marshalTLCC(fb)
	if !ok {
		t.Fatal("cannot marshal")
	}
	got, ok := parseTWCC(raw)
	if !ok {
		t.Fatal("not parsed")
	}
	var seqs []uint16
	var last int64
	got.received(int64(got.ref)*64000, func(seq uint16, recv int64) { seqs = append(seqs, seq); last = recv })
	want := []uint16{65530, 65532, 65533, 7, 8, 10, 14, 15, 16, 17}
	if len(seqs) != len(want) {
		t.Fatalf("received %v, want %v", seqs, want)
	}
	for i := range want {
		if seqs[i] != want[i] {
			t.Fatalf("received %v, want %v", seqs, want)
		}
	}
	if wantLast := int64(3*64000 + 250 + 500 + 0 + 63750 - 8000 + 250 + 100000 + 750); last != wantLast {
		t.Errorf("last receive time %d µs, want %d", last, wantLast)
	}
}

// TestRefClockUnwraps: reference times across the 24-bit wrap (every
// 12.4 days of the receiver's clock) stay continuous, either way.
func TestRefClockUnwraps(t *testing.T) {
	var c refClock
	steps := []struct {
		ref  uint32
		want int64 // 64 ms units
	}{{0xfffffe, 0xfffffe}, {0xffffff, 0xffffff}, {0, 0x1000000}, {3, 0x1000003}, {0xfffffd, 0xfffffd}, {1, 0x1000001}}
	for _, s := range steps {
		if got := c.unwrap(s.ref); got != s.want*64000 {
			t.Fatalf("unwrap(%#x) = %d, want %d", s.ref, got/64000, s.want)
		}
	}
}
