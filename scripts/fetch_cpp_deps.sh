#!/usr/bin/env bash
# Fetch the C/C++ headers the runtime builds against, into a project-local folder —
# never installed system-wide:
#   * ONNX Runtime's C/C++ API headers (the onnxruntime wheel ships the library only),
#     from Debian's libonnxruntime-dev package (the C API is stable across releases: the
#     runtime asks the library in hand for the API version of these headers);
#   * nlohmann/json (header-only), from Debian's nlohmann-json3-dev,
#     unless CMake already finds a system nlohmann_json.
# The packages are downloaded with apt-get under a private configuration whose mirror is
# taken from this machine's own apt sources, and unpacked with dpkg-deb -x.
#
# Usage: scripts/fetch_cpp_deps.sh [DEST]     (default: build/deps; idempotent)
# Env:   EDGECLF_DEBIAN_SUITE (default trixie), EDGECLF_DEBIAN_MIRROR (override the mirror)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/build/deps}"
suite="${EDGECLF_DEBIAN_SUITE:-trixie}"
packages=(libonnxruntime-dev nlohmann-json3-dev)

if [ -f "$dest/usr/include/onnxruntime/onnxruntime_c_api.h" ] && [ -f "$dest/usr/include/nlohmann/json.hpp" ]; then
  exit 0
fi
for tool in apt-get dpkg-deb; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "edgeclf: $tool not found; provide the headers yourself and configure with" >&2
    echo "  -DEDGECLF_ORT_INCLUDE_DIR=<dir with onnxruntime_c_api.h> and a nlohmann_json CMake package" >&2
    exit 1
  fi
done

mirror="${EDGECLF_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  # The first Debian archive URI of this machine's apt sources (deb822 or one-line style).
  mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs:[[:space:]]*//p' \
            | tr ' ' '\n' | grep -v security | head -n1 || true)"
  if [ -z "$mirror" ]; then
    mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' || true)"
  fi
fi
if [ -z "$mirror" ]; then
  echo "edgeclf: no Debian mirror in this machine's apt sources; set EDGECLF_DEBIAN_MIRROR" >&2
  exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/state/lists/partial" "$work/cache/archives/partial" "$work/etc/sources.list.d" "$work/etc/preferences.d" "$work/debs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$mirror" "$suite" > "$work/etc/sources.list"
cat > "$work/apt.conf" <<CONF
Dir::State "$work/state";
Dir::State::status "$work/state/status";
Dir::Cache "$work/cache";
Dir::Etc::sourcelist "$work/etc/sources.list";
Dir::Etc::sourceparts "$work/etc/sources.list.d";
Dir::Etc::preferencesparts "$work/etc/preferences.d";
APT::Architecture "$(dpkg --print-architecture)";
Debug::NoLocking "true";
$( [ "$(id -u)" = 0 ] && echo "APT::Sandbox::User \"root\";")
CONF
touch "$work/state/status"
export APT_CONFIG="$work/apt.conf"
echo "edgeclf: fetching ${packages[*]} ($suite) into $dest" >&2
apt-get -qq update
(cd "$work/debs" && apt-get -qq download "${packages[@]}")
mkdir -p "$dest"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$dest"
done
# The -dev package's unversioned .so points at a library we do not fetch: drop it.
find "$dest" -xtype l -delete
test -f "$dest/usr/include/onnxruntime/onnxruntime_c_api.h"
test -f "$dest/usr/include/nlohmann/json.hpp"
echo "edgeclf: C/C++ headers ready in $dest" >&2
