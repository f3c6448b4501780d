// Package ladder plans an adaptive-bitrate ladder in pure Go: which rungs a
// source gets, whether the source itself may pass through, and on which
// source frames every transcoded rung puts its keyframes so that all rungs
// switch cleanly at the same instants. It has no cgo and no I/O, so it is
// table-tested on its own.
package ladder

import (
	"errors"
	"fmt"
	"time"
)

// RungConfig is one configured rung (config key "transcode.ladder").
type RungConfig struct {
	Name    string `yaml:"name"`
	Height  int    `yaml:"height"`
	Bitrate int    `yaml:"bitrate"` // bits per second
}

// DefaultRungs is the design's ladder below the source.
func DefaultRungs() []RungConfig {
	return []RungConfig{
		{Name: "720p", Height: 720, Bitrate: 2_500_000},
		{Name: "480p", Height: 480, Bitrate: 1_000_000},
		{Name: "360p", Height: 360, Bitrate: 600_000},
		{Name: "240p", Height: 240, Bitrate: 300_000},
	}
}

// ValidateRungs checks a configured ladder.
func ValidateRungs(rs []RungConfig) error {
	seen := map[string]bool{"source": true}
	for _, r := range rs {
		if r.Name == "" || seen[r.Name] {
			return fmt.Errorf("ladder: rung name %q is empty, reserved or repeated", r.Name)
		}
		seen[r.Name] = true
		if r.Height < 16 || r.Height > 4320 || r.Bitrate < 50_000 {
			return fmt.Errorf("ladder: rung %s: height %d or bitrate %d out of range", r.Name, r.Height, r.Bitrate)
		}
	}
	return nil
}

// Source describes what a publisher sends, as far as planning needs.
type Source struct {
	Codec         string // "H264", "H265"
	Width, Height int
	// BFrames is set when the stream reorders frames (High profile B-frames).
	BFrames bool
	// KeyframeInterval is the longest gap seen between source keyframes.
	KeyframeInterval time.Duration
	// Bitrate is the measured source bit rate, reported for the source rung.
	Bitrate int
}

// Rung is one planned rendition.
type Rung struct {
	Name          string
	Width, Height int
	Bitrate       int
	// Passthrough means the source's own packets are forwarded untouched;
	// otherwise the rung is encoded from the decoded source.
	Passthrough bool
}

// MaxPassthroughGOP is the longest source keyframe interval that may pass
// through: a viewer switching to the source rung waits at most this long.
const MaxPassthroughGOP = 2 * time.Second

// ErrNoSize is returned for a source whose picture size is unknown.
var ErrNoSize = errors.New("ladder: source size unknown")

// Plan returns the rungs for src, the source rung first, then the
// configured rungs strictly below the source height (never upscaled), each
// with the source's aspect ratio and an even width.
func Plan(rungs []RungConfig, src Source) ([]Rung, error) {
	if src.Width <= 0 || src.Height <= 0 {
		return nil, ErrNoSize
	}
	out := []Rung{{
		Name: "source", Width: src.Width, Height: src.Height, Bitrate: src.Bitrate,
		Passthrough: PassthroughSafe(src),
	}}
	for _, r := range rungs {
		if r.Height >= src.Height {
			continue
		}
		w := evenRound(float64(src.Width) * float64(r.Height) / float64(src.Height))
		out = append(out, Rung{Name: r.Name, Width: w, Height: r.Height &^ 1, Bitrate: r.Bitrate})
	}
	return out, nil
}

// PassthroughSafe reports whether viewers may get the source untouched:
// H.264 without B-frames (WebRTC decoders expect no reordering) whose
// keyframes come at least every MaxPassthroughGOP. OBS ignores keyframe
// requests and defaults to long intervals, so a source that does not prove
// a short interval is re-encoded on the shared keyframe clock.
func PassthroughSafe(src Source) bool {
	return src.Codec == "H264" && !src.BFrames && src.KeyframeInterval > 0 && src.KeyframeInterval <= MaxPassthroughGOP
}

func evenRound(x float64) int {
	n := int(x/2+0.5) * 2
	if n < 2 {
		n = 2
	}
	return n
}
