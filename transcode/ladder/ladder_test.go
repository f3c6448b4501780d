package ladder

import (
	"testing"
	"time"
)

var planCases = []struct {
	name  string
	src   Source
	want  []Rung
	error bool
}{
	{
		name: "1080p OBS High with B-frames and 4 s GOP",
		src:  Source{Codec: "H264", Width: 1920, Height: 1080, BFrames: true, KeyframeInterval: 4 * time.Second},
		want: []Rung{
			{Name: "source", Width: 1920, Height: 1080},
			{Name: "720p", Width: 1280, Height: 720, Bitrate: 2_500_000},
			{Name: "480p", Width: 854, Height: 480, Bitrate: 1_000_000},
			{Name: "360p", Width: 640, Height: 360, Bitrate: 600_000},
			{Name: "240p", Width: 426, Height: 240, Bitrate: 300_000},
		},
	},
	{
		name: "720p browser baseline, 1 s GOP: source passes through, no 720p rung",
		src:  Source{Codec: "H264", Width: 1280, Height: 720, KeyframeInterval: time.Second, Bitrate: 2_000_000},
		want: []Rung{
			{Name: "source", Width: 1280, Height: 720, Bitrate: 2_000_000, Passthrough: true},
			{Name: "480p", Width: 854, Height: 480, Bitrate: 1_000_000},
			{Name: "360p", Width: 640, Height: 360, Bitrate: 600_000},
			{Name: "240p", Width: 426, Height: 240, Bitrate: 300_000},
		},
	},
	{
		name: "portrait phone 720x1280",
		src:  Source{Codec: "H264", Width: 720, Height: 1280, KeyframeInterval: 2 * time.Second},
		want: []Rung{
			{Name: "source", Width: 720, Height: 1280, Passthrough: true},
			{Name: "720p", Width: 406, Height: 720, Bitrate: 2_500_000},
			{Name: "480p", Width: 270, Height: 480, Bitrate: 1_000_000},
			{Name: "360p", Width: 202, Height: 360, Bitrate: 600_000},
			{Name: "240p", Width: 136, Height: 240, Bitrate: 300_000},
		},
	},
	{
		name: "H.265 camera is never passed through",
		src:  Source{Codec: "H265", Width: 640, Height: 360, KeyframeInterval: time.Second},
		want: []Rung{
			{Name: "source", Width: 640, Height: 360},
			{Name: "240p", Width: 426, Height: 240, Bitrate: 300_000},
		},
	},
	{
		name: "unknown keyframe interval is not trusted",
		src:  Source{Codec: "H264", Width: 320, Height: 240},
		want: []Rung{{Name: "source", Width: 320, Height: 240}},
	},
	{name: "no size", src: Source{Codec: "H264"}, error: true},
}

func TestPlan(t *testing.T) {
	for _, c := range planCases {
		got, err := Plan(DefaultRungs(), c.src)
		if c.error != (err != nil) {
			t.Errorf("%s: err %v", c.name, err)
			continue
		}
		if len(got) != len(c.want) {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%s: rung %d = %+v, want %+v", c.name, i, got[i], c.want[i])
			}
			if got[i].Width%2 != 0 || got[i].Height%2 != 0 {
				t.Errorf("%s: rung %s has odd size %dx%d", c.name, got[i].Name, got[i].Width, got[i].Height)
			}
		}
	}
}

func TestValidateRungs(t *testing.T) {
	if err := ValidateRungs(DefaultRungs()); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]RungConfig{
		{{Name: "source", Height: 360, Bitrate: 600_000}},
		{{Name: "a", Height: 360, Bitrate: 600_000}, {Name: "a", Height: 240, Bitrate: 300_000}},
		{{Name: "tiny", Height: 8, Bitrate: 600_000}},
		{{Name: "starved", Height: 360, Bitrate: 1000}},
	} {
		if ValidateRungs(bad) == nil {
			t.Errorf("accepted %+v", bad)
		}
	}
}

// keyframes runs a clock over frames at the given timestamps and returns
// the indexes of the keyframes.
func keyframes(interval int64, pts []int64) []int {
	k := NewKeyClock(interval)
	var out []int
	for i, p := range pts {
		if k.Keyframe(p) {
			out = append(out, i)
		}
	}
	return out
}

func frames(n int, step int64, start int64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = start + int64(i)*step
	}
	return out
}

func TestKeyClock(t *testing.T) {
	cases := []struct {
		name string
		pts  []int64
		want []int
	}{
		{"30 fps, 1 s interval", frames(91, 3000, 0), []int{0, 30, 60, 90}},
		{"29.97 fps lands on the first frame past each second", frames(62, 3003, 0), []int{0, 30, 60}},
		{"arbitrary start", frames(61, 3000, 1_234_567), []int{0, 30, 60}},
		{"stall then resume: one keyframe, grid restarts", append(frames(10, 3000, 0), 500_000, 503_000, 593_000), []int{0, 10, 12}},
		{"timestamps jump backwards (source restart)", append(frames(5, 3000, 900_000), 0, 3000), []int{0, 5}},
	}
	for _, c := range cases {
		got := keyframes(90000, c.pts)
		if len(got) != len(c.want) {
			t.Errorf("%s: keyframes at %v, want %v", c.name, got, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%s: keyframes at %v, want %v", c.name, got, c.want)
				break
			}
		}
	}
}

func TestKeyClockForce(t *testing.T) {
	k := NewKeyClock(90000)
	k.Keyframe(0)
	k.Force()
	if !k.Keyframe(3000) {
		t.Fatal("forced frame is not a keyframe")
	}
	if k.Keyframe(90000) || !k.Keyframe(93000) {
		t.Fatal("grid did not restart from the forced keyframe")
	}
}

func TestUnwrapper(t *testing.T) {
	var u Unwrapper
	seq := []uint32{4294960000, 4294963000, 1704, 4704, 1000} // wraps, then goes back a little
	want := []int64{4294960000, 4294963000, 4294968999 + 1, 4294972000, 4294968296}
	for i, ts := range seq {
		if got := u.Unwrap(ts); got != want[i] {
			t.Errorf("Unwrap(%d) = %d, want %d", ts, got, want[i])
		}
	}
}

func FuzzKeyClock(f *testing.F) {
	f.Add(int64(90000), int64(0), int64(3000), uint8(100))
	f.Fuzz(func(t *testing.T, interval, start, step int64, n uint8) {
		if interval <= 0 || step < 0 || step > 1<<32 || interval > 1<<40 || start > 1<<50 || start < -(1<<50) {
			return
		}
		k := NewKeyClock(interval)
		last := int64(-1 << 62)
		for i := int64(0); i < int64(n); i++ {
			pts := start + i*step
			if k.Keyframe(pts) {
				// Keyframes sit on the first frame at or past each grid
				// point, so on a regular timeline two of them are never
				// closer than an interval less one frame, nor further apart
				// than an interval plus one frame.
				if last != -1<<62 && step > 0 && (pts-last <= interval-step || pts-last >= interval+step) {
					t.Fatalf("keyframes %d and %d are %d apart; interval %d, frame %d", last, pts, pts-last, interval, step)
				}
				last = pts
			}
		}
	})
}
