package main

import (
	"fmt"
	"math"

	"github.com/cascade-cdn/cascade/transcode/av"
)

// rungQuality compares one rung's pictures with reference pictures.
type rungQuality struct {
	r      *reader
	ref    *av.Scaler
	dec    *av.Decoder
	next   int    // the next access unit to decode
	cur    []byte // luma of the last decoded picture
	curPTS int64
	have   bool
	sum    float64
	frames int
}

// advance decodes the rung until its picture is at or past pts.
func (q *rungQuality) advance(pts int64) error {
	for (!q.have || q.curPTS < pts) && q.next < len(q.r.aus) {
		i := q.next
		q.next++
		err := q.dec.Decode(q.r.aus[i], int64(q.r.ts[i]), func(f *av.Frame) error {
			var err error
			q.cur, err = f.AppendLuma(q.cur[:0])
			q.curPTS, q.have = f.PTS(), true
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// psnr decodes the source once and measures each rung's mean luma PSNR
// against the source picture scaled to the rung's size with a Lanczos
// filter, over the frames the rung carries (matched by timestamp).
func psnr(src *source, readers []*reader) (map[string]float64, error) {
	dec, err := av.NewDecoder(src.codec)
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	var qs []*rungQuality
	defer func() {
		for _, q := range qs {
			q.dec.Close()
			q.ref.Close()
		}
	}()
	for _, r := range readers {
		d, err := av.NewDecoder("H264")
		if err != nil {
			return nil, err
		}
		qs = append(qs, &rungQuality{r: r, dec: d, ref: av.NewReferenceScaler(r.out.Rung.Width, r.out.Rung.Height)})
	}
	var ref []byte
	for i, au := range src.in.AUs {
		err := dec.Decode(au, src.in.PTS[i], func(f *av.Frame) error {
			for _, q := range qs {
				if err := q.advance(f.PTS()); err != nil {
					return err
				}
				if !q.have || q.curPTS != f.PTS() {
					continue // shed, or not come out
				}
				sf, err := q.ref.Scale(f)
				if err != nil {
					return err
				}
				if ref, err = sf.AppendLuma(ref[:0]); err != nil {
					return err
				}
				if len(ref) != len(q.cur) {
					return fmt.Errorf("%s: %d luma bytes, reference %d", q.r.out.Rung.Name, len(q.cur), len(ref))
				}
				q.sum += lumaPSNR(ref, q.cur)
				q.frames++
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	out := map[string]float64{}
	for _, q := range qs {
		if q.frames == 0 {
			return nil, fmt.Errorf("%s: no frame matched the source", q.r.out.Rung.Name)
		}
		out[q.r.out.Rung.Name] = q.sum / float64(q.frames)
	}
	return out, nil
}

// lumaPSNR is 10·log10(255²/MSE), capped at 100 dB for equal pictures.
func lumaPSNR(a, b []byte) float64 {
	var se uint64
	for i := range a {
		d := int(a[i]) - int(b[i])
		se += uint64(d * d)
	}
	if se == 0 {
		return 100
	}
	mse := float64(se) / float64(len(a))
	return 10 * math.Log10(255*255/mse)
}
