// Package web serves Cascade's built-in browser pages: the stream list
// (GET /), a WHIP publisher (GET /publish/{stream}), a WHEP player
// (GET /watch/{stream}) and their shared CSS and JavaScript (GET /static/).
//
// Everything is embedded in the binary and is plain HTML, CSS and vanilla
// JavaScript: there is no build step, and the pages load nothing from other
// origins, so they work on an offline network. The pages talk only to the
// node's own /whip, /whep and /v1/streams endpoints.
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"time"

	"github.com/cascade-cdn/cascade/wish"
)

//go:embed pages/*.html
var pageFiles embed.FS

//go:embed static
var staticFiles embed.FS

// badName is the 400 body: one line a person can act on.
const badName = "bad stream name: use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"

// page is one parsed page template.
type page struct {
	name  string // also the basename of its script in /static/
	title string
	// frameable pages may be embedded by other sites (the player is meant
	// to be); the publisher is not, because it drives the camera.
	frameable bool
	tmpl      *template.Template
}

// pageData is what the templates see. Stream has been validated, and
// html/template escapes it anyway; the scripts read it back from
// <body data-stream>, so no JavaScript is ever built from it.
type pageData struct {
	Title  string
	Page   string
	Stream string
}

// The templates are parsed once at start-up: a broken template is a
// programming error that must fail loudly (and in the tests), not per
// request.
var (
	indexPage   = mustPage("index", "Streams", true)
	publishPage = mustPage("publish", "Publish", false)
	watchPage   = mustPage("watch", "Watch", true)
)

func mustPage(name, title string, frameable bool) *page {
	t := template.Must(template.ParseFS(pageFiles, "pages/layout.html", "pages/"+name+".html"))
	return &page{name: name, title: title, frameable: frameable, tmpl: t}
}

// Register mounts the pages and their assets on mux. Only GET (and so HEAD)
// is routed here; the mux answers 405 to other methods.
func Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		indexPage.render(w, "")
	})
	mux.HandleFunc("GET /publish/{stream}", streamPage(publishPage))
	mux.HandleFunc("GET /watch/{stream}", streamPage(watchPage))
	mux.HandleFunc("GET /static/{file}", serveStatic)
}

// streamPage checks the {stream} path value before rendering p, so a page
// never shows a name the signalling endpoints would reject.
func streamPage(p *page) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("stream")
		if !wish.ValidStreamName(name) {
			w.Header().Set("Cache-Control", "no-cache")
			http.Error(w, badName, http.StatusBadRequest)
			return
		}
		p.render(w, name)
	}
}

// csp allows only same-origin scripts, styles and requests: the pages need
// nothing else, and it keeps an injected string from ever running.
const csp = "default-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; " +
	"object-src 'none'; base-uri 'none'; form-action 'self'"

func (p *page) render(w http.ResponseWriter, stream string) {
	title := p.title
	if stream != "" {
		title = stream + " · " + p.title
	}
	// Render into a buffer so a template error becomes a clean 500
	// instead of half a page with a 200 status.
	var buf bytes.Buffer
	if err := p.tmpl.ExecuteTemplate(&buf, "layout", pageData{Title: title, Page: p.name, Stream: stream}); err != nil {
		http.Error(w, "internal error: cannot render page", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	// no-cache (revalidate every time, not "never store"): the pages must
	// change as soon as the binary is upgraded.
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	if p.frameable {
		h.Set("Content-Security-Policy", csp)
	} else {
		h.Set("Content-Security-Policy", csp+"; frame-ancestors 'none'")
	}
	w.Write(buf.Bytes())
}

// asset is one embedded static file, ready to serve.
type asset struct {
	body  []byte
	ctype string
	etag  string
}

var assets = loadAssets()

// contentTypes pins the types we serve: mime.TypeByExtension reads the
// host's mime.types, which on some systems maps .js to a legacy type.
var contentTypes = map[string]string{
	".css":  "text/css; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".html": "text/html; charset=utf-8",
	".svg":  "image/svg+xml",
	".png":  "image/png",
	".ico":  "image/x-icon",
}

func loadAssets() map[string]asset {
	out := map[string]asset{}
	entries, err := fs.ReadDir(staticFiles, "static")
	if err != nil {
		panic(err) // the directory is embedded; this cannot happen
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		body, err := fs.ReadFile(staticFiles, "static/"+e.Name())
		if err != nil {
			panic(err)
		}
		ext := path.Ext(e.Name())
		ct := contentTypes[ext]
		if ct == "" {
			if ct = mime.TypeByExtension(ext); ct == "" {
				ct = "application/octet-stream"
			}
		}
		sum := sha256.Sum256(body)
		out[e.Name()] = asset{body: body, ctype: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
	}
	return out
}

// serveStatic serves the embedded assets. With no-cache plus an ETag the
// browser revalidates each load and gets a cheap 304 until the binary
// changes; there is no directory listing.
func serveStatic(w http.ResponseWriter, r *http.Request) {
	a, ok := assets[r.PathValue("file")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", a.ctype)
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
}
