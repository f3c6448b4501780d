package transcode

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/ladder"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// BenchmarkLadder runs the whole default ladder on generated 5 s inputs
// with motion and grain (testsrc2 + noise; 720p at 3 Mbps, 1080p at
// 6 Mbps, High profile with B-frames), offline and as fast as it
// goes: decode once, then scale, encode and packetize every rung below the
// source, on the shared keyframe clock, exactly as a live pipeline does.
//
// It reports core-seconds of CPU per content-second (the whole process:
// libx264's threads included), the realtime factor (content seconds per
// wall second), per-frame transcoding latency (median and p99: decode
// plus every rung), and the ffmpeg CLI's CPU for the same ladder with the
// same x264 settings, measured in the same run, as a ratio.
func BenchmarkLadder(b *testing.B) {
	dir := b.TempDir()
	for _, src := range []struct{ size, bitrate string }{{"1280x720", "3M"}, {"1920x1080", "6M"}} {
		// OBS-like sources: High profile with B-frames at the bit rates
		// OBS users stream at, made once for every preset that runs.
		var in *transcodetest.Input
		input := func(b *testing.B) *transcodetest.Input {
			if in == nil {
				sub := filepath.Join(dir, src.size)
				if err := os.MkdirAll(sub, 0o755); err != nil {
					b.Fatal(err)
				}
				var err error
				in, err = transcodetest.Generate(sub, transcodetest.Clip{Seconds: "5", Size: src.size, Profile: "high", Noise: true, Bitrate: src.bitrate})
				if errors.Is(err, transcodetest.ErrNoFFmpeg) {
					b.Skip(err)
				} else if err != nil {
					b.Fatal(err)
				}
			}
			return in
		}
		for _, preset := range []string{"veryfast", "superfast", "ultrafast"} {
			benchmarkLadder(b, src.size, preset, input)
		}
	}
}

func benchmarkLadder(b *testing.B, size, preset string, input func(*testing.B) *transcodetest.Input) {
	b.Run(size+"/"+preset, func(b *testing.B) {
		in := input(b)
		aus, pts, mkv := in.AUs, in.PTS, in.MKV
		content := 5.0
		cfg := DefaultConfig()
		cfg.Preset = preset
		var lat []time.Duration
		b.ResetTimer()
		cpu0, wall0 := transcodetest.CPUTime(), time.Now()
		for i := 0; i < b.N; i++ {
			lat = append(lat, transcodeOffline(b, cfg, aus, pts)...)
		}
		cpu, wall := transcodetest.CPUTime()-cpu0, time.Since(wall0)
		b.StopTimer()
		slices.Sort(lat)
		coreS := cpu.Seconds() / (content * float64(b.N))
		b.ReportMetric(coreS, "core-s/content-s")
		b.ReportMetric(content*float64(b.N)/wall.Seconds(), "x-realtime")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-p50")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99")
		if ff := ffmpegLadder(b, mkv, size, cfg); ff > 0 {
			b.ReportMetric(ff/content, "ffmpeg-core-s/content-s")
			b.ReportMetric(coreS/(ff/content), "ratio-vs-ffmpeg")
		}
	})
}

// transcodeOffline decodes aus once and encodes every rung; it returns
// each frame's transcoding time.
func transcodeOffline(b *testing.B, cfg Config, aus [][]byte, pts []int64) []time.Duration {
	dec, err := av.NewDecoder("H264")
	if err != nil {
		b.Fatal(err)
	}
	defer dec.Close()
	p := &Pipeline{cfg: cfg, stream: "bench", codec: "H264", m: NewMetrics(prometheus.NewRegistry()), dec: dec,
		clock: ladder.NewKeyClock(int64(cfg.KeyframeInterval.Seconds() * 90000)),
		log:   slog.New(slog.NewTextHandler(io.Discard, nil))}
	p.framesIn, p.decodeErrors = p.m.framesIn.WithLabelValues("bench"), p.m.decodeErrors.WithLabelValues("bench")
	p.crew = newCrew(crewHelpers(), len(cfg.Ladder)+1)
	defer p.crew.close()
	defer p.closeRungs()
	var lat []time.Duration
	for i, au := range aus {
		start := time.Now()
		if err := dec.Decode(au, pts[i], p.frame); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	return lat
}

// ffmpegLadder runs the same ladder with the ffmpeg CLI and returns its
// CPU seconds, or 0 if it cannot run.
func ffmpegLadder(b *testing.B, mkv, size string, cfg Config) float64 {
	w, h, _ := strings.Cut(size, "x")
	sw, _ := strconv.Atoi(w)
	sh, _ := strconv.Atoi(h)
	plan, err := ladder.Plan(cfg.Ladder, ladder.Source{Codec: "H264", Width: sw, Height: sh})
	if err != nil {
		b.Fatal(err)
	}
	cpu, err := transcodetest.FFmpegLadder(mkv, plan[1:], cfg.Preset)
	if err != nil {
		b.Logf("ffmpeg CLI comparison skipped: %v", err)
		return 0
	}
	return cpu.Seconds()
}
