package node

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/cascade-cdn/cascade/media/mediatest"
)

func TestMetricsExposed(t *testing.T) {
	n := startNode(t)
	publish(t, n, "live", mediatest.PublisherOptions{})
	v := watch(t, n, "live")
	eventually(t, "frames", 10*time.Second, func() bool { return v.VideoFrames.Load() > 10 })
	post(t, n, "/whip/live", "text/plain", "x", nil) // a refused request, counted

	text := metricsText(t, n)
	for _, want := range []string{
		"cascade_publishers 1",
		"cascade_viewers 1",
		"cascade_streams 1",
		`cascade_ingest_packets_total{kind="video",stream="live"}`,
		`cascade_ingest_bytes_total{kind="audio",stream="live"}`,
		`cascade_egress_packets_total{kind="video",stream="live"}`,
		`cascade_egress_bytes_total{kind="video",stream="live"}`,
		`cascade_session_setup_failures_total{protocol="whip",reason="content_type"} 1`,
		`cascade_http_requests_total{code="415",method="POST",route="/whip"} 1`,
		`cascade_http_requests_total{code="201",method="POST",route="/whep"} 1`,
		"cascade_viewer_queue_drops_total",
		"cascade_viewer_nacks_total",
		"cascade_viewer_plis_total",
		"go_goroutines",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The shared socket's writer: the viewer's media went through it.
	for _, name := range []string{"cascade_udp_packets_sent_total", "cascade_udp_send_syscalls_total"} {
		if v := metricValue(t, n, name); v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	for _, name := range []string{"cascade_udp_packets_dropped_total", "cascade_udp_gso_messages_total", "cascade_udp_rtcp_polls_total", "cascade_udp_rtcp_polled_total"} {
		if !strings.Contains(text, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// metricsText returns the node's /metrics exposition.
func metricsText(t *testing.T, n *Node) string {
	t.Helper()
	resp, err := http.Get(n.URL() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
