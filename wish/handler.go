package wish

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MaxBody is the largest offer or fragment accepted (413 above).
const MaxBody = 64 << 10

// streamName is the contract's stream name pattern.
var streamName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidStreamName reports whether name is an acceptable stream name.
func ValidStreamName(name string) bool { return streamName.MatchString(name) }

// Offer is one POSTed offer, checked for size, type and stream name.
type Offer struct {
	Stream string
	SDP    string
	// Token is the bearer token, or "".
	Token string
	Query url.Values
	// Remote is the client's address, for logs.
	Remote string
	// Header is the request's, for placement (a region header).
	Header http.Header
	// Ended must be called once when the session ends, by Close or by
	// itself, from any goroutine; it does not block. It drops the resource.
	Ended func()
}

// Endpoint turns an offer into a session. Implementations may block for
// the ICE gathering of the answer, but must honour ctx.
type Endpoint interface {
	Offer(ctx context.Context, o Offer) (Session, string, error)
}

// Session is one WHIP or WHEP session as the resource table sees it. Its
// methods may be called from any goroutine.
type Session interface {
	// Trickle adds remote candidates.
	Trickle(f Fragment) error
	// Restart restarts ICE with the remote's new credentials in f and
	// returns the answer fragment.
	Restart(f Fragment) (string, error)
	// RemoteUfrag is the remote's current ICE username fragment, to tell a
	// restart from a trickle.
	RemoteUfrag() string
	// Close ends the session at once. Idempotent.
	Close() error
}

// ICEServer is a STUN or TURN server advertised in Link headers.
type ICEServer struct {
	URLs       []string `yaml:"urls"`
	Username   string   `yaml:"username"`
	Credential string   `yaml:"credential"`
}

// Metrics counts WHIP/WHEP HTTP outcomes; one set is shared by both kinds.
type Metrics struct {
	failures *prometheus.CounterVec
	// control counts the extension requests (event streams, layer
	// selection) by outcome: "ok" or the refusal's Error.Metric.
	control *prometheus.CounterVec
	streams *prometheus.GaugeVec
}

// NewMetrics registers the handler's counters with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cascade_session_setup_failures_total",
			Help: "WHIP/WHEP requests refused, by protocol and reason.",
		}, []string{"protocol", "reason"}),
		control: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "cascade_session_control_requests_total",
			Help: "Requests to a session's event stream and layer selection, by protocol, request (events, layer) and outcome (ok or the refusal's reason).",
		}, []string{"protocol", "request", "outcome"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "cascade_session_event_streams",
			Help: "Open server-sent event streams, by protocol.",
		}, []string{"protocol"}),
	}
	reg.MustRegister(m.failures, m.control, m.streams)
	return m
}

type entry struct {
	s      Session
	stream string
	// done is closed when the resource goes away (DELETE, or the session
	// ended), which ends its event streams.
	done chan struct{}
	// moved is closed when the node asks the session's player to go
	// elsewhere (Reconnect); move is the event then sent on every event
	// stream of the session, open or opened later.
	moved chan struct{}
	// The fields below are guarded by Handler.mu.
	gen     int  // bumped at each ICE restart; part of the ETag
	ended   bool // Ended was called, perhaps before the entry was listed
	gone    bool // done is closed
	move    Event
	isMoved bool // moved is closed
	streams int  // open event streams
	// layerWindow and layerCount rate-limit layer selection.
	layerWindow time.Time
	layerCount  int
}

// Handler serves one protocol's resources: /{kind}/{stream} and
// /{kind}/{stream}/{session}.
type Handler struct {
	kind    string
	ep      Endpoint
	ice     []ICEServer
	log     *slog.Logger
	metrics *Metrics

	// heartbeat is the event streams' keep-alive interval (tests shorten it).
	heartbeat time.Duration

	draining  atomic.Bool
	closing   chan struct{} // closed by Close: ends every event stream
	closeOnce sync.Once
	mu        sync.Mutex
	sessions  map[string]*entry
}

// New returns a handler for kind ("whip" or "whep").
func New(kind string, ep Endpoint, ice []ICEServer, m *Metrics, log *slog.Logger) *Handler {
	return &Handler{
		kind: kind, ep: ep, ice: ice, metrics: m,
		log:       log.With("component", kind),
		sessions:  map[string]*entry{},
		heartbeat: DefaultHeartbeat,
		closing:   make(chan struct{}),
	}
}

// Register mounts the handler on mux.
func (h *Handler) Register(mux *http.ServeMux) {
	base := "/" + h.kind + "/{stream}"
	mux.HandleFunc("POST "+base, h.post)
	mux.HandleFunc("GET "+base, h.empty)
	mux.HandleFunc("OPTIONS "+base, h.options)
	mux.HandleFunc("GET "+base+"/{session}", h.get)
	mux.HandleFunc("PATCH "+base+"/{session}", h.patch)
	mux.HandleFunc("DELETE "+base+"/{session}", h.delete)
	mux.HandleFunc("OPTIONS "+base+"/{session}", h.options)
	mux.HandleFunc("GET "+base+"/{session}/events", h.events)
	mux.HandleFunc("POST "+base+"/{session}/events", h.createEvents)
	mux.HandleFunc("OPTIONS "+base+"/{session}/events", h.optionsJSON)
	mux.HandleFunc("POST "+base+"/{session}/layer", h.layer)
	mux.HandleFunc("OPTIONS "+base+"/{session}/layer", h.optionsJSON)
}

// Drain makes new POSTs fail with 503, for a graceful shutdown.
func (h *Handler) Drain() { h.draining.Store(true) }

// Reconnect asks the player of every session that sends events to start
// a new session elsewhere: a "reconnect" event (events.go) with the URL
// target returns for the session's stream ("" for the endpoint the player
// used), on each of its event streams, open now or opened later. A node
// that drains calls it so that its viewers move before it exits. It
// returns how many sessions were told; the sessions themselves go on until
// their players leave or the handler closes.
func (h *Handler) Reconnect(target func(stream string) string) int {
	h.mu.Lock()
	var todo []*entry
	for _, e := range h.sessions {
		if _, ok := e.s.(EventSource); ok && !e.isMoved && !e.gone {
			todo = append(todo, e)
		}
	}
	h.mu.Unlock()
	urls := map[string]string{} // target may cost a placement: once per stream
	for _, e := range todo {
		u, ok := urls[e.stream]
		if !ok {
			u = target(e.stream)
			urls[e.stream] = u
		}
		h.mu.Lock()
		if !e.isMoved {
			e.move = ReconnectEvent{URL: u}.Event()
			e.isMoved = true
			close(e.moved)
		}
		h.mu.Unlock()
	}
	if h.metrics != nil && len(todo) > 0 {
		h.metrics.control.WithLabelValues(h.kind, "reconnect", "sent").Add(float64(len(todo)))
	}
	h.log.Info("asked players to reconnect elsewhere", "sessions", len(todo), "streams", len(urls))
	return len(todo)
}

// Sessions returns the number of open sessions.
func (h *Handler) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// Close ends every session and event stream; each Close waits for its
// session's goroutines.
func (h *Handler) Close() {
	h.Drain()
	h.closeOnce.Do(func() { close(h.closing) })
	h.mu.Lock()
	all := make([]Session, 0, len(h.sessions))
	for _, e := range h.sessions {
		all = append(all, e.s)
	}
	h.mu.Unlock()
	for _, s := range all {
		s.Close()
	}
}

func (h *Handler) fail(w http.ResponseWriter, err error) {
	e := asError(err)
	if h.metrics != nil && e.Status != http.StatusTemporaryRedirect { // a redirect is not a failure
		h.metrics.failures.WithLabelValues(h.kind, e.Metric).Inc()
	}
	h.reply(w, err, e)
}

// reply writes the error response for err, already mapped to e.
func (h *Handler) reply(w http.ResponseWriter, err error, e *Error) {
	if e.Status >= 500 {
		h.log.Error("request failed", "err", err)
	}
	switch e.Status {
	case http.StatusTemporaryRedirect:
		w.Header().Set("Location", e.Location)
	case http.StatusServiceUnavailable:
		w.Header().Set("Retry-After", "5")
	case http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(e.Status)
	io.WriteString(w, e.Reason+"\n")
}

func (h *Handler) cors(w http.ResponseWriter) {
	hd := w.Header()
	hd.Set("Access-Control-Allow-Origin", "*")
	hd.Set("Access-Control-Allow-Methods", "POST, GET, PATCH, DELETE, OPTIONS")
	hd.Set("Access-Control-Allow-Headers", "Authorization, Content-Type, If-Match")
	hd.Set("Access-Control-Expose-Headers", "Location, ETag, Link, Accept-Patch")
}

// linkHeaders advertises the ICE servers (RFC 9725 section 4.6).
func (h *Handler) linkHeaders(w http.ResponseWriter) {
	for _, s := range h.ice {
		for _, u := range s.URLs {
			v := "<" + u + `>; rel="ice-server"`
			if s.Username != "" {
				v += `; username="` + s.Username + `"; credential="` + s.Credential + `"; credential-type="password"`
			}
			w.Header().Add("Link", v)
		}
	}
}

func (h *Handler) options(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	w.Header().Set("Accept-Post", "application/sdp")
	w.Header().Set("Accept-Patch", "application/trickle-ice-sdpfrag")
	h.linkHeaders(w)
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) empty(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	if !ValidStreamName(r.PathValue("stream")) {
		h.fail(w, Errorf(400, "bad_stream", "bad stream name"))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// readBody enforces the content type and size limit.
func readBody(w http.ResponseWriter, r *http.Request, want string) (string, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != want {
		return "", Errorf(415, "content_type", "content type must be %s", want)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", Errorf(413, "too_large", "body larger than %d bytes", MaxBody)
		}
		return "", Errorf(400, "bad_body", "cannot read body")
	}
	return string(body), nil
}

func bearer(r *http.Request) string {
	a := r.Header.Get("Authorization")
	if len(a) > 7 && strings.EqualFold(a[:7], "bearer ") {
		return strings.TrimSpace(a[7:])
	}
	return ""
}

func (h *Handler) post(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	stream := r.PathValue("stream")
	if !ValidStreamName(stream) {
		h.fail(w, Errorf(400, "bad_stream", "bad stream name"))
		return
	}
	if h.draining.Load() {
		h.fail(w, ErrDraining)
		return
	}
	body, err := readBody(w, r, "application/sdp")
	if err != nil {
		h.fail(w, err)
		return
	}
	id := newID()
	e := &entry{stream: stream, done: make(chan struct{}), moved: make(chan struct{})}
	ended := func() { // the session ended: drop its resource
		h.mu.Lock()
		e.ended = true
		h.dropLocked(id, e)
		h.mu.Unlock()
	}
	sess, answer, err := h.ep.Offer(r.Context(), Offer{
		Stream: stream, SDP: body, Token: bearer(r), Query: r.URL.Query(), Remote: r.RemoteAddr, Header: r.Header, Ended: ended,
	})
	if err != nil {
		h.fail(w, err)
		return
	}
	h.mu.Lock()
	e.s = sess
	if !e.ended {
		h.sessions[id] = e
	}
	h.mu.Unlock()

	loc := "/" + h.kind + "/" + stream + "/" + id
	w.Header().Set("Location", loc)
	w.Header().Set("ETag", etag(id, 0))
	w.Header().Set("Content-Type", "application/sdp")
	w.Header().Set("Accept-Patch", "application/trickle-ice-sdpfrag")
	h.linkHeaders(w)
	h.extensionLinks(w, loc, sess)
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, answer)
}

func (h *Handler) lookup(r *http.Request) (string, *entry) {
	id := r.PathValue("session")
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.sessions[id]
	if e == nil || e.stream != r.PathValue("stream") {
		return id, nil
	}
	return id, e
}

func (h *Handler) get(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	if _, e := h.lookup(r); e == nil {
		h.fail(w, ErrNoSession)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *Handler) delete(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	id, e := h.lookup(r)
	if e == nil {
		h.fail(w, ErrNoSession)
		return
	}
	h.mu.Lock()
	h.dropLocked(id, e)
	h.mu.Unlock()
	e.s.Close()
	// Exactly 200: OBS treats any other success code as a failure.
	w.WriteHeader(http.StatusOK)
}

// patch handles trickle ICE and ICE restart (RFC 9725 section 4.3).
func (h *Handler) patch(w http.ResponseWriter, r *http.Request) {
	h.cors(w)
	id, e := h.lookup(r)
	if e == nil {
		h.fail(w, ErrNoSession)
		return
	}
	body, err := readBody(w, r, "application/trickle-ice-sdpfrag")
	if err != nil {
		h.fail(w, err)
		return
	}
	frag, err := ParseFragment(body)
	if err != nil {
		h.fail(w, err)
		return
	}
	h.mu.Lock()
	current := etag(id, e.gen)
	h.mu.Unlock()
	match := r.Header.Get("If-Match")
	restart := frag.Ufrag != "" && frag.Ufrag != e.s.RemoteUfrag()
	if restart && match == "" {
		h.fail(w, Errorf(428, "precondition_required", "ICE restart needs If-Match"))
		return
	}
	if match != "" && match != "*" && match != current {
		h.fail(w, Errorf(412, "precondition_failed", "ETag does not match the session"))
		return
	}
	if !restart {
		if err := e.s.Trickle(frag); err != nil {
			h.fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	answer, err := e.s.Restart(frag)
	if err != nil {
		h.fail(w, err)
		return
	}
	h.mu.Lock()
	e.gen++
	tag := etag(id, e.gen)
	h.mu.Unlock()
	w.Header().Set("ETag", tag)
	w.Header().Set("Content-Type", "application/trickle-ice-sdpfrag")
	w.WriteHeader(http.StatusOK)
	io.WriteString(w, answer)
}

// dropLocked removes e's resource, if still listed, and ends its event
// streams. h.mu is held.
func (h *Handler) dropLocked(id string, e *entry) {
	if h.sessions[id] == e {
		delete(h.sessions, id)
	}
	if !e.gone {
		e.gone = true
		close(e.done)
	}
}

func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
