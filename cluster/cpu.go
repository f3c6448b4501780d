package cluster

import (
	"bufio"
	"bytes"
	"os"
	rtmetrics "runtime/metrics"
	"strconv"
)

// CPUMeter measures how busy the machine is, as the fraction of its CPU
// time not idle between two Samples (0 to 1): what a node gossips as
// Load.CPU, so that placement avoids a machine whose cores are saturated
// whatever the cause (transcoding, another tenant). On Linux it reads the
// first line of /proc/stat, a few microseconds; elsewhere it falls back to
// this process's own busy share of GOMAXPROCS from the Go runtime. Not
// safe for concurrent use.
type CPUMeter struct {
	// stat is the path of /proc/stat (tests point it elsewhere).
	stat       string
	busy, tot  float64
	primed     bool
	useRuntime bool
	samples    []rtmetrics.Sample
}

// NewCPUMeter returns a meter; its first Sample reports 0.
func NewCPUMeter() *CPUMeter { return &CPUMeter{stat: "/proc/stat"} }

// Sample returns the busy fraction since the previous Sample.
func (m *CPUMeter) Sample() float64 {
	busy, tot, ok := 0.0, 0.0, false
	if !m.useRuntime {
		busy, tot, ok = readProcStat(m.stat)
		if !ok && !m.primed {
			m.useRuntime = true
		}
	}
	if m.useRuntime {
		busy, tot, ok = m.runtimeCPU()
	}
	if !ok {
		return 0
	}
	frac := 0.0
	if m.primed && tot > m.tot {
		frac = (busy - m.busy) / (tot - m.tot)
	}
	m.busy, m.tot, m.primed = busy, tot, true
	return min(max(frac, 0), 1)
}

// readProcStat returns the machine's busy and total jiffies: the "cpu"
// line's fields, less idle and iowait for busy. Guest time is already in
// user and nice, so it is not added twice.
func readProcStat(path string) (busy, total float64, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, false
	}
	defer f.Close()
	line, err := bufio.NewReaderSize(f, 512).ReadSlice('\n')
	if err != nil {
		return 0, 0, false
	}
	fields := bytes.Fields(line)
	if len(fields) < 5 || string(fields[0]) != "cpu" {
		return 0, 0, false
	}
	for i, fv := range fields[1:] {
		if i >= 8 { // user nice system idle iowait irq softirq steal
			break
		}
		v, err := strconv.ParseUint(string(fv), 10, 64)
		if err != nil {
			return 0, 0, false
		}
		total += float64(v)
		if i != 3 && i != 4 {
			busy += float64(v)
		}
	}
	return busy, total, total > 0
}

// runtimeCPU is the Go runtime's estimate of this process's CPU time:
// everything but idle, against GOMAXPROCS × wall time.
func (m *CPUMeter) runtimeCPU() (busy, total float64, ok bool) {
	if m.samples == nil {
		m.samples = []rtmetrics.Sample{{Name: "/cpu/classes/idle:cpu-seconds"}, {Name: "/cpu/classes/total:cpu-seconds"}}
	}
	rtmetrics.Read(m.samples)
	for _, s := range m.samples {
		if s.Value.Kind() != rtmetrics.KindFloat64 {
			return 0, 0, false
		}
	}
	idle, tot := m.samples[0].Value.Float64(), m.samples[1].Value.Float64()
	return tot - idle, tot, tot > 0
}
