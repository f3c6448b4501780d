// Command cascade-bench measures what the transcoder's ABR ladder costs.
//
// For each size it generates a source with ffmpeg (testsrc2 with noise, so
// there is motion and grain, 30 fps, a keyframe every second, at the bit
// rate a publisher sends: 6 Mbps at 1080p, 3 Mbps at 720p), then feeds it
// -runs times, in real time, through a media.Hub into the real
// transcode.Pipeline with the default ladder, as a publisher's RTP packets
// would arrive. By default the source is H.264 High profile without
// B-frames, so the source rung passes through and the pipeline encodes the
// rungs below it; -bframes sends OBS's High profile with B-frames and
// -codec H265 an RTSP camera's H.265, which both make the pipeline
// re-encode the source rung as well.
//
// It reports, per run and as the median of each column:
//
//   - core-s: the CPU time (getrusage: user and system, every thread of
//     this process, libx264's included) from the pipeline's start to its
//     last frame, per second of content;
//   - realtime: content seconds per second of pipeline work (decode, scale
//     and encode), the cascade_transcode_realtime_factor metric over the
//     whole run; 1.5 means one stream keeps up with a third to spare;
//   - p50, p99: per-frame latency, from a source frame's last packet
//     entering the hub to its first packet published on the last rung
//     (every rung's, for frames a rung shed), leaving out the first second
//     (its first frame waits for every encoder to open). A re-encoded
//     H.264 source rung is not among the rungs timed (its hub's numbering
//     continues the passthrough's); an H.265 one is;
//   - dropped: rung frames shed because the pipeline fell behind (then
//     core-s is not the full ladder's cost);
//   - ffmpeg: the ffmpeg CLI's CPU per content second for the same ladder
//     (one decode, the same cascade of area scalers, libx264 with the same
//     settings and preset) on the same input, run after the pipeline, and
//     ratio, core-s over it;
//   - others: the CPU the rest of the machine used during the run, in
//     cores (from /proc/stat). Well above 0, the run competed for the
//     cores and its figures are disturbed: -wait-quiet waits for a quiet
//     machine before each run.
//
// -offline feeds each frame as soon as the pipeline is done with the one
// before: no frame is shed however busy the machine, so core-s stays
// comparable between builds; realtime is then content over wall time.
// -quality also measures each rung's mean luma PSNR against the source
// scaled with a Lanczos filter, and its bit rate.
//
// Usage:
//
//	go run ./cmd/cascade-bench [-size 1280x720,1920x1080] [-preset superfast] [-seconds 10] [-runs 3] [-wait-quiet 0.3] [-offline] [-quality] [-json]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cascade-cdn/cascade/transcode"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

func main() { os.Exit(run()) }

type options struct {
	sizes, presets []string
	codec          string
	seconds, runs  int
	bitrate        string
	inputs         string
	quiet          float64
	bframes        bool
	rc             runConfig
	json           bool
}

func run() int {
	var o options
	sizes := flag.String("size", "1280x720,1920x1080", "source sizes, comma-separated")
	presets := flag.String("preset", transcode.DefaultConfig().Preset, "x264 presets, comma-separated")
	flag.StringVar(&o.codec, "codec", "H264", "source codec: H264 or H265")
	flag.IntVar(&o.seconds, "seconds", 10, "content seconds per run")
	flag.IntVar(&o.runs, "runs", 3, "runs per size and preset; the median is reported")
	flag.StringVar(&o.bitrate, "bitrate", "", "source bit rate, e.g. 6M (default: 6M at 1080p and above, 3M at 720p, 1500k below)")
	flag.BoolVar(&o.bframes, "bframes", false, "H.264 source with B-frames (OBS's default): the source rung is then re-encoded")
	flag.BoolVar(&o.rc.FFmpeg, "ffmpeg", true, "also run the ffmpeg CLI on the same ladder and report the ratio")
	flag.BoolVar(&o.rc.Offline, "offline", false, "feed each frame as soon as the pipeline is done with the one before, instead of in real time: no frame is shed, so CPU figures hold on a busy machine; realtime is then content over wall time, and latency is each frame's own work")
	flag.BoolVar(&o.rc.Quality, "quality", false, "also measure each rung's luma PSNR against the source scaled with Lanczos, and its bit rate")
	flag.BoolVar(&o.json, "json", false, "print results as JSON instead of a table")
	flag.Float64Var(&o.quiet, "wait-quiet", 0, "before each run, wait (up to 10 min) until the rest of the machine uses at most this many cores; 0 does not wait")
	flag.StringVar(&o.inputs, "inputs", "", "keep generated inputs in this directory and reuse them (default: a temporary directory)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: cascade-bench [flags]\n\nMeasures the transcoder's ladder: CPU per content second, realtime factor, latency (see go doc ./cmd/cascade-bench).\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	o.sizes, o.presets = strings.Split(*sizes, ","), strings.Split(*presets, ",")
	switch {
	case flag.NArg() > 0:
		return usageErr(fmt.Sprintf("unexpected arguments %q", flag.Args()))
	case o.codec != "H264" && o.codec != "H265":
		return usageErr("-codec must be H264 or H265")
	case o.seconds < 1 || o.seconds > 600 || o.runs < 1 || o.runs > 100:
		return usageErr("-seconds must be 1..600 and -runs 1..100")
	}
	for _, s := range o.sizes {
		var w, h int
		if _, err := fmt.Sscanf(s, "%dx%d", &w, &h); err != nil || w < 16 || h < 16 {
			return usageErr(fmt.Sprintf("-size %q is not WIDTHxHEIGHT", s))
		}
	}

	tmp, err := os.MkdirTemp("", "cascade-bench-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "cascade-bench: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	var all []result
	failed := false
	for _, size := range o.sizes {
		dir := filepath.Join(tmp, size)
		if o.inputs != "" {
			dir = o.inputs
		}
		src, err := generate(dir, o, size)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cascade-bench: %v\n", err)
			return 1
		}
		for _, preset := range o.presets {
			cfg := transcode.DefaultConfig()
			cfg.Preset = preset
			var rs []result
			for i := 1; i <= o.runs; i++ {
				if o.quiet > 0 && !waitQuiet(o.quiet, 10*time.Minute) {
					logf("the machine stayed busy; running anyway")
				}
				logf("%s %s run %d/%d", size, preset, i, o.runs)
				r, err := measure(src, cfg, o.rc)
				r.Run = i
				if err != nil {
					r.Error = err.Error()
					failed = true
					logf("run failed: %v", err)
				}
				rs = append(rs, r)
			}
			all = append(all, rs...)
			if m, ok := median(rs); ok {
				all = append(all, m)
			}
		}
	}
	if o.json {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(all); err != nil {
			fmt.Fprintf(os.Stderr, "cascade-bench: %v\n", err)
			return 1
		}
	} else {
		printTable(os.Stdout, all)
	}
	if failed {
		return 1
	}
	return 0
}

// generate makes the input for one size, or reuses one made before in
// dir, and packetizes it.
func generate(dir string, o options, size string) (*source, error) {
	c := transcodetest.Clip{Codec: o.codec, Seconds: fmt.Sprint(o.seconds), Size: size, Profile: "high",
		NoBFrames: !o.bframes, Noise: true, Bitrate: o.bitrate}
	if c.Bitrate == "" {
		var w, h int
		fmt.Sscanf(size, "%dx%d", &w, &h)
		switch {
		case h >= 1080:
			c.Bitrate = "6M"
		case h >= 720:
			c.Bitrate = "3M"
		default:
			c.Bitrate = "1500k"
		}
	}
	dir = filepath.Join(dir, fmt.Sprintf("%s-%s-%ds-%s-bframes=%v", o.codec, size, o.seconds, c.Bitrate, o.bframes))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var in *transcodetest.Input
	var err error
	if _, statErr := os.Stat(filepath.Join(dir, "src.mkv")); statErr == nil {
		logf("reusing %s", dir)
		in, err = transcodetest.Load(filepath.Join(dir, "src.mkv"), o.codec)
	} else {
		logf("generating %s %s, %d s ...", o.codec, size, o.seconds)
		in, err = transcodetest.Generate(dir, c)
	}
	if err != nil {
		return nil, err
	}
	return newSource(o.codec, size, in)
}

// median takes the median of every measured column over successful runs.
func median(rs []result) (result, bool) {
	var ok []result
	for _, r := range rs {
		if r.Error == "" {
			ok = append(ok, r)
		}
	}
	if len(ok) == 0 {
		return result{}, false
	}
	med := func(get func(result) float64) float64 {
		v := make([]float64, 0, len(ok))
		for _, r := range ok {
			v = append(v, get(r))
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m := ok[0]
	m.Run = 0
	m.ContentS = med(func(r result) float64 { return r.ContentS })
	m.CoreS = med(func(r result) float64 { return r.CoreS })
	m.Realtime = med(func(r result) float64 { return r.Realtime })
	m.LatP50 = med(func(r result) float64 { return r.LatP50 })
	m.LatP99 = med(func(r result) float64 { return r.LatP99 })
	m.Dropped = med(func(r result) float64 { return r.Dropped })
	m.FFmpegCoreS = med(func(r result) float64 { return r.FFmpegCoreS })
	m.Ratio = med(func(r result) float64 { return r.Ratio })
	m.Others = med(func(r result) float64 { return r.Others })
	medMap := func(get func(result) map[string]float64) map[string]float64 {
		if get(m) == nil {
			return nil
		}
		out := map[string]float64{}
		for k := range get(m) {
			out[k] = med(func(r result) float64 { return get(r)[k] })
		}
		return out
	}
	m.PSNR = medMap(func(r result) map[string]float64 { return r.PSNR })
	m.KbpsOut = medMap(func(r result) map[string]float64 { return r.KbpsOut })
	return m, true
}

func printTable(w io.Writer, rs []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "size\tcodec\tpreset\trun\tcore-s\trealtime\tp50_ms\tp99_ms\tdropped\tffmpeg_core-s\tratio\tothers\t")
	num := func(v float64, format string) string {
		if v < 0 {
			return "-"
		}
		return fmt.Sprintf(format, v)
	}
	for _, r := range rs {
		run := fmt.Sprint(r.Run)
		if r.Run == 0 {
			run = "median"
		}
		if r.Error != "" {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\tfailed: %s\t\t\t\t\t\t\t\t\n", r.Size, r.Codec, r.Preset, run, r.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.3f\t%.2fx\t%.1f\t%.1f\t%.0f\t%s\t%s\t%s\t\n", r.Size, r.Codec, r.Preset, run,
			r.CoreS, r.Realtime, r.LatP50, r.LatP99, r.Dropped, num(r.FFmpegCoreS, "%.3f"), num(r.Ratio, "%.2fx"), num(r.Others, "%.2f"))
	}
	tw.Flush()
	for _, r := range rs {
		if r.Run != 0 || r.PSNR == nil {
			continue
		}
		fmt.Fprintf(w, "%s %s %s median quality:", r.Size, r.Codec, r.Preset)
		for _, name := range slices.Sorted(maps.Keys(r.PSNR)) {
			fmt.Fprintf(w, " %s %.2f dB at %.0f kbps;", name, r.PSNR[name], r.KbpsOut[name])
		}
		fmt.Fprintln(w)
	}
	seen := map[string]bool{}
	for _, r := range rs {
		if key := r.Size + r.Codec; r.Error == "" && !seen[key] {
			seen[key] = true
			fmt.Fprintf(w, "%s %s: %s\n", r.Size, r.Codec, strings.Join(r.Rungs, ", "))
		}
	}
}

func usageErr(msg string) int {
	fmt.Fprintf(os.Stderr, "cascade-bench: %s\n", msg)
	return 2
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cascade-bench: "+format+"\n", args...)
}
