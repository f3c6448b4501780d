package cluster

import (
	"os"
	"path/filepath"
	"testing"
)

// The meter reports the busy share of the jiffies between two samples:
// idle and iowait are not busy; steal and irq are.
func TestCPUMeterProcStat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stat")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := &CPUMeter{stat: path}
	//     user nice system idle iowait irq softirq steal guest guest_nice
	write("cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4\n")
	if got := m.Sample(); got != 0 {
		t.Fatalf("first sample %v, want 0", got)
	}
	// +300 busy (user 200, system 50, steal 50), +100 idle: 0.75.
	write("cpu  300 0 150 800 100 0 0 50 50 0\n")
	if got := m.Sample(); got != 0.75 {
		t.Fatalf("sample %v, want 0.75", got)
	}
	// No time passed: 0, not NaN.
	if got := m.Sample(); got != 0 {
		t.Fatalf("sample without time %v, want 0", got)
	}
	// A garbled file: 0, and the meter carries on.
	write("cpu  x y z\n")
	if got := m.Sample(); got != 0 {
		t.Fatalf("garbled sample %v", got)
	}
	write("cpu  300 0 150 1200 100 0 0 50 50 0\n")
	if got := m.Sample(); got != 0 {
		t.Fatalf("idle sample %v, want 0", got)
	}
	if m.useRuntime {
		t.Error("fell back to the runtime although /proc/stat was readable at first")
	}
}

// Without /proc/stat the meter uses the Go runtime's own estimate: a
// fraction within [0, 1] that rises while this process spins.
func TestCPUMeterRuntimeFallback(t *testing.T) {
	m := &CPUMeter{stat: filepath.Join(t.TempDir(), "missing")}
	m.Sample()
	if !m.useRuntime {
		t.Fatal("no fallback to the runtime")
	}
	x := 0
	for i := range 50_000_000 {
		x += i
	}
	_ = x
	if got := m.Sample(); got < 0 || got > 1 {
		t.Fatalf("runtime sample %v out of [0, 1]", got)
	}
}
