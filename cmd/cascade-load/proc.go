package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// procCPU is utime+stime of a process, in clock ticks.
func procCPU(pid int) (int64, error) {
	u, s, err := procCPUSplit(pid)
	return u + s, err
}

// procCPUSplit is utime and stime of a process, in clock ticks.
func procCPUSplit(pid int) (user, sys int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %v", pid, err)
	}
	return ut, st, nil
}

// procRSS returns VmRSS and VmHWM in KiB.
func procRSS(pid int) (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	rss = -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		fs := strings.Fields(v) // "12345 kB"
		if len(fs) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			continue
		}
		if k == "VmRSS" {
			rss = n
		} else {
			hwm = n
		}
	}
	if rss < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return rss, hwm, nil
}

// hostCPU returns the total and idle (idle+iowait) jiffies of all CPUs.
func hostCPU() (total, idle int64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, errors.New("/proc/stat: unexpected format")
	}
	// user nice system idle iowait irq softirq steal [guest guest_nice,
	// already counted in user and nice].
	for i, s := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, 0, err
		}
		total += n
		if i == 3 || i == 4 {
			idle += n
		}
	}
	return total, idle, nil
}

// waitQuiet waits, up to limit, until the rest of the machine (everything
// but this process) uses at most cores CPUs over a 2 s sample. It returns
// the last sample and whether it was quiet enough.
func waitQuiet(ctx context.Context, cores float64, limit time.Duration) (float64, bool) {
	ticks := float64(100) // USER_HZ: 100 on every Linux this runs on
	others := -1.0
	for deadline := time.Now().Add(limit); ; {
		t0, i0, err0 := hostCPU()
		s0, err1 := procCPU(os.Getpid())
		start := time.Now()
		if !sleep(ctx, 2*time.Second) || err0 != nil || err1 != nil {
			return others, false
		}
		t1, i1, err0 := hostCPU()
		s1, err1 := procCPU(os.Getpid())
		if err0 != nil || err1 != nil {
			return others, false
		}
		busy := float64((t1 - i1) - (t0 - i0) - (s1 - s0))
		others = busy / ticks / time.Since(start).Seconds()
		if others <= cores {
			return others, true
		}
		if time.Now().After(deadline) {
			return others, false
		}
	}
}
