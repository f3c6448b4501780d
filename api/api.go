// Package api serves the node's JSON API (/v1/streams) and its health
// endpoints (/healthz, /readyz).
package api

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"sync/atomic"

	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/wish"
)

// API answers the JSON endpoints.
type API struct {
	reg      *registry.Registry
	log      *slog.Logger
	draining atomic.Bool
}

// New returns the API over reg.
func New(reg *registry.Registry, log *slog.Logger) *API {
	return &API{reg: reg, log: log.With("component", "api")}
}

// Register mounts the API on mux.
func (a *API) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/streams", a.list)
	mux.HandleFunc("GET /v1/streams/{stream}", a.get)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", a.ready)
}

// Drain makes /readyz fail.
func (a *API) Drain() { a.draining.Store(true) }

// Rendition is one rung of a stream's ladder as the API shows it.
type Rendition struct {
	Name    string `json:"name"`
	Codec   string `json:"codec"`
	Width   int    `json:"width"`
	Height  int    `json:"height"`
	Bitrate int64  `json:"bitrate"`
	// Reencoded is set on "source" when the publisher's stream is not
	// safe for WebRTC (B-frames, long GOPs) and viewers get a re-encode.
	Reencoded bool `json:"reencoded,omitempty"`
}

// Stream is the JSON shape of GET /v1/streams/{stream} (DESIGN.md).
type Stream struct {
	Name       string      `json:"name"`
	Source     string      `json:"source"`
	Live       bool        `json:"live"`
	Renditions []Rendition `json:"renditions"`
	Audio      *Audio      `json:"audio"`
	Viewers    int64       `json:"viewers"`
	Publisher  *Publisher  `json:"publisher,omitempty"`
}

// Audio describes the stream's audio.
type Audio struct {
	Codec string `json:"codec"`
}

// Publisher describes the current publisher.
type Publisher struct {
	Since string `json:"since"`
}

func toJSON(s *registry.Stream) Stream {
	i := s.Info()
	out := Stream{Name: i.Name, Source: i.Source, Live: i.Source != "", Viewers: i.Viewers,
		Renditions: []Rendition{}}
	if i.Video.Packets > 0 {
		out.Renditions = append(out.Renditions, Rendition{
			Name: "source", Codec: "H264", Width: i.Width, Height: i.Height, Bitrate: s.VideoBitrate(),
		})
	}
	for _, r := range s.Renditions() {
		if r.Name == "source" { // described above, from the publisher's stream
			if len(out.Renditions) > 0 {
				out.Renditions[0].Reencoded = !r.Passthrough
			}
			continue
		}
		out.Renditions = append(out.Renditions, Rendition{Name: r.Name, Codec: "H264", Width: r.Width, Height: r.Height, Bitrate: int64(r.Bitrate)})
	}
	if i.Audio.Packets > 0 {
		out.Audio = &Audio{Codec: "opus"}
	}
	if i.Source != "" {
		out.Publisher = &Publisher{Since: i.Since.UTC().Format("2006-01-02T15:04:05Z")}
	}
	return out
}

func (a *API) list(w http.ResponseWriter, r *http.Request) {
	all := a.reg.List()
	sort.Slice(all, func(i, j int) bool { return all[i].Name < all[j].Name })
	out := struct {
		Streams []Stream `json:"streams"`
	}{Streams: make([]Stream, 0, len(all))}
	for _, s := range all {
		out.Streams = append(out.Streams, toJSON(s))
	}
	writeJSON(w, out)
}

func (a *API) get(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("stream")
	if !wish.ValidStreamName(name) {
		http.Error(w, "bad stream name", http.StatusBadRequest)
		return
	}
	s := a.reg.Get(name)
	if s == nil {
		http.Error(w, "stream not found", http.StatusNotFound)
		return
	}
	writeJSON(w, toJSON(s))
}

func (a *API) ready(w http.ResponseWriter, r *http.Request) {
	if a.draining.Load() {
		http.Error(w, "draining", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ready\n"))
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Access-Control-Allow-Origin", "*")
	json.NewEncoder(w).Encode(v)
}
