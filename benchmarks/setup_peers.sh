#!/usr/bin/env bash
# Create one virtualenv per peer engine under benchmarks/.venvs/ and install its pinned version from PyPI
# (plus, for Flink, the Parquet format jars from Maven Central). Idempotent: a venv whose stamp file matches
# its pins is left alone. Prints the installed versions.
#
#   benchmarks/setup_peers.sh                  # all peers: bytewax flink pathway raydata
#   benchmarks/setup_peers.sh bytewax flink    # only these
#
# Pins (checked on Python 3.11.7, Debian 12, x86_64, 2026-11-25):
#   bytewax 0.21.1        (the newest 0.21.x; wheels for cp311)
#   apache-flink 2.3.0    (the newest; pulls apache-beam 2.61, pemja 0.5.7, pyarrow 16.1, all as cp311 wheels;
#                          its local mini-cluster runs on the machine's JDK 17)
#   pathway 0.33.0        (the newest; no licence key needed for what the runner uses)
#   ray[data] 2.60.0 + pyarrow 26.0.1 (the versions Headwater itself runs on)
# Flink's Parquet format: org.apache.flink:flink-sql-parquet:2.3.0 needs Hadoop's Configuration class, which
# the shaded org.apache.hadoop:hadoop-client-api/-runtime:3.3.6 jars provide (+ commons-logging 1.2); fetched
# with `mvn dependency:copy` into benchmarks/.venvs/flink/jars/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venvs="$here/.venvs"

BYTEWAX_PIP=("bytewax==0.21.1" "pyarrow==26.0.1")
FLINK_PIP=("apache-flink==2.3.0")
PATHWAY_PIP=("pathway==0.33.0")
RAYDATA_PIP=("ray[data]==2.60.0" "pyarrow==26.0.1")
FLINK_JARS=(
  "org.apache.flink:flink-sql-parquet:2.3.0"
  "org.apache.hadoop:hadoop-client-api:3.3.6"
  "org.apache.hadoop:hadoop-client-runtime:3.3.6"
  "commons-logging:commons-logging:1.2"
)

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || {
  echo "setup_peers: $python_bin not found; install Python 3.11 or set PYTHON=/path/to/python3.11" >&2; exit 1; }

engines=("$@")
[ ${#engines[@]} -gt 0 ] || engines=(bytewax flink pathway raydata)

pins_of() {
  case "$1" in
    bytewax) echo "${BYTEWAX_PIP[*]}" ;;
    flink) echo "${FLINK_PIP[*]} ${FLINK_JARS[*]}" ;;
    pathway) echo "${PATHWAY_PIP[*]}" ;;
    raydata) echo "${RAYDATA_PIP[*]}" ;;
    *) echo "setup_peers: unknown engine '$1' (bytewax, flink, pathway, raydata)" >&2; exit 2 ;;
  esac
}

install_one() {
  local name="$1" dir="$venvs/$1" want stamp
  want="$("$python_bin" --version 2>&1) $(pins_of "$name")"
  stamp="$dir/.headwater-peer-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
    return 0
  fi
  echo "setup_peers: installing $name into $dir ..." >&2
  rm -f "$stamp"
  [ -x "$dir/bin/python" ] || "$python_bin" -m venv "$dir"
  local pip=("$dir/bin/python" -m pip install --quiet --disable-pip-version-check)
  case "$name" in
    bytewax) "${pip[@]}" "${BYTEWAX_PIP[@]}" ;;
    flink)
      "${pip[@]}" "${FLINK_PIP[@]}"
      command -v mvn >/dev/null 2>&1 || {
        echo "setup_peers: Maven (mvn) is needed to fetch Flink's Parquet jars: apt-get install maven" >&2; exit 1; }
      mkdir -p "$dir/jars"
      for artifact in "${FLINK_JARS[@]}"; do
        mvn --batch-mode -Dstyle.color=never dependency:copy -Dartifact="$artifact" -DoutputDirectory="$dir/jars" \
          > "$dir/mvn.log" 2>&1 || { cat "$dir/mvn.log" >&2; echo "setup_peers: could not fetch $artifact" >&2; exit 1; }
      done
      ;;
    pathway) "${pip[@]}" "${PATHWAY_PIP[@]}" ;;
    raydata) "${pip[@]}" "${RAYDATA_PIP[@]}" ;;
  esac
  "$dir/bin/python" -m pip freeze --disable-pip-version-check > "$dir/freeze.txt"
  echo "$want" > "$stamp"
}

mkdir -p "$venvs"
for engine in "${engines[@]}"; do
  pins_of "$engine" >/dev/null
  install_one "$engine"
done

for engine in "${engines[@]}"; do
  dir="$venvs/$engine"
  case "$engine" in
    bytewax) pkgs="bytewax pyarrow" ;;
    flink) pkgs="apache-flink apache-beam pyarrow" ;;
    pathway) pkgs="pathway pyarrow" ;;
    raydata) pkgs="ray pyarrow" ;;
  esac
  "$dir/bin/python" - "$engine" $pkgs <<'EOF'
import sys
from importlib.metadata import version
name, pkgs = sys.argv[1], sys.argv[2:]
print(f"setup_peers: {name:<8}", " | ".join(f"{p} {version(p)}" for p in pkgs))
EOF
  if [ "$engine" = flink ]; then
    echo "setup_peers: flink    jars: $(cd "$dir/jars" && ls *.jar | tr '\n' ' ')| $(java -version 2>&1 | head -1)"
  fi
done
