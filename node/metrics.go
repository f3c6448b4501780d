package node

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// instrument counts HTTP requests by route and status code. Routes are the
// first path segment, so stream and session names never become labels.
func instrument(pr prometheus.Registerer, next http.Handler) http.Handler {
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "cascade_http_requests_total", Help: "HTTP requests by route and status code.",
	}, []string{"route", "method", "code"})
	pr.MustRegister(reqs)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		reqs.WithLabelValues(route(r.URL.Path), r.Method, strconv.Itoa(rec.code)).Inc()
	})
}

var knownRoutes = map[string]bool{"whip": true, "whep": true, "v1": true, "watch": true, "publish": true,
	"metrics": true, "healthz": true, "readyz": true, "static": true}

func route(path string) string {
	first, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if first == "" {
		return "/"
	}
	if knownRoutes[first] {
		return "/" + first
	}
	return "other"
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Flush lets server-sent events through the recorder.
func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection (event streams
// set write deadlines through it).
func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
