// Package transcodetest makes real H.264 and H.265 test sources with
// Debian's ffmpeg for the transcoder's tests, benchmarks and
// cmd/cascade-bench, and measures the ffmpeg CLI on the same ladder for
// comparison. Named like net/http/httptest.
package transcodetest

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/media/h265"
	"github.com/cascade-cdn/cascade/transcode/ladder"
)

// Clip describes a generated test source: testsrc2 at 30 fps.
type Clip struct {
	// Codec is "H264" (the default) or "H265" (libx265, as IP cameras
	// send over RTSP).
	Codec   string
	Seconds string // duration, e.g. "3"
	Size    string // e.g. "1280x720"
	// Profile is the H.264 profile: "high" has B-frames (OBS's default),
	// "baseline" as browsers send. Ignored for H.265 (Main).
	Profile string
	// NoBFrames turns B-frames off whatever the profile (a High-profile
	// source that still passes through to WebRTC viewers).
	NoBFrames bool
	// Noise adds grain, so the encoder works as hard as on camera footage.
	Noise bool
	// GOP is the keyframe interval in frames (default 30).
	GOP int
	// Bitrate caps the source (e.g. "6M", as OBS sends 1080p); empty lets
	// the encoder choose, which for grain is far above what any publisher
	// sends.
	Bitrate string
}

// Input is a generated source.
type Input struct {
	// AUs are the access units in decode order, in Annex-B form with a
	// delimiter first, and PTS their presentation timestamps in 90 kHz
	// ticks, as they would arrive over RTP.
	AUs [][]byte
	PTS []int64
	// MKV is the same stream in a Matroska file, for the ffmpeg CLI.
	MKV string
}

// ErrNoFFmpeg is returned when ffmpeg is not installed.
var ErrNoFFmpeg = errors.New("transcodetest: ffmpeg not installed")

func run(name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("transcodetest: %s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, stderr.Bytes())
	}
	return out, nil
}

// Generate encodes c with Debian's ffmpeg into dir/src.mkv and loads it.
func Generate(dir string, c Clip) (*Input, error) {
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		return nil, ErrNoFFmpeg
	}
	gop := c.GOP
	if gop == 0 {
		gop = 30
	}
	filter := "null"
	if c.Noise {
		filter = "noise=alls=12:allf=t"
	}
	mkv := filepath.Join(dir, "src.mkv")
	args := []string{"-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=" + c.Size + ":rate=30", "-t", c.Seconds, "-vf", filter, "-pix_fmt", "yuv420p"}
	switch c.Codec {
	case "", "H264":
		args = append(args, "-c:v", "libx264", "-g", strconv.Itoa(gop), "-keyint_min", strconv.Itoa(gop), "-sc_threshold", "0")
		if c.Profile != "" {
			args = append(args, "-profile:v", c.Profile)
		}
		if c.NoBFrames {
			args = append(args, "-bf", "0")
		}
	case "H265":
		params := fmt.Sprintf("log-level=error:keyint=%d:min-keyint=%d:scenecut=0", gop, gop)
		if c.NoBFrames {
			params += ":bframes=0"
		}
		args = append(args, "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", params)
	default:
		return nil, fmt.Errorf("transcodetest: codec %q", c.Codec)
	}
	if c.Bitrate != "" {
		args = append(args, "-b:v", c.Bitrate, "-maxrate", c.Bitrate, "-bufsize", c.Bitrate)
	}
	if _, err := run(ffmpeg, append(args, mkv)...); err != nil {
		return nil, err
	}
	return Load(mkv, cmp.Or(c.Codec, "H264"))
}

// Load reads a Matroska file of one H.264 or H.265 stream (codec "H264" or
// "H265"), as Generate made it, into an Input. It writes the stream as
// Annex-B next to it.
func Load(mkv, codec string) (*Input, error) {
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		return nil, ErrNoFFmpeg
	}
	var bsf, format string
	var isAUD func(nal []byte) bool
	switch codec {
	case "H264":
		bsf, format = "h264_mp4toannexb,h264_metadata=aud=insert", "h264"
		isAUD = func(n []byte) bool { return n[0]&0x1f == h264.NALUAUD }
	case "H265":
		bsf, format = "hevc_mp4toannexb,hevc_metadata=aud=insert", "hevc"
		isAUD = func(n []byte) bool { return len(n) >= 2 && h265.Type(n[0]) == h265.NALUAUD }
	default:
		return nil, fmt.Errorf("transcodetest: codec %q", codec)
	}
	in := &Input{MKV: mkv}
	raw := strings.TrimSuffix(mkv, filepath.Ext(mkv)) + "." + format
	// The same packets as Annex-B, with a delimiter before each access unit.
	if _, err := run(ffmpeg, "-v", "error", "-y", "-i", in.MKV, "-c:v", "copy", "-bsf:v", bsf, "-f", format, raw); err != nil {
		return nil, err
	}
	probe, err := run(strings.TrimSuffix(ffmpeg, "ffmpeg")+"ffprobe", "-v", "error", "-select_streams", "v",
		"-show_entries", "packet=pts_time", "-of", "csv=p=0", in.MKV)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Fields(string(probe)) {
		sec, err := strconv.ParseFloat(line, 64)
		if err != nil {
			return nil, fmt.Errorf("transcodetest: ffprobe: %q", line)
		}
		in.PTS = append(in.PTS, int64(sec*90000+0.5))
	}
	data, err := os.ReadFile(raw)
	if err != nil {
		return nil, err
	}
	in.AUs = splitAUs(data, isAUD)
	if len(in.AUs) != len(in.PTS) {
		return nil, fmt.Errorf("transcodetest: %d access units but %d timestamps", len(in.AUs), len(in.PTS))
	}
	return in, nil
}

// Source encodes a 720p30 testsrc2 clip in the given H.264 profile. It
// returns the access units in decode order with their presentation
// timestamps in 90 kHz ticks, as they would arrive over RTP.
func Source(t testing.TB, seconds, profile string) (aus [][]byte, pts []int64) {
	aus, pts, _ = Make(t, Clip{Seconds: seconds, Size: "1280x720", Profile: profile})
	return aus, pts
}

// Make is Generate for tests: it skips the test without ffmpeg (fails it
// in CI) and returns the access units, their timestamps, and the path of
// the same stream in a Matroska file.
func Make(t testing.TB, c Clip) (aus [][]byte, pts []int64, mkv string) {
	t.Helper()
	in, err := Generate(t.TempDir(), c)
	switch {
	case errors.Is(err, ErrNoFFmpeg) && os.Getenv("CI") != "":
		t.Fatal("ffmpeg missing: CI must install it")
	case errors.Is(err, ErrNoFFmpeg):
		t.Skip("ffmpeg not installed")
	case err != nil:
		t.Fatal(err)
	}
	return in.AUs, in.PTS, in.MKV
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

// SplitAUs cuts an H.264 Annex-B stream before each access unit delimiter.
func SplitAUs(b []byte) [][]byte {
	return splitAUs(b, func(n []byte) bool { return n[0]&0x1f == h264.NALUAUD })
}

func splitAUs(b []byte, isAUD func([]byte) bool) [][]byte {
	var aus [][]byte
	var cur []byte
	for _, n := range NALs(b) {
		if len(n) > 0 && isAUD(n) && len(cur) > 0 {
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

// CPUTime is the CPU time (user and system) this process has used, all
// threads included.
func CPUTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// FFmpegLadder runs the ffmpeg CLI on input with the same ladder as the
// pipeline: one decode; the same scaling, each rung scaled with the area
// filter from the next larger one; libx264 with Cascade's WebRTC settings
// at preset and a keyframe every 30 frames (x264's own threading, as the
// CLI runs it); outputs discarded. It returns the CLI's CPU time (user and
// system).
func FFmpegLadder(input string, rungs []ladder.Rung, preset string) (time.Duration, error) {
	if len(rungs) == 0 {
		return 0, errors.New("transcodetest: no rungs")
	}
	rungs = slices.Clone(rungs)
	slices.SortStableFunc(rungs, func(a, b ladder.Rung) int { return cmp.Compare(b.Height, a.Height) })
	var filter strings.Builder
	from := "[0:v]"
	for i, r := range rungs {
		if i > 0 {
			filter.WriteString(";")
		}
		fmt.Fprintf(&filter, "%sscale=%d:%d:flags=area", from, r.Width, r.Height)
		if i == len(rungs)-1 {
			fmt.Fprintf(&filter, "[o%d]", i)
			break
		}
		fmt.Fprintf(&filter, ",split=2[o%d][c%d]", i, i)
		from = fmt.Sprintf("[c%d]", i)
	}
	args := []string{"-v", "error", "-i", input, "-filter_complex", filter.String()}
	for i, r := range rungs {
		args = append(args, "-map", fmt.Sprintf("[o%d]", i), "-c:v", "libx264", "-preset", preset, "-tune", "zerolatency",
			"-profile:v", "baseline", "-bf", "0", "-b:v", strconv.Itoa(r.Bitrate), "-maxrate", strconv.Itoa(r.Bitrate),
			"-bufsize", strconv.Itoa(r.Bitrate/30), "-g", "30", "-f", "null", "-")
	}
	cmd := exec.Command("ffmpeg", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("transcodetest: ffmpeg ladder: %v: %s", err, out)
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), nil
}
