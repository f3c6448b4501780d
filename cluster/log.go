package cluster

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// mlWriter adapts memberlist's *log.Logger lines ("[WARN] memberlist: …")
// to slog. It is more than slog.NewLogLogger because memberlist reports
// refused peers only in its log: lines about a wrong key or label are
// counted in cascade_cluster_bad_messages_total. Lines are rate-limited per
// kind, since a peer with the wrong key retries every probe interval.
type mlWriter struct {
	log   *slog.Logger
	m     *metrics
	limit *limiter
}

func (w mlWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	if strings.HasPrefix(line, "[") {
		if i := strings.IndexByte(line, ']'); i > 0 {
			switch line[1:i] {
			case "DEBUG":
				level = slog.LevelDebug
			case "INFO":
				level = slog.LevelInfo
			default: // WARN, ERR, ERROR: a peer's failure is not ours
				level = slog.LevelWarn
			}
			line = strings.TrimSpace(line[i+1:])
		}
	}
	line = strings.TrimPrefix(line, "memberlist: ")
	lower := strings.ToLower(line)
	reason := ""
	switch {
	case strings.Contains(lower, "decrypt") || strings.Contains(lower, "encrypt") || strings.Contains(lower, "no installed keys"):
		reason = reasonKey
	case strings.Contains(lower, "label"):
		reason = reasonLabel
	}
	if reason != "" {
		w.m.bad.WithLabelValues(reason).Inc()
		if w.limit.allow("refused "+reason, time.Now()) {
			w.log.Warn("refused gossip from a peer", "reason", reason, "detail", line)
		}
		return len(p), nil
	}
	if level == slog.LevelDebug {
		if w.log.Enabled(context.Background(), slog.LevelDebug) {
			w.log.Debug(line)
		}
		return len(p), nil
	}
	key := line
	if len(key) > 32 {
		key = key[:32]
	}
	if w.limit.allow(key, time.Now()) {
		w.log.Log(context.Background(), level, line)
	}
	return len(p), nil
}

// limiter allows one event per key per interval, with a bounded key set.
type limiter struct {
	mu    sync.Mutex
	every time.Duration
	last  map[string]time.Time
}

func newLimiter(every time.Duration) *limiter {
	return &limiter{every: every, last: map[string]time.Time{}}
}

func (l *limiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		return false
	}
	if len(l.last) >= 256 {
		for k, t := range l.last {
			if now.Sub(t) >= l.every {
				delete(l.last, k)
			}
		}
		if len(l.last) >= 256 {
			return false
		}
	}
	l.last[key] = now
	return true
}
