package web_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/web"
	"github.com/cascade-cdn/cascade/wish"
)

// The player's side of per-viewer ABR: the page follows the session's
// event stream and drives layer selection. The WHEP endpoint here is
// wish's real handler with a fake session that has both extensions (the
// media side is not under test): pion answers the offer, so the page's
// WHEP exchange is real, and the test plays the server's events.

// abrSession is a WHEP session with events and layer selection and no
// media.
type abrSession struct {
	pc     *webrtc.PeerConnection
	ended  func()
	stream string
	query  url.Values

	layers     chan string   // each SetLayer
	subscribed chan struct{} // each Subscribe
	closed     chan struct{}
	closeOnce  sync.Once

	mu   sync.Mutex
	subs map[chan wish.Event]bool
}

var abrLadder = []wish.Layer{
	{Name: "720p", Width: 1280, Height: 720, Bitrate: 2_500_000},
	{Name: "480p", Width: 854, Height: 480, Bitrate: 1_000_000},
	{Name: "360p", Width: 640, Height: 360, Bitrate: 600_000},
}

func (s *abrSession) Trickle(wish.Fragment) error { return nil }
func (s *abrSession) Restart(wish.Fragment) (string, error) {
	return "", wish.Errorf(400, "ice_restart", "no restarts here")
}
func (s *abrSession) RemoteUfrag() string { return "" }

func (s *abrSession) Close() error {
	s.closeOnce.Do(func() {
		s.pc.Close()
		close(s.closed)
		s.ended()
	})
	return nil
}

func (s *abrSession) Subscribe() (<-chan wish.Event, func()) {
	ch := make(chan wish.Event, 16)
	// As the server will: ?rendition= pins the session from the start.
	current, pinned := "360p", false
	if r := s.query.Get("rendition"); r != "" {
		current, pinned = r, true
	}
	ch <- wish.LayersEvent{Renditions: abrLadder, Current: current, Pinned: pinned}.Event()
	s.mu.Lock()
	s.subs[ch] = true
	s.mu.Unlock()
	s.subscribed <- struct{}{}
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

func (s *abrSession) emit(ev wish.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ch := range s.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (s *abrSession) SetLayer(name string) error {
	if name == "720p" { // refused, to see the page show why
		return wish.Errorf(409, "busy", "720p is not available right now")
	}
	if name != "auto" && name != "480p" && name != "360p" {
		return wish.Errorf(404, "unknown_rendition", "no rendition %q", name)
	}
	s.layers <- name
	return nil
}

// abrEndpoint answers each offer with a pion peer that sends nothing.
type abrEndpoint struct {
	sessions chan *abrSession
}

func (ep *abrEndpoint) Offer(ctx context.Context, o wish.Offer) (wish.Session, string, error) {
	pc, err := webrtc.NewPeerConnection(webrtc.Configuration{})
	if err != nil {
		return nil, "", err
	}
	answer, err := func() (string, error) {
		if err := pc.SetRemoteDescription(webrtc.SessionDescription{Type: webrtc.SDPTypeOffer, SDP: o.SDP}); err != nil {
			return "", err
		}
		ans, err := pc.CreateAnswer(nil)
		if err != nil {
			return "", err
		}
		gathered := webrtc.GatheringCompletePromise(pc)
		if err := pc.SetLocalDescription(ans); err != nil {
			return "", err
		}
		select {
		case <-gathered:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		return pc.LocalDescription().SDP, nil
	}()
	if err != nil {
		pc.Close()
		return nil, "", wish.Errorf(400, "bad_sdp", "%v", err)
	}
	s := &abrSession{
		pc: pc, ended: o.Ended, stream: o.Stream, query: o.Query,
		layers: make(chan string, 8), subscribed: make(chan struct{}, 8), closed: make(chan struct{}),
		subs: map[chan wish.Event]bool{},
	}
	select {
	case ep.sessions <- s:
	default: // the test stopped looking
	}
	return s, answer, nil
}

// abrPage is what the test reads from the player.
type abrPage struct {
	Options  []string   `json:"options"`
	Selected string     `json:"selected"`
	Hidden   bool       `json:"hidden"`
	Note     string     `json:"note"`
	Cells    []string   `json:"cells"` // rendition, estimate, last switch
	Search   string     `json:"search"`
	WHEPURL  string     `json:"whepURL"`
	Stats    watchStats `json:"stats"`
}

const abrPageJS = `(() => {
	const q = document.getElementById('quality');
	const cell = (k) => { const d = document.querySelector('#stats dd[data-key="' + k + '"]'); return d ? d.textContent : ''; };
	return {
		options: q ? [...q.options].map((o) => o.value) : [],
		selected: q ? q.value : '',
		hidden: document.getElementById('quality-field').hidden,
		note: document.getElementById('quality-note').textContent,
		cells: [cell('rendition'), cell('estimate'), cell('switch')],
		search: window.location.search,
		whepURL: document.getElementById('whep-url').textContent,
		stats: window.cascadeStats,
	};
})()`

func TestBrowserABRControls(t *testing.T) {
	chrome := chromiumPath()
	if chrome == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium not found at /usr/bin/chromium or on PATH: CI must install it")
		}
		t.Skip("chromium not found; install it to run the browser tests")
	}
	ignoreExisting := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignoreExisting) })

	ep := &abrEndpoint{sessions: make(chan *abrSession, 8)}
	h := wish.New("whep", ep, nil, wish.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	mux := http.NewServeMux()
	h.Register(mux)
	web.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(h.Close) // ends the event streams, so the server can close

	deadline := time.Now().Add(60 * time.Second)
	rootCtx, cancelRoot := context.WithDeadline(context.Background(), deadline.Add(browserGrace))
	t.Cleanup(cancelRoot)
	userDataDir := t.TempDir()
	browserOut := &tailBuffer{max: 8 << 10}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(userDataDir),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.CombinedOutput(browserOut),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(rootCtx, opts...)
	t.Cleanup(cancelAlloc)
	tab, cancelTab := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(tab, 10*time.Second)
		defer cancel()
		chromedp.Cancel(cctx)
		cancelTab()
	})
	if err := chromedp.Do(tab); err != nil {
		t.Fatalf("starting %s: %v\nbrowser output:\n%s", chrome, err, browserOut)
	}
	console := &consoleLog{}
	if err := console.listen(tab, "watch"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithDeadline(tab, deadline)
	defer cancel()

	var last abrPage
	fail := func(format string, args ...any) {
		t.Helper()
		b, _ := json.MarshalIndent(last, "", "  ")
		t.Fatalf("%s\npage: %s\nconsole:\n%sbrowser output:\n%s", fmt.Sprintf(format, args...), b, console, browserNoise(browserOut.String()))
	}
	waitPage := func(what string, ok func(p abrPage) bool) {
		t.Helper()
		p, err := pollJS(ctx, abrPageJS, func(p abrPage) (bool, error) { return ok(p), nil })
		last = p
		if err != nil {
			fail("waiting for %s: %v", what, err)
		}
	}
	next := func() *abrSession {
		t.Helper()
		select {
		case s := <-ep.sessions:
			select {
			case <-s.subscribed:
			case <-ctx.Done():
				fail("the page did not open the event stream of session %s", s.stream)
			}
			return s
		case <-ctx.Done():
			fail("no WHEP session")
		}
		return nil
	}

	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/watch/x")); err != nil {
		fail("watch page: %v", err)
	}
	s := next()

	// 1. The first "layers" event: the menu lists Auto and the rungs, the
	// overlay the current rung.
	waitPage("the quality menu", func(p abrPage) bool {
		return !p.Hidden && strings.Join(p.Options, ",") == "auto,720p,480p,360p" && p.Selected == "auto" &&
			p.Cells[0] == "360p (auto)" && p.Stats.Events && strings.Join(p.Stats.Extensions, ",") == "events,layer"
	})

	// 2. A switch and an estimate show in the overlay.
	s.emit(wish.SwitchEvent{From: "360p", To: "720p", Reason: "probe_ok", Estimate: 3_100_000}.Event())
	s.emit(wish.EstimateEvent{BPS: 3_200_000, Rendition: "720p"}.Event())
	waitPage("the switch in the overlay", func(p abrPage) bool {
		return p.Cells[0] == "720p (auto)" && p.Cells[1] == "3.20 Mb/s" && p.Cells[2] == "360p \u2192 720p (probe_ok)" &&
			p.Stats.Rendition == "720p" && p.Stats.Estimate == 3_200_000
	})
	s.emit(wish.VideoEvent{Paused: true, Reason: "audio_only"}.Event())
	waitPage("video paused", func(p abrPage) bool { return strings.Contains(p.Cells[0], "video paused (audio_only)") })
	s.emit(wish.VideoEvent{Paused: false, Reason: "resume"}.Event())

	// 3. Choosing a rung POSTs {Location}/layer; the choice is kept in the
	// page's query for the next session.
	choose := func(v string) {
		t.Helper()
		js := `(() => { const q = document.getElementById('quality'); q.value = ` + strconvQuote(v) + `; q.dispatchEvent(new Event('change')); return true; })()`
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js)); err != nil {
			fail("choosing %s: %v", v, err)
		}
	}
	choose("480p")
	select {
	case got := <-s.layers:
		if got != "480p" {
			fail("SetLayer(%q), want 480p", got)
		}
	case <-ctx.Done():
		fail("no layer selection reached the session")
	}
	waitPage("the pinned choice", func(p abrPage) bool {
		return p.Search == "?rendition=480p" && p.Selected == "480p" && strings.HasSuffix(p.WHEPURL, "/whep/x?rendition=480p")
	})
	// The server confirms the pin before the switch, which waits for a
	// keyframe: the menu keeps the choice, the overlay the rung sent.
	s.emit(wish.LayersEvent{Renditions: abrLadder, Current: "720p", Pinned: true}.Event())
	s.emit(wish.SwitchEvent{From: "720p", To: "", Reason: "congestion", Estimate: 100_000}.Event())
	waitPage("the pin before the switch", func(p abrPage) bool {
		return p.Selected == "480p" && p.Cells[0] == "720p (pinned)" && p.Cells[2] == "720p \u2192 no video (congestion)"
	})
	s.emit(wish.SwitchEvent{From: "720p", To: "480p", Reason: "pinned", Estimate: 3_100_000}.Event())
	waitPage("the switch to the pinned rung", func(p abrPage) bool {
		return p.Selected == "480p" && p.Cells[0] == "480p (pinned)" && p.Stats.Pinned && p.Stats.LastSwitch != nil &&
			p.Stats.LastSwitch.Reason == "pinned"
	})

	// 4. A refused choice shows the server's reason and the menu goes back.
	choose("720p")
	waitPage("the refusal", func(p abrPage) bool {
		return strings.Contains(p.Note, "409 720p is not available right now") && p.Selected == "480p"
	})

	// 5. "reconnect" with a URL on this origin: the page ends the session
	// and offers there, keeping the viewer's choice. The URL carries the
	// cluster's hop marker (a draining edge sends one), which goes with the
	// first offer and is dropped once the session is up.
	s.emit(wish.ReconnectEvent{URL: srv.URL + "/whep/y?cascade_hop=1"}.Event())
	s2 := next()
	if s2.stream != "y" || s2.query.Get("rendition") != "480p" || s2.query.Get("cascade_hop") != "1" {
		fail("reconnected to %s?%s, want y?rendition=480p&cascade_hop=1", s2.stream, s2.query.Encode())
	}
	select {
	case <-s.closed: // the page DELETEd the old session
	case <-ctx.Done():
		fail("the old session was not ended")
	}
	waitPage("the new session's menu", func(p abrPage) bool {
		return p.Selected == "480p" && strings.HasSuffix(p.WHEPURL, "/whep/y?rendition=480p") && p.Stats.Reconnects >= 1
	})

	// 6. "reconnect" without a URL: again, at the same endpoint.
	s2.emit(wish.ReconnectEvent{}.Event())
	if s3 := next(); s3.stream != "y" || s3.query.Has("cascade_hop") {
		fail("reconnected to %s?%s, want y without the hop marker", s3.stream, s3.query.Encode())
	}
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
