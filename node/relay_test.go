package node

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cascade-cdn/cascade/media/mediatest"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// TestEdgeRelaysFromOrigin: an edge node configured with the origin as its
// relay parent serves a viewer of a stream published on the origin. It
// pulls only the rung its viewer is on (plus audio), over the RTSP relay
// read with the cluster secret; the viewer's frames decode.
func TestEdgeRelaysFromOrigin(t *testing.T) {
	aus, _ := transcodetest.Source(t, "2", "baseline")
	origin := startNode(t, func(c *Config) {
		c.Transcode.Enabled = true
		c.Cluster.Secret = "s3cret"
	})
	edge := startNode(t, func(c *Config) {
		c.Cluster.Secret = "s3cret"
		c.RTSP.Listen = ""
		c.Relay.Parent = "rtsp://" + origin.rtsp.Addr().String()
	})
	publish(t, origin, "live", mediatest.PublisherOptions{AccessUnits: aus})
	eventually(t, "ladder planned", 15*time.Second, func() bool {
		s, _ := getStream(t, origin, "live")
		return s != nil && len(s["renditions"].([]any)) == 4
	})

	v, err := mediatest.Watch(ctxT(t, 10*time.Second), edge.URL()+"/whep/live", mediatest.ViewerOptions{KeepAccessUnits: 60, Query: "?rendition=360p"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if key, err := v.FirstVideo(ctxT(t, 15*time.Second)); err != nil || !key {
		t.Fatalf("first video keyframe=%v err=%v", key, err)
	}
	eventually(t, "60 access units and audio through the edge", 20*time.Second, func() bool {
		return len(v.AccessUnits()) >= 60 && v.AudioPackets.Load() >= 50
	})
	frames, w, h := decodeAUs(t, v.AccessUnits())
	if frames < 55 || w != 640 || h != 360 {
		t.Fatalf("decoded %d frames of %dx%d through the edge, want 640x360", frames, w, h)
	}
	if got := edge.relays.carried()["live"]; !slices.Equal(got, []string{"360p"}) {
		t.Fatalf("edge pulls %v, want only [360p]", got)
	}
	if got := origin.rtsp.RelayReaders("live"); got != 2 {
		t.Errorf("origin has %d relay readers, want 2 (the 360p rung and audio)", got)
	}
	if !strings.Contains(metricsText(t, edge), `cascade_relay_sessions{kind="rung"} 1`) {
		t.Error("edge relay sessions metric missing")
	}
}
