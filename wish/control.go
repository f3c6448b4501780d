package wish

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits of the extension requests (events.go). Each is small: a client
// needs one event stream and a few layer changes a minute.
const (
	// DefaultHeartbeat is how often an idle event stream gets a comment
	// line, so that proxies and load balancers keep it open.
	DefaultHeartbeat = 15 * time.Second
	// MaxEventStreams is the most event streams one session may have open
	// at a time (429 above): a player needs one, and a few more cover a
	// reconnecting EventSource whose old stream is not yet noticed gone.
	MaxEventStreams = 4
	// MaxControlBody is the largest JSON body of a layer or event-stream
	// request (413 above).
	MaxControlBody = 4 << 10
	// maxEventData bounds one marshalled event; larger ones are dropped.
	maxEventData = 64 << 10
	// maxEventFilter bounds the names in an event filter.
	maxEventFilter = 16
	// layerRate layer selections per second per session, at most; the
	// session has to wait for a keyframe at each switch anyway.
	layerRate = 10
	// eventWriteTimeout bounds one write to an event stream, where the
	// ResponseWriter supports deadlines: a client that stops reading
	// must not hold the request goroutine forever.
	eventWriteTimeout = 10 * time.Second
)

var (
	// eventName is what may follow "event: " without breaking the framing.
	eventName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,32}$`)
	// renditionName is the syntax of a rung name ("720p", "source", "auto").
	renditionName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
)

// Refusals of the extension requests.
var (
	errNoEvents = &Error{Status: http.StatusMethodNotAllowed, Metric: "not_supported", Reason: "this session sends no events"}
	errNoLayer  = &Error{Status: http.StatusMethodNotAllowed, Metric: "not_supported", Reason: "this session has no layer selection"}
	errStreams  = &Error{Status: http.StatusTooManyRequests, Metric: "too_many_streams",
		Reason: "too many event streams open for this session (at most " + strconv.Itoa(MaxEventStreams) + ")"}
	errLayerRate = &Error{Status: http.StatusTooManyRequests, Metric: "rate_limited",
		Reason: "too many layer selections (at most " + strconv.Itoa(layerRate) + " a second)"}
	errJSONType = &Error{Status: http.StatusUnsupportedMediaType, Metric: "content_type", Reason: "content type must be application/json"}
	errTooLarge = &Error{Status: http.StatusRequestEntityTooLarge, Metric: "too_large",
		Reason: "body larger than " + strconv.Itoa(MaxControlBody) + " bytes"}
)

// extensionLinks advertises the extensions s supports on the 201 that
// created it at loc (draft-ietf-wish-whep "Server Sent Events" and
// "Video Layer Selection").
func (h *Handler) extensionLinks(w http.ResponseWriter, loc string, s Session) {
	if _, ok := s.(EventSource); ok {
		w.Header().Add("Link", "<"+loc+`/events>; rel="urn:ietf:params:`+h.kind+
			`:ext:core:server-sent-events"; events="`+strings.Join(EventNames, ",")+`"`)
	}
	if _, ok := s.(Layered); ok {
		w.Header().Add("Link", "<"+loc+`/layer>; rel="urn:ietf:params:`+h.kind+`:ext:core:layer"`)
	}
}

// refuse answers an extension request with err and counts it.
func (h *Handler) refuse(w http.ResponseWriter, request string, err error) {
	e := asError(err)
	h.countControl(request, e.Metric)
	if e.Status < 500 {
		h.log.Debug("request refused", "request", request, "status", e.Status, "reason", e.Reason)
	}
	if e.Status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", "OPTIONS")
	}
	h.reply(w, err, e)
}

func (h *Handler) countControl(request, outcome string) {
	if h.metrics != nil {
		h.metrics.control.WithLabelValues(h.kind, request, outcome).Inc()
	}
}

func (h *Handler) optionsJSON(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	w.Header().Set("Accept-Post", "application/json")
	w.WriteHeader(http.StatusNoContent)
}

// readJSON enforces the JSON content type and the size limit. An empty
// body is allowed (and returned empty) only when optional is set and the
// request names no content type.
func readJSON(w http.ResponseWriter, r *http.Request, optional bool) ([]byte, error) {
	ct := r.Header.Get("Content-Type")
	if optional && ct == "" && r.ContentLength <= 0 {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1))
		if err == nil && len(body) == 0 {
			return nil, nil
		}
	}
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return nil, errJSONType
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxControlBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, errTooLarge
		}
		return nil, Errorf(400, "bad_body", "cannot read body")
	}
	return body, nil
}

// parseEventFilter turns the events query values ("layers,switch", maybe
// repeated) into a set; nil means every event.
func parseEventFilter(values []string) (map[string]bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	if len(values) > maxEventFilter {
		return nil, Errorf(400, "bad_events", "too many event names")
	}
	set := map[string]bool{}
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			if err := checkEventName(strings.TrimSpace(name)); err != nil {
				return nil, err
			}
			set[strings.TrimSpace(name)] = true
			if len(set) > maxEventFilter {
				return nil, Errorf(400, "bad_events", "too many event names")
			}
		}
	}
	return set, nil
}

func checkEventName(name string) error {
	if !slices.Contains(EventNames, name) {
		return Errorf(400, "bad_events", "unknown event %.32q; this resource sends: %s", name, strings.Join(EventNames, ", "))
	}
	return nil
}

// createEvents is the draft's way to open an event stream: POST a JSON
// array of the wanted event names (or nothing, for all of them) and GET
// the 201's Location. Here the Location is GET {Location}/events with the
// choice in its query, so nothing is stored per created stream.
func (h *Handler) createEvents(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	id, e := h.lookup(r)
	if e == nil {
		h.refuse(w, "events", ErrNoSession)
		return
	}
	if _, ok := e.s.(EventSource); !ok {
		h.refuse(w, "events", errNoEvents)
		return
	}
	body, err := readJSON(w, r, true)
	if err != nil {
		h.refuse(w, "events", err)
		return
	}
	loc := "/" + h.kind + "/" + e.stream + "/" + id + "/events"
	if body != nil {
		var names []string
		if err := json.Unmarshal(body, &names); err != nil {
			h.refuse(w, "events", Errorf(400, "bad_json", "body must be a JSON array of event names"))
			return
		}
		if len(names) == 0 || len(names) > maxEventFilter {
			h.refuse(w, "events", Errorf(400, "bad_events", "ask for between 1 and %d events", maxEventFilter))
			return
		}
		for _, n := range names {
			if err := checkEventName(n); err != nil {
				h.refuse(w, "events", err)
				return
			}
		}
		// Names are from EventNames: safe in a query without escaping.
		loc += "?events=" + strings.Join(slices.Compact(slices.Sorted(slices.Values(names))), ",")
	}
	h.countControl("events", "created")
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusCreated)
}

// acquireStream reserves one of e's event-stream slots.
func (h *Handler) acquireStream(e *entry) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e.streams >= MaxEventStreams {
		return false
	}
	e.streams++
	return true
}

func (h *Handler) releaseStream(e *entry) {
	h.mu.Lock()
	e.streams--
	h.mu.Unlock()
}

// events serves GET {Location}/events: the session's events as
// text/event-stream (WHATWG HTML, "Server-sent events") until the session
// ends, the client goes or the handler closes.
func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	id, e := h.lookup(r)
	if e == nil {
		h.refuse(w, "events", ErrNoSession)
		return
	}
	src, ok := e.s.(EventSource)
	if !ok {
		h.refuse(w, "events", errNoEvents)
		return
	}
	filter, err := parseEventFilter(r.URL.Query()["events"])
	if err != nil {
		h.refuse(w, "events", err)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}
	if !h.acquireStream(e) {
		h.refuse(w, "events", errStreams)
		return
	}
	log := h.log.With("stream", e.stream, "session", id, "remote", r.RemoteAddr)

	ch, stop := src.Subscribe()
	defer func() {
		// The slot first: once the session sees its subscription let go,
		// a new stream finds the slot free (the test that waits for the
		// one, then opens the other, failed with 429 now and then).
		h.releaseStream(e)
		stop()
	}()

	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		log.Warn("event stream cannot flush", "err", err)
		return
	}
	h.countControl("events", "ok")
	if h.metrics != nil {
		g := h.metrics.streams.WithLabelValues(h.kind)
		g.Inc()
		defer g.Dec()
	}
	log.Debug("event stream open")

	sw := &sseWriter{w: w, rc: rc, log: log, filter: filter}
	moved := func() Event {
		h.mu.Lock()
		defer h.mu.Unlock()
		return e.move
	}
	reason := sw.run(r, ch, e.done, h.closing, e.moved, moved, h.heartbeat)
	log.Debug("event stream closed", "reason", reason)
}

// sseWriter writes one event stream.
type sseWriter struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	log    *slog.Logger
	filter map[string]bool
	buf    []byte
}

// run forwards events and heartbeats until one of the ends, and returns
// why it stopped. When moved closes, the event move returns is sent once
// (the node's "reconnect", which does not come from the session).
func (s *sseWriter) run(r *http.Request, ch <-chan Event, done, closing, moved <-chan struct{}, move func() Event, every time.Duration) string {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-moved:
			moved = nil
			if err := s.event(move()); err != nil {
				return "write_failed"
			}
		case <-r.Context().Done():
			return "client_gone"
		case <-done:
			s.drain(ch)
			return "session_ended"
		case <-closing:
			s.drain(ch)
			return "handler_closed"
		case ev, ok := <-ch:
			if !ok {
				return "session_ended"
			}
			if err := s.event(ev); err != nil {
				return "write_failed"
			}
		case <-tick.C:
			if err := s.write(heartbeat); err != nil {
				return "write_failed"
			}
		}
	}
}

// drain sends what the session queued before it ended (a last
// "reconnect", say), without waiting for more. The channel is bounded by
// the session, and so is this.
func (s *sseWriter) drain(ch <-chan Event) {
	for {
		select {
		case ev, ok := <-ch:
			if !ok || s.event(ev) != nil {
				return
			}
		default:
			return
		}
	}
}

// event writes ev if the filter lets it through. An event the handler
// cannot frame is a bug in the session: it is logged and skipped.
func (s *sseWriter) event(ev Event) error {
	if s.filter != nil && !s.filter[ev.Name] {
		return nil
	}
	b, err := appendEvent(s.buf[:0], ev)
	if err != nil {
		s.log.Warn("event dropped", "event", ev.Name, "err", err)
		return nil
	}
	s.buf = b
	return s.write(b)
}

func (s *sseWriter) write(b []byte) error {
	_ = s.rc.SetWriteDeadline(time.Now().Add(eventWriteTimeout))
	if _, err := s.w.Write(b); err != nil {
		return err
	}
	return s.rc.Flush()
}

// heartbeat is an SSE comment line: clients ignore it.
var heartbeat = []byte(":\n\n")

// appendEvent frames ev: "event: NAME\ndata: JSON\n\n". encoding/json
// escapes every control character, so the data is one line.
func appendEvent(b []byte, ev Event) ([]byte, error) {
	if !eventName.MatchString(ev.Name) {
		return b, errors.New("bad event name")
	}
	data := []byte("{}")
	if ev.Data != nil {
		var err error
		if data, err = json.Marshal(ev.Data); err != nil {
			return b, err
		}
	}
	if len(data) > maxEventData {
		return b, errors.New("event data too large")
	}
	b = append(b, "event: "...)
	b = append(b, ev.Name...)
	b = append(b, "\ndata: "...)
	b = append(b, data...)
	return append(b, "\n\n"...), nil
}

// layer serves POST {Location}/layer: {"rendition":"480p"} pins a rung,
// {"rendition":"auto"} unpins it.
func (h *Handler) layer(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	id, e := h.lookup(r)
	if e == nil {
		h.refuse(w, "layer", ErrNoSession)
		return
	}
	l, ok := e.s.(Layered)
	if !ok {
		h.refuse(w, "layer", errNoLayer)
		return
	}
	body, err := readJSON(w, r, false)
	if err != nil {
		h.refuse(w, "layer", err)
		return
	}
	var req struct {
		Rendition *string `json:"rendition"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		h.refuse(w, "layer", Errorf(400, "bad_json", `body must be a JSON object like {"rendition":"480p"}`))
		return
	}
	if req.Rendition == nil {
		h.refuse(w, "layer", Errorf(400, "bad_json", `missing "rendition": a rendition name or "auto"`))
		return
	}
	name := *req.Rendition
	if !renditionName.MatchString(name) {
		h.refuse(w, "layer", Errorf(400, "bad_rendition", "bad rendition name %.40q", name))
		return
	}
	if !h.allowLayer(e, time.Now()) {
		h.refuse(w, "layer", errLayerRate)
		return
	}
	if err := l.SetLayer(name); err != nil {
		h.refuse(w, "layer", err)
		return
	}
	h.countControl("layer", "ok")
	h.log.Debug("layer selected", "stream", e.stream, "session", id, "rendition", name)
	w.WriteHeader(http.StatusNoContent)
}

// allowLayer counts one layer selection against e's per-second budget.
func (h *Handler) allowLayer(e *entry, now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if now.Sub(e.layerWindow) >= time.Second {
		e.layerWindow, e.layerCount = now, 0
	}
	if e.layerCount >= layerRate {
		return false
	}
	e.layerCount++
	return true
}
