package main

import (
	"os"
	"strings"
	"testing"
)

// testdata/perf-script.txt is three samples of a real load run's
// `perf script -F ip,sym`: the receive softirq inside the server's
// sendmmsg (the loopback delivery), the same softirq run on an
// interrupt while the GC swept (the server's own), and AES-GCM.
func TestCountLoopback(t *testing.T) {
	b, err := os.ReadFile("testdata/perf-script.txt")
	if err != nil {
		t.Fatal(err)
	}
	in, all := countLoopback(strings.NewReader(string(b)))
	if in != 1 || all != 3 {
		t.Fatalf("countLoopback = %d of %d samples, want 1 of 3", in, all)
	}
	// Without the blank line after the last sample, it still counts.
	in, all = countLoopback(strings.NewReader(strings.TrimSpace(string(b))))
	if in != 1 || all != 3 {
		t.Fatalf("countLoopback without the trailing blank line = %d of %d, want 1 of 3", in, all)
	}
}
