// Package transcodetest makes real H.264 test sources with Debian's ffmpeg
// for the transcoder's tests. Named like net/http/httptest.
package transcodetest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cascade-cdn/cascade/media/h264"
)

// Clip describes a generated test source.
type Clip struct {
	Seconds string // duration, e.g. "3"
	Size    string // e.g. "1280x720"
	Profile string // H.264 profile: "high" has B-frames (OBS's default), "baseline" as browsers send
	// Noise adds grain, so the encoder works as hard as on camera footage.
	Noise bool
	// GOP is the keyframe interval in frames (default 30).
	GOP int
	// Bitrate caps the source (e.g. "6M", as OBS sends 1080p); empty lets
	// x264 choose, which for grain is far above what any publisher sends.
	Bitrate string
}

// Source encodes a 720p30 testsrc2 clip in the given profile. It returns
// the access units in decode order with their presentation timestamps in
// 90 kHz ticks, as they would arrive over RTP.
func Source(t testing.TB, seconds, profile string) (aus [][]byte, pts []int64) {
	aus, pts, _ = Make(t, Clip{Seconds: seconds, Size: "1280x720", Profile: profile})
	return aus, pts
}

// Make encodes c with Debian's ffmpeg and returns its access units, their
// timestamps, and the path of the same stream in a Matroska file (for
// feeding the ffmpeg CLI in comparisons).
func Make(t testing.TB, c Clip) (aus [][]byte, pts []int64, mkv string) {
	t.Helper()
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ffmpeg missing: CI must install it")
		}
		t.Skip("ffmpeg not installed")
	}
	dir := t.TempDir()
	mkv = filepath.Join(dir, "src.mkv")
	raw := filepath.Join(dir, "src.h264")
	run := func(name string, args ...string) []byte {
		out, err := exec.Command(name, args...).Output()
		if err != nil {
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return out
	}
	gop := c.GOP
	if gop == 0 {
		gop = 30
	}
	filter := "null"
	if c.Noise {
		filter = "noise=alls=12:allf=t"
	}
	args := []string{"-v", "error", "-f", "lavfi", "-i", "testsrc2=size=" + c.Size + ":rate=30", "-t", c.Seconds, "-vf", filter,
		"-c:v", "libx264", "-profile:v", c.Profile, "-g", strconv.Itoa(gop), "-keyint_min", strconv.Itoa(gop), "-sc_threshold", "0", "-pix_fmt", "yuv420p"}
	if c.Bitrate != "" {
		args = append(args, "-b:v", c.Bitrate, "-maxrate", c.Bitrate, "-bufsize", c.Bitrate)
	}
	run(ffmpeg, append(args, mkv)...)
	// The same packets as Annex-B, with a delimiter before each access unit.
	run(ffmpeg, "-v", "error", "-i", mkv, "-c:v", "copy", "-bsf:v", "h264_mp4toannexb,h264_metadata=aud=insert", "-f", "h264", raw)
	probe := run(strings.TrimSuffix(ffmpeg, "ffmpeg")+"ffprobe", "-v", "error", "-select_streams", "v",
		"-show_entries", "packet=pts_time", "-of", "csv=p=0", mkv)
	for _, line := range strings.Fields(string(probe)) {
		sec, err := strconv.ParseFloat(line, 64)
		if err != nil {
			t.Fatalf("ffprobe: %q", line)
		}
		pts = append(pts, int64(sec*90000+0.5))
	}
	data, err := os.ReadFile(raw)
	if err != nil {
		t.Fatal(err)
	}
	aus = SplitAUs(data)
	if len(aus) != len(pts) {
		t.Fatalf("%d access units but %d timestamps", len(aus), len(pts))
	}
	return aus, pts, mkv
}

// NALs splits an Annex-B stream at its start codes.
func NALs(b []byte) [][]byte {
	var out [][]byte
	start := -1
	for i := 0; i+2 < len(b); i++ {
		if b[i] == 0 && b[i+1] == 0 && b[i+2] == 1 {
			if start >= 0 {
				out = append(out, bytes.TrimRight(b[start:i], "\x00"))
			}
			start = i + 3
			i += 2
		}
	}
	if start >= 0 && start < len(b) {
		out = append(out, b[start:])
	}
	return out
}

// SplitAUs cuts an Annex-B stream before each access unit delimiter.
func SplitAUs(b []byte) [][]byte {
	var aus [][]byte
	var cur []byte
	for _, n := range NALs(b) {
		if len(n) > 0 && n[0]&0x1f == h264.NALUAUD && len(cur) > 0 {
			aus = append(aus, cur)
			cur = nil
		}
		cur = append(cur, 0, 0, 0, 1)
		cur = append(cur, n...)
	}
	if len(cur) > 0 {
		aus = append(aus, cur)
	}
	return aus
}
