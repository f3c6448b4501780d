package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/transcode"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestMeasure runs the tool's core on a tiny input of each codec: the
// report has every figure positive and the rungs the ladder plans.
func TestMeasure(t *testing.T) {
	for _, codec := range []string{"H264", "H265"} {
		t.Run(codec, func(t *testing.T) {
			in, err := transcodetest.Generate(t.TempDir(), transcodetest.Clip{Codec: codec, Seconds: "1", Size: "854x480", Profile: "high", NoBFrames: true, Noise: true, Bitrate: "1M"})
			if err == transcodetest.ErrNoFFmpeg {
				t.Skip("ffmpeg not installed")
			}
			if err != nil {
				t.Fatal(err)
			}
			src, err := newSource(codec, "854x480", in)
			if err != nil {
				t.Fatal(err)
			}
			cfg := transcode.DefaultConfig()
			cfg.Preset = "ultrafast"
			// H.265 runs offline, to cover that way of feeding too.
			r, err := measure(src, cfg, runConfig{FFmpeg: true, Quality: true, Offline: codec == "H265"})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", r)
			if r.CoreS <= 0 || r.Realtime <= 0 || r.LatP50 <= 0 || r.LatP99 < r.LatP50 || r.FFmpegCoreS <= 0 || r.Ratio <= 0 || r.ContentS != 1 {
				t.Errorf("report has a figure out of range: %+v", r)
			}
			wantRungs := 2
			if codec == "H265" {
				wantRungs = 3 // its re-encoded source rung is measured too
			}
			if len(r.PSNR) != wantRungs || r.PSNR["360p"] < 25 || r.PSNR["240p"] < 25 || r.KbpsOut["360p"] <= 0 {
				t.Errorf("quality out of range: %v dB at %v kbps", r.PSNR, r.KbpsOut)
			}
			want := "source(passthrough) 854x480, 360p 640x360, 240p 428x240"
			if codec == "H265" {
				want = "source 854x480, 360p 640x360, 240p 428x240"
			}
			if got := strings.Join(r.Rungs, ", "); got != want {
				t.Errorf("rungs %q, want %q", got, want)
			}
			if r.Reencode != (codec == "H265") {
				t.Errorf("source re-encoded: %v", r.Reencode)
			}
			m, ok := median([]result{r, r, {Error: "x"}})
			if !ok || m.CoreS != r.CoreS || m.Run != 0 {
				t.Errorf("median of equal runs: %+v", m)
			}
		})
	}
}
