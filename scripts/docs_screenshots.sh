#!/usr/bin/env bash
# The screenshots README shows (docs/comparison.png, docs/index.png): `attribute --methods abu dtrak pixel --controls`
# on the shipped model and data at the demo's prepare settings, then the comparison page and the work directory's index
# page in headless Chromium. Usage: bash scripts/docs_screenshots.sh [WORK_DIR]  (resumable: the work directory keeps
# what was computed).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/unlearn-fast-docs-work}
browser=$(command -v chromium || command -v chromium-browser)
python3 -m unlearn_fast attribute --work-dir "$work" --prompt "red apple" --seed 0 \
  --timesteps 3 --no-flips --fisher-examples 1024 --methods abu dtrak pixel --controls --top-k 8 --quiet
python3 -m unlearn_fast attribute --work-dir "$work" --prompt "grinning face" --seed 0 --quiet
shot() {  # page, picture, height
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="1300,$3" \
    --screenshot="$PWD/$2" "file://$1" 2>/dev/null
}
shot "$(realpath "$work/attributions/index.html")" docs/index.png 420
latest=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['outputs'][-2]['folder'])" "$work/attributions/index.json")
shot "$(realpath "$work/attributions/$latest/comparison.html")" docs/comparison.png 2000
echo "wrote docs/index.png and docs/comparison.png from $work"
