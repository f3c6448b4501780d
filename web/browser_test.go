package web_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/node"
)

// The end-to-end browser test drives the real pages in a real Chromium: the
// publisher page captures Chromium's fake camera and publishes it over WHIP,
// and the player page plays it back over WHEP from the same in-process node.
const (
	// browserTestTimeout bounds the whole publish-and-watch scenario.
	browserTestTimeout = 90 * time.Second
	// browserGrace is how much longer the browser itself may live, so that
	// the diagnostics of a timed-out run can still be read from the tabs.
	browserGrace = 20 * time.Second
	// pollEvery is the only sleep in the test: the interval between two
	// looks at a page or at the API.
	pollEvery = 200 * time.Millisecond
)

// chromiumPath returns the Chromium binary, or "" when there is none.
func chromiumPath() string {
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// browserTestLogger is the node's logger: everything on stderr with
// CASCADE_TEST_LOG set, else nothing on the output; the info-level tail is
// kept in memory for the failure message only.
func browserTestLogger(tail io.Writer) *slog.Logger {
	if os.Getenv("CASCADE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(tail, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// watchStats mirrors window.cascadeStats (web/static/watch.js).
type watchStats struct {
	State          string  `json:"state"`
	FramesDecoded  int64   `json:"framesDecoded"`
	Width          int     `json:"width"`
	Height         int     `json:"height"`
	FPS            float64 `json:"fps"`
	Bitrate        float64 `json:"bitrate"`
	PacketsLost    int64   `json:"packetsLost"`
	JitterBufferMs float64 `json:"jitterBufferMs"`
	Codec          string  `json:"codec"`
	Rendition      string  `json:"rendition"`
	Reconnects     int     `json:"reconnects"`
	Audio          *struct {
		Codec   string  `json:"codec"`
		Bitrate float64 `json:"bitrate"`
	} `json:"audio"`
	// From the session's WHEP extensions (Link headers) and its events.
	Extensions []string `json:"extensions"`
	Events     bool     `json:"events"`
	Renditions []string `json:"renditions"`
	Pinned     bool     `json:"pinned"`
	Estimate   float64  `json:"estimate"`
	LastSwitch *struct {
		From   string `json:"from"`
		To     string `json:"to"`
		Reason string `json:"reason"`
	} `json:"lastSwitch"`
	VideoPaused bool `json:"videoPaused"`
}

// pageStatus is the #status element of either page.
type pageStatus struct {
	State string `json:"state"`
	Text  string `json:"text"`
}

const statusJS = `(() => {
	const el = document.getElementById('status');
	return el ? {state: el.dataset.state || '', text: el.textContent} : {state: '', text: '(no #status yet)'};
})()`

// pcHookJS runs in every page before the page's own scripts. It keeps the
// page's RTCPeerConnections in window.__cascadeTestPCs, so that the failure
// message can show the ICE candidates and pairs from getStats. It is a
// plain subclass: the pages see the same API.
const pcHookJS = `(() => {
	const Orig = window.RTCPeerConnection;
	if (typeof Orig !== 'function') return;
	const pcs = window.__cascadeTestPCs = [];
	window.RTCPeerConnection = class RTCPeerConnection extends Orig {
		constructor(...args) {
			super(...args);
			pcs.push(this);
		}
	};
})()`

// iceJS describes the ICE state of the last few peer connections of a page:
// the connection states, the candidates on both sides and the candidate
// pairs, the selected one marked with "*".
const iceJS = `(async () => {
	const pcs = window.__cascadeTestPCs || [];
	if (pcs.length === 0) return 'no RTCPeerConnection';
	const out = [];
	for (const [i, pc] of pcs.entries()) {
		if (i < pcs.length - 3) continue;
		let line = 'pc#' + i + ' ' + pc.connectionState + '/ice ' + pc.iceConnectionState + '/gathering ' + pc.iceGatheringState;
		try {
			const report = await pc.getStats();
			const cand = {};
			let selected = '';
			report.forEach((s) => {
				if (s.type === 'local-candidate' || s.type === 'remote-candidate') {
					cand[s.id] = (s.type === 'local-candidate' ? 'L ' : 'R ') + s.candidateType + ' ' + s.protocol +
						(s.tcpType ? '/' + s.tcpType : '') + ' ' + (s.address || s.ip) + ':' + s.port;
				}
				if (s.type === 'transport' && s.selectedCandidatePairId) selected = s.selectedCandidatePairId;
			});
			line += '; candidates: ' + Object.values(cand).join(', ');
			const pairs = [];
			report.forEach((s) => {
				if (s.type !== 'candidate-pair') return;
				pairs.push((s.id === selected ? '*' : '') + s.state + (s.nominated ? ' nominated' : '') +
					' [' + (cand[s.localCandidateId] || s.localCandidateId) + ' -> ' + (cand[s.remoteCandidateId] || s.remoteCandidateId) + ']' +
					' req ' + (s.requestsSent || 0) + '/resp ' + (s.responsesReceived || 0));
			});
			line += '; pairs: ' + (pairs.join(', ') || 'none');
		} catch (e) {
			line += '; getStats: ' + e;
		}
		out.push(line);
	}
	return out.join('\n    ');
})()`

// consoleLog collects what the pages write to the console and the
// exceptions they do not catch, for the failure message.
type consoleLog struct {
	mu    sync.Mutex
	lines []string
}

func (c *consoleLog) add(line string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.lines) < 500 {
		c.lines = append(c.lines, line)
	}
}

func (c *consoleLog) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.lines) == 0 {
		return "  (none)\n"
	}
	return "  " + strings.Join(c.lines, "\n  ") + "\n"
}

// listen records the console of one tab. The func runs on the tab's read
// loop, so it only formats and appends.
func (c *consoleLog) listen(ctx context.Context, tab string) error {
	return chromedp.Listen(ctx, func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			parts := make([]string, 0, len(e.Args))
			for _, a := range e.Args {
				parts = append(parts, remoteText(a))
			}
			c.add(fmt.Sprintf("[%s] console.%s: %s", tab, e.Type, strings.Join(parts, " ")))
		case *runtime.EventExceptionThrown:
			d := e.ExceptionDetails
			if d == nil {
				return
			}
			msg := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				msg += " " + d.Exception.Description
			}
			c.add(fmt.Sprintf("[%s] exception at %s:%d:%d: %s", tab, d.URL, d.LineNumber, d.ColumnNumber, msg))
		}
	})
}

// remoteText renders one console argument briefly.
func remoteText(o *runtime.RemoteObject) string {
	if o == nil {
		return "undefined"
	}
	if len(o.Value) > 0 {
		var s string
		if json.Unmarshal(o.Value, &s) == nil {
			return s
		}
		return string(o.Value)
	}
	if o.UnserializableValue != "" {
		return string(o.UnserializableValue)
	}
	if o.Description != "" {
		return o.Description
	}
	return string(o.Type)
}

// tailBuffer keeps the last max bytes written to it: the browser's own
// output, the node's log.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append(b.buf[:0:0], b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// browserNoise drops the lines a headless Chromium in a container always
// prints (no D-Bus, no sound card), which would bury the useful ones.
func browserNoise(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "dbus/") || strings.HasPrefix(l, "ALSA lib") || strings.Contains(l, "alsa_util") ||
			strings.TrimSpace(l) == "" {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// pollJS evaluates expr in a tab every pollEvery until done reports true or
// an error, or ctx ends. Evaluation errors (a page still loading, say) are
// retried. It returns the last value it saw.
func pollJS[T any](ctx context.Context, expr string, done func(T) (bool, error)) (T, error) {
	var last T
	var lastErr error
	for {
		v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
		if err == nil {
			last = v
			ok, derr := done(v)
			if derr != nil || ok {
				return last, derr
			}
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return last, fmt.Errorf("%w (last evaluation error: %v)", ctx.Err(), lastErr)
			}
			return last, ctx.Err()
		case <-time.After(pollEvery):
		}
	}
}

// streamInfo is the part of /v1/streams/{stream} the test checks.
type streamInfo struct {
	Source  string `json:"source"`
	Viewers int64  `json:"viewers"`
}

func getStream(ctx context.Context, client *http.Client, url string) (streamInfo, string, error) {
	var info streamInfo
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return info, "", err
	}
	res, err := client.Do(req)
	if err != nil {
		return info, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, 64<<10))
	if err != nil {
		return info, "", err
	}
	if res.StatusCode != http.StatusOK {
		return info, string(body), fmt.Errorf("GET %s: %s", url, res.Status)
	}
	err = json.Unmarshal(body, &info)
	return info, string(body), err
}

func TestBrowserPublishAndWatch(t *testing.T) {
	chrome := chromiumPath()
	if chrome == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("chromium not found at /usr/bin/chromium or on PATH: CI must install it (Debian: apt-get install chromium)")
		}
		t.Skip("chromium not found at /usr/bin/chromium or on PATH; install it to run the end-to-end browser test")
	}

	// The node must leave no goroutine behind once the browser and the node
	// are closed. Everything that runs already (other tests' leftovers, the
	// testing framework) is ignored. This cleanup is registered first, so it
	// runs last, after the tabs, the browser and the node are gone.
	ignoreExisting := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignoreExisting) })

	nodeLog := &tailBuffer{max: 16 << 10}
	// The ladder is on: Chromium publishes real H.264 (OpenH264), so the
	// page plays what the transcoder's source rendition carries.
	cfg := node.TestConfig()
	cfg.Transcode.Enabled = true
	n, err := node.New(cfg, browserTestLogger(nodeLog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	const stream = "x"
	base := n.URL()

	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	t.Cleanup(client.CloseIdleConnections)

	// The user data directory is made before the browser's cleanup is
	// registered, so it is removed only after the browser has exited.
	userDataDir := t.TempDir()

	// rootCtx is the hard limit for the browser process; deadline is the
	// limit for the scenario. The gap between the two leaves time to read
	// the diagnostics from the tabs after a timeout.
	deadline := time.Now().Add(browserTestTimeout)
	rootCtx, cancelRoot := context.WithDeadline(context.Background(), deadline.Add(browserGrace))
	t.Cleanup(cancelRoot)

	browserOut := &tailBuffer{max: 8 << 10}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox, // we may run as root, as in CI containers
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(userDataDir),
		chromedp.Flag("use-fake-device-for-media-stream", true),
		chromedp.Flag("use-fake-ui-for-media-stream", true),
		chromedp.Flag("autoplay-policy", "no-user-gesture-required"),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.CombinedOutput(browserOut),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(rootCtx, opts...)
	t.Cleanup(cancelAlloc) // waits for the browser process to exit

	browserCtx, cancelBrowser := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		// Close the browser gracefully, so that its helper processes stop
		// before the user data directory is removed; cancelBrowser then
		// frees what is left (and kills a browser that did not close).
		cctx, cancel := context.WithTimeout(browserCtx, 10*time.Second)
		defer cancel()
		if err := chromedp.Cancel(cctx); err != nil && !errors.Is(err, context.Canceled) {
			t.Logf("closing the browser: %v", err)
		}
		cancelBrowser()
	})
	start := time.Now()
	if err := chromedp.Do(browserCtx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v\nbrowser output:\n%s", chrome, err, browserOut)
	}
	t.Logf("browser started in %v", time.Since(start).Round(time.Millisecond))

	// Two tabs of the one browser, each in its own window so that both
	// are visible and neither is throttled as a background tab. Cleanups
	// run last-in first-out: the tabs close first, then the browser.
	pubCtx, cancelPub := chromedp.NewContext(browserCtx)
	t.Cleanup(cancelPub)
	watchCtx, cancelWatch := chromedp.NewContext(browserCtx)
	t.Cleanup(cancelWatch)

	console := &consoleLog{}
	for _, tab := range []struct {
		ctx  context.Context
		name string
	}{{pubCtx, "publish"}, {watchCtx, "watch"}} {
		// The first Run opens the tab. It runs on the tab context itself
		// (bounded by rootCtx only), not on a per-step timeout derived from
		// it, because chromedp ties a tab to the context of its first Run.
		if err := chromedp.Do(tab.ctx); err != nil {
			t.Fatalf("opening the %s tab: %v\nbrowser output:\n%s", tab.name, err, browserOut)
		}
		if err := console.listen(tab.ctx, tab.name); err != nil {
			t.Fatalf("listening to the %s tab: %v", tab.name, err)
		}
		if err := chromedp.Do(tab.ctx, chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
			_, err := cdp.Call(ctx, tgt, page.AddScriptToEvaluateOnNewDocument,
				page.AddScriptToEvaluateOnNewDocumentParams{Source: pcHookJS})
			return err
		})); err != nil {
			t.Fatalf("instrumenting the %s tab: %v", tab.name, err)
		}
	}

	// diagnostics reads the state of both pages, the API and the node. It
	// uses fresh short timeouts, so it works after the scenario timed out.
	diagnostics := func() string {
		var b strings.Builder
		read := func(ctx context.Context, name, expr string) {
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			v, err := chromedp.Run(dctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
			if err != nil {
				v = "(cannot read: " + err.Error() + ")"
			}
			fmt.Fprintf(&b, "%s: %s\n", name, v)
		}
		read(pubCtx, "publish #status", `(() => { const el = document.getElementById('status'); return el ? el.dataset.state + ': ' + el.textContent : '(none)'; })()`)
		read(pubCtx, "publish #info", `(() => { const el = document.getElementById('info'); return el ? el.textContent : '(none)'; })()`)
		read(pubCtx, "window.cascadePublishStats", `JSON.stringify(window.cascadePublishStats)`)
		read(watchCtx, "watch #status", `(() => { const el = document.getElementById('status'); return el ? el.dataset.state + ': ' + el.textContent : '(none)'; })()`)
		read(watchCtx, "window.cascadeStats", `JSON.stringify(window.cascadeStats)`)
		read(pubCtx, "publish ICE", iceJS)
		read(watchCtx, "watch ICE", iceJS)
		pubs, views := n.Sessions()
		fmt.Fprintf(&b, "node sessions: %d publishers, %d viewers\n", pubs, views)
		actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, body, err := getStream(actx, client, base+"/v1/streams/"+stream); err != nil {
			fmt.Fprintf(&b, "GET /v1/streams/%s: %v %s\n", stream, err, body)
		} else {
			fmt.Fprintf(&b, "GET /v1/streams/%s: %s\n", stream, strings.TrimSpace(body))
		}
		fmt.Fprintf(&b, "console:\n%s", console)
		if l := strings.TrimSpace(nodeLog.String()); l != "" {
			fmt.Fprintf(&b, "node log (tail, info and up):\n%s\n", l)
		}
		if out := browserNoise(browserOut.String()); out != "" {
			fmt.Fprintf(&b, "browser output (tail, without D-Bus and ALSA noise):\n%s\n", out)
		}
		return b.String()
	}
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("%s after %v\n--- diagnostics ---\n%s", fmt.Sprintf(format, args...),
			time.Since(start).Round(time.Millisecond), diagnostics())
	}
	// timed derives a context bounded by the scenario's deadline from a tab.
	timed := func(ctx context.Context) (context.Context, context.CancelFunc) {
		return context.WithDeadline(ctx, deadline)
	}

	// 1. Publish: open the page, press Start, wait for the WHIP session.
	pctx, cancel := timed(pubCtx)
	defer cancel()
	if err := chromedp.Do(pctx,
		chromedp.Navigate(base+"/publish/"+stream),
		chromedp.Click(chromedp.CSS("#start")),
	); err != nil {
		fail("publish page: %v", err)
	}
	st, err := pollJS(pctx, statusJS, func(s pageStatus) (bool, error) {
		if s.State == "error" { // the page gives up; only Start again helps
			return false, fmt.Errorf("publisher failed: %s", s.Text)
		}
		return s.State == "connected", nil
	})
	if err != nil {
		fail("waiting for #status[data-state=connected] on the publish page (last %+v): %v", st, err)
	}
	t.Logf("publishing after %v (status %q)", time.Since(start).Round(time.Millisecond), st.Text)

	// 2. Watch: the player connects by itself; wait for decoded frames.
	wctx, cancel := timed(watchCtx)
	defer cancel()
	if err := chromedp.Do(wctx, chromedp.Navigate(base+"/watch/"+stream)); err != nil {
		fail("watch page: %v", err)
	}
	ws, err := pollJS(wctx, `window.cascadeStats || null`, func(s *watchStats) (bool, error) {
		return s != nil && s.FramesDecoded > 0 && s.Width > 0, nil
	})
	if err != nil {
		fail("waiting for window.cascadeStats.framesDecoded > 0 on the watch page (last %+v): %v", ws, err)
	}
	if ws.FramesDecoded <= 0 { // the requirement: frames decoded, per getStats
		fail("framesDecoded = %d, want > 0", ws.FramesDecoded)
	}
	t.Logf("watching after %v: %d frames decoded, %dx%d %s, %.0f fps, %.0f kbit/s, state %s, %d reconnects",
		time.Since(start).Round(time.Millisecond), ws.FramesDecoded, ws.Width, ws.Height, ws.Codec,
		ws.FPS, ws.Bitrate/1000, ws.State, ws.Reconnects)

	// 2b. Per-viewer ABR, once the node's WHEP sessions advertise the event
	// stream: the overlay names the rung the server sends and the quality
	// menu lists Auto and every rung. (web/abr_browser_test.go tests the
	// page's side in detail against a fake session.)
	if slices.Contains(ws.Extensions, "events") {
		const abrJS = `(() => {
			const q = document.getElementById('quality');
			return {stats: window.cascadeStats, options: q && !document.getElementById('quality-field').hidden ? [...q.options].map((o) => o.value) : []};
		})()`
		type abrState struct {
			Stats   watchStats `json:"stats"`
			Options []string   `json:"options"`
		}
		layer := slices.Contains(ws.Extensions, "layer")
		st, err := pollJS(wctx, abrJS, func(s abrState) (bool, error) {
			ok := s.Stats.Events && s.Stats.Rendition != "" && len(s.Stats.Renditions) > 0
			if layer {
				ok = ok && slices.Equal(s.Options, append([]string{"auto"}, s.Stats.Renditions...))
			}
			return ok, nil
		})
		if err != nil {
			fail("waiting for the ABR events on the watch page (last %+v): %v", st, err)
		}
		t.Logf("ABR: rendition %s of %v, quality menu %v", st.Stats.Rendition, st.Stats.Renditions, st.Options)
	} else {
		t.Logf("the WHEP session advertises no event stream (extensions %v): ABR checks skipped", ws.Extensions)
	}

	// 3. The API counts the one viewer of the published stream.
	actx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	var info streamInfo
	var body string
	for {
		info, body, err = getStream(actx, client, base+"/v1/streams/"+stream)
		if err == nil && info.Viewers == 1 && info.Source == "whip" {
			break
		}
		select {
		case <-actx.Done():
			fail("GET /v1/streams/%s: want viewers 1 and source \"whip\", got %+v (err %v, body %s)", stream, info, err, body)
		case <-time.After(pollEvery):
		}
	}
	if pubs, views := n.Sessions(); pubs != 1 || views != 1 {
		fail("node sessions: %d publishers, %d viewers, want 1 and 1", pubs, views)
	}
	if testing.Verbose() {
		for _, tab := range []struct {
			ctx  context.Context
			name string
		}{{pubCtx, "publish"}, {watchCtx, "watch"}} {
			dctx, cancel := context.WithTimeout(tab.ctx, 5*time.Second)
			ice, err := chromedp.Run(dctx, chromedp.Evaluate[string](iceJS, chromedp.EvalAwaitPromise))
			cancel()
			if err != nil {
				ice = err.Error()
			}
			t.Logf("%s ICE: %s", tab.name, ice)
		}
	}
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}
