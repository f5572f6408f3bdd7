#!/usr/bin/env bash
# make test-report: the sweep report rendered by headless Chromium (not part of
# tests/run.sh: it needs Debian's chromium, which the normal run must not).
# A tiny sweep is run, Chromium loads report.html from disk with the network
# off, its DOM must hold one Figure-1 point per run, the axis labels and the
# legend, and a screenshot is written (build/report.png, or REPORT_PNG; the
# page's first REPORT_HEIGHT pixels, default 3200).
# With a sweep directory as $1 it renders that report instead.
set -u
cd "$(dirname "$0")/.."
source tests/lib.sh
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then
    echo "# chromium is not installed (apt-get install chromium); the report is not rendered"
    echo "## 0 0"
    exit 0
fi
W=$(mktemp -d /tmp/peftc_report.XXXXXX)
trap 'rm -rf "$W"' EXIT
PNG=${REPORT_PNG:-build/report.png}
mkdir -p "$(dirname "$PNG")"
if [ $# -ge 1 ]; then
    D=$1
else
    /usr/bin/python3 tests/make_tiny_bert.py "$W/tiny" >/dev/null || { bad "cannot build the tiny model"; finish; }
    D=$W/sweep
    ./peftc sweep --model $W/tiny/model --train $W/tiny/train.tsv --eval $W/tiny/dev.tsv \
        --methods bitfit,prompt,lora,adapter-pfeiffer,parallel-adapter,mam --budgets 2%,8% --seeds 1,2,3 \
        --steps 20 --batch 8 --out "$D" >"$W/sweep.log" 2>&1 || { bad "sweep failed: $(tail -2 $W/sweep.log)"; finish; }
fi
# no network: a report that needed one would render without it
flags="--headless --no-sandbox --disable-gpu --hide-scrollbars --proxy-server=127.0.0.1:9 --proxy-bypass-list=<-loopback>"
"$CHROME" $flags --dump-dom "file://$(realpath "$D")/report.html" >"$W/dom.html" 2>"$W/chrome.err"
runs=$(/usr/bin/python3 -c "
import json; m = json.load(open('$D/sweep.json'))
print(sum(1 for r in m['runs'] if not r['grid']))")
pts=$(/usr/bin/python3 -c "
import re; d = open('$W/dom.html').read()
fig = d[d.find('id=\"fig-metric\"'):]; fig = fig[:fig.find('</svg>')]
print(len(re.findall(r'<circle class=\"run\"', fig)))")
[ "$pts" -eq "$runs" ] && ok "Chromium's DOM: Figure 1 has $pts points, one per run" || bad "Chromium's DOM: $pts points for $runs runs"
grep -q "trainable parameters (% of the model, log scale)" "$W/dom.html" && grep -q 'class="legend"' "$W/dom.html" \
    && ok "Chromium's DOM: axis label and legend present" || bad "Chromium's DOM lacks the axis label or the legend"
"$CHROME" $flags --window-size=1280,${REPORT_HEIGHT:-3200} --screenshot="$(realpath -m "$PNG")" "file://$(realpath "$D")/report.html" >/dev/null 2>>"$W/chrome.err"
size=$(stat -c %s "$PNG" 2>/dev/null || echo 0)
# a blank page compresses to a few KB; the charts make it much larger
[ "$size" -gt 30000 ] && ok "screenshot $PNG ($size bytes)" || { bad "screenshot missing or blank ($size bytes)"; tail -3 "$W/chrome.err"; }
finish
