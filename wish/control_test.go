package wish

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The extension routes are tested at the HTTP boundary with a fake
// session: what is tested is the handler's side of the contract (status
// codes, framing, ends of streams), not the media.

var ladder = []Layer{
	{Name: "720p", Width: 1280, Height: 720, Bitrate: 2_500_000},
	{Name: "480p", Width: 854, Height: 480, Bitrate: 1_000_000},
	{Name: "360p", Width: 640, Height: 360, Bitrate: 600_000},
}

// fakeSession is a Session with events and layer selection. Its Close
// ends it the way a real session does: by calling Offer.Ended.
type fakeSession struct {
	ended func()

	mu      sync.Mutex
	subs    map[chan Event]bool
	pinned  string
	closed  bool
	stopped chan struct{} // one value per stop
}

func newFake(ended func()) *fakeSession {
	return &fakeSession{ended: ended, subs: map[chan Event]bool{}, stopped: make(chan struct{}, 16)}
}

func (f *fakeSession) Trickle(Fragment) error           { return nil }
func (f *fakeSession) Restart(Fragment) (string, error) { return "", nil }
func (f *fakeSession) RemoteUfrag() string              { return "" }

func (f *fakeSession) Close() error {
	f.mu.Lock()
	already := f.closed
	f.closed = true
	f.mu.Unlock()
	if !already {
		f.ended()
	}
	return nil
}

func (f *fakeSession) layersEvent() Event {
	return LayersEvent{Renditions: ladder, Current: "360p", Pinned: f.pinned != ""}.Event()
}

func (f *fakeSession) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 8)
	f.mu.Lock()
	ch <- f.layersEvent()
	f.subs[ch] = true
	f.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			f.mu.Lock()
			delete(f.subs, ch)
			f.mu.Unlock()
			f.stopped <- struct{}{}
		})
	}
}

// emit sends ev to every subscriber without blocking, as the contract asks.
func (f *fakeSession) emit(ev Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

func (f *fakeSession) subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

func (f *fakeSession) SetLayer(name string) error {
	switch {
	case name == "boom":
		return errors.New("the session broke")
	case name == "auto":
		f.mu.Lock()
		f.pinned = ""
		f.mu.Unlock()
		return nil
	}
	for _, l := range ladder {
		if l.Name == name {
			f.mu.Lock()
			f.pinned = name
			f.mu.Unlock()
			return nil
		}
	}
	return Errorf(404, "unknown_rendition", "no rendition %.40q; this stream has: 720p, 480p, 360p", name)
}

// plain hides fakeSession's extension methods.
type plain struct{ s *fakeSession }

func (p plain) Trickle(f Fragment) error           { return p.s.Trickle(f) }
func (p plain) Restart(f Fragment) (string, error) { return p.s.Restart(f) }
func (p plain) RemoteUfrag() string                { return "" }
func (p plain) Close() error                       { return p.s.Close() }

// fakeEndpoint answers every offer; ?plain=1 makes a session without
// extensions.
type fakeEndpoint struct {
	mu   sync.Mutex
	last *fakeSession
}

func (ep *fakeEndpoint) Offer(ctx context.Context, o Offer) (Session, string, error) {
	f := newFake(o.Ended)
	ep.mu.Lock()
	ep.last = f
	ep.mu.Unlock()
	if o.Query.Get("plain") != "" {
		return plain{f}, "v=0\r\n", nil
	}
	return f, "v=0\r\n", nil
}

type testServer struct {
	h   *Handler
	ep  *fakeEndpoint
	reg *prometheus.Registry
	srv *httptest.Server
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	ts := &testServer{ep: &fakeEndpoint{}, reg: prometheus.NewRegistry()}
	ts.h = New("whep", ts.ep, nil, NewMetrics(ts.reg), slog.New(slog.DiscardHandler))
	ts.h.heartbeat = time.Hour // tests that want heartbeats shorten it
	mux := http.NewServeMux()
	ts.h.Register(mux)
	ts.srv = httptest.NewServer(mux)
	// Cleanups run last first: the handler ends the streams, then the
	// server can close.
	t.Cleanup(ts.srv.Close)
	t.Cleanup(ts.h.Close)
	return ts
}

func (ts *testServer) do(t *testing.T, method, path, ctype, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, ts.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	res, err := ts.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// session creates a session and returns its Location and fake.
func (ts *testServer) session(t *testing.T, query string) (string, *fakeSession, *http.Response) {
	t.Helper()
	res := ts.do(t, "POST", "/whep/live"+query, "application/sdp", "v=0\r\n")
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != 201 {
		t.Fatalf("POST: %d", res.StatusCode)
	}
	ts.ep.mu.Lock()
	defer ts.ep.mu.Unlock()
	return res.Header.Get("Location"), ts.ep.last, res
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestExtensionLinks(t *testing.T) {
	ts := newTestServer(t)
	loc, _, res := ts.session(t, "")
	links := res.Header.Values("Link")
	want := []string{
		"<" + loc + `/events>; rel="urn:ietf:params:whep:ext:core:server-sent-events"; events="layers,switch,estimate,video,reconnect"`,
		"<" + loc + `/layer>; rel="urn:ietf:params:whep:ext:core:layer"`,
	}
	if strings.Join(links, "\n") != strings.Join(want, "\n") {
		t.Errorf("Link headers:\n%s\nwant:\n%s", strings.Join(links, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(res.Header.Get("Access-Control-Expose-Headers"), "Link") {
		t.Error("Link is not exposed to scripts")
	}
	_, _, res = ts.session(t, "?plain=1")
	if links := res.Header.Values("Link"); len(links) != 0 {
		t.Errorf("a session without extensions advertises %q", links)
	}
}

var layerCases = []struct {
	name   string
	path   string // appended to the Location; "" means /layer
	ctype  string
	body   string
	status int
	pinned string
	reason string // substring of the body
}{
	{name: "pin", body: `{"rendition":"480p"}`, status: 204, pinned: "480p"},
	{name: "charset and extra fields", ctype: "application/json; charset=utf-8", body: `{"rendition":"720p","mediaId":"0"}`, status: 204, pinned: "720p"},
	{name: "auto unpins", body: `{"rendition":"auto"}`, status: 204, pinned: ""},
	{name: "unknown rendition lists the rungs", body: `{"rendition":"1080p"}`, status: 404, reason: "720p, 480p, 360p"},
	{name: "bad JSON", body: `{"rendition":`, status: 400, reason: "JSON"},
	{name: "trailing garbage", body: `{"rendition":"480p"} x`, status: 400},
	{name: "missing field", body: `{}`, status: 400, reason: "missing"},
	{name: "null", body: `null`, status: 400, reason: "missing"},
	{name: "array", body: `["480p"]`, status: 400},
	{name: "number", body: `{"rendition":480}`, status: 400},
	{name: "empty name", body: `{"rendition":""}`, status: 400, reason: "bad rendition"},
	{name: "path in name", body: `{"rendition":"../480p"}`, status: 400, reason: "bad rendition"},
	{name: "control character", body: `{"rendition":"480p\n"}`, status: 400},
	{name: "long name", body: `{"rendition":"` + strings.Repeat("a", 65) + `"}`, status: 400},
	{name: "wrong type", ctype: "text/plain", body: `{"rendition":"480p"}`, status: 415},
	{name: "no type", ctype: "-", body: `{"rendition":"480p"}`, status: 415},
	{name: "too large", body: `{"rendition":"480p","x":"` + strings.Repeat("a", MaxControlBody) + `"}`, status: 413},
	{name: "session error", body: `{"rendition":"boom"}`, status: 500},
}

func TestLayer(t *testing.T) {
	ts := newTestServer(t)
	for _, c := range layerCases {
		t.Run(c.name, func(t *testing.T) {
			loc, f, _ := ts.session(t, "")
			f.SetLayer("360p") // so that "auto" visibly unpins
			want := c.pinned
			if c.status >= 400 {
				want = "360p"
			}
			ctype := c.ctype
			switch ctype {
			case "":
				ctype = "application/json"
			case "-":
				ctype = ""
			}
			res := ts.do(t, "POST", loc+"/layer", ctype, c.body)
			body := readAll(t, res)
			if res.StatusCode != c.status {
				t.Fatalf("status %d, want %d (%q)", res.StatusCode, c.status, body)
			}
			if res.Header.Get("Access-Control-Allow-Origin") != "*" {
				t.Error("no CORS header")
			}
			if c.status >= 400 && (strings.Count(body, "\n") != 1 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain")) {
				t.Errorf("refusal is not one plain-text line: %q", body)
			}
			if !strings.Contains(body, c.reason) {
				t.Errorf("body %q lacks %q", body, c.reason)
			}
			f.mu.Lock()
			pinned := f.pinned
			f.mu.Unlock()
			if pinned != want {
				t.Errorf("pinned %q, want %q", pinned, want)
			}
		})
	}
	if n := testutil.ToFloat64(ts.h.metrics.control.WithLabelValues("whep", "layer", "ok")); n != 3 {
		t.Errorf("layer ok count %v, want 3", n)
	}
	if n := testutil.ToFloat64(ts.h.metrics.control.WithLabelValues("whep", "layer", "unknown_rendition")); n != 1 {
		t.Errorf("layer unknown_rendition count %v, want 1", n)
	}
	if n := testutil.ToFloat64(ts.h.metrics.failures.WithLabelValues("whep", "bad_json")); n != 0 {
		t.Errorf("layer refusals counted as setup failures: %v", n)
	}
}

// Requests that do not reach a session: unknown, ended, not supporting
// the extension, or on the wrong stream.
func TestExtensionRefusals(t *testing.T) {
	ts := newTestServer(t)
	loc, _, _ := ts.session(t, "")
	plainLoc, _, _ := ts.session(t, "?plain=1")
	gone, f, _ := ts.session(t, "")
	f.Close()
	wrongStream := strings.Replace(loc, "/whep/live/", "/whep/other/", 1)
	for _, c := range []struct {
		method, path, ctype, body string
		status                    int
	}{
		{"POST", "/whep/live/nope/layer", "application/json", `{"rendition":"480p"}`, 404},
		{"POST", gone + "/layer", "application/json", `{"rendition":"480p"}`, 404},
		{"POST", wrongStream + "/layer", "application/json", `{"rendition":"480p"}`, 404},
		{"POST", plainLoc + "/layer", "application/json", `{"rendition":"480p"}`, 405},
		{"GET", "/whep/live/nope/events", "", "", 404},
		{"GET", gone + "/events", "", "", 404},
		{"GET", wrongStream + "/events", "", "", 404},
		{"GET", plainLoc + "/events", "", "", 405},
		{"POST", plainLoc + "/events", "", "", 405},
		{"POST", gone + "/events", "", "", 404},
		{"GET", loc + "/events?events=nope", "", "", 400},
		{"GET", loc + "/events?events=layers,nope", "", "", 400},
		{"GET", loc + "/events?events=layers%0Aevent:x", "", "", 400},
		{"GET", loc + "/events?" + strings.Repeat("events=layers&", 17), "", "", 400},
		{"PUT", loc + "/layer", "application/json", `{"rendition":"480p"}`, 405},
		{"DELETE", loc + "/events", "", "", 405},
		{"HEAD", loc + "/events", "", "", 200}, // headers only: no stream is opened
	} {
		res := ts.do(t, c.method, c.path, c.ctype, c.body)
		body := readAll(t, res)
		if res.StatusCode != c.status {
			t.Errorf("%s %s: status %d, want %d (%q)", c.method, c.path, res.StatusCode, c.status, body)
		}
		if c.status == 405 && res.Header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", c.method, c.path)
		}
	}
	res := ts.do(t, "OPTIONS", loc+"/layer", "", "")
	readAll(t, res)
	if res.StatusCode != 204 || res.Header.Get("Accept-Post") != "application/json" ||
		!strings.Contains(res.Header.Get("Access-Control-Allow-Headers"), "Content-Type") {
		t.Errorf("OPTIONS layer: %d %v", res.StatusCode, res.Header)
	}
}

func TestLayerRate(t *testing.T) {
	h := New("whep", &fakeEndpoint{}, nil, nil, slog.New(slog.DiscardHandler))
	e := &entry{}
	t0 := time.Unix(1000, 0)
	for i := range layerRate {
		if !h.allowLayer(e, t0.Add(time.Duration(i)*time.Millisecond)) {
			t.Fatalf("selection %d refused", i)
		}
	}
	if h.allowLayer(e, t0.Add(500*time.Millisecond)) {
		t.Fatal("selection over the rate allowed")
	}
	if !h.allowLayer(e, t0.Add(time.Second)) {
		t.Fatal("selection refused in the next second")
	}
}

// sseMsg is one message of an event stream: an event or a comment.
type sseMsg struct {
	event, data string
	comment     bool
}

// readSSE reads one message: lines up to a blank line.
func readSSE(r *bufio.Reader) (sseMsg, error) {
	var m sseMsg
	lines := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return m, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if lines == 0 {
				continue
			}
			return m, nil
		}
		lines++
		switch {
		case strings.HasPrefix(line, ":"):
			m.comment = true
		case strings.HasPrefix(line, "event: "):
			m.event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if m.data != "" {
				return m, errors.New("more than one data line")
			}
			m.data = strings.TrimPrefix(line, "data: ")
		default:
			return m, errors.New("unexpected line " + line)
		}
	}
}

// stream is one open event stream.
type stream struct {
	res    *http.Response
	r      *bufio.Reader
	cancel context.CancelFunc
}

func (ts *testServer) open(t *testing.T, path string) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", ts.srv.URL+path, nil)
	res, err := ts.srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &stream{res: res, r: bufio.NewReader(res.Body), cancel: cancel}
	t.Cleanup(s.close)
	return s
}

func (s *stream) close() {
	s.cancel()
	s.res.Body.Close()
}

func (s *stream) next(t *testing.T) sseMsg {
	t.Helper()
	m, err := readSSE(s.r)
	if err != nil {
		t.Fatalf("reading the event stream: %v", err)
	}
	return m
}

// nextEvent skips heartbeats.
func (s *stream) nextEvent(t *testing.T) sseMsg {
	t.Helper()
	for {
		if m := s.next(t); !m.comment {
			return m
		}
	}
}

// expectEnd reads the stream to its end, skipping heartbeats.
func (s *stream) expectEnd(t *testing.T) {
	t.Helper()
	for {
		m, err := readSSE(s.r)
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("stream ended with %v, want EOF", err)
		}
		if !m.comment {
			t.Fatalf("unexpected event %+v", m)
		}
	}
}

const layersJSON = `{"renditions":[{"name":"720p","width":1280,"height":720,"bitrate":2500000},` +
	`{"name":"480p","width":854,"height":480,"bitrate":1000000},{"name":"360p","width":640,"height":360,"bitrate":600000}],` +
	`"current":"360p","pinned":false}`

func TestEventStream(t *testing.T) {
	ts := newTestServer(t)
	loc, f, _ := ts.session(t, "")
	s := ts.open(t, loc+"/events")
	if s.res.StatusCode != 200 {
		t.Fatalf("status %d", s.res.StatusCode)
	}
	for k, v := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"} {
		if got := s.res.Header.Get(k); got != v {
			t.Errorf("%s %q, want %q", k, got, v)
		}
	}
	if m := s.nextEvent(t); m.event != "layers" || m.data != layersJSON {
		t.Fatalf("first event %+v, want layers %s", m, layersJSON)
	}
	f.emit(SwitchEvent{From: "360p", To: "720p", Reason: "probe_ok", Estimate: 3_100_000}.Event())
	f.emit(EstimateEvent{BPS: 3_100_000, Rendition: "720p"}.Event())
	f.emit(VideoEvent{Paused: true, Reason: "audio_only"}.Event())
	f.emit(Event{Name: "bad name"})     // dropped: would break the framing
	f.emit(Event{Name: "x", Data: nil}) // not advertised, but passed on
	f.emit(ReconnectEvent{URL: "https://edge-b:8080/whep/live"}.Event())
	for _, want := range []sseMsg{
		{event: "switch", data: `{"from":"360p","to":"720p","reason":"probe_ok","estimate":3100000}`},
		{event: "estimate", data: `{"bps":3100000,"rendition":"720p"}`},
		{event: "video", data: `{"paused":true,"reason":"audio_only"}`},
		{event: "x", data: `{}`},
		{event: "reconnect", data: `{"url":"https://edge-b:8080/whep/live"}`},
	} {
		if m := s.nextEvent(t); m != want {
			t.Errorf("event %+v, want %+v", m, want)
		}
	}
	if n := testutil.ToFloat64(ts.h.metrics.streams.WithLabelValues("whep")); n != 1 {
		t.Errorf("open streams gauge %v, want 1", n)
	}

	// The session ends: what it queued last still goes out, then the
	// stream ends and the subscription is stopped.
	f.emit(ReconnectEvent{}.Event())
	f.Close()
	if m := s.nextEvent(t); m.event != "reconnect" || m.data != `{}` {
		t.Errorf("last event %+v, want reconnect {}", m)
	}
	s.expectEnd(t)
	<-f.stopped
	if f.subscribers() != 0 {
		t.Error("subscription not stopped")
	}
	// An EventSource reconnecting now gets a 404 and gives up.
	res := ts.do(t, "GET", loc+"/events", "", "")
	readAll(t, res)
	if res.StatusCode != 404 {
		t.Errorf("events of an ended session: %d, want 404", res.StatusCode)
	}
	if n := testutil.ToFloat64(ts.h.metrics.control.WithLabelValues("whep", "events", "ok")); n != 1 {
		t.Errorf("events ok count %v, want 1", n)
	}
}

func TestEventStreamEnds(t *testing.T) {
	for _, c := range []struct {
		name string
		end  func(t *testing.T, ts *testServer, loc string, f *fakeSession, s *stream)
		eof  bool // the client sees the end
	}{
		{"DELETE", func(t *testing.T, ts *testServer, loc string, f *fakeSession, s *stream) {
			readAll(t, ts.do(t, "DELETE", loc, "", ""))
		}, true},
		{"session closes", func(t *testing.T, ts *testServer, loc string, f *fakeSession, s *stream) { f.Close() }, true},
		{"handler closes", func(t *testing.T, ts *testServer, loc string, f *fakeSession, s *stream) { ts.h.Close() }, true},
		{"client goes", func(t *testing.T, ts *testServer, loc string, f *fakeSession, s *stream) { s.close() }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ts := newTestServer(t)
			loc, f, _ := ts.session(t, "")
			s := ts.open(t, loc+"/events")
			s.nextEvent(t)
			c.end(t, ts, loc, f, s)
			if c.eof {
				s.expectEnd(t)
			}
			<-f.stopped // the handler let go of the subscription
		})
	}
}

func TestEventStreamHeartbeat(t *testing.T) {
	ts := newTestServer(t)
	ts.h.heartbeat = 10 * time.Millisecond
	loc, _, _ := ts.session(t, "")
	s := ts.open(t, loc+"/events")
	if m := s.next(t); m.event != "layers" {
		t.Fatalf("first message %+v", m)
	}
	for range 3 {
		if m := s.next(t); !m.comment || m.event != "" || m.data != "" {
			t.Fatalf("heartbeat %+v, want a comment", m)
		}
	}
}

func TestEventStreamLimit(t *testing.T) {
	ts := newTestServer(t)
	loc, f, _ := ts.session(t, "")
	var streams []*stream
	for range MaxEventStreams {
		s := ts.open(t, loc+"/events")
		s.nextEvent(t) // the stream is counted once it answers
		streams = append(streams, s)
	}
	res := ts.do(t, "GET", loc+"/events", "", "")
	body := readAll(t, res)
	if res.StatusCode != 429 || res.Header.Get("Retry-After") == "" {
		t.Fatalf("stream over the limit: %d %q", res.StatusCode, body)
	}
	// Another session has its own budget.
	loc2, _, _ := ts.session(t, "")
	ts.open(t, loc2+"/events").nextEvent(t)
	// A closed stream frees its slot.
	streams[0].close()
	<-f.stopped
	if s := ts.open(t, loc+"/events"); s.res.StatusCode != 200 {
		t.Fatalf("after a stream closed: %d", s.res.StatusCode)
	}
}

// The draft's way: POST the wanted events, GET the Location.
func TestCreateEventStream(t *testing.T) {
	ts := newTestServer(t)
	loc, f, _ := ts.session(t, "")
	for _, c := range []struct {
		name, ctype, body string
		status            int
		location          string
	}{
		{"all events", "", "", 201, loc + "/events"},
		{"a subset", "application/json", `["switch","layers","switch"]`, 201, loc + "/events?events=layers,switch"},
		{"unknown event", "application/json", `["layers","nope"]`, 400, ""},
		{"empty list", "application/json", `[]`, 400, ""},
		{"not an array", "application/json", `{"events":["layers"]}`, 400, ""},
		{"bad JSON", "application/json", `["layers"`, 400, ""},
		{"wrong type", "text/plain", `["layers"]`, 415, ""},
		{"body without type", "", `["layers"]`, 415, ""},
		{"too large", "application/json", `["` + strings.Repeat("a", MaxControlBody) + `"]`, 413, ""},
	} {
		res := ts.do(t, "POST", loc+"/events", c.ctype, c.body)
		body := readAll(t, res)
		if res.StatusCode != c.status || res.Header.Get("Location") != c.location {
			t.Errorf("%s: %d Location %q, want %d %q (%q)", c.name, res.StatusCode, res.Header.Get("Location"), c.status, c.location, body)
		}
	}
	s := ts.open(t, loc+"/events?events=layers,switch")
	if m := s.nextEvent(t); m.event != "layers" {
		t.Fatalf("first event %+v", m)
	}
	f.emit(EstimateEvent{BPS: 1}.Event())
	f.emit(SwitchEvent{From: "360p", To: "480p", Reason: "probe_ok"}.Event())
	if m := s.nextEvent(t); m.event != "switch" {
		t.Fatalf("filtered stream sent %+v, want the switch only", m)
	}
}

var eventCases = []struct {
	name string
	ev   Event
	out  string // "" means refused
}{
	{"nil data", Event{Name: "active"}, "event: active\ndata: {}\n\n"},
	{"struct", VideoEvent{Paused: false, Reason: "resume"}.Event(), "event: video\ndata: {\"paused\":false,\"reason\":\"resume\"}\n\n"},
	{"newlines escaped", Event{Name: "x", Data: map[string]string{"a": "1\n\ndata: 2\r"}}, "event: x\ndata: {\"a\":\"1\\n\\ndata: 2\\r\"}\n\n"},
	{"line separators escaped", Event{Name: "x", Data: "a\u2028b"}, "event: x\ndata: \"a\\u2028b\"\n\n"},
	{"empty ladder", LayersEvent{Renditions: []Layer{}}.Event(), "event: layers\ndata: {\"renditions\":[],\"current\":\"\",\"pinned\":false}\n\n"},
	{"name with newline", Event{Name: "x\ndata: y"}, ""},
	{"name with colon", Event{Name: "x:y"}, ""},
	{"empty name", Event{Name: ""}, ""},
	{"long name", Event{Name: strings.Repeat("x", 33)}, ""},
	{"unmarshalable", Event{Name: "x", Data: make(chan int)}, ""},
	{"too large", Event{Name: "x", Data: strings.Repeat("a", maxEventData)}, ""},
}

func TestAppendEvent(t *testing.T) {
	for _, c := range eventCases {
		b, err := appendEvent(nil, c.ev)
		if c.out == "" {
			if err == nil {
				t.Errorf("%s: framed %q", c.name, b)
			}
			continue
		}
		if err != nil || string(b) != c.out {
			t.Errorf("%s: %q, %v; want %q", c.name, b, err, c.out)
		}
	}
}

// Whatever a session sends, an event is either refused or exactly one
// event line and one data line.
func FuzzAppendEvent(f *testing.F) {
	for _, c := range eventCases {
		if s, ok := c.ev.Data.(string); ok {
			f.Add(c.ev.Name, s)
		} else {
			f.Add(c.ev.Name, "")
		}
	}
	f.Fuzz(func(t *testing.T, name, data string) {
		b, err := appendEvent(nil, Event{Name: name, Data: map[string]string{"v": data}})
		if err != nil {
			return
		}
		m, err := readSSE(bufio.NewReader(strings.NewReader(string(b))))
		if err != nil || m.event != name || strings.ContainsAny(m.data, "\r\n") || !strings.HasSuffix(string(b), "\n\n") ||
			strings.Count(string(b), "\n") != 3 {
			t.Fatalf("framed %q as %+v (%v)", b, m, err)
		}
	})
}

// A session that is already over may answer Subscribe with a closed
// channel: what it holds goes out, then the stream ends.
func TestEventStreamClosedChannel(t *testing.T) {
	ch := make(chan Event, 2)
	ch <- VideoEvent{Paused: false, Reason: "resume"}.Event()
	close(ch)
	rec := httptest.NewRecorder()
	sw := &sseWriter{w: rec, rc: http.NewResponseController(rec), log: slog.New(slog.DiscardHandler)}
	req := httptest.NewRequest("GET", "/whep/live/x/events", nil)
	if why := sw.run(req, ch, nil, nil, nil, nil, time.Hour); why != "session_ended" {
		t.Errorf("ended with %q", why)
	}
	if got, want := rec.Body.String(), "event: video\ndata: {\"paused\":false,\"reason\":\"resume\"}\n\n"; got != want {
		t.Errorf("body %q, want %q", got, want)
	}
}

// Reconnect (a draining node) sends one "reconnect" to every session with
// events: on the streams open now and on one opened afterwards, with the
// URL the node chose for the session's stream; sessions without events
// are skipped, and a second call tells nobody twice.
func TestReconnect(t *testing.T) {
	ts := newTestServer(t)
	loc, _, _ := ts.session(t, "")
	ts.session(t, "?plain=1")
	s := ts.open(t, loc+"/events")
	if m := s.nextEvent(t); m.event != "layers" {
		t.Fatalf("first event %+v", m)
	}
	asked := map[string]int{}
	n := ts.h.Reconnect(func(stream string) string {
		asked[stream]++
		return "http://edge-b:8080/whep/" + stream
	})
	if n != 1 || asked["live"] != 1 || len(asked) != 1 {
		t.Fatalf("told %d sessions, asked for %v; want 1 session and one question for live", n, asked)
	}
	want := sseMsg{event: "reconnect", data: `{"url":"http://edge-b:8080/whep/live"}`}
	if m := s.nextEvent(t); m != want {
		t.Fatalf("event %+v, want %+v", m, want)
	}
	// A player whose EventSource reconnects (or opens late) still hears it.
	late := ts.open(t, loc+"/events")
	got := map[string]string{}
	for range 2 {
		m := late.nextEvent(t)
		got[m.event] = m.data
	}
	if got["reconnect"] != want.data || got["layers"] == "" {
		t.Fatalf("late stream got %v, want layers and %s", got, want.data)
	}
	if n := ts.h.Reconnect(func(string) string { t.Error("asked again"); return "" }); n != 0 {
		t.Errorf("second Reconnect told %d sessions", n)
	}
	if n := testutil.ToFloat64(ts.h.metrics.control.WithLabelValues("whep", "reconnect", "sent")); n != 1 {
		t.Errorf("reconnect count %v, want 1", n)
	}
}
