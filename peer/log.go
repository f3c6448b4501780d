package peer

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// slogFactory adapts pion's LoggerFactory to slog. pion's Debug and Trace
// go to slog's Debug; its chatter never reaches Info.
type slogFactory struct{ log *slog.Logger }

// LoggerFactory returns a pion LoggerFactory writing to log.
func LoggerFactory(log *slog.Logger) *slogFactory {
	return &slogFactory{log: log.With("component", "pion")}
}

func (f *slogFactory) NewLogger(scope string) logging.LeveledLogger {
	return &slogLogger{log: f.log.With("scope", scope)}
}

type slogLogger struct{ log *slog.Logger }

func (l *slogLogger) logf(level slog.Level, format string, args ...any) {
	if l.log.Enabled(context.Background(), level) {
		l.log.Log(context.Background(), level, fmt.Sprintf(format, args...))
	}
}

func (l *slogLogger) Trace(msg string)                  { l.logf(slog.LevelDebug-4, "%s", msg) }
func (l *slogLogger) Tracef(format string, args ...any) { l.logf(slog.LevelDebug-4, format, args...) }
func (l *slogLogger) Debug(msg string)                  { l.logf(slog.LevelDebug, "%s", msg) }
func (l *slogLogger) Debugf(format string, args ...any) { l.logf(slog.LevelDebug, format, args...) }
func (l *slogLogger) Info(msg string)                   { l.logf(slog.LevelDebug, "%s", msg) }
func (l *slogLogger) Infof(format string, args ...any)  { l.logf(slog.LevelDebug, format, args...) }
func (l *slogLogger) Warn(msg string)                   { l.logf(slog.LevelWarn, "%s", msg) }
func (l *slogLogger) Warnf(format string, args ...any)  { l.logf(slog.LevelWarn, format, args...) }
func (l *slogLogger) Error(msg string)                  { l.logf(slog.LevelError, "%s", msg) }
func (l *slogLogger) Errorf(format string, args ...any) { l.logf(slog.LevelError, format, args...) }
