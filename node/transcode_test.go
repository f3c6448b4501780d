package node

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cascade-cdn/cascade/media/mediatest"
	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// TestWatchTranscodedRendition publishes real 720p H.264 over WHIP with
// the ladder on; a viewer pinned to ?rendition=360p receives video that
// decodes to 640x360 frames, starting on a keyframe, and the API lists
// the rungs. An unknown rendition is a 404 naming the ones there are.
func TestWatchTranscodedRendition(t *testing.T) {
	aus, _ := transcodetest.Source(t, "2", "baseline")
	n := startNode(t, func(c *Config) { c.Transcode.Enabled = true })
	publish(t, n, "live", mediatest.PublisherOptions{AccessUnits: aus, NoAudio: true})

	eventually(t, "ladder planned", 15*time.Second, func() bool {
		s, _ := getStream(t, n, "live")
		return s != nil && len(s["renditions"].([]any)) == 4
	})
	s, _ := getStream(t, n, "live")
	var names []string
	for _, r := range s["renditions"].([]any) {
		m := r.(map[string]any)
		names = append(names, m["name"].(string))
		if m["name"] == "360p" && (m["width"] != float64(640) || m["height"] != float64(360)) {
			t.Errorf("360p rung is %vx%v", m["width"], m["height"])
		}
	}
	if want := []string{"source", "480p", "360p", "240p"}; len(names) != 4 || names[0] != want[0] || names[2] != want[2] {
		t.Fatalf("renditions %v, want %v", names, want)
	}

	_, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{Query: "?rendition=1080p"})
	if se, ok := err.(*mediatest.StatusError); !ok || se.Code != 404 || !containsAll(se.Body, "source", "480p", "360p", "240p") {
		t.Fatalf("unknown rendition: %v, want 404 listing the rungs", err)
	}

	// One viewer pinned to each rung: each gets decodable frames of its
	// rung's size, starting on a keyframe, and all rungs' keyframes fall on
	// the same timestamps.
	sizes := map[string][2]int{"480p": {854, 480}, "360p": {640, 360}, "240p": {426, 240}}
	viewers := map[string]*mediatest.Viewer{}
	for name := range sizes {
		v, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{Query: "?rendition=" + name, KeepAccessUnits: 75})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		viewers[name] = v
	}
	for name, v := range viewers {
		if key, err := v.FirstVideo(ctxT(t, 10*time.Second)); err != nil || !key {
			t.Fatalf("%s: first video packet keyframe=%v err=%v", name, key, err)
		}
	}
	for name, v := range viewers {
		eventually(t, "75 access units on "+name, 20*time.Second, func() bool { return len(v.AccessUnits()) >= 75 })
		want := sizes[name]
		dec, err := av.NewDecoder("H264")
		if err != nil {
			t.Fatal(err)
		}
		frames := 0
		for i, au := range v.AccessUnits() {
			if err := dec.Decode(au, int64(i)*3000, func(f *av.Frame) error {
				if f.Width() != want[0] || f.Height() != want[1] {
					t.Fatalf("%s: decoded %dx%d, want %dx%d", name, f.Width(), f.Height(), want[0], want[1])
				}
				frames++
				return nil
			}); err != nil {
				t.Fatalf("%s: access unit %d: %v", name, i, err)
			}
		}
		dec.Close()
		if frames < 70 {
			t.Fatalf("%s: %d frames decoded", name, frames)
		}
	}
	checkAlignedKeyframes(t, viewers)

	// A viewer that names no rendition gets the source, through the
	// transcoder's gate (this publisher is safe, so it passes through).
	plain := watch(t, n, "live")
	eventually(t, "source frames for a plain viewer", 10*time.Second, func() bool { return plain.VideoFrames.Load() >= 30 })
	if s, _ := getStream(t, n, "live"); s["renditions"].([]any)[0].(map[string]any)["reencoded"] != nil {
		t.Error("a safe source is reported re-encoded")
	}
}

// checkAlignedKeyframes compares the viewers' keyframe timestamps over the
// span they all watched: every rung must have keyframes at the same ones.
func checkAlignedKeyframes(t *testing.T, viewers map[string]*mediatest.Viewer) {
	t.Helper()
	var lo, hi uint32
	keys := map[string][]uint32{}
	for name, v := range viewers {
		k := v.KeyframeTimestamps()
		if len(k) < 2 {
			t.Fatalf("%s: only %d keyframes", name, len(k))
		}
		keys[name] = k
		if lo == 0 || k[0] > lo {
			lo = k[0]
		}
		if hi == 0 || k[len(k)-1] < hi {
			hi = k[len(k)-1]
		}
	}
	var ref []uint32
	var refName string
	for name, k := range keys {
		var in []uint32
		for _, ts := range k {
			if ts >= lo && ts <= hi {
				in = append(in, ts)
			}
		}
		if ref == nil {
			ref, refName = in, name
			if len(in) < 2 {
				t.Fatalf("common span has %d keyframes", len(in))
			}
			continue
		}
		if !slices.Equal(in, ref) {
			t.Fatalf("keyframes not aligned: %s at %v, %s at %v", name, in, refName, ref)
		}
	}
}

func containsAll(s string, subs ...string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}
