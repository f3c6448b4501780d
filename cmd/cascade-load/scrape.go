package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

func scrape(url string) (string, error) {
	b, err := fetch(context.Background(), url, 5*time.Second)
	return string(b), err
}

// fetch GETs url, within timeout, and returns its body (at most 4 MiB).
func fetch(ctx context.Context, url string, timeout time.Duration) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	return b, nil
}

// metricSum adds the samples of a Prometheus text-format metric whose
// labels contain every one of want (`key="value"`).
func metricSum(text, name string, want ...string) (float64, bool) {
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var labels string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			labels, rest = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
		default:
			continue // another metric with this prefix
		}
		ok := true
		for _, w := range want {
			if !strings.Contains(labels, w) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		fs := strings.Fields(rest)
		if len(fs) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			continue
		}
		sum += v
		found = true
	}
	return sum, found
}

func serverViewers(base string) (int64, error) {
	s, err := scrape(base + "/v1/streams/" + streamName)
	if err != nil {
		return 0, err
	}
	var st struct {
		Viewers int64 `json:"viewers"`
	}
	if err := json.Unmarshal([]byte(s), &st); err != nil {
		return 0, err
	}
	return st.Viewers, nil
}

// runtimeStats are the server's Go runtime figures.
type runtimeStats struct {
	heap, stack, goroutines int64
}

// runtimeMem reads the server's live heap after a forced collection
// (/debug/pprof/heap?gc=1 collects first; its debug text ends with the
// runtime's MemStats), its goroutine stacks and its goroutine count.
func runtimeMem(base string) (runtimeStats, error) {
	var st runtimeStats
	if _, err := scrape(base + "/debug/pprof/heap?gc=1"); err != nil {
		return st, err
	}
	text, err := scrape(base + "/debug/pprof/heap?debug=1")
	if err != nil {
		return st, err
	}
	found := 0
	for _, line := range strings.Split(text, "\n") {
		var v int64
		switch {
		case sscan(line, "# HeapAlloc = %d", &v):
			st.heap = v
			found++
		case sscan(line, "# Stack = %d", &v):
			st.stack = v
			found++
		}
	}
	if found != 2 {
		return st, fmt.Errorf("%s/debug/pprof/heap: no MemStats", base)
	}
	g, err := scrape(base + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return st, err
	}
	if !sscan(g, "goroutine profile: total %d", &st.goroutines) {
		return st, fmt.Errorf("%s/debug/pprof/goroutine: no total", base)
	}
	return st, nil
}

func sscan(s, format string, v *int64) bool {
	n, err := fmt.Sscanf(s, format, v)
	return n == 1 && err == nil
}

// socketBatching is, between two scrapes, the datagrams the shared socket
// sent per sendmmsg(2) call and per message (a UDP GSO run is one message
// of several datagrams); -1 where not known.
func socketBatching(ms0, ms1 string) (perCall, perMessage float64) {
	perCall, perMessage = -1, -1
	delta := func(name string) (float64, bool) {
		a, ok0 := metricSum(ms0, name)
		b, ok1 := metricSum(ms1, name)
		return b - a, ok0 && ok1
	}
	sent, ok1 := delta("cascade_udp_packets_sent_total")
	calls, ok2 := delta("cascade_udp_send_syscalls_total")
	gso, ok3 := delta("cascade_udp_gso_messages_total")
	if !ok1 || !ok2 || calls <= 0 {
		return
	}
	perCall = sent / calls
	if ok3 {
		// Messages: each GSO run is one, every other datagram its own.
		if gsoPackets, ok := delta("cascade_udp_gso_packets_total"); ok {
			if msgs := gso + (sent - gsoPackets); msgs > 0 {
				perMessage = sent / msgs
			}
		}
	}
	return
}
