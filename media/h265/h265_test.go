package h265

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/bluenviron/gortsplib/v5/pkg/format/rtph265"
)

var startCode = []byte{0, 0, 0, 1}

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// Real parameter sets, encoded here by Debian's ffmpeg/libx265 from
// testsrc2 at 320x240.
var (
	vps = unhex("40010c01ffff01600000030090000003000003003c928090")
	sps = unhex("42010101600000030090000003000003003ca00a080f16592a4932bc05a020000003002000000303c1")
	pps = unhex("4401c172b46240")
)

// slice returns a NAL unit of type t with size bytes.
func slice(t byte, size int) []byte {
	b := bytes.Repeat([]byte{0xa5}, size)
	b[0], b[1] = t<<1, 0x01
	return b
}

// packetize splits NAL units with gortsplib's RFC 7798 encoder, as an RTSP
// publisher does, so the assembler is tested against a packetizer it did
// not write.
func packetize(t testing.TB, maxPayload int, nals ...[]byte) [][]byte {
	t.Helper()
	e := &rtph265.Encoder{PayloadType: 96, PayloadMaxSize: maxPayload}
	if err := e.Init(); err != nil {
		t.Fatal(err)
	}
	pkts, err := e.Encode(nals)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, p := range pkts {
		out = append(out, p.Payload)
	}
	return out
}

func annexB(nals ...[]byte) []byte {
	var b []byte
	for _, n := range nals {
		b = append(b, startCode...)
		b = append(b, n...)
	}
	return b
}

var inspectCases = []struct {
	name    string
	payload []byte
	want    Contents
}{
	{"single VPS", vps, Contents{VPS: true}},
	{"single SPS", sps, Contents{SPS: true}},
	{"single IDR", slice(NALUIDRNLP, 10), Contents{IRAP: true}},
	{"single CRA", slice(NALUCRA, 10), Contents{IRAP: true}},
	{"trailing slice", slice(1, 10), Contents{}},
	{"aggregate of parameter sets", []byte{96, 1, 0, 3, 0x40, 1, 0x0c, 0, 3, 0x42, 1, 1, 0, 2, 0x44, 1}, Contents{VPS: true, SPS: true, PPS: true}},
	{"FU start of an IDR", []byte{98, 1, 0x80 | NALUIDRWRADL, 0xaf}, Contents{IRAP: true}},
	{"FU middle of an IDR", []byte{98, 1, NALUIDRWRADL, 0xaf}, Contents{}},
	{"truncated aggregate", []byte{96, 1, 0, 9, 0x40, 1}, Contents{}},
	{"too short", []byte{0x40}, Contents{}},
}

func TestInspect(t *testing.T) {
	for _, c := range inspectCases {
		if got := Inspect(c.payload); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestAssemblerRoundTrip(t *testing.T) {
	frame := [][]byte{vps, sps, pps, slice(NALUIDRWRADL, 5000)}
	pkts := packetize(t, 1200, frame...)
	if len(pkts) < 5 || Type(pkts[0][0]) != NALUAP || Type(pkts[1][0]) != NALUFU {
		t.Fatalf("expected an aggregate then fragments, got %d packets", len(pkts))
	}
	if !IsKeyframe(pkts[0]) || !IsKeyframe(pkts[1]) || IsKeyframe(pkts[2]) {
		t.Fatal("keyframe packets misread")
	}
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
	if want := annexB(frame...); !bytes.Equal(got.Data, want) {
		t.Fatalf("rebuilt unit differs: %d bytes, want %d", len(got.Data), len(want))
	}
	// The next unit starts clean.
	next := packetize(t, 1200, slice(1, 300))
	if au := a.Push(uint16(100+len(pkts)), 12000, true, next[0]); au == nil || au.Damaged || au.Keyframe {
		t.Fatalf("next unit: %+v", au)
	}
}

func TestAssemblerLoss(t *testing.T) {
	pkts := packetize(t, 1200, slice(NALUIDRNLP, 5000))
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
	if au := a.Push(2, 3000, true, slice(1, 4)); au == nil || !au.Damaged {
		t.Fatalf("unit after a lost marker: %+v", au)
	}
	// PACI is not supported.
	a = Assembler{}
	if au := a.Push(0, 0, true, []byte{NALUPACI << 1, 1, 0, 0}); au == nil || !au.Damaged {
		t.Fatalf("PACI: %+v", au)
	}
}

func TestAssemblerBounds(t *testing.T) {
	a := Assembler{MaxAU: 10_000}
	pkts := packetize(t, 1200, slice(NALUIDRNLP, 50_000))
	var got *AU
	for i, p := range pkts {
		got = a.Push(uint16(i), 0, i == len(pkts)-1, p)
	}
	if got == nil || !got.Damaged || len(got.Data) > 10_000 {
		t.Fatalf("oversized unit: damaged=%v len=%d", got != nil && got.Damaged, len(got.Data))
	}
}

var assemblerSeeds = [][]byte{
	slice(1, 4),
	{96, 1, 0, 3, 0x40, 1, 0x0c, 0, 3, 0x42, 1, 1},
	{98, 1, 0x80 | NALUIDRWRADL, 0xaf},
	{98, 1, 0x40 | NALUIDRWRADL, 0xaf},
	{98, 1, 0xc0 | NALUCRA},
	{96, 1, 0xff, 0xff},
	{NALUPACI << 1, 1, 0, 0},
	{0x7e, 1},
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
				if au.Keyframe && !Inspect(payload).Keyframe() {
					t.Fatal("the unit is a keyframe but its only payload is not")
				}
			}
		}
	})
}

func FuzzInspect(f *testing.F) {
	for _, c := range inspectCases {
		f.Add(c.payload)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Inspect(b)
		if len(b) < 2 && c != (Contents{}) {
			t.Fatalf("%+v from %d bytes", c, len(b))
		}
	})
}
