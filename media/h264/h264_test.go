package h264

import (
	"encoding/hex"
	"testing"
)

func unhex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// Real parameter sets, encoded here by Debian's ffmpeg/libx264 from
// testsrc2: constrained baseline 1280x720 and 640x480, and High 1920x1080
// (coded as 1088 rows and cropped).
var (
	sps720pBaseline = unhex("6742c01fd9005005bb0110000003001000000303c0f1832480")
	sps1080pHigh    = unhex("67640028acd940780227e5c044000003000400000300f03c60c658")
	sps480pBaseline = unhex("6742c01ed900a03db0110000030001000003003c0f162e48")
)

var spsCases = []struct {
	name    string
	nal     []byte
	w, h    int
	profile uint8
	ok      bool
}{
	{"x264 baseline 720p", sps720pBaseline, 1280, 720, 66, true},
	{"x264 high 1080p cropped", sps1080pHigh, 1920, 1080, 100, true},
	{"x264 baseline 640x480", sps480pBaseline, 640, 480, 66, true},
	{"truncated", sps720pBaseline[:6], 0, 0, 0, false},
	{"not an SPS", []byte{0x68, 0xce, 0x38, 0x80}, 0, 0, 0, false},
	{"empty", nil, 0, 0, 0, false},
}

func TestParseSPS(t *testing.T) {
	for _, c := range spsCases {
		s, err := ParseSPS(c.nal)
		if c.ok != (err == nil) {
			t.Errorf("%s: err %v", c.name, err)
			continue
		}
		if c.ok && (s.Width != c.w || s.Height != c.h || s.ProfileIDC != c.profile) {
			t.Errorf("%s: got %dx%d profile %d, want %dx%d profile %d", c.name, s.Width, s.Height, s.ProfileIDC, c.w, c.h, c.profile)
		}
	}
}

var inspectCases = []struct {
	name    string
	payload []byte
	want    Contents
	sps     bool // FindSPS finds one
}{
	{"single SPS", sps720pBaseline, Contents{SPS: true}, true},
	{"single IDR", []byte{0x65, 0x88, 0x84}, Contents{IDR: true}, false},
	{"single P slice", []byte{0x41, 0x9a}, Contents{}, false},
	{"STAP-A SPS PPS", append(append([]byte{0x78, 0x00, byte(len(sps720pBaseline))}, sps720pBaseline...), 0x00, 0x04, 0x68, 0xcb, 0x83, 0xcb), Contents{SPS: true, PPS: true}, true},
	{"STAP-A bad size", []byte{0x78, 0xff, 0xff, 0x67}, Contents{}, false},
	{"STAP-A zero size", []byte{0x78, 0x00, 0x00, 0x67}, Contents{}, false},
	{"FU-A IDR start", []byte{0x7c, 0x85, 0x88}, Contents{IDR: true}, false},
	{"FU-A IDR middle", []byte{0x7c, 0x05, 0x88}, Contents{}, false},
	{"FU-A P start", []byte{0x5c, 0x81, 0x9a}, Contents{}, false},
	{"FU-A truncated", []byte{0x7c}, Contents{}, false},
	{"empty", nil, Contents{}, false},
}

func TestInspect(t *testing.T) {
	for _, c := range inspectCases {
		if got := Inspect(c.payload); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
		if got := FindSPS(c.payload) != nil; got != c.sps {
			t.Errorf("%s: FindSPS found=%v, want %v", c.name, got, c.sps)
		}
		if IsKeyframe(c.payload) != c.want.Keyframe() {
			t.Errorf("%s: IsKeyframe disagrees with Inspect", c.name)
		}
	}
}

func FuzzInspect(f *testing.F) {
	for _, c := range inspectCases {
		f.Add(c.payload)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Inspect(b)
		if sps := FindSPS(b); sps != nil {
			if sps[0]&0x1f != NALUSPS {
				t.Fatalf("FindSPS returned a NAL of type %d", sps[0]&0x1f)
			}
			if !c.SPS {
				t.Fatal("FindSPS found an SPS Inspect did not see")
			}
		}
	})
}

func FuzzParseSPS(f *testing.F) {
	for _, c := range spsCases {
		f.Add(c.nal)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSPS(b)
		if err == nil && (s.Width <= 0 || s.Height <= 0 || s.Width > maxDim || s.Height > 2*maxDim) {
			t.Fatalf("accepted SPS with size %dx%d", s.Width, s.Height)
		}
	})
}
