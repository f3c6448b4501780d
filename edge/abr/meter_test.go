package abr

import (
	"math"
	"testing"
	"time"
)

// TestReceivedRate: the rate by the receiver's clock is the bytes over the
// receive spans of the reports in the window, however their arrival
// bunched; it is unknown when the receiver timed less than half the
// window, or feedback stopped. The span's running total wraps in uint32
// without harm.
func TestReceivedRate(t *testing.T) {
	var r received
	r.init(t0)
	r.total = math.MaxUint32 - 150_000 // wraps 150 ms in
	r.span[r.head] = r.total
	now := t0
	// 12 500 wire bytes per 100 ms of receive time: 1 Mbit/s. Two reports
	// of every four arrive 35–40 ms late.
	delays := []time.Duration{40, 35, 0, 0}
	worst := 0.0
	for i := 1; i <= 20; i++ {
		now = t0.Add(time.Duration(i)*100*time.Millisecond + delays[i%4]*time.Millisecond)
		r.add(now, 12_500, 100*time.Millisecond)
		if i < 3 {
			continue
		}
		got, ok := r.rate(now, 200*time.Millisecond)
		if !ok || math.Abs(got-1e6) > 1 {
			t.Fatalf("report %d: %.0f bit/s (known %v), want 1 Mbit/s", i, got, ok)
		}
		worst = max(worst, r.reports.rate(now, 200*time.Millisecond)/1e6)
	}
	if worst < 1.1 {
		t.Fatalf("by arrival at most %.2f × the rate: the bunching this test is about is missing", worst)
	}
	if _, ok := r.rate(now.Add(reportsStale+time.Millisecond), 200*time.Millisecond); ok {
		t.Fatal("a rate after feedback stopped")
	}
	// Reports whose packets the receiver could time only in part (gaps in
	// the feedback): 20 ms of each 100.
	for range 5 {
		now = now.Add(100 * time.Millisecond)
		r.add(now, 2_500, 20*time.Millisecond)
	}
	if got, ok := r.rate(now, 300*time.Millisecond); ok {
		t.Fatalf("%.0f bit/s over 60 ms of a 300 ms window", got)
	}
}
