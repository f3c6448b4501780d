package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// On loopback the kernel delivers a datagram to its receiver inside the
// sender's system call: the send raises the network receive softirq, and
// the softirq runs when the send re-enables bottom halves, on the sender's
// thread and on its CPU time (this kernel has no IRQ time accounting,
// so /proc charges it to the sender's stime). Every datagram the server
// sends to the viewers is thus also received, segmented out of its GSO
// run, queued to a viewer's socket and its reader woken, on the server's
// clock. Over a network card that work is the viewers' machines'.
//
// With -perf the tool samples the server with perf(1) over the window and
// counts the samples taken in that receive path: the network receive
// softirq (net_rx_action) running inside one of the server's send calls.
// The share, taken off the server's CPU, gives what the server itself
// spent. The viewers' RTCP reaching the server is the mirror image, on the
// tool's clock: about one datagram for every ten the server sends.

// perfSampler records one window of the server with perf(1).
type perfSampler struct {
	cmd  *exec.Cmd
	path string
	out  bytes.Buffer
}

// perfAvailable reports why -perf cannot work here, or "" if it can.
func perfAvailable() string {
	if _, err := exec.LookPath("perf"); err != nil {
		return "-perf needs perf(1) on PATH (Debian: apt-get install linux-perf)"
	}
	return ""
}

// startPerf samples pid's threads, kernel stacks included, for d (the
// kernel's part needs root or kernel.perf_event_paranoid ≤ 1). The
// sampling costs the server CPU of its own, charged to it: at perf's
// default 4 kHz with call stacks the server read about 15 % more; at
// 499 Hz a window of 20 s still holds a few thousand samples.
func startPerf(ctx context.Context, pid int, d time.Duration, path string) (*perfSampler, error) {
	secs := strconv.FormatFloat(d.Seconds(), 'f', 3, 64)
	p := &perfSampler{path: path}
	p.cmd = exec.CommandContext(ctx, "perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "-g",
		"-p", strconv.Itoa(pid), "-o", path, "--", "sleep", secs)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("perf record: %w", err)
	}
	return p, nil
}

// stop ends the recording if it is still running (a run that failed).
func (p *perfSampler) stop() {
	if p.cmd.ProcessState == nil {
		p.cmd.Process.Kill()
		p.cmd.Wait()
	}
}

// loopbackShare waits for the recording and returns the share of its
// samples that were the kernel delivering the server's datagrams to their
// receivers, and how many samples there were.
func (p *perfSampler) loopbackShare(ctx context.Context) (float64, int, error) {
	if err := p.cmd.Wait(); err != nil {
		return -1, 0, fmt.Errorf("perf record: %w: %s", err, firstLine(p.out.String()))
	}
	cmd := exec.CommandContext(ctx, "perf", "script", "-i", p.path, "-F", "ip,sym")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return -1, 0, err
	}
	if err := cmd.Start(); err != nil {
		return -1, 0, fmt.Errorf("perf script: %w", err)
	}
	in, all := countLoopback(out)
	if err := cmd.Wait(); err != nil {
		return -1, 0, fmt.Errorf("perf script: %w", err)
	}
	if all == 0 {
		return -1, 0, fmt.Errorf("perf recorded no samples of the server")
	}
	return float64(in) / float64(all), all, nil
}

// sendCalls are the kernel's entries for the system calls the server
// sends datagrams with.
var sendCalls = []string{"__sys_sendmmsg", "__sys_sendmsg", "__sys_sendto", "ksys_write"}

// countLoopback reads perf script's call stacks (one frame a line, a
// blank line after each sample) and counts the samples in all and those
// where the network receive softirq ran inside a send call.
func countLoopback(r io.Reader) (in, all int) {
	var rx, send, any bool
	end := func() {
		if any {
			all++
			if rx && send {
				in++
			}
		}
		rx, send, any = false, false, false
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			end()
			continue
		}
		any = true
		sym := f[len(f)-1]
		rx = rx || sym == "net_rx_action"
		send = send || slices.Contains(sendCalls, sym)
	}
	end()
	return in, all
}
