package node

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cascade-cdn/cascade/media/mediatest"
	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// sseEvent is one server-sent event as a test reads it.
type sseEvent struct {
	name string
	data map[string]any
}

// readEvents follows GET {location}/events and collects its events.
func readEvents(t *testing.T, n *Node, location string) (func() []sseEvent, func()) {
	t.Helper()
	req, _ := http.NewRequest("GET", n.URL()+location+"/events", nil)
	ctx := ctxT(t, 60*time.Second)
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var mu sync.Mutex
	var got []sseEvent
	done := make(chan struct{})
	go func() {
		defer close(done)
		scanSSE(resp.Body, func(name string, d map[string]any) {
			mu.Lock()
			got = append(got, sseEvent{name, d})
			mu.Unlock()
		})
	}()
	return func() []sseEvent {
			mu.Lock()
			defer mu.Unlock()
			return append([]sseEvent(nil), got...)
		}, func() {
			resp.Body.Close()
			<-done
		}
}

// scanSSE calls fn with each event of a Server-Sent Events stream (its
// name and its JSON data) until the stream ends.
func scanSSE(r io.Reader, fn func(name string, data map[string]any)) {
	sc := bufio.NewScanner(r)
	var name string
	for sc.Scan() {
		l := sc.Text()
		switch {
		case strings.HasPrefix(l, "event:"):
			name = strings.TrimSpace(l[len("event:"):])
		case strings.HasPrefix(l, "data:"):
			var d map[string]any
			json.Unmarshal([]byte(strings.TrimSpace(l[len("data:"):])), &d)
			fn(name, d)
		}
	}
}

func findEvent(evs []sseEvent, name, key, value string) bool {
	for _, e := range evs {
		if e.name == name && (key == "" || e.data[key] == value) {
			return true
		}
	}
	return false
}

// TestViewerRenditionSwitch: a viewer of a transcoded stream starts on the
// rung nearest 600 kbps (360p) and is told so over its session events; the
// player pins 240p with POST {Location}/layer, and the viewer moves there
// at a keyframe with no missing sequence number and every access unit
// decodable; an unknown rung is a 404.
func TestViewerRenditionSwitch(t *testing.T) {
	aus, _ := transcodetest.Source(t, "2", "baseline")
	n := startNode(t, func(c *Config) { c.Transcode.Enabled = true })
	publish(t, n, "live", mediatest.PublisherOptions{AccessUnits: aus})
	eventually(t, "ladder planned", 15*time.Second, func() bool {
		s, _ := getStream(t, n, "live")
		return s != nil && len(s["renditions"].([]any)) == 4
	})
	v, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{KeepAccessUnits: 600})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	events, stop := readEvents(t, n, v.Location)
	defer stop()
	eventually(t, "a layers event", 10*time.Second, func() bool { return findEvent(events(), "layers", "current", "360p") })
	eventually(t, "frames on 360p", 10*time.Second, func() bool { return len(v.AccessUnits()) >= 30 })

	layer := func(body string) int {
		resp, err := http.Post(n.URL()+v.Location+"/layer", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := layer(`{"rendition": "1080p"}`); code != 404 {
		t.Fatalf("unknown rendition: %d, want 404", code)
	}
	if code := layer(`{"rendition": "240p"}`); code != 204 {
		t.Fatalf("pin 240p: %d, want 204", code)
	}
	eventually(t, "a switch to 240p", 10*time.Second, func() bool { return findEvent(events(), "switch", "to", "240p") })
	before := len(v.AccessUnits())
	eventually(t, "frames on 240p", 10*time.Second, func() bool { return len(v.AccessUnits()) >= before+45 })

	if missing, holes := v.MissingSeqs(); missing != 0 {
		t.Fatalf("%d sequence numbers missing across the switch: %v", missing, holes)
	}
	dec, err := av.NewDecoder("H264")
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var sizes []string
	for i, au := range v.AccessUnits() {
		if err := dec.Decode(au, int64(i)*3000, func(f *av.Frame) error {
			sz := map[int]string{640: "360p", 426: "240p"}[f.Width()]
			if sz == "" {
				sz = "other"
			}
			if len(sizes) == 0 || sizes[len(sizes)-1] != sz {
				sizes = append(sizes, sz)
			}
			return nil
		}); err != nil {
			t.Fatalf("access unit %d: %v", i, err)
		}
	}
	if len(sizes) != 2 || sizes[0] != "360p" || sizes[1] != "240p" {
		t.Fatalf("decoded sizes went %v, want [360p 240p]", sizes)
	}
}

// TestViewerClimbsWithProbes: on loopback a viewer that starts on 360p
// probes and climbs to a higher rung by itself, each switch reported with
// its reason, and its sequence numbers stay continuous.
func TestViewerClimbsWithProbes(t *testing.T) {
	aus, _ := transcodetest.Source(t, "2", "baseline")
	n := startNode(t, func(c *Config) { c.Transcode.Enabled = true })
	publish(t, n, "live", mediatest.PublisherOptions{AccessUnits: aus})
	eventually(t, "ladder planned", 15*time.Second, func() bool {
		s, _ := getStream(t, n, "live")
		return s != nil && len(s["renditions"].([]any)) == 4
	})
	v, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	events, stop := readEvents(t, n, v.Location)
	defer stop()
	t.Cleanup(func() {
		if t.Failed() {
			for _, e := range events() {
				t.Logf("%s %v", e.name, e.data)
			}
		}
	})
	eventually(t, "a climb above 360p", 30*time.Second, func() bool {
		for _, e := range events() {
			if e.name == "switch" && (e.data["to"] == "480p" || e.data["to"] == "source") {
				return true
			}
		}
		return false
	})
	if missing, holes := v.MissingSeqs(); missing != 0 {
		t.Fatalf("%d sequence numbers missing: %v", missing, holes)
	}
	m := metricsText(t, n)
	if !strings.Contains(m, `cascade_abr_switches_total{direction="up"`) {
		t.Error("no up-switch counted")
	}
	if !strings.Contains(m, `cascade_abr_probe_ends_total{how="ok"}`) {
		t.Error("no probe counted as ended ok")
	}
}
