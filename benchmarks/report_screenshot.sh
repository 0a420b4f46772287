#!/bin/sh
# Screenshot of a QC report as a person sees it, with headless Chromium (Debian: apt-get
# install chromium). Usage: benchmarks/report_screenshot.sh output/report.html [shot.png]
set -eu
report=$(realpath "$1")
shot=${2:-${report%.html}.png}
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1200,3000 --screenshot="$shot" "file://$report" 2>/dev/null
echo "$shot"
