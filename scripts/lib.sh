# Shared by scripts/run and scripts/test: install missing Debian packages.
# shellcheck shell=bash

# NODE_PACKAGES are what building and running cascade needs: the
# transcoder reaches libavcodec, libswscale and libx264 through cgo
# (go-astiav, which needs the headers of every FFmpeg library).
NODE_PACKAGES=(ca-certificates gcc pkg-config libavcodec-dev libavformat-dev libavutil-dev
	libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev libx264-dev)

# ensure_packages PKG...: apt-get installs the packages that are missing
# (as root, or through sudo), once per call.
ensure_packages() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	echo "installing: ${missing[*]}" >&2
	local sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	"${sudo[@]}" apt-get update -qq
	DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_go: Go must be on PATH (Debian's golang is too old; use go.dev's 1.26+).
ensure_go() {
	if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
		export PATH="$PATH:/usr/local/go/bin"
	fi
	command -v go >/dev/null || { echo "Go 1.26+ is needed: https://go.dev/dl/" >&2; exit 1; }
}
