package abr

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestTrace prints a simulated run tick by tick, for tuning. It runs only
// when asked:
//
//	ABR_TRACE=step:SEED go test -run TestTrace -v ./edge/abr/     the 4 → 0.8 → 4 Mbps link
//	ABR_TRACE=BPS:SEED  go test -run TestTrace -v ./edge/abr/     a constant link, 40 s
//
// ABR_GCC sets the estimator's start, ABR_FROM the first second shown, and
// ABR_ALL=1 shows every tick rather than switches and probes.
func TestTrace(t *testing.T) {
	v := os.Getenv("ABR_TRACE")
	if v == "" {
		t.Skip("set ABR_TRACE to trace a run")
	}
	a, b, _ := strings.Cut(v, ":")
	seed, _ := strconv.ParseUint(b, 10, 64)
	g, _ := strconv.ParseFloat(os.Getenv("ABR_GCC"), 64)
	var r simResult
	if a == "step" {
		var f figures
		f, r = stepRun(seed, func(o *simOptions) { o.gccStart = g })
		t.Logf("%+v", f)
	} else {
		capacity, _ := strconv.ParseFloat(a, 64)
		r = runSim(simOptions{seed: seed, gccStart: g, duration: 40 * time.Second, capacity: func(time.Duration) float64 { return capacity }})
	}
	from, _ := strconv.ParseFloat(os.Getenv("ABR_FROM"), 64)
	for _, k := range r.ticks {
		if k.t.Seconds() < from || !(k.d.Changed || k.d.Probe.Active || os.Getenv("ABR_ALL") != "") {
			continue
		}
		t.Logf("%6.2fs link %5.0fk  %-6s %-13s est %6.0fk  probe %5.0fk  queue %3.0fms  wire %-6s gcc %6.0fk proven %6.0fk trusted %v",
			k.t.Seconds(), k.capacity/1e3, k.d.Target, k.d.Reason, k.d.Estimate/1e3, float64(k.d.Probe.Bitrate)/1e3,
			k.queue*1e3, k.sending, k.gcc/1e3, k.proven/1e3, k.trusted)
	}
	t.Logf("%+v", r.stats)
}
