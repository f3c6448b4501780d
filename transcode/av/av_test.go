package av

import (
	"bytes"
	"testing"

	"github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/transcode/ladder"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

type rungOut struct {
	name    string
	w, h    int
	enc     *Encoder
	scale   *Scaler
	aus     [][]byte
	pts     []int64
	idrs    []int64
	spsSeen bool
}

// TestLadderAlignedIDRs decodes a High-profile source with B-frames once,
// scales it to two rungs, encodes each on the shared keyframe clock, then
// decodes every output again: each rung must be constrained baseline at its
// size, keep the source frame timestamps, and carry IDRs (with SPS/PPS) on
// exactly the same frames.
func TestLadderAlignedIDRs(t *testing.T) {
	src, srcPTS := transcodetest.Source(t, "3", "high")
	rungs := []*rungOut{{name: "360p", w: 640, h: 360}, {name: "240p", w: 426, h: 240}}
	for _, r := range rungs {
		var err error
		r.enc, err = NewEncoder(EncoderConfig{Width: r.w, Height: r.h, Bitrate: 600_000, FPS: 30, Preset: "veryfast"})
		if err != nil {
			t.Fatal(err)
		}
		defer r.enc.Close()
		r.scale = NewScaler(r.w, r.h)
		defer r.scale.Close()
	}
	dec, err := NewDecoder("H264")
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()

	clock := ladder.NewKeyClock(90000)
	var clockKeys []int64
	decoded := 0
	for i, au := range src {
		// Source frames carry presentation timestamps; with B-frames they
		// come out of the decoder reordered into presentation order.
		err := dec.Decode(au, srcPTS[i], func(f *Frame) error {
			decoded++
			key := clock.Keyframe(f.PTS())
			if key {
				clockKeys = append(clockKeys, f.PTS())
			}
			for _, r := range rungs {
				sf, err := r.scale.Scale(f)
				if err != nil {
					return err
				}
				if err := r.enc.Encode(sf, key, func(p Packet) error {
					r.aus = append(r.aus, append([]byte(nil), p.Data...))
					r.pts = append(r.pts, p.PTS)
					if p.Keyframe {
						r.idrs = append(r.idrs, p.PTS)
					}
					return nil
				}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("AU %d: %v", i, err)
		}
	}
	if decoded < len(src)-5 { // the decoder holds a few frames for reordering
		t.Fatalf("decoded %d of %d source frames", decoded, len(src))
	}
	if len(clockKeys) < 3 {
		t.Fatalf("keyframe clock chose %v over 3 s", clockKeys)
	}
	for _, r := range rungs {
		if len(r.idrs) != len(clockKeys) {
			t.Errorf("%s: IDRs at %v, clock chose %v", r.name, r.idrs, clockKeys)
			continue
		}
		for i := range r.idrs {
			if r.idrs[i] != clockKeys[i] {
				t.Errorf("%s: IDRs at %v, clock chose %v", r.name, r.idrs, clockKeys)
				break
			}
		}
		// At most one frame of encoder delay, no reordering: output
		// timestamps increase strictly.
		if len(r.pts) < decoded-1 {
			t.Errorf("%s: %d packets for %d frames", r.name, len(r.pts), decoded)
		}
		for i := 1; i < len(r.pts); i++ {
			if r.pts[i] <= r.pts[i-1] {
				t.Fatalf("%s: output timestamps not increasing: %d after %d", r.name, r.pts[i], r.pts[i-1])
			}
		}
		checkBitstream(t, r)
	}
}

// checkBitstream parses the rung's own output: SPS/PPS before every IDR,
// constrained baseline at the rung's size, and decodable at that size.
func checkBitstream(t *testing.T, r *rungOut) {
	t.Helper()
	for i, au := range r.aus {
		var sps, pps, idr bool
		for _, n := range transcodetest.NALs(au) {
			switch n[0] & 0x1f {
			case h264.NALUSPS:
				sps = true
				s, err := h264.ParseSPS(n)
				if err != nil {
					t.Fatalf("%s: AU %d: %v", r.name, i, err)
				}
				if s.ProfileIDC != 66 || s.ConstraintSet&0x40 == 0 || s.Width != r.w || s.Height != r.h {
					t.Fatalf("%s: SPS profile %d constraints %#x size %dx%d, want constrained baseline %dx%d",
						r.name, s.ProfileIDC, s.ConstraintSet, s.Width, s.Height, r.w, r.h)
				}
			case h264.NALUPPS:
				pps = true
			case h264.NALUIDR:
				idr = true
			}
		}
		if idr && (!sps || !pps) {
			t.Fatalf("%s: IDR in AU %d without SPS/PPS before it", r.name, i)
		}
	}
	dec, err := NewDecoder("H264")
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	frames := 0
	for i, au := range r.aus {
		if err := dec.Decode(au, r.pts[i], func(f *Frame) error {
			if f.Width() != r.w || f.Height() != r.h {
				t.Fatalf("%s: decoded %dx%d", r.name, f.Width(), f.Height())
			}
			frames++
			return nil
		}); err != nil {
			t.Fatalf("%s: AU %d does not decode: %v", r.name, i, err)
		}
	}
	if frames < len(r.aus)-1 {
		t.Errorf("%s: %d of %d access units decoded to frames", r.name, frames, len(r.aus))
	}
}

func TestDecoderSurvivesGarbage(t *testing.T) {
	dec, err := NewDecoder("H264")
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	for _, au := range [][]byte{
		{0, 0, 0, 1, 0x65, 0xff, 0xff},   // IDR slice with no SPS/PPS
		{0, 0, 0, 1, 0x67, 0x42},         // truncated SPS
		bytes.Repeat([]byte{0xab}, 4096), // noise
		{},                               // empty
	} {
		_ = dec.Decode(au, 0, func(*Frame) error { return nil }) // an error is fine; a crash is not
	}
	// It still decodes a real stream afterwards.
	src, pts := transcodetest.Source(t, "1", "high")
	frames := 0
	for i, au := range src {
		dec.Decode(au, pts[i], func(*Frame) error { frames++; return nil })
	}
	if frames == 0 {
		t.Fatal("decoder did not recover after garbage")
	}
}

// FuzzDecoder feeds hostile access units to libavcodec through the decoder:
// whatever the bytes, an error or frames, never a crash, and real units
// still decode afterwards. Seeds are the first units of a real encode.
func FuzzDecoder(f *testing.F) {
	src, _ := transcodetest.Source(f, "1", "baseline")
	for _, au := range src[:3] {
		f.Add(au)
	}
	dec, err := NewDecoder("H264")
	if err != nil {
		f.Fatal(err)
	}
	defer dec.Close()
	f.Fuzz(func(t *testing.T, au []byte) {
		if len(au) > 1<<20 {
			return
		}
		_ = dec.Decode(au, 0, func(fr *Frame) error {
			if fr.Width() <= 0 || fr.Height() <= 0 {
				t.Fatalf("frame of %dx%d", fr.Width(), fr.Height())
			}
			return nil
		})
	})
}

// TestDecoderH265 decodes a libx265 clip (B-frames, as cameras may send)
// at its size, every frame but the few a reordering decoder holds back.
func TestDecoderH265(t *testing.T) {
	aus, pts, _ := transcodetest.Make(t, transcodetest.Clip{Codec: "H265", Seconds: "1", Size: "640x360"})
	dec, err := NewDecoder("H265")
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	frames := 0
	for i, au := range aus {
		if err := dec.Decode(au, pts[i], func(f *Frame) error {
			if f.Width() != 640 || f.Height() != 360 {
				t.Fatalf("frame %dx%d", f.Width(), f.Height())
			}
			frames++
			return nil
		}); err != nil {
			t.Fatalf("AU %d: %v", i, err)
		}
	}
	if frames < len(aus)-5 {
		t.Fatalf("%d frames from %d access units", frames, len(aus))
	}
	if _, err := NewDecoder("VP8"); err == nil {
		t.Fatal("a VP8 decoder was made")
	}
}

// TestScalerReusesOnlyFreePictures: the scaler writes each picture into
// the last one's memory, but never into a picture someone still holds
// (an encoder that queues frames, say): that one keeps its pixels.
func TestScalerReusesOnlyFreePictures(t *testing.T) {
	src, pts := transcodetest.Source(t, "1", "baseline")
	dec, err := NewDecoder("H264")
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var frames []*Frame
	for i, au := range src[:20] {
		dec.Decode(au, pts[i], func(f *Frame) error {
			frames = append(frames, &Frame{f: f.f.Clone()})
			return nil
		})
	}
	defer func() {
		for _, f := range frames {
			f.Close()
		}
	}()
	s := NewScaler(320, 180)
	defer s.Close()
	first, err := s.Scale(frames[0])
	if err != nil {
		t.Fatal(err)
	}
	held := &Frame{f: first.f.Clone()} // a second reference to the same memory
	defer held.Close()
	want, _ := held.AppendLuma(nil)
	last, err := s.Scale(frames[len(frames)-1])
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := held.AppendLuma(nil); !bytes.Equal(got, want) {
		t.Fatal("the scaler wrote over a picture still held elsewhere")
	}
	if now, _ := last.AppendLuma(nil); bytes.Equal(now, want) {
		t.Fatal("the scaler returned the old picture for a different frame")
	}
	// Identity: a picture already at the size is returned as is.
	s2 := NewScaler(1280, 720)
	defer s2.Close()
	if same, err := s2.Scale(frames[0]); err != nil || same != frames[0] {
		t.Fatalf("scaling to the same size: %v, copy %v", err, same != frames[0])
	}
}
