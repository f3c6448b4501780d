package h264

import (
	"bytes"
	"testing"

	"github.com/pion/rtp/codecs"
)

var startCode = []byte{0, 0, 0, 1}

// packetize splits Annex-B NAL units with pion's payloader, as a publisher
// does, so the assembler is tested against a packetizer it did not write.
func packetize(mtu uint16, nals ...[]byte) [][]byte {
	var annexB []byte
	for _, n := range nals {
		annexB = append(annexB, 0, 0, 0, 1)
		annexB = append(annexB, n...)
	}
	return (&codecs.H264Payloader{}).Payload(mtu, annexB)
}

func idr(size int) []byte {
	b := bytes.Repeat([]byte{0xa5}, size)
	b[0] = 0x65
	return b
}

func TestAssemblerRoundTrip(t *testing.T) {
	pps := []byte{0x68, 0xcb, 0x83, 0xcb, 0x20}
	frame := [][]byte{sps720pBaseline, pps, idr(5000)}
	pkts := packetize(1200, frame...)
	var a Assembler
	var got *AU
	for i, p := range pkts {
		got = a.Push(uint16(100+i), 9000, i == len(pkts)-1, p)
		if got != nil && i != len(pkts)-1 {
			t.Fatal("unit completed before its marker")
		}
	}
	if got == nil || got.Damaged || !got.Keyframe || got.Timestamp != 9000 {
		t.Fatalf("got %+v", got)
	}
	want := []byte{}
	for _, n := range frame {
		want = append(want, 0, 0, 0, 1)
		want = append(want, n...)
	}
	if !bytes.Equal(got.Data, want) {
		t.Fatalf("rebuilt unit differs: %d bytes, want %d", len(got.Data), len(want))
	}
	// The next unit starts clean.
	next := packetize(1200, []byte{0x41, 0x9a, 0x01})
	if au := a.Push(uint16(100+len(pkts)), 12000, true, next[0]); au == nil || au.Damaged || au.Keyframe {
		t.Fatalf("next unit: %+v", au)
	}
}

func TestAssemblerLoss(t *testing.T) {
	pkts := packetize(1200, idr(5000))
	var a Assembler
	var got *AU
	for i, p := range pkts {
		if i == 2 {
			continue // lost
		}
		got = a.Push(uint16(i), 0, i == len(pkts)-1, p)
	}
	if got == nil || !got.Damaged {
		t.Fatalf("lost fragment not reported: %+v", got)
	}
	// Losing the marker packet: the next unit's first packet says so.
	a = Assembler{}
	a.Push(0, 0, false, pkts[0])
	if au := a.Push(2, 3000, true, []byte{0x41, 1}); au == nil || !au.Damaged {
		t.Fatalf("unit after a lost marker: %+v", au)
	}
}

func TestAssemblerBounds(t *testing.T) {
	a := Assembler{MaxAU: 10_000}
	pkts := packetize(1200, idr(50_000))
	var got *AU
	for i, p := range pkts {
		got = a.Push(uint16(i), 0, i == len(pkts)-1, p)
	}
	if got == nil || !got.Damaged || len(got.Data) > 10_000 {
		t.Fatalf("oversized unit: damaged=%v len=%d", got != nil && got.Damaged, len(got.Data))
	}
}

var assemblerSeeds = [][]byte{
	{0x41, 0x9a},
	{0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce},
	{0x7c, 0x85, 0x88},
	{0x7c, 0x45, 0x88},
	{0x7c, 0x05},
	{0x78, 0xff, 0xff},
	{0x1a, 0x00},
}

func FuzzAssembler(f *testing.F) {
	for _, s := range assemblerSeeds {
		f.Add(s, uint16(1), true)
	}
	f.Fuzz(func(t *testing.T, payload []byte, seq uint16, marker bool) {
		a := Assembler{MaxAU: 1 << 16}
		for i := 0; i < 4; i++ { // the same packet repeatedly, as a flood would
			if au := a.Push(seq+uint16(i), 0, marker && i == 3, payload); au != nil {
				if len(au.Data) > 1<<16 {
					t.Fatalf("unit of %d bytes past the bound", len(au.Data))
				}
				if len(au.Data) > 0 && !bytes.HasPrefix(au.Data, startCode) {
					t.Fatal("unit does not start with a start code")
				}
			}
		}
	})
}
