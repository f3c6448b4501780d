package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/cascade-cdn/cascade/cluster"
	"github.com/cascade-cdn/cascade/node"
)

// gcPercent is the node's GOGC unless the environment sets one. Most of a
// node's heap is what each viewer keeps for its whole session (its
// transport, rings and controller), and it allocates little per packet:
// collections stay rare and cheap (at 100 viewers, one every 2.6 s of
// about 10 ms of CPU), while Go's default of 100 lets the heap grow to
// twice what is live before one, which doubles what a viewer costs in
// memory. docs/performance.md has the measurements.
const gcPercent = 10

// setGCPercent applies gcPercent, unless GOGC is set.
func setGCPercent(environ []string) {
	for _, kv := range environ {
		if strings.HasPrefix(kv, "GOGC=") {
			return
		}
	}
	debug.SetGCPercent(gcPercent)
}

// run is main without os.Exit, so tests can call it.
func run(args, environ []string, stdout, stderr io.Writer) int {
	role := ""
	if len(args) > 0 && (args[0] == "origin" || args[0] == "edge") {
		role, args = args[0], args[1:]
	}
	cfg, rest, err := load(args, environ, stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "cascade: %v\n", err)
		return 2
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "cascade: unexpected arguments %q (see --help)\n", rest)
		return 2
	}
	if role != "" {
		cfg.Cluster.Role = cluster.Role(role)
	}
	log := newLogger(cfg.Log, stderr)
	setGCPercent(environ)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	n, err := node.New(cfg.Config, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	u := n.URL()
	fmt.Fprintf(stdout, "Cascade is running.\n  streams:  %s/\n  publish:  %s/publish/live\n  watch:    %s/watch/live\n  WHIP:     %s/whip/live   (OBS: Settings > Stream > WHIP)\n  metrics:  %s/metrics\n", u, u, u, u, u)

	<-ctx.Done()
	stop()
	// The drain tells viewers to move to another node and waits for them
	// (drain_timeout at most); a second signal cuts it short.
	log.Info("shutting down: draining", "for at most", cfg.DrainTimeout)
	again, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	n.Shutdown(again)
	log.Info("stopped")
	return 0
}

func newLogger(c LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level)) // validated by load
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
