package h264

import "errors"

// ErrBadSPS is returned for an SPS that cannot be read.
var ErrBadSPS = errors.New("h264: malformed SPS")

// SPS holds the fields of a sequence parameter set that Cascade reports.
type SPS struct {
	ProfileIDC    uint8
	ConstraintSet uint8
	LevelIDC      uint8
	Width, Height int
}

// maxDim bounds a decoded picture side; anything larger is not a stream we
// serve and would only feed arithmetic overflow.
const maxDim = 16384

// ParseSPS reads profile, level and the cropped picture size from an SPS NAL
// unit (with its one-byte header), ITU-T H.264 section 7.3.2.1.1.
func ParseSPS(nal []byte) (SPS, error) {
	var s SPS
	if len(nal) < 4 || nal[0]&0x1f != NALUSPS {
		return s, ErrBadSPS
	}
	r := bitReader{b: unescape(nal[1:])}
	s.ProfileIDC = uint8(r.bits(8))
	s.ConstraintSet = uint8(r.bits(8))
	s.LevelIDC = uint8(r.bits(8))
	r.ue() // seq_parameter_set_id
	chromaFormat := uint32(1)
	switch s.ProfileIDC {
	case 100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135:
		chromaFormat = r.ue()
		if chromaFormat > 3 {
			return s, ErrBadSPS
		}
		if chromaFormat == 3 {
			r.bits(1) // separate_colour_plane_flag
		}
		r.ue()              // bit_depth_luma_minus8
		r.ue()              // bit_depth_chroma_minus8
		r.bits(1)           // qpprime_y_zero_transform_bypass_flag
		if r.bits(1) == 1 { // seq_scaling_matrix_present_flag
			n := 8
			if chromaFormat == 3 {
				n = 12
			}
			for i := 0; i < n && r.err == nil; i++ {
				if r.bits(1) == 1 {
					size := 16
					if i >= 6 {
						size = 64
					}
					skipScalingList(&r, size)
				}
			}
		}
	}
	r.ue()          // log2_max_frame_num_minus4
	switch r.ue() { // pic_order_cnt_type
	case 0:
		r.ue() // log2_max_pic_order_cnt_lsb_minus4
	case 1:
		r.bits(1) // delta_pic_order_always_zero_flag
		r.se()    // offset_for_non_ref_pic
		r.se()    // offset_for_top_to_bottom_field
		n := r.ue()
		if n > 255 {
			return s, ErrBadSPS
		}
		for i := uint32(0); i < n && r.err == nil; i++ {
			r.se()
		}
	}
	r.ue()    // max_num_ref_frames
	r.bits(1) // gaps_in_frame_num_value_allowed_flag
	wMbs := r.ue() + 1
	hMapUnits := r.ue() + 1
	frameMbsOnly := r.bits(1)
	if frameMbsOnly == 0 {
		r.bits(1) // mb_adaptive_frame_field_flag
	}
	r.bits(1) // direct_8x8_inference_flag
	var cl, cr, ct, cb uint32
	if r.bits(1) == 1 { // frame_cropping_flag
		cl, cr, ct, cb = r.ue(), r.ue(), r.ue(), r.ue()
	}
	if r.err != nil || wMbs > maxDim/16 || hMapUnits > maxDim/16 {
		return s, ErrBadSPS
	}
	w := wMbs * 16
	h := (2 - frameMbsOnly) * hMapUnits * 16
	cropX, cropY := uint32(1), 2-frameMbsOnly
	if chromaFormat == 1 {
		cropX, cropY = 2, 2*(2-frameMbsOnly)
	} else if chromaFormat == 2 {
		cropX, cropY = 2, 2-frameMbsOnly
	}
	if cl > maxDim || cr > maxDim || ct > maxDim || cb > maxDim ||
		(cl+cr)*cropX >= w || (ct+cb)*cropY >= h {
		return s, ErrBadSPS
	}
	s.Width = int(w - (cl+cr)*cropX)
	s.Height = int(h - (ct+cb)*cropY)
	return s, nil
}

func skipScalingList(r *bitReader, size int) {
	last, next := int32(8), int32(8)
	for j := 0; j < size && r.err == nil; j++ {
		if next != 0 {
			next = (last + r.se() + 256) % 256
		}
		if next != 0 {
			last = next
		}
	}
}

// unescape removes emulation-prevention bytes (00 00 03 -> 00 00).
func unescape(b []byte) []byte {
	out := make([]byte, 0, len(b))
	zeros := 0
	for _, c := range b {
		if zeros >= 2 && c == 3 {
			zeros = 0
			continue
		}
		if c == 0 {
			zeros++
		} else {
			zeros = 0
		}
		out = append(out, c)
	}
	return out
}

type bitReader struct {
	b   []byte
	pos int // in bits
	err error
}

func (r *bitReader) bits(n int) uint32 {
	var v uint32
	for i := 0; i < n; i++ {
		if r.pos >= len(r.b)*8 {
			r.err = ErrBadSPS
			return 0
		}
		v = v<<1 | uint32(r.b[r.pos/8]>>(7-r.pos%8))&1
		r.pos++
	}
	return v
}

// ue reads an unsigned Exp-Golomb code (section 9.1), bounded to 31 bits.
func (r *bitReader) ue() uint32 {
	zeros := 0
	for r.bits(1) == 0 {
		if r.err != nil || zeros == 31 {
			r.err = ErrBadSPS
			return 0
		}
		zeros++
	}
	return (1<<zeros - 1) + r.bits(zeros)
}

func (r *bitReader) se() int32 {
	v := r.ue()
	if v&1 == 1 {
		return int32((v + 1) / 2)
	}
	return -int32(v / 2)
}
