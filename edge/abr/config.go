package abr

import (
	"fmt"
	"time"
)

// Config tunes one viewer's Controller. The zero value is not usable; start
// from DefaultConfig.
type Config struct {
	// StartBitrate picks the first rung: the one nearest this rate, because
	// a low rung's first keyframe arrives fast on any link and a new
	// viewer's link is unknown.
	StartBitrate int `yaml:"start_bitrate"`
	// UpMargin is how far the link must be shown to exceed the next rung's
	// bit rate before climbing (0.2 = 20 %): a probe must get
	// next × (1+UpMargin) acknowledged, and asks for 5 % more.
	UpMargin float64 `yaml:"up_margin"`
	// Headroom is how far above what was proven (delivered, or probed) the
	// estimate shown to the player may reach. Decisions never use it: a
	// climb needs the proof itself.
	Headroom float64 `yaml:"headroom"`
	// UpHold is how long a viewer must sit on its rung with no congestion,
	// no loss and no switch before a probe.
	UpHold time.Duration `yaml:"up_hold"`
	// ProbeDuration is how long a probe pads, at the least: it ends with
	// success once the acknowledgements over its second half reach the
	// rate it is for, and may go on for a round trip and a feedback
	// interval more, waiting for them.
	ProbeDuration time.Duration `yaml:"probe_duration"`
	// ProbeBackoffMin and ProbeBackoffMax bound the wait after a failed
	// probe, which doubles with each failure in a row. The maximum is also
	// the longest a recovered link waits to be noticed: it holds while the
	// viewer is below the rung it left at a down-switch, for up to 30 s.
	// Otherwise the viewer is under the ceiling its probes found, and
	// waits up to 8 s (or the maximum, if longer).
	ProbeBackoffMin time.Duration `yaml:"probe_backoff_min"`
	ProbeBackoffMax time.Duration `yaml:"probe_backoff_max"`
	// LossDown is the loss fraction (receiver reports, or NACKs per packet)
	// above which the viewer steps down one rung.
	LossDown float64 `yaml:"loss_down"`
	// LossProbeMax is the loss fraction above which no probe starts.
	LossProbeMax float64 `yaml:"loss_probe_max"`
	// AudioOnlyHold is how long the estimate must stay below the lowest
	// rung, while on it, before video is paused.
	AudioOnlyHold time.Duration `yaml:"audio_only_hold"`
}

// DefaultConfig returns settings that meet the targets on the simulated
// 4 → 0.8 → 4 Mbps link: down within 1 s, up within 5 s, 90 % of the time
// on the best rung that fits. ProbeBackoffMax bounds the time to notice a
// recovered link, so it is kept short; what keeps frequent probes cheap is
// that after a failure they only go 15 % above what the link carried, and
// that away from a down-switch they back off further.
func DefaultConfig() Config {
	return Config{
		StartBitrate:    600_000,
		UpMargin:        0.2,
		Headroom:        0.1,
		UpHold:          time.Second,
		ProbeDuration:   400 * time.Millisecond,
		ProbeBackoffMin: time.Second,
		ProbeBackoffMax: 2 * time.Second,
		LossDown:        0.10,
		LossProbeMax:    0.02,
		AudioOnlyHold:   500 * time.Millisecond,
	}
}

// Validate reports the first setting out of range.
func (c Config) Validate() error {
	switch {
	case c.StartBitrate < 0:
		return fmt.Errorf("abr: start_bitrate %d is negative", c.StartBitrate)
	case !(c.UpMargin > 0 && c.UpMargin <= 10):
		return fmt.Errorf("abr: up_margin %v is not in (0, 10]", c.UpMargin)
	case !(c.Headroom >= 0 && c.Headroom <= 1):
		return fmt.Errorf("abr: headroom %v is not in [0, 1]", c.Headroom)
	case c.UpHold < 0 || c.AudioOnlyHold < 0:
		return fmt.Errorf("abr: up_hold and audio_only_hold must not be negative")
	case c.ProbeDuration < 4*bucket || c.ProbeDuration > 10*time.Second:
		return fmt.Errorf("abr: probe_duration %v is not in [%v, 10s]", c.ProbeDuration, 4*bucket)
	case c.ProbeBackoffMin <= 0 || c.ProbeBackoffMax < c.ProbeBackoffMin:
		return fmt.Errorf("abr: probe backoff needs 0 < min (%v) <= max (%v)", c.ProbeBackoffMin, c.ProbeBackoffMax)
	case !(c.LossDown > 0 && c.LossDown <= 1):
		return fmt.Errorf("abr: loss_down %v is not in (0, 1]", c.LossDown)
	case !(c.LossProbeMax >= 0 && c.LossProbeMax <= c.LossDown):
		return fmt.Errorf("abr: loss_probe_max %v is not in [0, loss_down]", c.LossProbeMax)
	}
	return nil
}
