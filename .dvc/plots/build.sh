#!/usr/bin/env bash
# Builds offline.html, the page `dvc plots show` / `dvc plots diff` fill (plots.html_template in
# .dvc/config): DVC's default page loads vega, vega-lite and vega-embed from a CDN, so on a
# machine without internet the training curves come out blank. This page carries the three
# libraries inline, taken from their npm packages (BSD-3-Clause; licences in LICENSES.vega).
# Needs npm and the registry; run it again to move to other versions. DVC fills {plot_divs}; the
# page has no {scripts} placeholder, so DVC's CDN <script> tags are never added.
set -euo pipefail
cd "$(dirname "$0")"
versions=(vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "${versions[@]}" >/dev/null)
for tgz in "$work"/*.tgz; do
    mkdir -p "${tgz%.tgz}" && tar -xzf "$tgz" -C "${tgz%.tgz}"
done
inline() {  # the minified build, its source-map comment dropped (the map is not shipped)
    sed -e 's|//# sourceMappingURL=.*$||' "$work/$1/package/build/$2"
}
tmp=$(mktemp offline.html.XXXXXX)
{
    printf '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
    printf '<title>DVC Plots</title>\n'
    printf '<!-- %s, inlined from npm by .dvc/plots/build.sh -->\n' "${versions[*]}"
    printf '<script>\n'; inline vega-5.33.1 vega.min.js; printf '\n</script>\n'
    printf '<script>\n'; inline vega-lite-5.23.0 vega-lite.min.js; printf '\n</script>\n'
    printf '<script>\n'; inline vega-embed-6.29.0 vega-embed.min.js; printf '\n</script>\n'
    printf '<style>\ntable { border-spacing: 15px; }\n</style>\n</head>\n<body>\n{plot_divs}\n</body>\n</html>\n'
} >"$tmp"
chmod 644 "$tmp" && mv "$tmp" offline.html
{
    for package in vega-lite-5.23.0 vega-embed-6.29.0; do
        printf '%s (npm), LICENSE:\n\n' "$package"
        cat "$work/$package/package/LICENSE"
        printf '\n\n'
    done
    printf 'vega-5.33.1 (npm): BSD-3-Clause, the same licence and copyright holder as above\n'
    printf '(University of Washington Interactive Data Lab; package.json "license").\n'
} >LICENSES.vega
