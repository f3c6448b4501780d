package rtsp

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	conns        prometheus.Gauge
	sessions     *prometheus.GaugeVec   // kind: publish, pull
	requests     *prometheus.CounterVec // method, code
	refused      *prometheus.CounterVec // reason
	ingest       *prometheus.CounterVec // stream, kind: payload bytes from RTSP sources
	relayReaders prometheus.Gauge
	relayPackets prometheus.Counter
	relayBytes   prometheus.Counter
	decodeErrors prometheus.Counter
	lost         prometheus.Counter
}

// newMetrics registers the RTSP metrics; totals reports the bytes in and
// out of every RTSP connection so far.
func newMetrics(pr prometheus.Registerer, totals func() (in, out uint64)) *metrics {
	m := &metrics{
		conns:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_rtsp_connections", Help: "Open RTSP connections."}),
		sessions:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cascade_rtsp_sessions", Help: "RTSP sources feeding streams, by kind (publish, pull)."}, []string{"kind"}),
		requests:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_rtsp_requests_total", Help: "RTSP requests answered, by method and status code."}, []string{"method", "code"}),
		refused:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_rtsp_refused_total", Help: "RTSP publishes and reads refused, by reason."}, []string{"reason"}),
		ingest:       prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_rtsp_ingest_bytes_total", Help: "RTP payload bytes received from RTSP sources, by stream and kind."}, []string{"stream", "kind"}),
		relayReaders: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_rtsp_relay_readers", Help: "RTSP sessions reading a stream (edges and other clients)."}),
		relayPackets: prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_rtsp_relay_packets_total", Help: "RTP packets handed to RTSP relay readers (once per media, before fan-out)."}),
		relayBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_relay_bytes_out_total",
			Help: "RTP payload bytes sent to relay readers (edges), counted once per reader: the relay bit rate out."}),
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_rtsp_decode_errors_total", Help: "Malformed RTP/RTCP or media from RTSP clients, dropped."}),
		lost:         prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_rtsp_packets_lost_total", Help: "RTP packets lost between RTSP sources and this node."}),
	}
	in := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "cascade_rtsp_received_bytes_total", Help: "Bytes received on RTSP connections (TCP, interleaved media included)."},
		func() float64 { i, _ := totals(); return float64(i) })
	out := prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "cascade_rtsp_sent_bytes_total", Help: "Bytes sent on RTSP connections (TCP, interleaved media included)."},
		func() float64 { _, o := totals(); return float64(o) })
	pr.MustRegister(m.conns, m.sessions, m.requests, m.refused, m.ingest, m.relayReaders, m.relayPackets, m.relayBytes, m.decodeErrors, m.lost, in, out)
	return m
}

// received returns the byte counter callback of one stream's source.
func received(vec *prometheus.CounterVec, stream string) func(kind string, n int) {
	video, audio := vec.WithLabelValues(stream, "video"), vec.WithLabelValues(stream, "audio")
	return func(kind string, n int) {
		if kind == "video" {
			video.Add(float64(n))
		} else {
			audio.Add(float64(n))
		}
	}
}

// Forget drops an ended stream's per-stream series.
func (s *Server) Forget(stream string) {
	s.m.ingest.DeletePartialMatch(prometheus.Labels{"stream": stream})
}
