// Command cascade-load measures what one Cascade node costs per viewer.
//
// The budget it checks is: a 2 Mbps 720p30 stream to 100 viewers on a
// 2-core machine should cost the server at most 1.5 ms of CPU per
// viewer-second and at most 150 KiB of memory per connected viewer.
//
// Each run starts a fresh server (a built cmd/cascade binary) as a child
// process on two free loopback ports, publishes one synthetic stream to it
// over WHIP (mediatest.Publish: real SPS/PPS, IDR and P slices of realistic
// sizes, plus Opus), and connects N WHEP viewers (mediatest.Watch), all in
// this process and all over 127.0.0.1. After a warm-up it measures one
// window and then tears everything down. The tool repeats this -runs times
// and prints every run and the median of each column.
//
// The server is measured from outside, through /proc (Linux only):
//
//   - cpu_ms_per_viewer_s: the server's CPU time (utime+stime from
//     /proc/PID/stat) used during the window, divided by connected viewers
//     times the window's length. It is the server's whole CPU, ingest and
//     housekeeping included, spread over the viewers; the JSON output also
//     has the server's CPU with the publisher alone (pub_only_cpu_pct) and
//     the marginal cost per viewer-second once that is taken away.
//   - rss_kib_per_viewer: the growth of the server's VmRSS from a baseline
//     (publisher connected for two seconds, no viewers) to the end of the
//     window, divided by connected viewers. RSS is what the kernel has
//     given the process, not the live Go heap: it includes garbage not yet
//     collected and memory the runtime has not returned, so it is an upper
//     bound on the heap a viewer holds.
//   - frames_delivered: frames (RTP marker bits) one probe viewer received
//     during the window over frames the publisher sent; about 1.00 when
//     every viewer keeps up. The other viewers only count packets (they
//     discard media to stay cheap), hence
//   - pkts_delivered: video packets all viewers received during the window
//     over the video packets the server ingested in it (its
//     cascade_ingest_packets_total metric) times the viewers. Below 1 means
//     packets were dropped somewhere: in the server's queues (see
//     queue_drops in the JSON) or in the viewers' sockets when this process
//     cannot keep up.
//   - server_cpu_%, loadtool_cpu_%: CPU of the server and of this process
//     (publisher and viewers) during the window, in percent of one core: a
//     2-core machine has 200 %. host_busy_% is the whole machine's busy
//     share from /proc/stat (100 % = every core busy), including anything
//     else running; if it is near 100 % the numbers are not trustworthy.
//     others_cores is that busy time less the server's and this process's,
//     in cores. The machine may be shared: -wait-quiet waits before each
//     run until the others use at most that many cores.
//
// With -perf (root, perf(1) installed) the tool also samples the server
// over each window and reports the share of its CPU that was the kernel
// delivering its datagrams into the viewers' sockets, which loopback runs
// inside the sender's system calls (see perf.go), and the server's own
// CPU per viewer-second without it (loopback_share,
// own_cpu_ms_per_viewer_s).
//
// With -json the same numbers come as one JSON object (config, host, runs,
// median, budgets); a value that could not be measured is -1.
//
// CPU times are read in clock ticks (getconf CLK_TCK, 100 if that fails),
// so they have 10 ms resolution: use windows of several seconds.
//
// Caveats: the viewers run on the same machine as the server and compete
// with it for the cores, and every viewer does its own SRTP decryption, so
// this process usually uses more CPU than the server. Loopback has no loss
// or delay, so NACK and retransmission cost is not exercised. Run it on a
// quiet machine.
//
// Usage:
//
//	go run ./cmd/cascade-load [-server ./cascade] [-viewers 100] [-runs 3] [-json]
package main

import (
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/cascade-cdn/cascade/media/mediatest"
)

const (
	streamName = "load"
	// baselineSettle is how long the publisher runs alone before the
	// baseline RSS and the publisher-only CPU are taken.
	baselineSettle = 2 * time.Second
	// Budgets from the design.
	budgetCPUms  = 1.5
	budgetKiB    = 150.0
	serverStart  = 15 * time.Second
	serverStop   = 10 * time.Second
	closeTimeout = 30 * time.Second
)

type config struct {
	Server         string        `json:"server"`
	Viewers        int           `json:"viewers"`
	Bitrate        int           `json:"bitrate"`
	FPS            int           `json:"fps"`
	GOP            int           `json:"gop"`
	NoAudio        bool          `json:"no_audio"`
	Warmup         time.Duration `json:"warmup_ns"`
	Window         time.Duration `json:"window_ns"`
	Runs           int           `json:"runs"`
	Batch          int           `json:"batch"`
	ConnectTimeout time.Duration `json:"connect_timeout_ns"`
	WaitQuiet      float64       `json:"wait_quiet_cores,omitempty"`
	ProfileDir     string        `json:"profile_dir,omitempty"`
	Perf           bool          `json:"perf,omitempty"`
	JSON           bool          `json:"-"`
}

type host struct {
	NumCPU          int    `json:"nproc"`
	CPUModel        string `json:"cpu_model,omitempty"`
	GoVersion       string `json:"go_version"`
	ServerGoVersion string `json:"server_go_version,omitempty"`
	GOOS            string `json:"goos"`
	GOARCH          string `json:"goarch"`
	ClockTicks      int    `json:"clk_tck"`
	ClockTicksNote  string `json:"clk_tck_note,omitempty"`
}

// result is one run. Values that could not be measured are -1.
type result struct {
	Run              int     `json:"run"`
	Error            string  `json:"error,omitempty"`
	ViewersRequested int     `json:"viewers_requested"`
	ViewersConnected int     `json:"viewers_connected"`
	ViewersFailed    int     `json:"viewers_failed"`
	ServerViewers    int64   `json:"server_viewers"`
	ConnectSeconds   float64 `json:"connect_seconds"`
	WindowSeconds    float64 `json:"window_seconds"`

	// OthersCores is the CPU the rest of the machine used during the
	// window, in cores: neither the server nor this process. Well above 0,
	// the run competed for the cores and its CPU figures read high.
	OthersCores float64 `json:"others_cores"`

	ServerCPUms     float64 `json:"server_cpu_ms"`
	CPUmsPerViewerS float64 `json:"cpu_ms_per_viewer_s"`
	// SysCPUmsPerViewerS is the kernel's share of CPUmsPerViewerS (stime):
	// on loopback it includes delivering every datagram to the viewers'
	// sockets, which a real network card's receivers would do elsewhere.
	SysCPUmsPerViewerS float64 `json:"sys_cpu_ms_per_viewer_s"`
	// With -perf: the share of the server's CPU samples that were the
	// kernel delivering its datagrams to the viewers' sockets (loopback
	// does that inside the sender's system call; see perf.go), and the
	// server's CPU per viewer-second without it. -1 without -perf.
	LoopbackShare      float64 `json:"loopback_share"`
	OwnCPUmsPerViewerS float64 `json:"own_cpu_ms_per_viewer_s"`
	PerfSamples        int     `json:"perf_samples,omitempty"`
	// The shared WebRTC socket over the window, from the server's metrics:
	// datagrams per sendmmsg(2) call, and per message (UDP GSO runs).
	PacketsPerSyscall float64 `json:"packets_per_syscall"`
	PacketsPerMessage float64 `json:"packets_per_message"`
	MarginalCPUms     float64 `json:"marginal_cpu_ms_per_viewer_s"`
	PubOnlyCPUPct     float64 `json:"pub_only_cpu_pct"`
	ServerCPUPct      float64 `json:"server_cpu_pct"`
	LoadtoolCPUPct    float64 `json:"loadtool_cpu_pct"`
	HostBusyPct       float64 `json:"host_busy_pct"`
	RSSBaselineKiB    int64   `json:"rss_baseline_kib"`
	RSSEndKiB         int64   `json:"rss_end_kib"`
	HWMKiB            int64   `json:"rss_peak_kib"`
	RSSKiBPerViewer   float64 `json:"rss_kib_per_viewer"`
	// What the RSS holds, from the server's own counters: the live Go heap
	// after a forced collection (HeapAlloc), goroutine stacks and
	// goroutines, each the growth from the baseline per connected viewer.
	// The rest of the RSS growth is garbage not yet collected and memory
	// the runtime keeps (with GOGC=100 the heap may grow to twice the live
	// heap before a collection).
	LiveHeapKiBPerViewer float64 `json:"live_heap_kib_per_viewer"`
	StackKiBPerViewer    float64 `json:"stack_kib_per_viewer"`
	GoroutinesPerViewer  float64 `json:"goroutines_per_viewer"`
	PublisherFrames      int64   `json:"publisher_frames"`
	ProbeFrames          int64   `json:"probe_frames"`
	FramesDelivered      float64 `json:"frames_delivered"`
	IngestVideoPackets   float64 `json:"ingest_video_packets"`
	EgressVideoPackets   float64 `json:"egress_video_packets"`
	ViewerVideoPackets   int64   `json:"viewer_video_packets"`
	PktsDelivered        float64 `json:"pkts_delivered"`
	QueueDrops           float64 `json:"queue_drops"`
}

func main() {
	os.Exit(run())
}

func run() int {
	var c config
	flag.StringVar(&c.Server, "server", "", "path to a built cascade binary (default: go build ./cmd/cascade into a temp dir)")
	flag.IntVar(&c.Viewers, "viewers", 100, "WHEP viewers to connect")
	flag.IntVar(&c.Bitrate, "bitrate", 2_000_000, "publisher video bit rate, bit/s")
	flag.IntVar(&c.FPS, "fps", 30, "publisher frame rate")
	flag.IntVar(&c.GOP, "gop", 0, "keyframe interval in frames (default: fps, one second)")
	flag.BoolVar(&c.NoAudio, "no-audio", false, "publish video only")
	flag.DurationVar(&c.Warmup, "warmup", 5*time.Second, "wait after the last viewer connected before measuring")
	flag.DurationVar(&c.Window, "window", 20*time.Second, "measurement window")
	flag.IntVar(&c.Runs, "runs", 3, "runs, each with a fresh server; the median is reported")
	flag.IntVar(&c.Batch, "batch", 10, "viewers connecting concurrently")
	flag.DurationVar(&c.ConnectTimeout, "connect-timeout", 15*time.Second, "time allowed for one viewer to connect")
	flag.Float64Var(&c.WaitQuiet, "wait-quiet", 0, "before each run, wait (up to 10 min) until the rest of the machine uses at most this many cores; 0 does not wait")
	flag.StringVar(&c.ProfileDir, "profile", "", "save the server's CPU profile over each run's window, and its heap after it, in this directory (cpu-N.pprof, heap-N.pprof)")
	flag.BoolVar(&c.Perf, "perf", false, "sample the server with perf(1) over each window, to tell its own CPU from the kernel's loopback delivery to the viewers (needs root for kernel stacks)")
	flag.BoolVar(&c.JSON, "json", false, "print results as JSON instead of a table")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: cascade-load [flags]\n\nMeasures a cascade server's CPU and memory per WHEP viewer (see go doc ./cmd/cascade-load).\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cascade-load: unexpected arguments %q\n", flag.Args())
		return 2
	}
	switch {
	case c.Viewers < 1 || c.Viewers > 10000:
		return usageErr("-viewers must be 1..10000")
	case c.Runs < 1 || c.Runs > 100:
		return usageErr("-runs must be 1..100")
	case c.Bitrate < 10_000 || c.FPS < 1 || c.FPS > 240 || c.GOP < 0:
		return usageErr("-bitrate, -fps or -gop out of range")
	case c.Window < time.Second || c.Warmup < 0:
		return usageErr("-window must be at least 1s and -warmup not negative")
	case c.Batch < 1 || c.ConnectTimeout <= 0:
		return usageErr("-batch and -connect-timeout must be positive")
	}
	if c.Perf {
		if why := perfAvailable(); why != "" {
			return usageErr(why)
		}
	}
	if runtime.GOOS != "linux" {
		fmt.Fprintln(os.Stderr, "cascade-load: needs Linux /proc to measure the server")
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tmp, err := os.MkdirTemp("", "cascade-load-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "cascade-load: %v\n", err)
		return 1
	}
	defer os.RemoveAll(tmp)

	if c.Server == "" {
		logf("building cmd/cascade ...")
		if c.Server, err = buildServer(ctx, tmp); err != nil {
			fmt.Fprintf(os.Stderr, "cascade-load: %v\n", err)
			return 1
		}
	} else if _, err := os.Stat(c.Server); err != nil {
		fmt.Fprintf(os.Stderr, "cascade-load: -server: %v\n", err)
		return 1
	}
	if abs, err := filepath.Abs(c.Server); err == nil {
		c.Server = abs
	}

	h := hostInfo(c.Server)
	var results []result
	for i := 1; i <= c.Runs && ctx.Err() == nil; i++ {
		logf("run %d/%d", i, c.Runs)
		if c.WaitQuiet > 0 {
			if others, quiet := waitQuiet(ctx, c.WaitQuiet, 10*time.Minute); !quiet {
				logf("run %d: the machine is still busy (others %.2f cores); measuring anyway", i, others)
			}
		}
		r := oneRun(ctx, c, h, tmp, i)
		if r.Error != "" {
			logf("run %d failed: %s", i, r.Error)
		}
		results = append(results, r)
	}
	med, ok := median(results)

	if c.JSON {
		out := struct {
			Config  config   `json:"config"`
			Host    host     `json:"host"`
			Runs    []result `json:"runs"`
			Median  *result  `json:"median,omitempty"`
			Budgets any      `json:"budgets"`
		}{c, h, results, nil, map[string]float64{"cpu_ms_per_viewer_s": budgetCPUms, "rss_kib_per_viewer": budgetKiB}}
		if ok {
			out.Median = &med
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(os.Stderr, "cascade-load: %v\n", err)
			return 1
		}
	} else {
		printTable(os.Stdout, c, h, results, med, ok)
	}
	if !ok {
		return 1
	}
	return 0
}

func usageErr(msg string) int {
	fmt.Fprintf(os.Stderr, "cascade-load: %s\n", msg)
	return 2
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// buildServer builds cmd/cascade from the module root into dir.
func buildServer(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "cascade")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/cascade")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/cascade in %s: %v\n%s", root, err, out)
	}
	return bin, nil
}

// moduleRoot finds the cascade module: go env GOMOD, else go.mod found
// walking up from the working directory.
func moduleRoot(ctx context.Context) (string, error) {
	if out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output(); err == nil {
		if mod := strings.TrimSpace(string(out)); mod != "" && mod != os.DevNull && isCascade(mod) {
			return filepath.Dir(mod), nil
		}
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 64 {
		if isCascade(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("cannot find the github.com/cascade-cdn/cascade module from the working directory; run from the repository or pass -server")
}

func isCascade(gomod string) bool {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`) == "github.com/cascade-cdn/cascade"
		}
	}
	return false
}

func hostInfo(server string) host {
	h := host{NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, ClockTicks: 100}
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			h.ClockTicks = n
		} else {
			h.ClockTicksNote = "getconf CLK_TCK unreadable; assumed 100"
		}
	} else {
		h.ClockTicksNote = "getconf CLK_TCK failed; assumed 100"
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if bi, err := buildinfo.ReadFile(server); err == nil {
		h.ServerGoVersion = bi.GoVersion
	}
	return h
}

// oneRun starts a server, loads it and measures it.
func oneRun(ctx context.Context, c config, h host, tmp string, n int) (r result) {
	r = result{Run: n, ViewersRequested: c.Viewers, ServerViewers: -1, IngestVideoPackets: -1, PacketsPerSyscall: -1, PacketsPerMessage: -1,
		EgressVideoPackets: -1, QueueDrops: -1, PktsDelivered: -1, FramesDelivered: -1}
	fail := func(format string, args ...any) result {
		r.Error = fmt.Sprintf(format, args...)
		return r
	}
	tick := float64(h.ClockTicks)

	srv, err := startServer(ctx, c.Server, filepath.Join(tmp, fmt.Sprintf("server-%d.log", n)))
	if err != nil {
		return fail("server: %v", err)
	}
	defer func() {
		if err := srv.stop(); err != nil {
			logf("run %d: server stop: %v", n, err)
			if r.Error == "" {
				r.Error = "server stop: " + err.Error()
			}
		}
		if r.Error != "" && ctx.Err() == nil {
			logf("run %d: server log (%s):\n%s", n, srv.logPath, srv.logTail(4096))
		}
	}()
	logf("run %d: server pid %d on %s (webrtc %s)", n, srv.cmd.Process.Pid, srv.base, srv.webrtc)

	pctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	pub, err := mediatest.Publish(pctx, srv.base+"/whip/"+streamName,
		mediatest.PublisherOptions{Bitrate: c.Bitrate, FPS: c.FPS, GOP: c.GOP, NoAudio: c.NoAudio})
	cancel()
	if err != nil {
		return fail("publisher: %v", err)
	}
	defer pub.Close()

	// Baseline: the publisher alone. The first second carries connection
	// setup, so the CPU is sampled over the second half of the settle time.
	if !sleep(ctx, baselineSettle/2) {
		return fail("interrupted")
	}
	cpu0, err := procCPU(srv.pid())
	if err != nil {
		return fail("%v", err)
	}
	t0 := time.Now()
	if !sleep(ctx, baselineSettle/2) {
		return fail("interrupted")
	}
	cpu1, err := procCPU(srv.pid())
	if err != nil {
		return fail("%v", err)
	}
	r.PubOnlyCPUPct = 100 * float64(cpu1-cpu0) / tick / time.Since(t0).Seconds()
	if r.RSSBaselineKiB, _, err = procRSS(srv.pid()); err != nil {
		return fail("%v", err)
	}
	rt0, rtErr0 := runtimeMem(srv.base)

	// Viewers, in batches.
	start := time.Now()
	viewers, probe, firstErr := connectViewers(ctx, c, srv.base+"/whep/"+streamName)
	defer closeViewers(viewers)
	failed := c.Viewers - len(viewers)
	r.ConnectSeconds = time.Since(start).Seconds()
	r.ViewersConnected, r.ViewersFailed = len(viewers), failed
	if failed > 0 {
		logf("run %d: %d of %d viewers failed to connect; first error: %v", n, failed, c.Viewers, firstErr)
	}
	logf("run %d: %d/%d viewers connected in %.1fs; warm-up %v, window %v", n, len(viewers), c.Viewers, r.ConnectSeconds, c.Warmup, c.Window)
	if len(viewers) == 0 {
		return fail("no viewer connected: %v", firstErr)
	}
	if !sleep(ctx, c.Warmup) {
		return fail("interrupted")
	}

	// Window start.
	ms0, _ := scrape(srv.base + "/metrics")
	a := sample(srv.pid(), pub, probe, viewers)
	if a.err != nil {
		return fail("%v", a.err)
	}
	var prof chan error
	if c.ProfileDir != "" {
		prof = make(chan error, 1)
		secs := max(1, int(c.Window.Round(time.Second)/time.Second))
		url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", srv.base, secs)
		go func() {
			prof <- saveProfile(ctx, url, c.Window, filepath.Join(c.ProfileDir, fmt.Sprintf("cpu-%d.pprof", n)))
		}()
	}
	var perf *perfSampler
	if c.Perf {
		dir := c.ProfileDir
		if dir == "" {
			dir = tmp
		}
		if perf, err = startPerf(ctx, srv.pid(), c.Window, filepath.Join(dir, fmt.Sprintf("perf-%d.data", n))); err != nil {
			return fail("%v", err)
		}
		defer perf.stop()
	}
	if !sleep(ctx, c.Window) {
		return fail("interrupted")
	}
	b := sample(srv.pid(), pub, probe, viewers)
	if b.err != nil {
		return fail("%v", b.err)
	}
	ms1, merr := scrape(srv.base + "/metrics")
	if prof != nil {
		if err := <-prof; err != nil {
			logf("run %d: profile: %v", n, err)
		}
		if err := saveProfile(ctx, srv.base+"/debug/pprof/heap?gc=1", 0, filepath.Join(c.ProfileDir, fmt.Sprintf("heap-%d.pprof", n))); err != nil {
			logf("run %d: heap profile: %v", n, err)
		}
	}
	if v, err := serverViewers(srv.base); err == nil {
		r.ServerViewers = v
	}
	if r.RSSEndKiB, r.HWMKiB, err = procRSS(srv.pid()); err != nil {
		return fail("%v", err)
	}
	r.LiveHeapKiBPerViewer, r.StackKiBPerViewer, r.GoroutinesPerViewer = -1, -1, -1
	if rt1, err := runtimeMem(srv.base); err == nil && rtErr0 == nil && len(viewers) > 0 {
		nv := float64(len(viewers))
		r.LiveHeapKiBPerViewer = float64(rt1.heap-rt0.heap) / 1024 / nv
		r.StackKiBPerViewer = float64(rt1.stack-rt0.stack) / 1024 / nv
		r.GoroutinesPerViewer = float64(rt1.goroutines-rt0.goroutines) / nv
	}

	win := b.at.Sub(a.at).Seconds()
	nv := float64(len(viewers))
	r.WindowSeconds = win
	r.ServerCPUms = 1000 * float64(b.serverTicks-a.serverTicks) / tick
	r.CPUmsPerViewerS = r.ServerCPUms / (nv * win)
	r.SysCPUmsPerViewerS = 1000 * float64(b.serverSysTicks-a.serverSysTicks) / tick / (nv * win)
	r.LoopbackShare, r.OwnCPUmsPerViewerS = -1, -1
	if perf != nil {
		share, samples, err := perf.loopbackShare(ctx)
		if err != nil {
			logf("run %d: %v", n, err)
		} else {
			r.LoopbackShare, r.PerfSamples = share, samples
			r.OwnCPUmsPerViewerS = r.CPUmsPerViewerS * (1 - share)
		}
	}
	r.MarginalCPUms = (r.ServerCPUms - r.PubOnlyCPUPct*10*win) / (nv * win) // pct*10 = ms per second
	r.ServerCPUPct = 100 * float64(b.serverTicks-a.serverTicks) / tick / win
	r.LoadtoolCPUPct = 100 * float64(b.selfTicks-a.selfTicks) / tick / win
	if tot := b.hostTotal - a.hostTotal; tot > 0 {
		r.HostBusyPct = 100 * float64(tot-(b.hostIdle-a.hostIdle)) / float64(tot)
		r.OthersCores = max(0, (r.HostBusyPct*float64(h.NumCPU)-r.ServerCPUPct-r.LoadtoolCPUPct)/100)
	}
	r.RSSKiBPerViewer = float64(r.RSSEndKiB-r.RSSBaselineKiB) / nv
	r.PublisherFrames = b.pubFrames - a.pubFrames
	r.ProbeFrames = b.probeFrames - a.probeFrames
	if r.PublisherFrames > 0 && probe != nil {
		r.FramesDelivered = float64(r.ProbeFrames) / float64(r.PublisherFrames)
	}
	r.ViewerVideoPackets = b.viewerPackets - a.viewerPackets
	if ms0 != "" && merr == nil {
		sel := []string{`stream="` + streamName + `"`, `kind="video"`}
		in0, ok0 := metricSum(ms0, "cascade_ingest_packets_total", sel...)
		in1, ok1 := metricSum(ms1, "cascade_ingest_packets_total", sel...)
		if ok0 && ok1 {
			r.IngestVideoPackets = in1 - in0
			if r.IngestVideoPackets > 0 {
				r.PktsDelivered = float64(r.ViewerVideoPackets) / (r.IngestVideoPackets * nv)
			}
		}
		if e0, ok0 := metricSum(ms0, "cascade_egress_packets_total", sel...); ok0 {
			if e1, ok1 := metricSum(ms1, "cascade_egress_packets_total", sel...); ok1 {
				r.EgressVideoPackets = e1 - e0
			}
		}
		r.PacketsPerSyscall, r.PacketsPerMessage = socketBatching(ms0, ms1)
		d0, ok0 := metricSum(ms0, "cascade_viewer_queue_drops_total", `stream="`+streamName+`"`)
		d1, ok1 := metricSum(ms1, "cascade_viewer_queue_drops_total", `stream="`+streamName+`"`)
		if ok0 && ok1 {
			r.QueueDrops = d1 - d0
		}
	}
	logf("run %d: server %.0f%% cpu, %.3f ms/viewer-s (%.3f in the kernel), %.1f KiB/viewer (live heap %.1f, stacks %.1f, %.1f goroutines), frames %.3f, packets %s, others %.2f cores",
		n, r.ServerCPUPct, r.CPUmsPerViewerS, r.SysCPUmsPerViewerS, r.RSSKiBPerViewer, r.LiveHeapKiBPerViewer, r.StackKiBPerViewer, r.GoroutinesPerViewer,
		r.FramesDelivered, fmtRatio(r.PktsDelivered), r.OthersCores)
	if r.LoopbackShare >= 0 {
		logf("run %d: perf: %.1f%% of %d samples delivered the server's datagrams to the viewers' sockets; the server's own cpu %.3f ms/viewer-s",
			n, 100*r.LoopbackShare, r.PerfSamples, r.OwnCPUmsPerViewerS)
	}
	return r
}

// snapshot is one reading of every counter, taken close together.
type snapshot struct {
	at                     time.Time
	serverTicks, selfTicks int64
	serverSysTicks         int64
	hostTotal, hostIdle    int64
	pubFrames, probeFrames int64
	viewerPackets          int64
	err                    error
}

func sample(pid int, pub *mediatest.Publisher, probe *mediatest.Viewer, viewers []*mediatest.Viewer) (s snapshot) {
	s.at = time.Now()
	var user int64
	if user, s.serverSysTicks, s.err = procCPUSplit(pid); s.err != nil {
		return s
	}
	s.serverTicks = user + s.serverSysTicks
	if s.selfTicks, s.err = procCPU(os.Getpid()); s.err != nil {
		return s
	}
	s.hostTotal, s.hostIdle, _ = hostCPU()
	s.pubFrames = pub.Frames.Load()
	if probe != nil {
		s.probeFrames = probe.VideoFrames.Load()
	}
	for _, v := range viewers {
		s.viewerPackets += v.VideoPackets.Load()
	}
	return s
}

// connectViewers connects c.Viewers viewers, c.Batch at a time. The first
// is a probe that keeps per-packet bookkeeping (and so counts frames; nil
// if it failed); the others only count packets. A viewer counts as
// connected when its peer connection reaches "connected" within
// c.ConnectTimeout.
func connectViewers(ctx context.Context, c config, url string) (ok []*mediatest.Viewer, probe *mediatest.Viewer, firstErr error) {
	for base := 0; base < c.Viewers && ctx.Err() == nil; base += c.Batch {
		n := min(c.Batch, c.Viewers-base)
		got := make([]*mediatest.Viewer, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i], errs[i] = connectViewer(ctx, url, c.ConnectTimeout, base+i > 0)
			}()
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				if firstErr == nil {
					firstErr = errs[i]
				}
				continue
			}
			if base+i == 0 {
				probe = got[i]
			}
			ok = append(ok, got[i])
		}
	}
	if ctx.Err() != nil && firstErr == nil {
		firstErr = ctx.Err()
	}
	return ok, probe, firstErr
}

func connectViewer(ctx context.Context, url string, timeout time.Duration, discard bool) (*mediatest.Viewer, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	v, err := mediatest.Watch(ctx, url, mediatest.ViewerOptions{Discard: discard})
	if err != nil {
		return nil, err
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		switch s := v.PC.ConnectionState(); s {
		case webrtc.PeerConnectionStateConnected:
			return v, nil
		case webrtc.PeerConnectionStateFailed, webrtc.PeerConnectionStateClosed:
			v.Close()
			return nil, fmt.Errorf("viewer peer connection %s", s)
		}
		select {
		case <-ctx.Done():
			v.Close()
			return nil, fmt.Errorf("viewer not connected: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// closeViewers closes viewers a few at a time, giving up after closeTimeout.
func closeViewers(vs []*mediatest.Viewer) {
	done := make(chan struct{})
	go func() {
		sem := make(chan struct{}, 16)
		var wg sync.WaitGroup
		for _, v := range vs {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				v.Close()
				<-sem
			}()
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(closeTimeout):
		logf("viewers still closing after %v; going on", closeTimeout)
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// server is a cascade child process.
type server struct {
	cmd     *exec.Cmd
	base    string // http://127.0.0.1:PORT
	webrtc  string
	logPath string
	logFile *os.File
	exited  chan struct{}
	waitErr error
}

func (s *server) pid() int { return s.cmd.Process.Pid }

func startServer(ctx context.Context, bin, logPath string) (*server, error) {
	httpAddr, err := freeTCP()
	if err != nil {
		return nil, err
	}
	rtcAddr, err := freeUDPAndTCP()
	if err != nil {
		return nil, err
	}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	// The publisher's synthetic slices cannot be decoded, and this tool
	// measures fan-out, not transcoding: the ladder is off.
	// pprof serves the heap and goroutine figures (runtimeMem); nothing
	// else changes.
	cmd := exec.Command(bin, "--http", httpAddr, "--webrtc.listen", rtcAddr, "--log.level", "warn", "--transcode.enabled=false", "--pprof")
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	s := &server{cmd: cmd, base: "http://" + httpAddr, webrtc: rtcAddr, logPath: logPath, logFile: lf, exited: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()

	deadline := time.Now().Add(serverStart)
	client := &http.Client{Timeout: time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.base+"/healthz", nil)
		if resp, err := client.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s, nil
			}
		}
		var why string
		select {
		case <-s.exited:
			why = fmt.Sprintf("exited before it was healthy: %v", s.waitErr)
		case <-ctx.Done():
			why = "interrupted"
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				why = fmt.Sprintf("/healthz not 200 after %v", serverStart)
			}
		}
		if why != "" {
			s.stop()
			return nil, fmt.Errorf("%s\n--- server log %s ---\n%s", why, logPath, s.logTail(4096))
		}
	}
}

// stop sends SIGTERM, waits serverStop, then kills.
func (s *server) stop() error {
	defer s.logFile.Close()
	select {
	case <-s.exited:
		return exitErr(s.waitErr)
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return exitErr(s.waitErr)
	case <-time.After(serverStop):
		s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("did not exit %v after SIGTERM; killed", serverStop)
	}
}

func exitErr(err error) error {
	if err != nil {
		return fmt.Errorf("exited: %w", err)
	}
	return nil
}

func (s *server) logTail(n int64) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, n))
	return string(b)
}

func freeTCP() (string, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// freeUDPAndTCP finds a loopback port free for both UDP and TCP: the
// server's WebRTC port also takes ICE-TCP.
func freeUDPAndTCP() (string, error) {
	var last error
	for range 50 {
		u, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		addr := u.LocalAddr().String()
		t, err := net.Listen("tcp4", addr)
		u.Close()
		if err != nil {
			last = err
			continue
		}
		t.Close()
		return addr, nil
	}
	return "", fmt.Errorf("no loopback port free for UDP and TCP: %v", last)
}

// saveProfile writes the pprof profile at url, which takes d to make, to
// path. A CPU profile costs the server about 1 % of a core while it runs.
func saveProfile(ctx context.Context, url string, d time.Duration, path string) error {
	b, err := fetch(ctx, url, d+30*time.Second)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
