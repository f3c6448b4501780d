package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

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
	m := result{Run: 0}
	// med is the median of a column; columns that use -1 for "not measured"
	// pass opt and skip those runs.
	med := func(get func(result) float64, opt bool) float64 {
		var v []float64
		for _, r := range ok {
			if x := get(r); !opt || x >= 0 {
				v = append(v, x)
			}
		}
		if len(v) == 0 {
			return -1
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	f := func(get func(result) float64) float64 { return med(get, false) }
	o := func(get func(result) float64) float64 { return med(get, true) }
	i := func(get func(result) int64) int64 {
		return int64(med(func(r result) float64 { return float64(get(r)) }, false))
	}
	m.ViewersRequested = ok[0].ViewersRequested
	m.ViewersConnected = int(i(func(r result) int64 { return int64(r.ViewersConnected) }))
	m.ViewersFailed = int(i(func(r result) int64 { return int64(r.ViewersFailed) }))
	m.ServerViewers = int64(o(func(r result) float64 { return float64(r.ServerViewers) }))
	m.ConnectSeconds = f(func(r result) float64 { return r.ConnectSeconds })
	m.WindowSeconds = f(func(r result) float64 { return r.WindowSeconds })
	m.ServerCPUms = f(func(r result) float64 { return r.ServerCPUms })
	m.CPUmsPerViewerS = f(func(r result) float64 { return r.CPUmsPerViewerS })
	m.SysCPUmsPerViewerS = f(func(r result) float64 { return r.SysCPUmsPerViewerS })
	m.LoopbackShare = o(func(r result) float64 { return r.LoopbackShare })
	m.OwnCPUmsPerViewerS = o(func(r result) float64 { return r.OwnCPUmsPerViewerS })
	m.PacketsPerSyscall = o(func(r result) float64 { return r.PacketsPerSyscall })
	m.PacketsPerMessage = o(func(r result) float64 { return r.PacketsPerMessage })
	m.MarginalCPUms = f(func(r result) float64 { return r.MarginalCPUms })
	m.PubOnlyCPUPct = f(func(r result) float64 { return r.PubOnlyCPUPct })
	m.ServerCPUPct = f(func(r result) float64 { return r.ServerCPUPct })
	m.LoadtoolCPUPct = f(func(r result) float64 { return r.LoadtoolCPUPct })
	m.HostBusyPct = f(func(r result) float64 { return r.HostBusyPct })
	m.OthersCores = f(func(r result) float64 { return r.OthersCores })
	m.RSSBaselineKiB = i(func(r result) int64 { return r.RSSBaselineKiB })
	m.RSSEndKiB = i(func(r result) int64 { return r.RSSEndKiB })
	m.HWMKiB = i(func(r result) int64 { return r.HWMKiB })
	m.RSSKiBPerViewer = f(func(r result) float64 { return r.RSSKiBPerViewer })
	m.LiveHeapKiBPerViewer = o(func(r result) float64 { return r.LiveHeapKiBPerViewer })
	m.StackKiBPerViewer = o(func(r result) float64 { return r.StackKiBPerViewer })
	m.GoroutinesPerViewer = o(func(r result) float64 { return r.GoroutinesPerViewer })
	m.PublisherFrames = i(func(r result) int64 { return r.PublisherFrames })
	m.ProbeFrames = i(func(r result) int64 { return r.ProbeFrames })
	m.FramesDelivered = o(func(r result) float64 { return r.FramesDelivered })
	m.IngestVideoPackets = o(func(r result) float64 { return r.IngestVideoPackets })
	m.EgressVideoPackets = o(func(r result) float64 { return r.EgressVideoPackets })
	m.ViewerVideoPackets = i(func(r result) int64 { return r.ViewerVideoPackets })
	m.PktsDelivered = o(func(r result) float64 { return r.PktsDelivered })
	m.QueueDrops = o(func(r result) float64 { return r.QueueDrops })
	return m, true
}

func printTable(w io.Writer, c config, h host, rs []result, med result, ok bool) {
	fmt.Fprintf(w, "host: nproc=%d cpu=%q go=%s", h.NumCPU, h.CPUModel, h.GoVersion)
	if h.ServerGoVersion != "" && h.ServerGoVersion != h.GoVersion {
		fmt.Fprintf(w, " server_go=%s", h.ServerGoVersion)
	}
	fmt.Fprintf(w, " %s/%s clk_tck=%d", h.GOOS, h.GOARCH, h.ClockTicks)
	if h.ClockTicksNote != "" {
		fmt.Fprintf(w, " (%s)", h.ClockTicksNote)
	}
	fmt.Fprintln(w)
	audio := "+opus"
	if c.NoAudio {
		audio = ""
	}
	fmt.Fprintf(w, "viewers=%d bitrate=%.1fMbps%s fps=%d warmup=%v window=%v runs=%d\n",
		c.Viewers, float64(c.Bitrate)/1e6, audio, c.FPS, c.Warmup, c.Window, c.Runs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "run\tviewers\tcpu_ms_per_viewer_s\trss_kib_per_viewer\tframes_delivered\tpkts_delivered\tserver_cpu_%\tloadtool_cpu_%\thost_busy_%\tothers_cores\t")
	row := func(name string, r result) {
		fmt.Fprintf(tw, "%s\t%d/%d\t%.3f\t%.1f\t%s\t%s\t%.1f\t%.1f\t%.1f\t%.2f\t\n", name, r.ViewersConnected, r.ViewersRequested,
			r.CPUmsPerViewerS, r.RSSKiBPerViewer, fmtRatio(r.FramesDelivered), fmtRatio(r.PktsDelivered),
			r.ServerCPUPct, r.LoadtoolCPUPct, r.HostBusyPct, r.OthersCores)
	}
	for _, r := range rs {
		if r.Error != "" {
			fmt.Fprintf(tw, "%d\tfailed\t\n", r.Run)
			continue
		}
		row(strconv.Itoa(r.Run), r)
	}
	if ok {
		row("median", med)
	}
	tw.Flush()
	for _, r := range rs {
		if r.Error != "" {
			fmt.Fprintf(w, "run %d failed: %s\n", r.Run, firstLine(r.Error))
		}
	}
	if !ok {
		fmt.Fprintln(w, "no run succeeded")
		return
	}
	verdict := func(x, limit float64) string {
		if x <= limit {
			return "within"
		}
		return "OVER"
	}
	fmt.Fprintf(w, "median: server %.0f%% of a core with the publisher alone, %.0f%% with viewers; marginal %.3f ms per viewer-second; RSS %d -> %d KiB (peak %d); queue drops %s\n",
		med.PubOnlyCPUPct, med.ServerCPUPct, med.MarginalCPUms, med.RSSBaselineKiB, med.RSSEndKiB, med.HWMKiB, fmtCount(med.QueueDrops))
	fmt.Fprintf(w, "median cpu per viewer-second: %.3f ms in the kernel (on loopback that includes delivering to the viewers), %.3f in user space; socket: %.1f datagrams per sendmmsg, %.1f per message\n",
		med.SysCPUmsPerViewerS, med.CPUmsPerViewerS-med.SysCPUmsPerViewerS, med.PacketsPerSyscall, med.PacketsPerMessage)
	if med.LoopbackShare >= 0 {
		fmt.Fprintf(w, "median perf: %.1f%% of the server's cpu delivered its datagrams into the viewers' sockets (loopback receives inside the send); the server's own cpu %.3f ms per viewer-second\n",
			100*med.LoopbackShare, med.OwnCPUmsPerViewerS)
	}
	if med.LiveHeapKiBPerViewer >= 0 {
		fmt.Fprintf(w, "median per viewer: live heap %.1f KiB, goroutine stacks %.1f KiB, %.1f goroutines (the rest of the RSS is GC headroom)\n",
			med.LiveHeapKiBPerViewer, med.StackKiBPerViewer, med.GoroutinesPerViewer)
	}
	fmt.Fprintf(w, "budget: cpu %.3f ms/viewer-s (%s %.1f), memory %.1f KiB/viewer (%s %.0f)\n",
		med.CPUmsPerViewerS, verdict(med.CPUmsPerViewerS, budgetCPUms), budgetCPUms,
		med.RSSKiBPerViewer, verdict(med.RSSKiBPerViewer, budgetKiB), budgetKiB)
	fmt.Fprintln(w, "cpu %: of one core (the machine has", h.NumCPU*100, "%); host_busy_%: whole machine, everything running; others_cores: CPU of everything but the server and this tool")
}

func fmtRatio(x float64) string {
	if x < 0 {
		return "-"
	}
	return strconv.FormatFloat(x, 'f', 3, 64)
}

func fmtCount(x float64) string {
	if x < 0 {
		return "-"
	}
	return strconv.FormatFloat(x, 'f', 0, 64)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
