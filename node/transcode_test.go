package node

import (
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

	v, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{Query: "?rendition=360p", KeepAccessUnits: 60})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if key, err := v.FirstVideo(ctxT(t, 10*time.Second)); err != nil || !key {
		t.Fatalf("first video packet on 360p: keyframe=%v err=%v", key, err)
	}
	eventually(t, "30 access units on 360p", 15*time.Second, func() bool { return len(v.AccessUnits()) >= 30 })
	dec, err := av.NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	frames := 0
	for i, au := range v.AccessUnits() {
		if err := dec.Decode(au, int64(i)*3000, func(f *av.Frame) error {
			if f.Width() != 640 || f.Height() != 360 {
				t.Fatalf("decoded %dx%d on 360p", f.Width(), f.Height())
			}
			frames++
			return nil
		}); err != nil {
			t.Fatalf("access unit %d: %v", i, err)
		}
	}
	if frames < 25 {
		t.Fatalf("%d frames decoded from the 360p rendition", frames)
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
