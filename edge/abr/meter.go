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

func (r *reports) add(now time.Time, n int64) {
	if r.total > math.MaxInt64-n {
		r.total = math.MaxInt64
	} else {
		r.total += n
	}
	t := now.Sub(r.base)
	prev := (r.head + nReports - 1) % nReports
	if r.n >= 2 && t-r.t[prev] <= reportGap {
		r.t[r.head], r.cum[r.head] = t, r.total
		return
	}
	r.head = (r.head + 1) % nReports
	r.t[r.head], r.cum[r.head] = t, r.total
	r.n = min(r.n+1, nReports)
}

// last is the time of the newest report.
func (r *reports) last() time.Time { return r.base.Add(r.t[r.head]) }

// rate returns bit/s over at least the w before the newest report (or
// before now, once feedback has been silent for reportsStale).
func (r *reports) rate(now time.Time, w time.Duration) float64 {
	end := r.t[r.head]
	if n := now.Sub(r.base); n-end > reportsStale {
		end = n
	}
	from := end - w
	k := r.head
	for range r.n - 1 {
		if r.t[k] <= from {
			break
		}
		k = (k + nReports - 1) % nReports
	}
	span := end - r.t[k]
	if span <= 0 {
		return 0
	}
	return float64(r.cum[r.head]-r.cum[k]) * 8 / span.Seconds()
}
