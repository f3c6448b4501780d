package abr

import (
	"math"
	"time"
)

// bucket is the meters' resolution: fine enough to judge the second half of
// a probe, coarse enough that a 2 s history is a small fixed array.
const (
	bucket   = 50 * time.Millisecond
	nBuckets = 40
)

// meter counts events (bytes, packets, NACKs) in fixed time buckets over
// the last nBuckets × bucket. It never allocates, and work per call is
// bounded by nBuckets however far time jumps.
type meter struct {
	base time.Time // bucket 0 starts here; the controller's clock never goes before it
	head int64     // index of the newest bucket
	v    [nBuckets]int64
}

func (m *meter) index(now time.Time) int64 { return int64(now.Sub(m.base) / bucket) }

// advance zeroes the buckets between the newest one and i.
func (m *meter) advance(i int64) {
	if i <= m.head {
		return
	}
	if i-m.head >= nBuckets {
		m.v = [nBuckets]int64{}
	} else {
		for j := m.head + 1; j <= i; j++ {
			m.v[j%nBuckets] = 0
		}
	}
	m.head = i
}

func (m *meter) add(now time.Time, n int64) {
	if n <= 0 {
		return
	}
	i := m.index(now)
	m.advance(i)
	p := &m.v[i%nBuckets]
	if *p > math.MaxInt64-n {
		*p = math.MaxInt64
		return
	}
	*p += n
}

// sum returns the count over the w before end (at most the history) and
// the span it covers. end must not be after now, which is the newest bucket.
func (m *meter) sum(now, end time.Time, w time.Duration) (total int64, span time.Duration) {
	i := m.index(now)
	m.advance(i)
	e := min(m.index(end), i)
	start := max(e-max(int64(w/bucket), 1)+1, i-nBuckets+1, 0)
	for j := start; j <= e; j++ {
		v := m.v[j%nBuckets]
		if total > math.MaxInt64-v {
			total = math.MaxInt64
			break
		}
		total += v
	}
	// Right after a bucket boundary the span is nearly empty; a floor of
	// one bucket keeps one early report from reading as a huge rate.
	return total, max(end.Sub(m.base.Add(time.Duration(start)*bucket)), bucket)
}

// rate returns the count per second over the w before end, times scale (8
// turns bytes into bits).
func (m *meter) rate(now, end time.Time, w time.Duration, scale float64) float64 {
	n, span := m.sum(now, end, w)
	return float64(n) * scale / span.Seconds()
}

// reports is the history of acknowledged bytes as the receiver's feedback
// brings them. Each report covers the time since the one before, so a rate
// between two reports is exact, where buckets would alias against the
// feedback's 50–100 ms cadence (a 300 ms window holding three 100 ms
// reports reads 20 % high or low).
type reports struct {
	base  time.Time
	t     [nReports]time.Duration // since base
	cum   [nReports]int64         // total bytes up to and including report i
	head  int                     // newest
	n     int
	total int64
}

// nReports and reportGap bound the history: reports closer than reportGap
// to the one before the newest are merged into it, so the history spans
// at least nReports × reportGap / 2.
const (
	nReports  = 128
	reportGap = 40 * time.Millisecond
	// reportsStale: when feedback stops, the silence counts as nothing
	// delivered once it is this old.
	reportsStale = 300 * time.Millisecond
)

func (r *reports) init(now time.Time) {
	r.base, r.n = now, 1
}

// add counts n at now, and returns the index of the report that holds it.
func (r *reports) add(now time.Time, n int64) int {
	if r.total > math.MaxInt64-n {
		r.total = math.MaxInt64
	} else {
		r.total += n
	}
	t := now.Sub(r.base)
	prev := (r.head + nReports - 1) % nReports
	if r.n >= 2 && t-r.t[prev] <= reportGap {
		r.t[r.head], r.cum[r.head] = t, r.total
		return r.head
	}
	r.head = (r.head + 1) % nReports
	r.t[r.head], r.cum[r.head] = t, r.total
	r.n = min(r.n+1, nReports)
	return r.head
}

// last is the time of the newest report.
func (r *reports) last() time.Time { return r.base.Add(r.t[r.head]) }

// rate returns bit/s over at least the w before the newest report (or
// before now, once feedback has been silent for reportsStale).
func (r *reports) rate(now time.Time, w time.Duration) float64 {
	k, span, _ := r.window(now, w)
	if span <= 0 {
		return 0
	}
	return float64(r.cum[r.head]-r.cum[k]) * 8 / span.Seconds()
}

// window returns the newest report at least w before the newest one (or
// before now, once feedback has been silent for reportsStale, which stale
// says), and the time from it to that end.
func (r *reports) window(now time.Time, w time.Duration) (k int, span time.Duration, stale bool) {
	end := r.t[r.head]
	if n := now.Sub(r.base); n-end > reportsStale {
		end, stale = n, true
	}
	from := end - w
	k = r.head
	for range r.n - 1 {
		if r.t[k] <= from {
			break
		}
		k = (k + nReports - 1) % nReports
	}
	return k, end - r.t[k], stale
}

// received is the receiver's own timing of what feedback acknowledged:
// each report's wire bytes, and the span of the receiver's clock they came
// in over (peer.Delivery). Reports are picked by their arrival, as in
// reports, but the rate is the bytes over the receiver's span, which
// feedback arriving late or bunched does not change: a 300 ms window of
// feedback that arrived 30 ms bunched reads 10 % fast by its arrival.
type received struct {
	reports
	// span is the receive time up to and including report i, µs, in
	// uint32 arithmetic: only differences over a window are read.
	span  [nReports]uint32
	total uint32
}

func (r *received) add(now time.Time, wire int64, span time.Duration) {
	i := r.reports.add(now, wire)
	r.total += uint32(span / time.Microsecond)
	r.span[i] = r.total
}

// rate returns bit/s by the receiver's clock over the reports of at least
// the w before the newest, and whether that is known: the receiver timed
// at least half of w, and feedback has not stopped.
func (r *received) rate(now time.Time, w time.Duration) (float64, bool) {
	k, _, stale := r.window(now, w)
	us := r.span[r.head] - r.span[k]
	if stale || time.Duration(us)*time.Microsecond < w/2 {
		return 0, false
	}
	return float64(r.cum[r.head]-r.cum[k]) * 8 / (float64(us) / 1e6), true
}
