// Package transcode will decode each source once and encode the ABR ladder
// (720p/480p/360p/240p, keyframe-aligned) through cgo to libavcodec,
// libswscale and libx264, and turn AAC into Opus.
//
// Not built yet (issue 3): today every stream is served as its source
// rendition only, passed through untouched.
package transcode
