//go:build !race

package node

// raceEnabled scales the heaviest tests down under the race detector.
const raceEnabled = false
