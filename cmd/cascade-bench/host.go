package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// waitQuiet waits, up to limit, until the rest of the machine uses at
// most cores CPUs over a 2 s sample. It reports whether it got there.
func waitQuiet(cores float64, limit time.Duration) bool {
	for deadline := time.Now().Add(limit); ; {
		own0, busy0 := transcodetest.CPUTime(), hostBusy()
		time.Sleep(2 * time.Second)
		own, busy := transcodetest.CPUTime()-own0, hostBusy()-busy0
		if busy0 < 0 || (busy-own).Seconds()/2 <= cores {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// hostBusy returns the CPU time every core of the machine has spent busy
// (not idle or waiting for I/O), from /proc/stat, or -1 where there is none.
func hostBusy() time.Duration {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return -1
	}
	fields := strings.Fields(sc.Text()) // cpu user nice system idle iowait irq softirq steal ...
	if len(fields) < 6 || fields[0] != "cpu" {
		return -1
	}
	var busy int64
	for i, s := range fields[1:] {
		if i == 3 || i == 4 || i >= 7 { // idle, iowait; steal and guests are not ours either
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return -1
		}
		busy += n
	}
	// USER_HZ is 100 on every Linux this runs on.
	return time.Duration(busy) * 10 * time.Millisecond
}
