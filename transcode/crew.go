package transcode

import (
	"runtime"
	"sync"
)

// crew encodes one frame's rungs in parallel. Each libx264 encoder runs
// single-threaded: a thread pool per encoder (x264's sliced threads) costs
// every rung a round of thread wake-ups per frame, which on a small
// virtual machine is a sixth of the transcoder's CPU, and splits small
// pictures into slices that compress worse. The pipeline goroutine queues
// each rung as soon as its picture is scaled; helpers take the queued
// rungs, biggest first, and the pipeline goroutine takes what is left
// before it waits for the frame to be done.
//
// A rung's encoder, scaler, packetizer and hub source are used by one
// goroutine at a time: the channel and the WaitGroup order one frame's use
// before the next.
type crew struct {
	jobs    chan *rung
	pending sync.WaitGroup // the current frame's queued rungs
	done    chan struct{}
	helpers sync.WaitGroup
}

// crewHelpers is how many goroutines help the pipeline goroutine: one per
// further core, up to 3 (a 1080p source with a re-encoded source rung has
// 5 encodes per frame).
func crewHelpers() int { return max(1, min(runtime.GOMAXPROCS(0)-1, 3)) }

func newCrew(helpers, maxJobs int) *crew {
	c := &crew{jobs: make(chan *rung, maxJobs), done: make(chan struct{})}
	c.helpers.Add(helpers)
	for range helpers {
		go c.help()
	}
	return c
}

func (c *crew) help() {
	defer c.helpers.Done()
	for {
		select {
		case <-c.done:
			return
		case r := <-c.jobs:
			r.run()
			c.pending.Done()
		}
	}
}

// submit queues r's encode of the picture it holds. It never blocks: the
// queue holds every rung of a frame.
func (c *crew) submit(r *rung) {
	c.pending.Add(1)
	c.jobs <- r
}

// finish runs queued rungs on the calling goroutine until none is left,
// then waits for the helpers' rungs.
func (c *crew) finish() {
	for {
		select {
		case r := <-c.jobs:
			r.run()
			c.pending.Done()
		default:
			c.pending.Wait()
			return
		}
	}
}

// close stops the helpers and waits for them. No frame may be in flight.
func (c *crew) close() {
	close(c.done)
	c.helpers.Wait()
}
