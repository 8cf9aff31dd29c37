"""Real English text for GPU benchmarks, from Debian packages (no internet beyond the package mirror).

    python benchmarks/debian_corpus.py --out /tmp/corpus          # apt-get download + dpkg -x
    python -m gpt2_jax.data.prepare files --input '/tmp/corpus/*.txt' --out data/debian

Dictionaries (GCIDE, WordNet, FOLDOC, Jargon File, Devil's Dictionary), manuals (Python, Perl,
Bash, gettext, autoconf, SBCL, GNU coding standards, man pages) and fortunes become one .txt
document per source file, markup stripped. About 34M GPT-2 tokens; none of it goes into git.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html
import re
import subprocess
import tempfile
from pathlib import Path

PACKAGES = ["dict-gcide", "dict-wn", "dict-foldoc", "dict-jargon", "dict-devil", "dict-vera",
            "python3.11-doc", "perl-doc", "bash-doc", "gettext-doc", "autoconf-doc", "sbcl-doc",
            "gnu-standards", "manpages", "manpages-dev", "fortunes", "fortunes-min"]
MIN_CHARS = 200  # skip stubs (redirect pages, empty indexes)
# Manuals shipped in several formats are kept once: Python's as reST sources, the GNU manuals
# (autoconf, bash, standards, sbcl) as info; HTML only where it is the one copy (gettext).
DUPLICATES = re.compile(r"python3\.11/html/(?!_sources)|info/python3|/doc/(autoconf|bash|"
                        r"gnu-standards|sbcl)/.*\.html$|changelog")


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def _strip_troff(text: str) -> str:
    lines = (line for line in text.splitlines() if not line.startswith((".", "'\\\"")))
    return re.sub(r"\\f[BIRP]|\\[(-]\w*|\\-", "", "\n".join(lines))


def to_text(path: Path) -> str | None:
    """The readable text of one extracted file, or None for files that hold none."""
    name = path.name
    raw = path.read_bytes()
    if name.endswith((".gz", ".dz")):
        raw = gzip.decompress(raw)
        name = name[:-3]
    text = raw.decode("utf-8", errors="replace")
    if "/man/" in str(path):
        return _strip_troff(text)
    if name.endswith((".html", ".htm")):
        return _strip_html(text)
    if name.endswith((".dict", ".txt", ".pod", ".info")) or "/info/" in str(path) \
            or "/fortunes/" in str(path):
        return text
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the .txt documents")
    parser.add_argument("--debs", help="directory of already downloaded .deb files")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        debs = Path(args.debs) if args.debs else Path(tmp) / "debs"
        if not args.debs:
            debs.mkdir()
            subprocess.run(["apt-get", "download", "-q", *PACKAGES], cwd=debs, check=True)
        tree = Path(tmp) / "tree"
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True)
        n_docs = n_chars = 0
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            if DUPLICATES.search(str(path)):
                continue
            text = to_text(path)
            if text is None or len(text) < MIN_CHARS:
                continue
            n_docs += 1
            n_chars += len(text)
            # Named by a hash of the source path: prepare reads files in name order, so sources
            # interleave and the first (validation) shard is not all one dictionary.
            digest = hashlib.sha1(str(path.relative_to(tree)).encode()).hexdigest()[:16]
            (out / f"{digest}.txt").write_text(text, encoding="utf-8")
    print(f"wrote {n_docs} documents, {n_chars / 1e6:.1f}M characters, to {out}")


if __name__ == "__main__":
    main()
