package transcode

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the transcoder's Prometheus series, shared by every pipeline.
type Metrics struct {
	framesIn     *prometheus.CounterVec   // stream
	decodeErrors *prometheus.CounterVec   // stream
	framesOut    *prometheus.CounterVec   // stream, rung
	dropped      *prometheus.CounterVec   // stream, rung
	keyframes    *prometheus.CounterVec   // stream, rung
	bytesOut     *prometheus.CounterVec   // stream, rung
	realtime     *prometheus.GaugeVec     // stream
	encodeTime   *prometheus.HistogramVec // rung
	latency      *prometheus.HistogramVec // rung
}

// NewMetrics registers the transcoder's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	s, sr := []string{"stream"}, []string{"stream", "rung"}
	m := &Metrics{
		framesIn:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_transcode_frames_in_total", Help: "Source frames decoded."}, s),
		decodeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_transcode_decode_errors_total", Help: "Access units the decoder refused; the rungs restart at an IDR."}, s),
		framesOut:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_transcode_frames_out_total", Help: "Frames encoded per rung."}, sr),
		dropped:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_transcode_frames_dropped_total", Help: "Frames a rung skipped because the transcoder fell behind real time."}, sr),
		keyframes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_transcode_keyframes_total", Help: "IDRs encoded per rung."}, sr),
		bytesOut:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_transcode_bytes_out_total", Help: "Encoded bytes per rung (its bit rate, as a rate)."}, sr),
		realtime: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cascade_transcode_realtime_factor",
			Help: "Content seconds transcoded per second of transcoder work, over the last few seconds; below 1 the stream cannot keep up."}, s),
		encodeTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cascade_transcode_encode_seconds", Help: "Scale and encode time of one frame, per rung.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 12)}, []string{"rung"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "cascade_transcode_latency_seconds", Help: "Time from a source frame's last packet reaching the node to its encoded rung frame being published.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 12)}, []string{"rung"}),
	}
	reg.MustRegister(m.framesIn, m.decodeErrors, m.framesOut, m.dropped, m.keyframes, m.bytesOut, m.realtime, m.encodeTime, m.latency)
	return m
}

// Forget drops an ended stream's series.
func (m *Metrics) Forget(stream string) {
	l := prometheus.Labels{"stream": stream}
	for _, v := range []*prometheus.CounterVec{m.framesIn, m.decodeErrors, m.framesOut, m.dropped, m.keyframes, m.bytesOut} {
		v.DeletePartialMatch(l)
	}
	m.realtime.DeletePartialMatch(l)
}
