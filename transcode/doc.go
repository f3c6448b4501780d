// Package transcode turns each source into a keyframe-aligned ABR ladder.
//
//   - transcode/ladder: pure-Go planning: which rungs a source gets, when the
//     source may pass through, and the shared keyframe clock that aligns
//     every rung's IDRs.
//   - transcode/av: the codec layer (H.264 decoder, scaler, libx264 encoder
//     tuned for WebRTC) over libavcodec/libswscale through go-astiav; the
//     only package that reaches C.
//
// Not built yet (issue 3): the pipeline that runs them per stream (RTP
// depacketizing, per-rung hubs, overload shedding, audio to Opus, metrics)
// and its wiring into the node. Today every stream is served as its source
// rendition only, passed through untouched.
package transcode
