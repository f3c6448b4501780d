package web

import (
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
)

func newMux() *http.ServeMux {
	mux := http.NewServeMux()
	Register(mux)
	return mux
}

func TestRoutes(t *testing.T) {
	long := strings.Repeat("a", 129)
	cases := []struct {
		name     string
		method   string
		path     string
		status   int
		ctype    string   // prefix of Content-Type
		contains []string // substrings of the body
	}{
		{name: "index", path: "/", status: 200, ctype: "text/html",
			contains: []string{`id="streams"`, `id="stream-rows"`, `id="status"`, `id="stream-name"`, `/static/index.js`}},
		{name: "publish", path: "/publish/live", status: 200, ctype: "text/html",
			contains: []string{`id="start"`, `id="stop"`, `id="status"`, `id="token"`, `id="preview"`,
				`id="source-camera"`, `id="source-screen"`, `href="/watch/live"`, `data-stream="live"`, `/static/publish.js`}},
		{name: "watch", path: "/watch/live", status: 200, ctype: "text/html",
			contains: []string{`id="video"`, `id="stats"`, `id="status"`, `id="unmute"`, `autoplay`, `playsinline`, `muted`,
				`id="quality-field" hidden`, `id="quality"`, `<option value="auto">Auto</option>`, `id="quality-note"`,
				`data-stream="live"`, `/static/watch.js`}},
		{name: "watch with query", path: "/watch/live?rendition=480p", status: 200, ctype: "text/html",
			contains: []string{`id="video"`}},
		{name: "name with every allowed character", path: "/watch/A.b_c-9", status: 200, ctype: "text/html",
			contains: []string{`data-stream="A.b_c-9"`}},
		{name: "longest name", path: "/watch/" + long[:128], status: 200, ctype: "text/html"},
		{name: "head", method: "HEAD", path: "/watch/live", status: 200, ctype: "text/html"},

		{name: "dot prefix", path: "/watch/..bad", status: 400, ctype: "text/plain", contains: []string{"bad stream name"}},
		{name: "space", path: "/watch/a%20b", status: 400, ctype: "text/plain", contains: []string{"bad stream name"}},
		{name: "escaped slash", path: "/publish/a%2Fb", status: 400, ctype: "text/plain"},
		{name: "markup", path: "/publish/%3Cscript%3E", status: 400, ctype: "text/plain"},
		{name: "dash prefix", path: "/publish/-x", status: 400, ctype: "text/plain"},
		{name: "too long", path: "/watch/" + long, status: 400, ctype: "text/plain"},

		{name: "cascade.js", path: "/static/cascade.js", status: 200, ctype: "text/javascript",
			contains: []string{"window.Cascade", "application/sdp"}},
		{name: "watch.js", path: "/static/watch.js", status: 200, ctype: "text/javascript",
			contains: []string{"window.cascadeStats", "urn:ietf:params:whep:ext:core:server-sent-events",
				"urn:ietf:params:whep:ext:core:layer", "new EventSource(", "'reconnect'"}},
		{name: "publish.js", path: "/static/publish.js", status: 200, ctype: "text/javascript"},
		{name: "index.js", path: "/static/index.js", status: 200, ctype: "text/javascript",
			contains: []string{"/v1/streams"}},
		{name: "style.css", path: "/static/style.css", status: 200, ctype: "text/css"},
		{name: "missing asset", path: "/static/nope.js", status: 404},
		{name: "no directory listing", path: "/static/", status: 404},

		{name: "POST not routed", method: "POST", path: "/watch/live", status: 405},
		{name: "unknown page", path: "/nope", status: 404},
	}
	mux := newMux()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			method := c.method
			if method == "" {
				method = http.MethodGet
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(method, c.path, nil))
			if rec.Code != c.status {
				t.Fatalf("%s %s: status %d, want %d (body %q)", method, c.path, rec.Code, c.status, rec.Body.String())
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, c.ctype) {
				t.Errorf("Content-Type %q, want prefix %q", ct, c.ctype)
			}
			body := rec.Body.String()
			for _, s := range c.contains {
				if !strings.Contains(body, s) {
					t.Errorf("body lacks %q", s)
				}
			}
			if c.status == 200 && rec.Header().Get("Cache-Control") != "no-cache" {
				t.Errorf("Cache-Control %q, want no-cache", rec.Header().Get("Cache-Control"))
			}
			if c.status == 400 && strings.Count(strings.TrimSpace(body), "\n") != 0 {
				t.Errorf("400 body is not one line: %q", body)
			}
		})
	}
}

// The publisher drives the camera, so other sites must not frame it; the
// player may be embedded.
func TestFraming(t *testing.T) {
	mux := newMux()
	for path, deny := range map[string]bool{"/publish/live": true, "/watch/live": false, "/": false} {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		csp := rec.Header().Get("Content-Security-Policy")
		if !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s: CSP %q lacks default-src 'self'", path, csp)
		}
		if got := strings.Contains(csp, "frame-ancestors 'none'"); got != deny {
			t.Errorf("%s: frame-ancestors 'none' is %v, want %v", path, got, deny)
		}
	}
}

func TestStaticRevalidation(t *testing.T) {
	mux := newMux()
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, httptest.NewRequest("GET", "/static/cascade.js", nil))
	etag := rec.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag on a static asset")
	}
	req := httptest.NewRequest("GET", "/static/cascade.js", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Fatalf("revalidation: status %d, want 304", rec.Code)
	}
}

// The pages must work on an offline network, so nothing embedded may
// point at another origin.
func TestNoExternalResources(t *testing.T) {
	for _, fsys := range []fs.FS{pageFiles, staticFiles} {
		err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := fs.ReadFile(fsys, p)
			if err != nil {
				return err
			}
			for _, bad := range []string{"http://", "https://", "src=\"//", "href=\"//", "@import"} {
				if strings.Contains(string(b), bad) {
					t.Errorf("%s contains %q", p, bad)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// The player finds the WHEP extensions in the Link headers of the 201,
// which fetch joins with ", " next to the ICE servers' (wish.Handler
// writes them; its tests pin their form).
func TestParseLinks(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	header := `<stun:stun.example.org:3478>; rel="ice-server", ` +
		`<turn:turn.example.org>; rel="ice-server"; username="u"; credential="p, q"; credential-type="password", ` +
		`</whep/live/0a1b/events>; rel="urn:ietf:params:whep:ext:core:server-sent-events"; events="layers,switch,estimate,video,reconnect", ` +
		`</whep/live/0a1b/layer>; rel="urn:ietf:params:whep:ext:core:layer"`
	script := "globalThis.window = globalThis;\n" + string(assets["cascade.js"].body) + `
const C = window.Cascade;
const links = C.parseLinks(process.argv[1]);
const s = new C.Session('/whep/live');
s.links = links;
s.base = 'http://node.test:8080/whep/live';
console.log(JSON.stringify({
	n: links.length,
	events: links[2].params.events,
	sse: s.link('urn:ietf:params:whep:ext:core:server-sent-events'),
	layer: s.link('urn:ietf:params:whep:ext:core:layer'),
	none: s.link('urn:nope'),
	ice: C.parseIceLinks(process.argv[1]),
}));
`
	cmd := exec.Command(node, "-e", script, header)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := `{"n":4,"events":"layers,switch,estimate,video,reconnect",` +
		`"sse":"http://node.test:8080/whep/live/0a1b/events","layer":"http://node.test:8080/whep/live/0a1b/layer","none":"",` +
		`"ice":[{"urls":"stun:stun.example.org:3478"},{"urls":"turn:turn.example.org","username":"u","credential":"p, q"}]}`
	if got := strings.TrimSpace(string(out)); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// There is no build step to catch a JavaScript syntax error, so check the
// scripts with node when it is installed.
func TestScriptSyntax(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not installed")
	}
	for name := range assets {
		if !strings.HasSuffix(name, ".js") {
			continue
		}
		cmd := exec.Command(node, "--check", "-")
		cmd.Stdin = strings.NewReader(string(assets[name].body))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", name, err, out)
		}
	}
}
